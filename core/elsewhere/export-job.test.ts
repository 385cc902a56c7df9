/**
 * Job folders for LLaMA-Factory and axolotl, one row per method and engine: the YAML parses, every
 * field is one the engine defines (test/fixtures/engine-arguments.json, taken from LLaMA-Factory's
 * hparams dataclasses, transformers' TrainingArguments and axolotl's config schema) with a value
 * of its annotated type, each setting of the run lands in the field written by hand below, every
 * setting is either carried or has its reason, and the dataset is copied and registered the way
 * the engine's docs describe. Methods the engines lack are refused before anything is written.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { load } from 'js-yaml';
import { isLowrankError } from '../errors.ts';
import { listMethods } from '../methods/index.ts';
import { FINETUNE_DEFAULTS, type FinetuneConfig } from '../train/finetune.ts';
import { BUNDLED_MODEL_DIR, RESOURCES_DIR } from '../resources.ts';
import { parameterCount, parseModelConfig } from '../models/config.ts';
import { readModelConfig } from '../io/hf-folder.ts';
import { exportJob, JOB_MANIFEST, type ExportJobResult } from './export-job.ts';
import { JOB_METHODS, type EngineId, type JobMethod } from './job-spec.ts';
import { PYYAML_FLOAT } from './yaml.ts';
import { bytesPerGpu, gpuMemoryTerms } from './gpu-memory.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-export-job-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
const DATA = path.join(RESOURCES_DIR, 'datasets', 'review-sentiment.jsonl');
/** The engines' argument definitions: field -> its Python annotation (see the file's _source). */
const definitions = JSON.parse(fs.readFileSync(path.join(import.meta.dirname, '..', '..', 'test', 'fixtures', 'engine-arguments.json'), 'utf8')) as Record<string, Record<string, string>>;

const PARAMS: Record<JobMethod, Record<string, number | boolean | string>> = {
  lora: { rank: 12, alpha: 24, dropout: 0.1 },
  rslora: { rank: 12, alpha: 24, dropout: 0.1 },
  dora: { rank: 12, alpha: 24, dropout: 0.1 },
  loraplus: { rank: 12, alpha: 24, dropout: 0.1, loraplus_lr_ratio: 8 },
  pissa: { rank: 12, alpha: 12, dropout: 0, svd: 'randomized', svd_niter: 3 },
  galore: { rank: 32, update_proj_gap: 50, scale: 0.5, proj_type: 'right' },
  full: {},
};

function runConfig(method: JobMethod): FinetuneConfig {
  return {
    ...FINETUNE_DEFAULTS, model: BUNDLED_MODEL_DIR, data: DATA, method, params: PARAMS[method],
    targets: method === 'galore' ? 'all-linear' : ['q_proj', 'v_proj'], steps: 123, epochs: null, batchSize: 6, seqLen: 192, lr: 3e-4,
    schedule: 'constant', warmupSteps: 7, weightDecay: 0.01, clipNorm: 0.5, gradientAccumulation: 3, seed: 11, evalEvery: 17,
    checkpointEvery: 19, validation: 0.2, trainOnPrompt: true, name: 'handover', baseDtype: method === 'lora' ? 'nf4' : 'auto', gradientCheckpointing: 'off',
  };
}

