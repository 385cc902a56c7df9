/**
 * Autoregressive generation with a KV cache (or without, to check the cache), greedy or sampled
 * with temperature and nucleus (top-p, Holtzman et al. arXiv:1904.09751) from a seeded PRNG.
 */
import * as tf from '../tf.ts';
import { Random } from '../random.ts';
import { disposeCache, type CausalLM, type KVCache } from './causal-lm.ts';

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 = greedy. */
  temperature?: number;
  topP?: number;
  seed?: number;
  /** Generation stops after emitting one of these. */
  stopTokenIds?: number[];
  /** Recompute the whole sequence each step instead of caching keys/values (a parity check). */
  useCache?: boolean;
  onToken?: (id: number) => void;
}

/** Picks the next token from last-position logits. */
export function sampleToken(logits: Float32Array, temperature: number, topP: number, rng: Random): number {
  if (temperature <= 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let max = -Infinity;
  for (const l of logits) max = Math.max(max, l);
  const probs = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += probs[i] = Math.exp((logits[i] - max) / temperature);
  const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]);
  // Smallest set of most likely tokens whose mass reaches topP.
  let kept = 0;
  let mass = 0;
  while (kept < order.length && mass < topP * total) mass += probs[order[kept++]];
  let u = rng.next() * mass;
  for (let i = 0; i < kept; i++) {
    u -= probs[order[i]];
    if (u <= 0) return order[i];
  }
  return order[kept - 1];
}

export function generate(model: CausalLM, promptIds: number[], opts: GenerateOptions): number[] {
  if (promptIds.length === 0) throw new Error('internal: generate needs at least one prompt token');
  const rng = new Random(opts.seed ?? 0);
  const temperature = opts.temperature ?? 0;
  const topP = opts.topP ?? 1;
  const useCache = opts.useCache ?? true;
  const stop = new Set(opts.stopTokenIds ?? []);
  const maxPositions = model.config.maxPositions;
  const sequence = [...promptIds];
  const generated: number[] = [];
  let cache: KVCache | undefined;
  try {
    for (let step = 0; step < opts.maxNewTokens && sequence.length < maxPositions; step++) {
      const input = useCache && cache ? sequence.slice(-1) : sequence;
      const result = tf.tidy(() => {
        const ids = tf.tensor2d(input, [1, input.length], 'int32');
        // Only the last position's logits: a long prompt's [T, V] would be the largest tensor by far.
        const out = model.forward(ids, { cache, useCache, lastPositionOnly: true });
        const last = out.logits.reshape([-1]);
        return out.cache ? { last, cache: out.cache } : { last };
      }) as { last: tf.Tensor; cache?: KVCache };
      const logits = (result.last as tf.Tensor).dataSync() as Float32Array;
      result.last.dispose();
      disposeCache(cache);
      cache = result.cache;
      const next = sampleToken(logits, temperature, topP, rng);
      generated.push(next);
      sequence.push(next);
      opts.onToken?.(next);
      if (stop.has(next)) break;
    }
  } finally {
    disposeCache(cache);
  }
  return generated;
}
