/**
 * Autoregressive generation with a KV cache (or without, to check the cache), greedy or sampled
 * with temperature, top-k (Fan et al. arXiv:1805.04833) and nucleus (top-p, Holtzman et al.
 * arXiv:1904.09751) from a seeded PRNG; top-k cuts first, then top-p within what is left.
 */
import * as tf from '../tf.ts';
import { Random } from '../random.ts';
import { disposeCache, type CausalLM, type KVCache } from './causal-lm.ts';

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 = greedy. */
  temperature?: number;
  topP?: number;
  /** Sample among the k most likely tokens only; 0 or absent: no cut. */
  topK?: number;
  seed?: number;
  /** Generation stops after emitting one of these. */
  stopTokenIds?: number[];
  /** Recompute the whole sequence each step instead of caching keys/values (a parity check). */
  useCache?: boolean;
  onToken?: (id: number) => void;
}

/** Picks the next token from last-position logits. */
export function sampleToken(logits: Float32Array, temperature: number, topP: number, rng: Random, topK = 0): number {
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
  const candidates = topK > 0 ? Math.min(topK, order.length) : order.length;
  if (candidates < order.length) total = order.slice(0, candidates).reduce((sum, id) => sum + probs[id], 0);
  // Smallest set of most likely tokens whose mass reaches topP.
  let kept = 0;
  let mass = 0;
  while (kept < candidates && mass < topP * total) mass += probs[order[kept++]];
  let u = rng.next() * mass;
  for (let i = 0; i < kept; i++) {
    u -= probs[order[i]];
    if (u <= 0) return order[i];
  }
  return order[kept - 1];
}

/**
 * Generation one token at a time: each `step()` runs the model once and returns the token it
 * picked, or null once `maxNewTokens`, the context length or a stop token ended it. A caller that
 * must stay responsive (the playground's job, which can be stopped) awaits between steps;
 * `generate` runs it to the end. `dispose()` frees the KV cache.
 */
export class Generation {
  readonly generated: number[] = [];
  private readonly sequence: number[];
  private readonly rng: Random;
  private readonly stop: Set<number>;
  private cache: KVCache | undefined;
  private done = false;

  constructor(private readonly model: CausalLM, promptIds: number[], private readonly opts: GenerateOptions) {
    if (promptIds.length === 0) throw new Error('internal: generate needs at least one prompt token');
    this.sequence = [...promptIds];
    this.rng = new Random(opts.seed ?? 0);
    this.stop = new Set(opts.stopTokenIds ?? []);
  }

  step(): number | null {
    if (this.done || this.generated.length >= this.opts.maxNewTokens || this.sequence.length >= this.model.config.maxPositions) {
      this.done = true;
      return null;
    }
    const useCache = this.opts.useCache ?? true;
    const input = useCache && this.cache ? this.sequence.slice(-1) : this.sequence;
    const cache = this.cache;
    const result = tf.tidy(() => {
      const ids = tf.tensor2d(input, [1, input.length], 'int32');
      // Only the last position's logits: a long prompt's [T, V] would be the largest tensor by far.
      const out = this.model.forward(ids, { cache, useCache, lastPositionOnly: true });
      const last = out.logits.reshape([-1]);
      return out.cache ? { last, cache: out.cache } : { last };
    }) as { last: tf.Tensor; cache?: KVCache };
    const logits = (result.last as tf.Tensor).dataSync() as Float32Array;
    result.last.dispose();
    disposeCache(this.cache);
    this.cache = result.cache;
    const next = sampleToken(logits, this.opts.temperature ?? 0, this.opts.topP ?? 1, this.rng, this.opts.topK ?? 0);
    this.generated.push(next);
    this.sequence.push(next);
    this.opts.onToken?.(next);
    if (this.stop.has(next)) this.done = true;
    return next;
  }

  dispose(): void {
    disposeCache(this.cache);
    this.cache = undefined;
  }
}

export function generate(model: CausalLM, promptIds: number[], opts: GenerateOptions): number[] {
  const generation = new Generation(model, promptIds, opts);
  try {
    while (generation.step() !== null);
    return generation.generated;
  } finally {
    generation.dispose();
  }
}