/** What each engine's config must say for a run, written from the engines' docs (not from the code under test). */
function expectedFields(engine: EngineId, method: JobMethod): Record<string, unknown> {
  const adapter = method !== 'galore' && method !== 'full';
  if (engine === 'llamafactory') {
    return {
      model_name_or_path: BUNDLED_MODEL_DIR, stage: 'sft', do_train: true, finetuning_type: adapter ? 'lora' : 'full',
      dataset: 'lowrank_run', dataset_dir: 'data', cutoff_len: 192, train_on_prompt: true, output_dir: 'output', save_steps: 19,
      per_device_train_batch_size: 6, gradient_accumulation_steps: 3, learning_rate: 3e-4, max_steps: 123,
      lr_scheduler_type: 'constant_with_warmup', warmup_steps: 7, weight_decay: 0.01, max_grad_norm: 0.5, seed: 11, bf16: true,
      val_size: 0.2, eval_strategy: 'steps', eval_steps: 17, run_name: 'handover', disable_gradient_checkpointing: true,
      ...(adapter ? { lora_target: 'q_proj,v_proj', lora_rank: 12, lora_alpha: method === 'pissa' ? 12 : 24, lora_dropout: method === 'pissa' ? 0 : 0.1 } : {}),
      ...{
        lora: { use_rslora: false, quantization_bit: 4, quantization_type: 'nf4', double_quantization: false },
        rslora: { use_rslora: true },
        dora: { use_dora: true, use_rslora: false },
        loraplus: { loraplus_lr_ratio: 8 },
        pissa: { pissa_init: true, pissa_iter: 3, pissa_convert: true },
        galore: { use_galore: true, galore_target: 'all', galore_rank: 32, galore_update_interval: 50, galore_scale: 0.5, galore_proj_type: 'right' },
        full: {},
      }[method],
    };
  }
  return {
    base_model: BUNDLED_MODEL_DIR, sequence_len: 192, train_on_inputs: true, output_dir: 'output', save_steps: 19, micro_batch_size: 6,
    gradient_accumulation_steps: 3, learning_rate: 3e-4, max_steps: 123, lr_scheduler: 'constant_with_warmup', warmup_steps: 7,
    weight_decay: 0.01, max_grad_norm: 0.5, seed: 11, val_set_size: 0.2, eval_steps: 17, gradient_checkpointing: false,
    chat_template: 'tokenizer_default',
    datasets: [{ path: 'data/review-sentiment.jsonl', ds_type: 'json', type: 'chat_template', field_messages: 'messages', message_property_mappings: { role: 'role', content: 'content' } }],
    ...(adapter ? { lora_target_modules: ['q_proj', 'v_proj'], lora_r: 12, lora_alpha: method === 'pissa' ? 12 : 24, lora_dropout: method === 'pissa' ? 0 : 0.1 } : {}),
    ...{
      lora: { adapter: 'qlora', load_in_4bit: true, peft_use_rslora: false },
      rslora: { adapter: 'lora', peft_use_rslora: true },
      dora: { adapter: 'lora', peft_use_dora: true },
      loraplus: { adapter: 'lora', loraplus_lr_ratio: 8 },
      pissa: { adapter: 'lora', peft_init_lora_weights: 'pissa_niter_3' },
      galore: { optimizer: 'galore_adamw', optim_target_modules: 'all_linear', optim_args: { rank: 32, update_proj_gap: 50, scale: 0.5, proj_type: 'right' } },
      full: {},
    }[method],
  };
}

/** Whether a YAML value fits a Python annotation from the engine's source. */
function fitsAnnotation(value: unknown, annotation: string): boolean {
  const kinds = annotation.replace(/[()]/g, '').split('|').map((k) => k.trim());
  return kinds.some((k) => {
    if (k === 'None') return value === null;
    if (k === 'int' || k === 'PositiveInt') return Number.isInteger(value);
    if (k === 'float') return typeof value === 'number';
    if (k === 'bool') return typeof value === 'boolean';
    if (k === 'str') return typeof value === 'string';
    if (k.startsWith('Literal[')) return k.slice(8, -1).split(',').map((s) => JSON.parse(s.trim())).includes(value);
    if (k.startsWith('list[')) return Array.isArray(value);
    if (k.startsWith('dict[') || k === 'dict') return typeof value === 'object' && value !== null && !Array.isArray(value);
    // Enums and models (QuantizationMethod, CustomSupportedOptimizers, FSDPConfig): strings or objects by value.
    return /^[A-Z]/.test(k) && (typeof value === 'string' || (typeof value === 'object' && value !== null));
  });
}

const results = new Map<string, { result: ExportJobResult; doc: Record<string, unknown>; text: string }>();
async function job(engine: EngineId, method: JobMethod) {
  const key = `${engine}-${method}`;
  if (!results.has(key)) {
    const result = await exportJob(null, { engine, out: path.join(root, key), config: runConfig(method) });
    const text = fs.readFileSync(path.join(result.dir, result.configFile), 'utf8');
    results.set(key, { result, doc: load(text) as Record<string, unknown>, text });
  }
  return results.get(key)!;
}

const table = (['llamafactory', 'axolotl'] as const).flatMap((engine) => JOB_METHODS.map((method) => [engine, method] as const));

