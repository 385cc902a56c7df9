/**
 * `lowrank export-job`: a run (or a config file) as a ready job folder for LLaMA-Factory or axolotl.
 *
 *   <out>/llamafactory.yaml | axolotl.yaml   the training config (llamafactory.ts / axolotl.ts)
 *   <out>/data/                              the dataset as JSON lines (+ dataset_info.json for LLaMA-Factory)
 *   <out>/adapter/                           the adapter the run continues from, if any
 *   <out>/deepspeed/ds_z2_config.json, ds_z3_config.json, <out>/accelerate/fsdp_config.yaml (or axolotl-fsdp.yaml)
 *   <out>/README.md                          launch commands, memory per GPU, what each setting became
 *   <out>/lowrank-job.json                   what `lowrank import` reads back: run config, engine, output folder
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { resolveCachedModel } from '../hub/resolve.ts';
import { LowrankError } from '../errors.ts';
import { getMethod, resolveParams } from '../methods/index.ts';
import { FINETUNE_DEFAULTS, type FinetuneConfig } from '../train/finetune.ts';
import { formatBytes } from '../train/memory.ts';
import { parseModelConfig, type ModelConfig } from '../models/config.ts';
import { readModelConfig } from '../io/hf-folder.ts';
import { loadTokenizer } from '../tokenize/tokenizer.ts';
import type { RunStore } from '../store/store.ts';
import { ENGINE_NAMES, engineModelName, requireJobMethod, type EngineId, type EngineJob, type JobInput, type SettingMapping } from './job-spec.ts';
import { engineDatasetLines, readJobRecords } from './job-dataset.ts';
import { llamaFactoryJob, LLAMAFACTORY_CONFIG } from './llamafactory.ts';
import { axolotlJob, AXOLOTL_CONFIG } from './axolotl.ts';
import { bytesPerGpu, gpuMemoryTerms, STRATEGIES, STRATEGY_NAMES, type Strategy } from './gpu-memory.ts';
import { DEEPSPEED_ZERO2, DEEPSPEED_ZERO3, axolotlFsdpFields, llamaFactoryFsdpConfig } from './parallel-configs.ts';
import { toYaml } from './yaml.ts';
import { describeIssues, finetuneConfigSchema } from '../contract.ts';

export const JOB_MANIFEST = 'lowrank-job.json';
export const JOB_OUTPUT_DIR = 'output';
const GPU_COUNTS = [1, 2, 4, 8];

/** lowrank-job.json: what a job folder was made from, read back by `lowrank import` and `--launch`. */
export interface JobManifest {
  version: 1;
  engine: EngineId;
  runId: string | null;
  config: FinetuneConfig;
  configFile: string;
  datasetFile: string;
  /** Where the engine writes its adapter (or full model), relative to the job folder. */
  resultDir: string;
  outputDir: string;
  model: string;
  createdAt: string;
}

export interface ExportJobRequest {
  engine: EngineId;
  out: string;
  runId?: string;
  /** A fine-tuning config (FinetuneConfig fields; defaults fill the rest) when there is no run. */
  config?: Partial<FinetuneConfig>;
}

export interface MemoryRow {
  strategy: Strategy;
  gpus: number;
  bytes: number;
}

export interface ExportJobResult {
  dir: string;
  engine: EngineId;
  configFile: string;
  datasetFile: string;
  records: number;
  skipped: number;
  model: string;
  modelIsHubId: boolean;
  memory: MemoryRow[] | null;
  memoryNote: string | null;
  mappings: SettingMapping[];
  commands: Array<{ title: string; command: string }>;
  manifest: JobManifest;
}

