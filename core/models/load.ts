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

/** Buffers some checkpoints carry that are recomputed here, not weights. */
const IGNORED_SUFFIXES = ['.attn.bias', '.attn.masked_bias', 'rotary_emb.inv_freq'];

/** GPT-2 checkpoints are saved with or without the `transformer.` prefix; use one form inside. */
export function canonicalWeightName(config: ModelConfig, name: string): string {
  if (config.family === 'gpt2' && !name.startsWith('transformer.') && !name.startsWith('lm_head.')) {
    return `transformer.${name}`;
  }
  return name;
}

export function buildModel(config: ModelConfig, weights: Map<string, tf.Tensor>): CausalLM {
  return config.family === 'gpt2' ? new Gpt2Model(config, weights) : new LlamaModel(config, weights);
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

export function loadModel(dir: string): CausalLM {
  const { config, reader, storedName } = openCheckpoint(dir);
  try {
    const weights = new Map<string, tf.Tensor>();
    for (const [name, shape] of expectedWeights(config)) {
      weights.set(name, tf.tensor(reader.readFloat32(storedName.get(name)!), shape, 'float32'));
    }
    return buildModel(config, weights);
  } finally {
    reader.close();
  }
}