describe.each(table)('%s job for %s', (engine, method) => {
  const defined = definitions[engine];

  it('parses, and every field is one the engine defines, with a value of its type', async () => {
    const { doc } = await job(engine, method);
    expect(Object.keys(doc).length).toBeGreaterThan(15);
    for (const [field, value] of Object.entries(doc)) {
      expect(defined[field], `${field} is not a field of ${engine}`).toBeDefined();
      expect(fitsAnnotation(value, defined[field]), `${field} = ${JSON.stringify(value)} does not fit ${defined[field]}`).toBe(true);
    }
    if (engine === 'axolotl') {
      for (const entry of doc.datasets as Array<Record<string, unknown>>) {
        for (const field of Object.keys(entry)) expect(definitions.axolotl_dataset[field], `datasets[].${field}`).toBeDefined();
      }
    }
  });

  it("carries the run's settings into the engine's fields", async () => {
    const { doc } = await job(engine, method);
    expect(doc).toMatchObject(expectedFields(engine, method));
  });

  it('accounts for every setting of the run: carried, or the reason it is not', async () => {
    const { result } = await job(engine, method);
    const config = runConfig(method);
    const settings = [...Object.keys(config).filter((k) => k !== 'params'), ...Object.keys(result.manifest.config.params).map((p) => `params.${p}`)];
    const accounted = new Map(result.mappings.map((m) => [m.setting, m]));
    for (const setting of settings) {
      const m = accounted.get(setting);
      expect(m, `setting ${setting} is not accounted for`).toBeDefined();
      if (m!.fields.length === 0) expect(m!.note, `setting ${setting} is dropped without a reason`).toMatch(/\w{4}/);
    }
  });

  it('writes floats PyYAML reads as floats', async () => {
    const { text } = await job(engine, method);
    const floats = [...text.matchAll(/:\s+(-?\d[\d.eE+-]*)$/gm)].map((m) => m[1]).filter((v) => !/^-?\d+$/.test(v));
    expect(floats.length).toBeGreaterThan(2);
    for (const v of floats) expect(v, `${v} would be read as a string by PyYAML`).toMatch(PYYAML_FLOAT);
  });

  it('copies the dataset and registers it as the engine documents', async () => {
    const { result, doc } = await job(engine, method);
    const rows = fs.readFileSync(path.join(result.dir, result.datasetFile), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const source = fs.readFileSync(DATA, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(rows.length).toBe(source.length);
    expect(rows[0]).toEqual({ messages: source[0].messages });
    if (engine === 'llamafactory') {
      const info = JSON.parse(fs.readFileSync(path.join(result.dir, 'data', 'dataset_info.json'), 'utf8'));
      const entry = info[doc.dataset as string];
      expect(entry).toEqual({
        file_name: path.basename(result.datasetFile), formatting: 'sharegpt', columns: { messages: 'messages' },
        tags: { role_tag: 'role', content_tag: 'content', user_tag: 'user', assistant_tag: 'assistant', system_tag: 'system' },
      });
    } else {
      expect(fs.existsSync(path.join(result.dir, (doc.datasets as Array<{ path: string }>)[0].path))).toBe(true);
    }
  });
});

describe('job folder', () => {
  it('holds the DeepSpeed ZeRO-2/3 and FSDP files, launch commands and a memory table that grows with the model and shrinks with sharding', async () => {
    const { result } = await job('llamafactory', 'full');
    for (const file of ['deepspeed/ds_z2_config.json', 'deepspeed/ds_z3_config.json', 'accelerate/fsdp_config.yaml', 'README.md', JOB_MANIFEST]) {
      expect(fs.existsSync(path.join(result.dir, file)), file).toBe(true);
    }
    expect(JSON.parse(fs.readFileSync(path.join(result.dir, 'deepspeed/ds_z3_config.json'), 'utf8')).zero_optimization.stage).toBe(3);
    expect((load(fs.readFileSync(path.join(result.dir, 'accelerate/fsdp_config.yaml'), 'utf8')) as Record<string, unknown>).distributed_type).toBe('FSDP');
    const readme = fs.readFileSync(path.join(result.dir, 'README.md'), 'utf8');
    for (const c of ['llamafactory-cli train llamafactory.yaml', 'FORCE_TORCHRUN=1', 'deepspeed=deepspeed/ds_z2_config.json', 'deepspeed=deepspeed/ds_z3_config.json', 'accelerate launch --config_file accelerate/fsdp_config.yaml']) {
      expect(readme).toContain(c);
    }
    const bytes = (strategy: string, gpus: number) => result.memory!.find((m) => m.strategy === strategy && m.gpus === gpus)!.bytes;
    // Full fine-tuning: float32 weights, gradients and two Adam moments, 16 bytes per parameter, before activations.
    const parameters = parameterCount(parseModelConfig(readModelConfig(BUNDLED_MODEL_DIR) as Parameters<typeof parseModelConfig>[0]));
    expect(bytes('single', 1)).toBeGreaterThan(16 * parameters);
    expect(bytes('single', 1)).toBeLessThan(16 * parameters + 512 * 1024 ** 2);
    expect(bytes('zero2', 4)).toBeLessThan(bytes('ddp', 4));
    expect(bytes('zero3', 4)).toBeLessThan(bytes('zero2', 4));
    const dora = (await job('llamafactory', 'dora')).result.memory!;
    expect(dora.find((m) => m.strategy === 'single')!.bytes).toBeLessThan(bytes('single', 1));
    const axolotl = (await job('axolotl', 'lora')).result;
    expect(fs.existsSync(path.join(axolotl.dir, 'axolotl-fsdp.yaml'))).toBe(true);
    expect((load(fs.readFileSync(path.join(axolotl.dir, 'axolotl-fsdp.yaml'), 'utf8')) as Record<string, unknown>).fsdp_version).toBe(2);
  });

  it("counts an adapter's trained values from the model's shapes, and its bytes by precision", () => {
    const model = parseModelConfig(readModelConfig(BUNDLED_MODEL_DIR) as Parameters<typeof parseModelConfig>[0]);
    // brown-llama: 4 layers, hidden 256, q_proj [256, 256], v_proj [128, 256] (4 KV heads of 32).
    const lora = gpuMemoryTerms(model, runConfig('rslora'));
    expect(lora.trainableParameters).toBe(4 * 12 * ((256 + 256) + (256 + 128)));
    const dora = gpuMemoryTerms(model, runConfig('dora'));
    expect(dora.trainableParameters).toBe(lora.trainableParameters + 4 * (256 + 128));
    expect(lora.weightsBytes).toBe(2 * parameterCount(model));
    expect(gpuMemoryTerms(model, runConfig('lora')).weightsBytes).toBeCloseTo((0.5 + 4 / 64) * parameterCount(model), 3);
    expect(lora.gradientBytes).toBe(4 * lora.trainableParameters);
    expect(lora.optimizerBytes).toBe(8 * lora.trainableParameters);
    const full = gpuMemoryTerms(model, runConfig('full'));
    expect([full.weightsBytes, full.gradientBytes, full.optimizerBytes]).toEqual([4, 4, 8].map((b) => b * parameterCount(model)));
    // GaLore's moments live in the projected space: less optimizer state than AdamW's 8 bytes per weight.
    expect(gpuMemoryTerms(model, runConfig('galore')).optimizerBytes).toBeLessThan(full.optimizerBytes);
    const fsdp = bytesPerGpu(full, 'fsdp', 4);
    expect(fsdp).toBeCloseTo((full.weightsBytes + full.gradientBytes + full.optimizerBytes) / 4 + full.activationBytes, 3);
    expect(bytesPerGpu(full, 'zero2', 4)).toBeCloseTo(full.weightsBytes + (full.gradientBytes + full.optimizerBytes) / 4 + full.activationBytes, 3);
  });

  it('gives the model as a Hub id when the run names one, and as a Hub id for a folder in the Hugging Face cache', async () => {
    const cache = path.join(root, 'hub', 'models--HuggingFaceTB--SmolLM2-135M', 'snapshots', 'abc123');
    fs.mkdirSync(path.dirname(cache), { recursive: true });
    fs.cpSync(BUNDLED_MODEL_DIR, cache, { recursive: true });
    const cached = await exportJob(null, { engine: 'axolotl', out: path.join(root, 'cached'), config: { ...runConfig('rslora'), model: cache } });
    expect(cached.model).toBe('HuggingFaceTB/SmolLM2-135M');
    expect(cached.modelIsHubId).toBe(true);
    expect(cached.memory).not.toBeNull();
    // A run that names its model by Hub id (not downloaded here): the id goes in as it is; its shapes are unknown here.
    const named = await exportJob(null, { engine: 'llamafactory', out: path.join(root, 'named'), config: { ...runConfig('dora'), model: 'Qwen/Qwen2.5-7B-Instruct' } });
    expect([named.model, named.modelIsHubId, named.memory]).toEqual(['Qwen/Qwen2.5-7B-Instruct', true, null]);
    expect(named.memoryNote).toMatch(/not a local folder/);
    expect((load(fs.readFileSync(path.join(named.dir, 'llamafactory.yaml'), 'utf8')) as Record<string, unknown>).model_name_or_path).toBe('Qwen/Qwen2.5-7B-Instruct');
    expect(fs.readFileSync(path.join(named.dir, 'README.md'), 'utf8')).toContain('`Qwen/Qwen2.5-7B-Instruct` from the Hugging Face Hub');
  });
});

describe('refusals', () => {
  const unsupported = listMethods().map((m) => m.id).filter((id) => !(JOB_METHODS as readonly string[]).includes(id));

  it.each(unsupported)('refuses %s with the reason and writes nothing', async (method) => {
    const out = path.join(root, `refused-${method}`);
    for (const engine of ['llamafactory', 'axolotl'] as const) {
      const error = await exportJob(null, { engine, out, config: { ...runConfig('lora'), method, params: {} } }).then(() => null, (e: unknown) => e);
      expect(isLowrankError(error) && error.code).toBe('BAD_ARGUMENT');
      expect((error as Error).message).toContain(`method ${method}`);
      expect((error as Error).message).toContain(engine === 'llamafactory' ? 'LLaMA-Factory' : 'axolotl');
      expect(fs.existsSync(out)).toBe(false);
    }
  });

  it('refuses a config file with a wrong field, naming it', async () => {
    const error = await exportJob(null, { engine: 'axolotl', out: path.join(root, 'bad-config'), config: { ...runConfig('lora'), batchSize: 'eight' as unknown as number } }).catch((e: unknown) => e);
    expect(isLowrankError(error) && error.code).toBe('BAD_CONFIG');
    expect((error as Error).message).toMatch(/^config: batchSize: /);
    expect(fs.existsSync(path.join(root, 'bad-config'))).toBe(false);
  });

  it('refuses a non-integer alpha, which both engines type as int', async () => {
    const error = await exportJob(null, { engine: 'llamafactory', out: path.join(root, 'alpha'), config: { ...runConfig('lora'), params: { ...PARAMS.lora, alpha: 2.5 } } }).catch((e: unknown) => e);
    expect((error as Error).message).toMatch(/alpha = 2.5: LLaMA-Factory's lora_alpha is an integer/);
  });
});

describe("GaLore's default rank_ratio", () => {
  it('becomes one rank, ratio × the hidden size, for both engines; without the model here a fixed rank is asked for', async () => {
    const hidden = (JSON.parse(fs.readFileSync(path.join(BUNDLED_MODEL_DIR, 'config.json'), 'utf8')) as { hidden_size: number }).hidden_size;
    const config = { ...runConfig('galore'), params: { rank: 0, rank_ratio: 0.25, update_proj_gap: 50, scale: 0.5, proj_type: 'right' } };
    const lf = await exportJob(null, { engine: 'llamafactory', out: path.join(root, 'galore-ratio-lf'), config });
    const lfDoc = load(fs.readFileSync(path.join(lf.dir, lf.configFile), 'utf8')) as Record<string, unknown>;
    expect(lfDoc.galore_rank).toBe(Math.round(0.25 * hidden));
    expect(lf.mappings.find((m) => m.setting === 'params.rank_ratio')?.fields).toEqual(['galore_rank']);
    const ax = await exportJob(null, { engine: 'axolotl', out: path.join(root, 'galore-ratio-ax'), config });
    const axDoc = load(fs.readFileSync(path.join(ax.dir, ax.configFile), 'utf8')) as { optim_args: { rank: number } };
    expect(axDoc.optim_args.rank).toBe(Math.round(0.25 * hidden));
    await expect(exportJob(null, { engine: 'llamafactory', out: path.join(root, 'galore-ratio-hub'), config: { ...config, model: 'someone/not-here' } }))
      .rejects.toThrow(/rank_ratio 0.25 needs the model's hidden size.*--param rank=N/);
  });
});