/** The run's config, or a config file's fields over the defaults, with the method's parameters resolved. */
export function jobConfig(store: RunStore | null, request: ExportJobRequest): { config: FinetuneConfig; runId: string | null } {
  let config: FinetuneConfig;
  let runId: string | null = null;
  if (request.runId) {
    if (!store) throw new LowrankError('BAD_ARGUMENT', 'a run id needs the run store');
    const run = store.getRun(request.runId);
    if (run.kind !== 'finetune') throw new LowrankError('BAD_ARGUMENT', `run ${run.id} is a ${run.kind} run; only fine-tuning runs can run elsewhere`);
    config = run.config as unknown as FinetuneConfig;
    runId = run.id;
  } else if (request.config) {
    // A config file is checked as the wizard's config is (core/contract.ts), over the defaults; the keys a
    // launched or imported run's config adds are left out.
    const { elsewhere: _elsewhere, trainedAs: _trainedAs, ...given } = request.config as Partial<FinetuneConfig> & { elsewhere?: unknown; trainedAs?: unknown };
    const parsed = finetuneConfigSchema.safeParse({ ...FINETUNE_DEFAULTS, ...given });
    if (!parsed.success) throw new LowrankError('BAD_CONFIG', `config: ${describeIssues(parsed.error)}`);
    config = parsed.data as FinetuneConfig;
  } else {
    throw new LowrankError('BAD_ARGUMENT', 'give --run RUN_ID or --config FILE');
  }
  requireJobMethod(config.method, request.engine);
  const method = getMethod(config.method);
  return { config: { ...config, params: resolveParams(method.id, method.schema, config.params ?? {}) }, runId };
}

/** The model's folder here: itself, or the HF cache's snapshot of a Hub id (never downloaded for a job). */
function localModelFolder(model: string): string {
  if (fs.existsSync(path.join(model, 'config.json'))) return model;
  try {
    return resolveCachedModel(model) ?? model;
  } catch {
    return model; // not cached: the engine downloads it by id; the job's README says its shapes are unknown here
  }
}

function localModelConfig(model: string): ModelConfig | null {
  if (!fs.existsSync(path.join(model, 'config.json'))) return null;
  return parseModelConfig(readModelConfig(model) as Parameters<typeof parseModelConfig>[0], path.join(model, 'config.json'));
}

