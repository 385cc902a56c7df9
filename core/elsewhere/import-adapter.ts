/**
 * `lowrank import --adapter DIR [--base DIR] [--logs FILE]`: a PEFT LoRA/DoRA adapter trained
 * elsewhere becomes a fine-tuning run in the store, so it is compared, evaluated, merged, exported
 * and tried in the playground like a run trained here.
 *
 * The run's config is the adapter's (adapter_config.json: r, lora_alpha, lora_dropout, use_rslora,
 * use_dora, the adapted modules), over the settings of the job it came from when the adapter sits
 * in a job folder written by `lowrank export-job` (lowrank-job.json). The adapter's tensors are
 * written as the run's checkpoint through the method's own attach (the same path `--adapter`
 * training takes), so every run tool loads it as it loads a local run's. The engine's log, when
 * given, becomes the run's loss curve.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { readPeftAdapter, type PeftAdapter } from '../export/peft.ts';
import { parseModelConfig } from '../models/config.ts';
import { readModelConfig } from '../io/hf-folder.ts';
import { expectedWeights } from '../models/config.ts';
import { getMethod, resolveParams } from '../methods/index.ts';
import { optimizerFor } from '../optim/registry.ts';
import { saveTrainingCheckpoint } from '../train/checkpoint.ts';
import { FINETUNE_DEFAULTS, prepareRun, type FinetuneConfig } from '../train/finetune.ts';
import type { RunStore } from '../store/store.ts';
import type { JsonObject, RunOrigin } from '../store/types.ts';
import { JOB_MANIFEST, type JobManifest } from './export-job.ts';
import { findEngineLog, logMetrics, readTrainerLog, type TrainerLogEntry } from './trainer-log.ts';

export interface ImportRequest {
  adapter: string;
  base?: string;
  logs?: string;
  data?: string;
  name?: string;
}

export interface ImportResult {
  runId: string;
  method: string;
  steps: number;
  /** False when no dataset is known: the run has its curve and adapter, but no checkpoint to export or evaluate. */
  checkpoint: boolean;
  base: string;
  jobDir: string | null;
}

