/**
 * Loads a Hugging Face model folder (config.json + safetensors) into a tfjs CausalLM, checking
 * every weight against the shapes the config implies before building tensors.
 */
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { CheckpointReader } from '../io/safetensors.ts';
import { readModelConfig } from '../io/hf-folder.ts';
import { expectedWeights, parseModelConfig, type ModelConfig } from './config.ts';
import type { CausalLM } from './causal-lm.ts';
import { LlamaModel } from './llama.ts';
import { Gpt2Model } from './gpt2.ts';
import { FrozenWeight, type BaseDtype } from './frozen-weight.ts';
import type { FrozenKind, FrozenSourceKind } from '../backend/native/addon.ts';

/** Buffers some checkpoints carry that are recomputed here, not weights. */
const IGNORED_SUFFIXES = ['.attn.bias', '.attn.masked_bias', 'rotary_emb.inv_freq'];

/** GPT-2 checkpoints are saved with or without the `transformer.` prefix; use one form inside. */
export function canonicalWeightName(config: ModelConfig, name: string): string {
  if (config.family === 'gpt2' && !name.startsWith('transformer.') && !name.startsWith('lm_head.')) {
    return `transformer.${name}`;
  }
  return name;
}

export function buildModel(config: ModelConfig, weights: Map<string, tf.Tensor>, frozen: Map<string, FrozenWeight> = new Map()): CausalLM {
  return config.family === 'gpt2' ? new Gpt2Model(config, weights, frozen) : new LlamaModel(config, weights, frozen);
}

export function loadConfig(dir: string): ModelConfig {
  return parseModelConfig(readModelConfig(dir) as Record<string, unknown>, path.join(dir, 'config.json'));
}

export interface ValidatedCheckpoint {
  config: ModelConfig;
  reader: CheckpointReader;
  /** Canonical weight name -> name stored in the file. */
  storedName: Map<string, string>;
  /** Storage dtypes found (F32, BF16, ...). */
  dtypes: Set<string>;
}

/** Opens a model folder and checks every weight the config implies is present with the right shape. */
export function openCheckpoint(dir: string): ValidatedCheckpoint {
  const config = loadConfig(dir);
  const reader = CheckpointReader.open(dir);
  try {
    const storedName = new Map<string, string>();
    for (const name of reader.names()) {
      if (IGNORED_SUFFIXES.some((s) => name.endsWith(s))) continue;
      storedName.set(canonicalWeightName(config, name), name);
    }
    const dtypes = new Set<string>();
    for (const [name, shape] of expectedWeights(config)) {
      const stored = storedName.get(name);
      if (stored === undefined) {
        throw new LowrankError(
          'MISSING_WEIGHT',
          `${dir}: tensor "${name}" is missing from the weights but config.json (${config.architecture}, ${config.numLayers} layers) needs it`,
        );
      }
      const info = reader.info(stored);
      dtypes.add(info.dtype);
      const got = info.shape;
      if (got.length !== shape.length || got.some((d: number, i: number) => d !== shape[i])) {
        throw new LowrankError(
          'SHAPE_MISMATCH',
          `${dir}: tensor "${stored}" has shape [${got.join(', ')}] but config.json implies [${shape.join(', ')}]; the weights and config.json do not belong together`,
        );
      }
    }
    return { config, reader, storedName, dtypes };
  } catch (e) {
    reader.close();
    throw e;
  }
}

export interface LoadOptions {
  /**
   * Keep the weights no method will train (linear layers, token embedding, untied head) frozen in
   * native memory (frozen-weight.ts) as `dtype`: 'auto' keeps each one's stored precision; int8 and
   * nf4 quantize the linear layers and keep the embedding and head in their stored precision, as QLoRA
   * does. Needs the native addon on the wasm backend (frozenWeightsAvailable()); null loads every weight
   * as a float32 tensor.
   */
  frozenBase?: { dtype: BaseDtype } | null;
  /**
   * The backend's largest buffer binding (WebGPU's maxStorageBufferBindingSize): a weight tensor of
   * more float32 bytes is held as row shards that each fit (CausalLM.shards).
   */
  maxBindingBytes?: number | null;
}

/** The weights a frozen base keeps natively: every linear module's weight, the token embedding and the head. */
function freezableWeights(config: ModelConfig): Set<string> {
  const skeleton = buildModel(config, new Map());
  const names = new Set(skeleton.linearModules().map((p) => `${p}.weight`));
  names.add(skeleton.headWeightName());
  names.add(config.family === 'gpt2' ? 'transformer.wte.weight' : 'model.embed_tokens.weight');
  return names;
}

const STORED_KIND: Record<string, FrozenKind> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

