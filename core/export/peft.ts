/**
 * PEFT LoRA adapters (huggingface/peft, `tuners/lora`): `adapter_config.json` + `adapter_model.safetensors`
 * with keys `base_model.model.<module path>.lora_A.weight` [r, in], `.lora_B.weight` [out, r] and, for
 * DoRA, `.lora_magnitude_vector` [out]. The update is W x + s·B·A x with s = alpha/r (alpha/√r with
 * rsLoRA; Hu et al. arXiv:2106.09685, Kalajdzievski arXiv:2312.03732); DoRA (Liu et al.
 * arXiv:2402.09353, Eq. 5) rescales each output row: m / ‖W + s·B·A‖_row · (W + s·B·A) x.
 * Writing, reading back with checks, and attaching a read adapter to a loaded model.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import type { CausalLM, LinearAdapter } from '../models/causal-lm.ts';
import { isJsonObject, readJsonFile } from '../io/hf-folder.ts';
import { SafetensorsFile, refusePickle, writeSafetensors } from '../io/safetensors.ts';
import { withFreshDestination } from './destination.ts';
import { toHostTensor, type HostTensor, type WeightValue } from './weights.ts';

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';
const KEY_PREFIX = 'base_model.model.';
const KEY_PATTERN = /^base_model\.model\.(.+)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector(?:\.weight)?)$/;

/**
 * The fields peft 0.18 writes for a LoraConfig (`save_pretrained`: every dataclass field), at their
 * defaults. peft >= 0.14 ignores fields it does not know, so the set is safe for newer versions too.
 */
const PEFT_LORA_DEFAULTS: Record<string, unknown> = {
  alora_invocation_tokens: null,
  alpha_pattern: {},
  arrow_config: null,
  auto_mapping: null,
  base_model_name_or_path: null,
  bias: 'none',
  corda_config: null,
  ensure_weight_tying: false,
  eva_config: null,
  exclude_modules: null,
  fan_in_fan_out: false,
  inference_mode: true,
  init_lora_weights: true,
  layer_replication: null,
  layers_pattern: null,
  layers_to_transform: null,
  loftq_config: {},
  lora_alpha: 8,
  lora_bias: false,
  lora_dropout: 0.0,
  megatron_config: null,
  megatron_core: 'megatron.core',
  modules_to_save: null,
  peft_type: 'LORA',
  qalora_group_size: 16,
  r: 8,
  rank_pattern: {},
  revision: null,
  target_modules: null,
  target_parameters: null,
  task_type: 'CAUSAL_LM',
  trainable_token_indices: null,
  use_dora: false,
  use_qalora: false,
  use_rslora: false,
};

export interface PeftAdapterToWrite {
  config: Record<string, unknown>;
  /** Keyed as peft saves them (`base_model.model.<path>.lora_A.weight`, ...). */
  tensors: Map<string, WeightValue>;
}

/** One adapted module of a read adapter. */
export interface PeftModule {
  A: HostTensor; // [r, in]
  B: HostTensor; // [out, r]
  magnitude?: HostTensor; // [out], DoRA only
  r: number;
  scaling: number;
}

export interface PeftAdapter {
  dir: string;
  /** adapter_config.json as read. */
  config: Record<string, unknown>;
  useDora: boolean;
  /** Every tensor, by its key in the file. */
  tensors: Map<string, HostTensor>;
  /** Module path (`model.layers.0.self_attn.q_proj`) -> its tensors and scaling. */
  modules: Map<string, PeftModule>;
}

/** Writes `out/adapter_config.json` + `out/adapter_model.safetensors`; `out` must not exist yet. */
export async function writePeftAdapter(out: string, adapter: PeftAdapterToWrite, baseModelPath: string): Promise<void> {
  const tensors = new Map<string, HostTensor>();
  for (const [key, value] of adapter.tensors) tensors.set(key, toHostTensor(value, `adapter tensor "${key}"`));
  if (adapter.config.peft_type === 'VERA') return writeFolder(out, checkVeraAdapter({ ...adapter.config, base_model_name_or_path: baseModelPath, inference_mode: true }, tensors), tensors);
  if (adapter.config.peft_type === 'RANDLORA') return writeFolder(out, checkRandloraAdapter({ ...adapter.config, base_model_name_or_path: baseModelPath, inference_mode: true }, tensors), tensors);
  const config: Record<string, unknown> = { ...PEFT_LORA_DEFAULTS, ...adapter.config };
  config.base_model_name_or_path = baseModelPath;
  config.inference_mode = true;
  // The tensors apply to the unmodified base. An init scheme that rewrites the base on load (pissa,
  // olora, corda, ...) would corrupt it, so the written config always says the plain init.
  if (typeof config.init_lora_weights === 'string') config.init_lora_weights = true;
  if (config.target_modules === null || config.target_modules === undefined) {
    config.target_modules = [...new Set([...groupModules(tensors, 'writePeftAdapter').keys()].map((p) => p.split('.').pop()!))].sort();
  }
  // Validate by the same rules the reader applies, so nothing unreadable is ever written.
  buildModules('writePeftAdapter', parseSettings(config, 'writePeftAdapter'), tensors);

  await writeFolder(out, config, tensors);
}