export async function exportJob(store: RunStore | null, request: ExportJobRequest, onProgress: (message: string) => void = () => {}): Promise<ExportJobResult> {
  const { config, runId } = jobConfig(store, request);
  const out = path.resolve(request.out);
  if (fs.existsSync(out) && fs.readdirSync(out).length > 0) throw new LowrankError('BAD_ARGUMENT', `${out} exists and is not empty; choose a new folder for the job`);

  if (config.adapter && !fs.existsSync(path.join(config.adapter, 'adapter_config.json'))) {
    throw new LowrankError('FILE_NOT_FOUND', `${config.adapter}: the adapter this run continues from is gone (no adapter_config.json); the job needs it`);
  }
  const localModel = localModelFolder(config.model);
  const modelConfig = localModelConfig(localModel);
  const { name: model, hubId } = engineModelName(config.model);
  const hasChatTemplate = modelConfig ? (await loadTokenizer(localModel)).hasChatTemplate : true;
  onProgress(`reading ${config.data}`);
  const read = await readJobRecords(config.data, config.format, config.onBadLine, hasChatTemplate);
  if (!modelConfig && read.format === 'alpaca') {
    throw new LowrankError('BAD_ARGUMENT', `${config.model}: not a local model folder, so whether its tokenizer has a chat template (which decides how Alpaca records render) is unknown; download it first`);
  }
  const datasetFile = `${path.basename(config.data).replace(/\.[^.]+$/, '').replace(/[^\w.-]/g, '_') || 'dataset'}.jsonl`;

  const staging = `${out}.tmp-${process.pid}`;
  fs.rmSync(staging, { recursive: true, force: true });
  fs.mkdirSync(path.join(staging, 'data'), { recursive: true });
  try {
    let adapterDir: string | null = null;
    if (config.adapter) {
      adapterDir = 'adapter';
      fs.cpSync(config.adapter, path.join(staging, adapterDir), { recursive: true });
    }
    const input: JobInput = { config, model, modelIsHubId: hubId, records: read.records, outputDir: JOB_OUTPUT_DIR, adapterDir, hiddenSize: modelConfig?.hiddenSize ?? null };
    const job: EngineJob = request.engine === 'llamafactory' ? llamaFactoryJob(input, datasetFile) : axolotlJob(input, datasetFile);
    fs.writeFileSync(path.join(staging, 'data', datasetFile), engineDatasetLines(request.engine, read.records));
    fs.writeFileSync(path.join(staging, job.configFile), job.yaml);
    for (const [file, text] of job.files) fs.writeFileSync(path.join(staging, file), text);
    const parallel = parallelFiles(request.engine, job, modelConfig);
    for (const [file, text] of parallel) {
      fs.mkdirSync(path.dirname(path.join(staging, file)), { recursive: true });
      fs.writeFileSync(path.join(staging, file), text);
    }

    let memory: MemoryRow[] | null = null;
    let memoryNote: string | null = null;
    if (modelConfig) {
      const terms = gpuMemoryTerms(modelConfig, config);
      memory = STRATEGIES.flatMap((strategy) =>
        (strategy === 'single' ? [1] : GPU_COUNTS.slice(1)).map((gpus) => ({ strategy, gpus, bytes: bytesPerGpu(terms, strategy, gpus) })));
    } else {
      memoryNote = `${config.model} is not a local folder, so its shapes (config.json) are unknown here; download it to see the memory per GPU`;
    }
    const commands = launchCommands(request.engine, job);
    const manifest: JobManifest = {
      version: 1, engine: request.engine, runId, config, configFile: job.configFile, datasetFile: `data/${datasetFile}`,
      resultDir: job.resultDir, outputDir: JOB_OUTPUT_DIR, model, createdAt: new Date().toISOString(),
    };
    fs.writeFileSync(path.join(staging, JOB_MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
    const result: ExportJobResult = {
      dir: out, engine: request.engine, configFile: job.configFile, datasetFile: `data/${datasetFile}`, records: read.records.rows.length,
      skipped: read.skipped.length, model, modelIsHubId: hubId, memory, memoryNote, mappings: job.mappings, commands, manifest,
    };
    fs.writeFileSync(path.join(staging, 'README.md'), jobReadme(result, config));
    if (fs.existsSync(out)) fs.rmdirSync(out);
    fs.renameSync(staging, out);
    onProgress(`wrote ${out}`);
    return result;
  } catch (e) {
    fs.rmSync(staging, { recursive: true, force: true });
    throw e;
  }
}

function parallelFiles(engine: EngineId, job: EngineJob, model: ModelConfig | null): Map<string, string> {
  const files = new Map<string, string>([
    ['deepspeed/ds_z2_config.json', `${JSON.stringify(DEEPSPEED_ZERO2, null, 2)}\n`],
    ['deepspeed/ds_z3_config.json', `${JSON.stringify(DEEPSPEED_ZERO3, null, 2)}\n`],
  ]);
  if (engine === 'llamafactory') files.set('accelerate/fsdp_config.yaml', toYaml(llamaFactoryFsdpConfig()));
  else files.set('axolotl-fsdp.yaml', toYaml({ ...job.doc, ...axolotlFsdpFields(model) }, [], ['The axolotl config with FSDP (fsdp_version 2, FULL_SHARD-style resharding): axolotl train axolotl-fsdp.yaml']));
  return files;
}

function launchCommands(engine: EngineId, job: EngineJob): Array<{ title: string; command: string }> {
  if (engine === 'llamafactory') {
    return [
      { title: 'one GPU', command: `CUDA_VISIBLE_DEVICES=0 ${job.singleGpu}` },
      { title: 'data parallel on 4 GPUs (torchrun)', command: `FORCE_TORCHRUN=1 CUDA_VISIBLE_DEVICES=0,1,2,3 ${job.singleGpu}` },
      { title: 'DeepSpeed ZeRO-2', command: `FORCE_TORCHRUN=1 ${job.singleGpu} deepspeed=deepspeed/ds_z2_config.json` },
      { title: 'DeepSpeed ZeRO-3', command: `FORCE_TORCHRUN=1 ${job.singleGpu} deepspeed=deepspeed/ds_z3_config.json` },
      { title: 'FSDP (accelerate; set num_processes in the file to the GPU count)', command: `accelerate launch --config_file accelerate/fsdp_config.yaml -m llamafactory.launcher ${LLAMAFACTORY_CONFIG}` },
      { title: 'two nodes (run on each, NODE_RANK 0 and 1)', command: `FORCE_TORCHRUN=1 NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 ${job.singleGpu}` },
    ];
  }
  return [
    { title: 'one GPU', command: `CUDA_VISIBLE_DEVICES=0 ${job.singleGpu}` },
    { title: 'data parallel on 4 GPUs (accelerate)', command: `CUDA_VISIBLE_DEVICES=0,1,2,3 accelerate launch -m axolotl.cli.train ${AXOLOTL_CONFIG}` },
    { title: 'DeepSpeed ZeRO-2', command: `${job.singleGpu} --deepspeed deepspeed/ds_z2_config.json` },
    { title: 'DeepSpeed ZeRO-3', command: `${job.singleGpu} --deepspeed deepspeed/ds_z3_config.json` },
    { title: 'FSDP', command: 'axolotl train axolotl-fsdp.yaml' },
  ];
}

function jobReadme(r: ExportJobResult, config: FinetuneConfig): string {
  const engine = ENGINE_NAMES[r.engine];
  const lines = [
    `# ${engine} job: ${config.method} on ${r.model}`,
    '',
    `Written by Lowrank Studio from ${r.manifest.runId ? `run ${r.manifest.runId}` : 'a config file'} on ${r.manifest.createdAt}.`,
    `Dataset: ${r.datasetFile} (${r.records} records${r.skipped ? `, ${r.skipped} bad records left out` : ''}).`,
    r.modelIsHubId ? `Base model: \`${r.model}\` from the Hugging Face Hub.` : `Base model: the local folder \`${r.model}\`: copy it to the GPU machine and change the path in ${r.configFile}.`,
    '',
    '## Launch (from this folder)',
    '',
  ];
  for (const c of r.commands) lines.push(`${c.title}:`, '', '```sh', c.command, '```', '');
  lines.push(
    'With N GPUs the global batch is N times the per-GPU batch; divide `gradient_accumulation_steps` by N to keep the run\'s batch.',
    '',
    '## Memory per GPU (Lowrank Studio\'s estimator)',
    '',
  );
  if (r.memory) {
    lines.push('| strategy | GPUs | per GPU |', '|---|---|---|');
    for (const m of r.memory) lines.push(`| ${STRATEGY_NAMES[m.strategy]} | ${m.gpus} | ${formatBytes(m.bytes)} |`);
    lines.push('', 'bf16 base (or int8/NF4 as the run chose), float32 trained tensors, gradients and optimizer state, activations with every layer checkpointed; CUDA\'s context (~0.5–1 GB) comes on top.', '');
  } else {
    lines.push(r.memoryNote ?? '', '');
  }
  lines.push(
    '## Bring the result back',
    '',
    '```sh',
    `lowrank import --adapter ${path.join(r.dir, r.manifest.resultDir)}`,
    '```',
    '',
    `Copy the engine's ${r.manifest.outputDir}/ folder back into this job folder first. The import finds the base model, the dataset and the engine's log (${r.engine === 'llamafactory' ? `${r.manifest.outputDir}/trainer_log.jsonl` : `the newest ${r.manifest.outputDir}/checkpoint-N/trainer_state.json`}) from lowrank-job.json; \`--base\`, \`--data\` and \`--logs\` override them.`,
    '',
    '## What each setting of the run became',
    '',
    '| setting | field | note |',
    '|---|---|---|',
  );
  for (const m of r.mappings) lines.push(`| ${m.setting} | ${m.fields.length ? m.fields.map((f) => `\`${f}\``).join(', ') : '—'} | ${(m.note ?? '').replaceAll('|', '\\|')} |`);
  return `${lines.join('\n')}\n`;
}
