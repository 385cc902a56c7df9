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

export function loadModel(dir: string): CausalLM {
  const config = loadConfig(dir);
  const reader = CheckpointReader.open(dir);
  try {
    const stored = new Map<string, string>(); // canonical -> stored name
    for (const name of reader.names()) {
      if (IGNORED_SUFFIXES.some((s) => name.endsWith(s))) continue;
      stored.set(canonicalWeightName(config, name), name);
    }
    const expected = expectedWeights(config);
    const where = path.join(dir, 'model.safetensors');
    for (const [name, shape] of expected) {
      const storedName = stored.get(name);
      if (storedName === undefined) {
        throw new LowrankError(
          'MISSING_WEIGHT',
          `${where}: tensor "${name}" is missing but config.json (${config.architecture}, ${config.numLayers} layers) needs it`,
        );
      }
      const got = reader.info(storedName).shape;
      if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
        throw new LowrankError(
          'SHAPE_MISMATCH',
          `${where}: tensor "${storedName}" has shape [${got.join(', ')}] but config.json implies [${shape.join(', ')}]; the weights and config.json do not belong together`,
        );
      }
    }
    const weights = new Map<string, tf.Tensor>();
    for (const [name, shape] of expected) {
      weights.set(name, tf.tensor(reader.readFloat32(stored.get(name)!), shape, 'float32'));
    }
    return buildModel(config, weights);
  } finally {
    reader.close();
  }
}