async function writeFolder(out: string, config: Record<string, unknown>, tensors: Map<string, HostTensor>): Promise<void> {
  await withFreshDestination(out, (dir) => {
    // peft's save_pretrained: json.dumps(indent=2, sort_keys=True).
    const sorted = Object.fromEntries(Object.keys(config).sort().map((k) => [k, config[k]]));
    fs.writeFileSync(path.join(dir, ADAPTER_CONFIG_FILE), `${JSON.stringify(sorted, null, 2)}\n`);
    writeSafetensors(
      path.join(dir, ADAPTER_WEIGHTS_FILE),
      [...tensors].map(([name, t]) => ({ name, shape: t.shape, data: t.data, dtype: 'F32' as const })),
      { format: 'pt' },
    );
  });
}

const VERA_KEY = /^base_model\.model\.(.+)\.vera_lambda_(b|d)$/;

/**
 * A VeRA adapter as peft saves it (tuners/vera, utils/save_and_load.py): per module
 * `<path>.vera_lambda_b` [out] and `.vera_lambda_d` [r], and with save_projection the shared
 * `base_model.vera_A` [r, in_max] and `base_model.vera_B` [out_max, r]. Only written here; the
 * reader and `applyPeftAdapter` take LORA adapters (export VeRA merged to run it elsewhere here).
 */
function checkVeraAdapter(config: Record<string, unknown>, tensors: Map<string, HostTensor>): Record<string, unknown> {
  const r = config.r;
  const fail = (message: string): never => {
    throw new LowrankError('BAD_ARGUMENT', `writePeftAdapter (VERA): ${message}`);
  };
  if (!Number.isInteger(r) || (r as number) < 1) fail(`r must be a positive integer, got ${JSON.stringify(r)}`);
  if (config.save_projection !== true) fail('save_projection must be true: the projections are not torch-generated, so peft could not regenerate them');
  const a = tensors.get('base_model.vera_A');
  const b = tensors.get('base_model.vera_B');
  if (!a || !b || a.shape.length !== 2 || b.shape.length !== 2 || a.shape[0] !== r || b.shape[1] !== r) {
    fail(`base_model.vera_A [r, in_max] and base_model.vera_B [out_max, r] with r = ${String(r)} are required`);
  }
  let modules = 0;
  for (const [key, t] of tensors) {
    if (key === 'base_model.vera_A' || key === 'base_model.vera_B') continue;
    const m = VERA_KEY.exec(key);
    if (!m || t.shape.length !== 1) fail(`tensor "${key}" [${t.shape.join(', ')}] is not a vera_lambda_b/vera_lambda_d vector`);
    if (m![2] === 'd' && t.shape[0] !== r) fail(`${key} has ${t.shape[0]} entries, expected r = ${String(r)}`);
    if (m![2] === 'b' && t.shape[0]! > b!.shape[0]!) fail(`${key} has ${t.shape[0]} entries, more than vera_B's ${b!.shape[0]} rows`);
    modules++;
  }
  if (modules === 0) fail('no vera_lambda tensors');
  return config;
}

const RANDLORA_KEY = /^base_model\.model\.(.+)\.randlora_(lambda|gamma)$/;

/**
 * A RandLoRA adapter as peft saves it (tuners/randlora; utils/save_and_load.py keeps every key with
 * the `randlora_` prefix): the shared `base_model.randlora_A` [r, 1, d_buf] and
 * `base_model.randlora_B` [D_buf, N_max, r], and per module `<path>.randlora_lambda` [r, N] and
 * `.randlora_gamma` [N, d]. Only written here (export RandLoRA merged to run it elsewhere here).
 */