/** lowrank-job.json in the adapter's folder or up to three folders above it (output/, output/pissa_converted/). */
export function findJobManifest(adapterDir: string): { dir: string; manifest: JobManifest } | null {
  let dir = path.resolve(adapterDir);
  for (let i = 0; i < 4; i++) {
    const file = path.join(dir, JOB_MANIFEST);
    if (fs.existsSync(file)) return { dir, manifest: JSON.parse(fs.readFileSync(file, 'utf8')) as JobManifest };
    const parent = path.dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return null;
}

/** The run settings an adapter implies: method, its parameters and targets, over `base` settings. */
export function adapterRunConfig(adapter: PeftAdapter, modelDir: string, data: string, settings: FinetuneConfig | null): FinetuneConfig {
  const c = adapter.config;
  const where = path.join(adapter.dir, 'adapter_config.json');
  for (const field of ['rank_pattern', 'alpha_pattern']) {
    const v = c[field];
    if (v && typeof v === 'object' && Object.keys(v).length > 0) {
      throw new LowrankError('BAD_CONFIG', `${where}: ${field} gives some modules their own rank or α, which a run here cannot hold; use the adapter directly with --adapter`);
    }
  }
  if (typeof c.init_lora_weights === 'string' && c.init_lora_weights.startsWith('pissa')) {
    throw new LowrankError('BAD_CONFIG', `${where}: init_lora_weights = "${c.init_lora_weights}": a PiSSA adapter as trained applies to the residual base, not ${modelDir}; convert it first (LLaMA-Factory: pissa_convert: true writes pissa_converted/; peft: save_pretrained(..., path_initial_model_for_weight_conversion=...))`);
  }
  // The adapted modules must be the same short names in every layer: that is what a run's targets mean here.
  const modulePaths = [...adapter.modules.keys()];
  const short = [...new Set(modulePaths.map((m) => m.slice(m.lastIndexOf('.') + 1)))];
  const model = parseModelConfig(readModelConfig(modelDir) as Parameters<typeof parseModelConfig>[0], path.join(modelDir, 'config.json'));
  const expected = [...expectedWeights(model).keys()].filter((w) => short.some((s) => w.endsWith(`.${s}.weight`))).map((w) => w.slice(0, -'.weight'.length));
  const missing = expected.filter((m) => !adapter.modules.has(m));
  const unknown = modulePaths.filter((m) => !expected.includes(m));
  if (unknown.length) throw new LowrankError('SHAPE_MISMATCH', `${where}: module ${unknown[0]} is not a linear layer of ${modelDir}; is --base the model it was trained on?`);
  if (missing.length) throw new LowrankError('BAD_CONFIG', `${where}: the adapter leaves out ${missing[0]} (${missing.length} modules in all) while adapting the same layer type elsewhere; only adapters of whole module types can become a run here`);

  const trainedAs = settings?.method;
  const method = adapter.useDora ? 'dora' : trainedAs === 'loraplus' || trainedAs === 'rslora' || trainedAs === 'lora' ? trainedAs : c.use_rslora === true ? 'rslora' : 'lora';
  const given: Record<string, number | boolean | string> = {
    rank: c.r as number,
    alpha: c.lora_alpha as number,
    dropout: typeof c.lora_dropout === 'number' ? c.lora_dropout : 0,
    use_rslora: c.use_rslora === true,
  };
  if (method === 'loraplus' && settings) given.loraplus_lr_ratio = settings.params.loraplus_lr_ratio as number;
  const params = resolveParams(method, getMethod(method).schema, given);
  return { ...FINETUNE_DEFAULTS, ...(settings ?? {}), model: path.resolve(modelDir), data, method, params, targets: short, adapter: path.resolve(adapter.dir) };
}

/**
 * Writes the adapter as run `runId`'s checkpoint at `step`: the method attached with the adapter as
 * its starting values (the way `--adapter` training starts), its trainable tensors saved.
 */
export async function checkpointFromAdapter(store: RunStore, runId: string, config: FinetuneConfig, step: number): Promise<number> {
  const prepared = await prepareRun(config);
  try {
    const dir = path.join(store.runDir(runId), 'checkpoint');
    const optimizer = optimizerFor(prepared.attached);
    try {
      saveTrainingCheckpoint(dir, step, prepared.attached.trainable, optimizer, { importedFrom: config.adapter });
    } finally {
      optimizer.dispose();
    }
    store.addCheckpoint(runId, { step, path: dir });
    return prepared.attached.trainableParameterCount();
  } finally {
    prepared.attached.detach();
    prepared.model.dispose();
  }
}

/** The final train and validation losses of a log (NaN-free), for the run's summary columns. */
export function finalLosses(entries: readonly TrainerLogEntry[]): { train: number | null; val: number | null } {
  const last = (pick: (e: TrainerLogEntry) => number | null) => {
    for (let i = entries.length - 1; i >= 0; i--) {
      const v = pick(entries[i]);
      if (v !== null && Number.isFinite(v)) return v;
    }
    return null;
  };
  return { train: last((e) => e.loss), val: last((e) => e.evalLoss) };
}

export async function importAdapter(store: RunStore, request: ImportRequest, onProgress: (message: string) => void = () => {}, origin: RunOrigin = 'imported'): Promise<ImportResult> {
  const adapter = readPeftAdapter(request.adapter);
  const job = findJobManifest(request.adapter);
  const named = typeof adapter.config.base_model_name_or_path === 'string' ? adapter.config.base_model_name_or_path : null;
  const base = request.base ?? job?.manifest.config.model ?? named;
  if (!base || !fs.existsSync(path.join(base, 'config.json'))) {
    throw new LowrankError('BAD_ARGUMENT', `--base DIR is required: ${base ? `the adapter names "${base}", which is not a local model folder` : 'the adapter names no base model'}; pass the folder of the model it was trained on`);
  }
  // Without --logs, an adapter in a job folder brings the log its engine left in the output folder.
  const logs = request.logs ?? (job ? findEngineLog(path.join(job.dir, job.manifest.outputDir)) : null);
  const entries = logs ? readTrainerLog(logs) : [];
  const data = request.data ?? (job && fs.existsSync(job.manifest.config.data) ? job.manifest.config.data : null);
  const config = adapterRunConfig(adapter, base, data ?? '', job?.manifest.config ?? null);
  const steps = entries.length ? entries[entries.length - 1].step : 0;
  const losses = finalLosses(entries);
  const elsewhere: JsonObject = { engine: job?.manifest.engine ?? null, adapter: path.resolve(request.adapter), jobDir: job?.dir ?? null, trainedAs: job?.manifest.config.method ?? config.method };
  const run = store.createRun({
    method: config.method,
    kind: 'finetune',
    config: { ...(config as unknown as JsonObject), elsewhere },
    name: request.name ?? `${path.basename(path.resolve(request.adapter))} (imported)`,
    baseModelPath: config.model,
    datasetPath: data,
    origin,
    finalTrainLoss: losses.train,
    finalValLoss: losses.val,
  });
  store.startRun(run.id);
  try {
    if (entries.length) store.appendMetrics(run.id, logMetrics(entries));
    let trainable: number | null = null;
    if (data) {
      onProgress('writing the adapter as the run\'s checkpoint');
      trainable = await checkpointFromAdapter(store, run.id, config, steps);
    } else {
      store.addLog(run.id, 'warn', 'no dataset known (--data FILE): the run keeps its loss curve and adapter, but has no checkpoint to export, evaluate or try in the playground');
    }
    store.addArtifact(run.id, { kind: 'peft', path: path.resolve(request.adapter), formatDetail: 'imported' });
    store.addLog(run.id, 'info', `imported ${path.resolve(request.adapter)}${logs ? ` with the log ${path.resolve(logs)}` : ''}`);
    store.finishRun(run.id, { status: 'completed', trainableParams: trainable });
  } catch (e) {
    store.failRun(run.id, { code: e instanceof LowrankError ? e.code : 'INTERNAL', message: e instanceof Error ? e.message : String(e) });
    throw e;
  }
  return { runId: run.id, method: config.method, steps, checkpoint: data !== null, base: config.model, jobDir: job?.dir ?? null };
}