function frozenWeight(reader: CheckpointReader, stored: string, shape: number[], dtype: BaseDtype, quantizable: boolean): FrozenWeight {
  const sourceKind = STORED_KIND[reader.info(stored).dtype] as FrozenSourceKind;
  const wanted = frozenKind(sourceKind, dtype, quantizable);
  const source = sourceKind === 'f32' ? reader.readFloat32(stored) : reader.readRaw16(stored);
  return FrozenWeight.create(source, sourceKind, [shape[0], shape[1]], wanted);
}

/** Native bytes a frozen weight of `count` values takes as `kind` (native/frozen.c's layouts). */
export function frozenWeightBytes(kind: FrozenKind, rows: number, cols: number): number {
  const n = rows * cols;
  switch (kind) {
    case 'f32': return 4 * n;
    case 'f16': case 'bf16': return 2 * n;
    case 'int8': return n + 4 * rows;
    case 'nf4': return Math.ceil(n / 2) + 4 * Math.ceil(n / 64);
  }
}

/** What loadModel(dir, { frozenBase: { dtype } }) will hold natively, from the headers alone (no weights read). */
export function frozenBasePlan(checkpoint: ValidatedCheckpoint, dtype: BaseDtype): { bytes: number; parameters: number; largestSourceBytes: number } {
  const { config, reader, storedName } = checkpoint;
  const freezable = freezableWeights(config);
  const linear = new Set(buildModel(config, new Map()).linearModules().map((p) => `${p}.weight`));
  let bytes = 0;
  let parameters = 0;
  let largestSourceBytes = 0;
  for (const [name, shape] of expectedWeights(config)) {
    if (!freezable.has(name) || shape.length !== 2) continue;
    const stored = STORED_KIND[reader.info(storedName.get(name)!).dtype];
    largestSourceBytes = Math.max(largestSourceBytes, (stored === 'f32' ? 4 : 2) * shape[0] * shape[1]);
    bytes += frozenWeightBytes(frozenKind(stored, dtype, linear.has(name)), shape[0], shape[1]);
    parameters += shape[0] * shape[1];
  }
  return { bytes, parameters, largestSourceBytes };
}

/** The storage of one frozen weight: its own ('auto'), or the asked one (int8/nf4 only for linear layers, as QLoRA). */
function frozenKind(stored: FrozenKind, dtype: BaseDtype, quantizable: boolean): FrozenKind {
  return dtype === 'auto' || (!quantizable && (dtype === 'int8' || dtype === 'nf4')) ? stored : dtype;
}

/** A [rows, cols] weight as consecutive row blocks of at most `limit` float32 bytes each. */
function rowShards(values: Float32Array, [rows, cols]: number[], limit: number): tf.Tensor2D[] {
  const perShard = Math.max(1, Math.floor(limit / (4 * cols)));
  const out: tf.Tensor2D[] = [];
  for (let r = 0; r < rows; r += perShard) {
    const n = Math.min(perShard, rows - r);
    out.push(tf.tensor2d(values.subarray(r * cols, (r + n) * cols), [n, cols]));
  }
  return out;
}

export function loadModel(dir: string, opts: LoadOptions = {}): CausalLM {
  const { config, reader, storedName } = openCheckpoint(dir);
  const weights = new Map<string, tf.Tensor>();
  const frozen = new Map<string, FrozenWeight>();
  try {
    const freezable = opts.frozenBase ? freezableWeights(config) : new Set<string>();
    const linear = opts.frozenBase ? new Set(buildModel(config, new Map()).linearModules().map((p) => `${p}.weight`)) : new Set<string>();
    const shards = new Map<string, tf.Tensor2D[]>();
    const limit = opts.maxBindingBytes ?? Infinity;
    for (const [name, shape] of expectedWeights(config)) {
      const stored = storedName.get(name)!;
      if (freezable.has(name) && shape.length === 2) frozen.set(name, frozenWeight(reader, stored, shape, opts.frozenBase!.dtype, linear.has(name)));
      else if (shape.length === 2 && 4 * shape[0] * shape[1] > limit) shards.set(name, rowShards(reader.readFloat32(stored), shape, limit));
      else weights.set(name, tf.tensor(reader.readFloat32(stored), shape, 'float32'));
    }
    const model = buildModel(config, weights, frozen);
    for (const [name, list] of shards) model.shards.set(name, list);
    model.maxBindingBytes = opts.maxBindingBytes ?? null;
    return model;
  } catch (e) {
    for (const t of weights.values()) t.dispose();
    for (const f of frozen.values()) f.dispose();
    throw e;
  } finally {
    reader.close();
  }
}