function checkRandloraAdapter(config: Record<string, unknown>, tensors: Map<string, HostTensor>): Record<string, unknown> {
  const r = config.r as number;
  const fail = (message: string): never => {
    throw new LowrankError('BAD_ARGUMENT', `writePeftAdapter (RANDLORA): ${message}`);
  };
  if (!Number.isInteger(r) || r < 1) fail(`r must be a positive integer, got ${JSON.stringify(config.r)}`);
  if (config.save_projection !== true) fail('save_projection must be true: the bases are not torch-generated, so peft could not regenerate them');
  const a = tensors.get('base_model.randlora_A');
  const b = tensors.get('base_model.randlora_B');
  if (!a || !b || a.shape.length !== 3 || b.shape.length !== 3 || a.shape[0] !== r || a.shape[1] !== 1 || b.shape[2] !== r) {
    fail(`base_model.randlora_A [r, 1, d] and base_model.randlora_B [D, N, r] with r = ${r} are required`);
  }
  const lambdas = new Map<string, number[]>();
  const gammas = new Map<string, number[]>();
  for (const [key, t] of tensors) {
    if (key === 'base_model.randlora_A' || key === 'base_model.randlora_B') continue;
    const m = RANDLORA_KEY.exec(key);
    if (!m || t.shape.length !== 2) fail(`tensor "${key}" [${t.shape.join(', ')}] is not a randlora_lambda/randlora_gamma matrix`);
    (m![2] === 'lambda' ? lambdas : gammas).set(m![1], t.shape);
  }
  if (lambdas.size === 0) fail('no randlora_lambda tensors');
  for (const [modulePath, [rows, n]] of lambdas) {
    const g = gammas.get(modulePath);
    if (rows !== r || !g || g[0] !== n || n > b!.shape[1]! || g[1] > a!.shape[2]!) {
      fail(`${modulePath}: randlora_lambda must be [r, N] and randlora_gamma [N, d] within the shared bases`);
    }
  }
  if (gammas.size !== lambdas.size) fail('every module needs both randlora_lambda and randlora_gamma');
  return config;
}

/** Reads and checks a PEFT LoRA/DoRA adapter folder. */
export function readPeftAdapter(dir: string): PeftAdapter {
  const configFile = path.join(dir, ADAPTER_CONFIG_FILE);
  const raw = readJsonFile(configFile, 'adapter config', `${dir} is not a PEFT adapter folder (it needs ${ADAPTER_CONFIG_FILE} and ${ADAPTER_WEIGHTS_FILE})`);
  if (!isJsonObject(raw)) throw new LowrankError('BAD_CONFIG', `${configFile}: expected a JSON object at the top level`);
  const settings = parseSettings(raw, configFile);

  const weightsFile = path.join(dir, ADAPTER_WEIGHTS_FILE);
  if (!fs.existsSync(weightsFile)) {
    const pickle = path.join(dir, 'adapter_model.bin');
    if (fs.existsSync(pickle)) refusePickle(pickle);
    throw new LowrankError('FILE_NOT_FOUND', `${weightsFile} not found: the adapter folder is incomplete`);
  }
  const file = SafetensorsFile.open(weightsFile);
  const tensors = new Map<string, HostTensor>();
  try {
    for (const [name, info] of file.tensors) tensors.set(name, { shape: info.shape, data: file.readFloat32(name) });
  } finally {
    file.close();
  }
  return { dir, config: raw, useDora: settings.useDora, tensors, modules: buildModules(weightsFile, settings, tensors) };
}

interface LoraSettings {
  r: number;
  alpha: number;
  useRslora: boolean;
  useDora: boolean;
  rankPattern: Record<string, number>;
  alphaPattern: Record<string, number>;
}

function parseSettings(config: Record<string, unknown>, where: string): LoraSettings {
  const bad = (field: string, want: string): never => {
    throw new LowrankError('BAD_CONFIG', `${where}: field "${field}" must be ${want}, got ${JSON.stringify(config[field])}`);
  };
  if (config.peft_type !== 'LORA') {
    throw new LowrankError(
      'BAD_CONFIG',
      `${where}: peft_type ${JSON.stringify(config.peft_type)} is not supported; Lowrank Studio reads LORA adapters (LoRA, rsLoRA, DoRA)`,
    );
  }
  const positiveInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0;
  if (!positiveInt(config.r)) bad('r', 'a positive integer');
  if (typeof config.lora_alpha !== 'number' || !Number.isFinite(config.lora_alpha)) bad('lora_alpha', 'a number');
  for (const flag of ['use_rslora', 'use_dora', 'fan_in_fan_out', 'lora_bias']) {
    if (config[flag] !== undefined && typeof config[flag] !== 'boolean') bad(flag, 'true or false');
  }
  const unsupported = (field: string, why: string): never => {
    throw new LowrankError('BAD_CONFIG', `${where}: ${field} = ${JSON.stringify(config[field])} is not supported (${why})`);
  };
  if (config.bias !== undefined && config.bias !== 'none') unsupported('bias', 'trained biases are not part of a LoRA adapter here; use "none"');
  if (config.lora_bias === true) unsupported('lora_bias', 'lora_B biases');
  if (Array.isArray(config.modules_to_save) && config.modules_to_save.length > 0) unsupported('modules_to_save', 'fully trained extra modules');
  if (config.layer_replication !== undefined && config.layer_replication !== null) unsupported('layer_replication', 'replicated layers');
  if (config.trainable_token_indices !== undefined && config.trainable_token_indices !== null) unsupported('trainable_token_indices', 'trained token embeddings');
  if (config.use_qalora === true) unsupported('use_qalora', 'QALoRA pools inputs');
  const pattern = (field: string): Record<string, number> => {
    const v = config[field] ?? {};
    if (!isJsonObject(v) || !Object.values(v).every((x) => typeof x === 'number')) bad(field, 'an object of numbers');
    return v as Record<string, number>;
  };
  return {
    r: config.r as number,
    alpha: config.lora_alpha as number,
    useRslora: config.use_rslora === true,
    useDora: config.use_dora === true,
    rankPattern: pattern('rank_pattern'),
    alphaPattern: pattern('alpha_pattern'),
  };
}

/** peft's get_pattern_key: the first pattern that matches the end of the module path at a dot boundary. */
function patternValue(patterns: Record<string, number>, modulePath: string): number | undefined {
  for (const [key, value] of Object.entries(patterns)) {
    let re: RegExp;
    try {
      re = new RegExp(`^(.*\\.)?(${key})$`);
    } catch {
      continue; // a Python-only regex construct; peft would apply it, but we cannot
    }
    if (re.test(modulePath)) return value;
  }
  return undefined;
}

function groupModules(tensors: Map<string, HostTensor>, where: string): Map<string, Partial<Record<'A' | 'B' | 'magnitude', HostTensor>>> {
  const modules = new Map<string, Partial<Record<'A' | 'B' | 'magnitude', HostTensor>>>();
  for (const [key, t] of tensors) {
    const m = KEY_PATTERN.exec(key);
    if (!m) {
      const hint = key.startsWith(KEY_PREFIX) ? 'only lora_A, lora_B and lora_magnitude_vector of linear layers are supported' : `keys must start with "${KEY_PREFIX}"`;
      throw new LowrankError('BAD_SAFETENSORS', `${where}: tensor "${key}" is not a LoRA tensor Lowrank Studio can use (${hint})`);
    }
    const slot = m[2] === 'lora_A.weight' ? 'A' : m[2] === 'lora_B.weight' ? 'B' : 'magnitude';
    const entry = modules.get(m[1]!) ?? {};
    entry[slot] = t;
    modules.set(m[1]!, entry);
  }
  return modules;
}

function buildModules(where: string, s: LoraSettings, tensors: Map<string, HostTensor>): Map<string, PeftModule> {
  const out = new Map<string, PeftModule>();
  for (const [modulePath, { A, B, magnitude }] of groupModules(tensors, where)) {
    const shapeOf = (t: HostTensor) => `[${t.shape.join(', ')}]`;
    if (!A || !B) throw new LowrankError('MISSING_WEIGHT', `${where}: module ${modulePath} has ${A ? 'lora_A' : 'lora_B'} but no ${A ? 'lora_B' : 'lora_A'}`);
    if (A.shape.length !== 2 || B.shape.length !== 2 || A.shape[0] !== B.shape[1]) {
      throw new LowrankError('SHAPE_MISMATCH', `${where}: module ${modulePath}: lora_A ${shapeOf(A)} and lora_B ${shapeOf(B)} are not [r, in] and [out, r]`);
    }
    const r = A.shape[0]!;
    const expectedR = patternValue(s.rankPattern, modulePath) ?? s.r;
    if (r !== expectedR) {
      throw new LowrankError('SHAPE_MISMATCH', `${where}: module ${modulePath} has rank ${r} but the config says r = ${expectedR}`);
    }
    if (s.useDora !== (magnitude !== undefined)) {
      throw new LowrankError(
        'MISSING_WEIGHT',
        `${where}: module ${modulePath} ${magnitude ? 'has a lora_magnitude_vector but use_dora is false' : 'has no lora_magnitude_vector but use_dora is true'}`,
      );
    }
    if (magnitude && (magnitude.shape.length !== 1 || magnitude.shape[0] !== B.shape[0])) {
      throw new LowrankError('SHAPE_MISMATCH', `${where}: module ${modulePath}: lora_magnitude_vector ${shapeOf(magnitude)} does not match ${B.shape[0]} outputs`);
    }
    const alpha = patternValue(s.alphaPattern, modulePath) ?? s.alpha;
    const scaling = s.useRslora ? alpha / Math.sqrt(r) : alpha / r;
    out.set(modulePath, { A, B, magnitude, r, scaling });
  }
  if (out.size === 0) throw new LowrankError('MISSING_WEIGHT', `${where}: the adapter holds no LoRA tensors`);
  return out;
}

export interface AppliedAdapter {
  /** Module paths now carrying the adapter. */
  modules: string[];
  /** Removes the adapters from the model and frees their tensors. */
  detach(): void;
}

/**
 * Attaches a read adapter to a loaded model as LinearAdapters (inference: no dropout), so logits,
 * generation and eval see base + adapter without changing the base weights. GPT-2's Conv1D layers
 * (peft's fan_in_fan_out) need nothing special: lora_A/B are plain linear layers there too.
 */
export function applyPeftAdapter(model: CausalLM, adapter: PeftAdapter): AppliedAdapter {
  const adaptable = new Set(model.linearModules());
  if (!model.config.tieWordEmbeddings) adaptable.add('lm_head');
  for (const [modulePath, m] of adapter.modules) {
    if (!adaptable.has(modulePath)) {
      throw new LowrankError(
        'SHAPE_MISMATCH',
        `${adapter.dir}: the adapter targets module ${modulePath}, which this ${model.config.architecture} model does not have as a linear layer; was it trained on another base model?`,
      );
    }
    const shape = model.weightShape(`${modulePath}.weight`);
    const [out, inFeatures] = model.isTransposedLinear(modulePath) ? [shape[1], shape[0]] : [shape[0], shape[1]];
    if (m.A.shape[1] !== inFeatures || m.B.shape[0] !== out) {
      throw new LowrankError(
        'SHAPE_MISMATCH',
        `${adapter.dir}: module ${modulePath} is [out ${out}, in ${inFeatures}] in the model but the adapter's lora_A is [${m.A.shape.join(', ')}] and lora_B [${m.B.shape.join(', ')}]; the adapter belongs to another base model`,
      );
    }
    if (model.adapters.has(modulePath)) throw new LowrankError('BAD_ARGUMENT', `module ${modulePath} already carries an adapter; detach it first`);
  }

  const owned: tf.Tensor[] = [];
  const keep = <T extends tf.Tensor>(t: T): T => (owned.push(t), t);
  for (const [modulePath, m] of adapter.modules) {
    const transposed = model.isTransposedLinear(modulePath);
    const aT = keep(tf.tidy(() => tf.transpose(tf.tensor2d(m.A.data, m.A.shape as [number, number])))); // [in, r]
    const bTScaled = keep(tf.tidy(() => tf.mul(tf.transpose(tf.tensor2d(m.B.data, m.B.shape as [number, number])), m.scaling))); // [r, out]
    let rowScale: tf.Tensor | null = null; // DoRA: m / ‖W + s·B·A‖ per output row, [out]
    if (m.magnitude) {
      rowScale = keep(
        tf.tidy(() => {
          const weight = model.weight(`${modulePath}.weight`);
          const w = transposed ? tf.transpose(weight) : weight; // [out, in]
          const merged = tf.add(w, tf.transpose(tf.matMul(aT, bTScaled))); // W + s·B·A
          return tf.div(tf.tensor1d(m.magnitude!.data), tf.sqrt(tf.sum(tf.square(merged), 1)));
        }),
      );
    }
    const rowScaleMinusOne = rowScale ? keep(tf.sub(rowScale, 1)) : null;
    const linearAdapter: LinearAdapter = {
      apply(x, base, weight) {
        const update = tf.matMul(tf.matMul(x, aT), bTScaled); // s·x·Aᵀ·Bᵀ, [N, out]
        if (!rowScale || !rowScaleMinusOne) return tf.add(base(x), update);
        // peft's DoRA forward: base(x) + (scale - 1)·x·Wᵀ + scale·s·x·Aᵀ·Bᵀ; the bias stays unscaled.
        const plain = tf.matMul(x, weight(), false, !transposed);
        return tf.add(tf.add(base(x), tf.mul(plain, rowScaleMinusOne)), tf.mul(update, rowScale));
      },
    };
    model.adapters.set(modulePath, linearAdapter);
  }
  const modules = [...adapter.modules.keys()];
  return {
    modules,
    detach() {
      for (const p of modules) model.adapters.delete(p);
      for (const t of owned) t.dispose();
      owned.length = 0;
    },
  };
}
