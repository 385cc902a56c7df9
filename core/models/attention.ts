/**
 * Causal grouped-query attention (GQA, Ainslie et al. arXiv:2305.13245), two ways with one result.
 *
 * Plain: the [B, H, T, S] scores, the bias of causal-lm.ts's attentionBias and tf.softmax, as
 * the models always computed it. Its backward pass keeps three score-sized tensors per layer (the
 * product, the scaled scores, the probabilities) and materialises three more as gradients: at
 * T = 2048 on Qwen2.5-0.5B that is 235 MB each per layer.
 *
 * Chunked: FlashAttention-2 (Dao, arXiv:2307.08691) in tfjs ops over blocks of queries and keys.
 * The forward (Alg. 1) runs an online softmax over key blocks, keeping a running row max m, row
 * sum l = Σ exp(score − m) and output; the backward (Alg. 2) recomputes each block's probabilities
 * from them. Only q, k, v, O, m and l outlive the forward (no per-block probabilities), so memory is
 * linear in T. Where Alg. 1 saves L = m + log l, m and l are saved apart: a row whose keys are all
 * masked has m ≈ −1e9, where float32's spacing is 64 and log l would be rounded away.
 *
 * Both keep the GQA folding: the `groups` query heads that share key/value head g are stacked as
 * [B, KV, groups·T, D] rows, so one batched product serves the group and k, v are never repeated.
 */
import * as tf from '../tf.ts';
import { attentionBias } from './causal-lm.ts';

export interface AttentionOptions {
  /** 1/sqrt(headDim) normally */
  scale: number;
  /** Absolute position of the first query (positions already in the KV cache); keys cover positions 0..S-1. */
  past: number;
  /** [B, S] 1 = attend, 0 = padding key. */
  attentionMask?: tf.Tensor2D;
  /** Key s visible to the query at position p only when s > p - window (transformers' convention); null = none. */
  slidingWindow: number | null;
  /** Key/query block length of the chunked path; omitted = choose (see `attention`). */
  blockSize?: number;
}

/**
 * Scores per (batch, head), T·S, above which `attention` takes the chunked path. Value+gradient on
 * wasm (2 threads, OpenBLAS; B = 2, H = 14, KV = 2, D = 64): at T = 256 plain 30 ms, chunked 42;
 * T = 512 plain 110, chunked 144; T = 1024 plain 316, chunked 335 with a quarter of the memory
 * (216 vs 851 MB); T = 2048 plain 1190, chunked 1030 (235 MB vs 3.4 GB). Below the threshold plain
 * is faster and its scores are small.
 */
export const CHUNKED_ABOVE_SCORES = 512 * 512;

/** The threshold the models use (a tuning knob: tests set it to 0 to run the chunked path at small sizes). */
export const attentionTuning = { chunkedAboveScores: CHUNKED_ABOVE_SCORES };
/**
 * Block length the chunked path uses when none is given. On wasm with 2 threads 384–512 ran ~10 %
 * faster than 256 at T = 1024–2048 (fewer, larger ops); with 1 thread 256 was ~8 % faster. One
 * pair's temporaries are ~6·B·H·512² floats (176 MB at B = 2, H = 14), freed block by block.
 */
export const DEFAULT_BLOCK_SIZE = 512;
/** The masked-score constant of attentionBias. */
const MASKED = -1e9;
const FLOAT_BYTES = 4;

/**
 * Causal grouped-query attention: q [B, H, T, D], k and v [B, KV, S, D] (H a multiple of KV) ->
 * [B, H, T, D]. Takes the chunked path when `blockSize` is given or when T·S exceeds
 * CHUNKED_ABOVE_SCORES, and the plain one otherwise. Both give equal values and gradients on every
 * query that sees at least one key; see attentionChunked for queries that see none.
 */
export function attention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, opts: AttentionOptions): tf.Tensor4D {
  const chunked = opts.blockSize !== undefined || q.shape[2] * k.shape[2] > CHUNKED_ABOVE_SCORES;
  return chunked ? attentionChunked(q, k, v, opts) : attentionPlain(q, k, v, opts);
}

/** The plain path: folded groups, full [B, H, T, S] scores + attentionBias + tf.softmax. The reference. */
export function attentionPlain(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, opts: AttentionOptions): tf.Tensor4D {
  const { B, H, KV, T, S, D, groups } = checkShapes(q, k, v, opts);
  return tf.tidy(() => {
    const bias = attentionBias(B, T, opts.past, opts.attentionMask, opts.slidingWindow); // [B|1, 1, T, S]
    const qg = q.reshape([B, KV, groups * T, D]);
    const scores = tf.mul(tf.matMul(qg, k, false, true), opts.scale).reshape([B, H, T, S]); // [B, H, T, S]
    const probs = tf.softmax(tf.add(scores, bias)).reshape([B, KV, groups * T, S]);
    return tf.matMul(probs, v).reshape([B, H, T, D]) as tf.Tensor4D; // [B, KV, groups*T, D] unfolded
  });
}

/** Which keys of a (query block, key block) pair some query of the block may see. */
type Visibility = 'none' | 'all' | 'some';

interface QueryBlock {
  /** Query rows [t0, t0 + rows). */
  t0: number;
  rows: number;
  /** Key blocks this query block sees, ascending; the causal upper triangle (and keys left of a sliding window) is left out. */
  keys: Array<{ block: number; visibility: 'all' | 'some' }>;
}

/** Key s visible to the query at `position` by causality and the window (padding apart). */
function causallyVisible(s: number, position: number, window: number | null): boolean {
  return s <= position && (window === null || s > position - window);
}

/** Tiles [0, T) × [0, S) into blocks and classifies each pair by its first and last positions. */
function blockPlan(T: number, S: number, past: number, window: number | null, blockSize: number): { queries: QueryBlock[]; keyStarts: number[] } {
  const keyStarts: number[] = [];
  for (let s0 = 0; s0 < S; s0 += blockSize) keyStarts.push(s0);
  const queries: QueryBlock[] = [];
  for (let t0 = 0; t0 < T; t0 += blockSize) {
    const rows = Math.min(blockSize, T - t0);
    const [first, last] = [past + t0, past + t0 + rows - 1];
    const keys: QueryBlock['keys'] = [];
    keyStarts.forEach((s0, block) => {
      const s1 = Math.min(s0 + blockSize, S) - 1;
      const visibility: Visibility =
        s0 > last || (window !== null && s1 <= first - window)
          ? 'none'
          : causallyVisible(s1, first, window) && causallyVisible(s0, last, window)
            ? 'all'
            : 'some';
      if (visibility !== 'none') keys.push({ block, visibility });
    });
    queries.push({ t0, rows, keys });
  }
  return { queries, keyStarts };
}

/**
 * The chunked path, always: FlashAttention-2 over blocks of `blockSize` queries and keys. Pairs of
 * blocks that causality (or the window) masks entirely are skipped; pairs it leaves entirely
 * visible get only the padding bias.
 *
 * A query whose every key is masked (a left-padding query that sees only padding) gets a softmax
 * over the −1e9-masked scores of the key blocks it computes, where the plain path's runs over all
 * keys, skipped blocks included; the two values differ (both are finite). No loss reads it: its
 * label is −100, and every query that sees a key gives its position exactly zero weight
 * (exp(−1e9 − max) underflows), so its upstream gradient is zero and the gradients of q, k and v
 * equal the plain path's (attention.test.ts checks both through two stacked layers).
 */
export function attentionChunked(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, opts: AttentionOptions): tf.Tensor4D {
  const { B, H, KV, T, S, D, groups } = checkShapes(q, k, v, opts);
  const blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
  if (!Number.isInteger(blockSize) || blockSize < 1) throw new Error(`internal: attention blockSize must be a positive integer, got ${blockSize}`);
  const { queries, keyStarts } = blockPlan(T, S, opts.past, opts.slidingWindow, blockSize);
  const keyRows = (j: number) => Math.min(blockSize, S - keyStarts[j]);
  const scale = opts.scale;

  // Causal/window patterns [1, 1, 1, rows, cols] of partly visible pairs, by query-minus-key offset.
  const patterns = new Map<string, Float32Array>();
  const causalPattern = (first: number, s0: number, rows: number, cols: number): Float32Array => {
    const key = `${first - s0},${rows},${cols}`;
    let pattern = patterns.get(key);
    if (!pattern) {
      pattern = new Float32Array(rows * cols);
      for (let t = 0; t < rows; t++) {
        for (let s = 0; s < cols; s++) pattern[t * cols + s] = causallyVisible(s0 + s, first + t, opts.slidingWindow) ? 0 : MASKED;
      }
      patterns.set(key, pattern);
    }
    return pattern;
  };

  /** Masked scores of query block i (`qi` already scaled) against key block j: [B, KV, groups·rows, cols]. */
  const blockScores = (qi: tf.Tensor4D, kj: tf.Tensor4D, i: number, j: number, visibility: 'all' | 'some', padBias: tf.Tensor | null) => {
    const { t0, rows } = queries[i];
    const [s0, cols] = [keyStarts[j], keyRows(j)];
    const scores = tf.matMul(qi, kj, false, true);
    const pad = padBias ? tf.slice(padBias, [0, 0, 0, 0, s0], [B, 1, 1, 1, cols]) : null; // [B, 1, 1, 1, cols]
    let bias: tf.Tensor | null = pad;
    if (visibility === 'some') {
      const causal = tf.tensor(causalPattern(opts.past + t0, s0, rows, cols), [1, 1, 1, rows, cols]);
      // Summed before the scores, as attentionBias sums them, so masked entries round alike.
      bias = pad ? tf.add(causal, pad) : causal;
    }
    if (!bias) return scores;
    return tf.add(scores.reshape([B, KV, groups, rows, cols]), bias).reshape([B, KV, groups * rows, cols]);
  };

  // Blocks are sliced from [B·heads, positions·D] views: one contiguous run per head rather than one
  // per position, which is what the wasm Slice kernel copies one at a time.
  const fold = (x: tf.Tensor, t0: number, rows: number) =>
    tf.slice(x.reshape([B * H, T * D]), [0, t0 * D], [B * H, rows * D]).reshape([B, KV, groups * rows, D]) as tf.Tensor4D;
  // (scale·q)·kᵀ rather than scale·(q·kᵀ): one q-block-sized product instead of a score-sized one per pair.
  const scaledQueries = (q: tf.Tensor, t0: number, rows: number) => tf.tidy(() => tf.mul(fold(q, t0, rows), scale) as tf.Tensor4D);
  const keySlices = (x: tf.Tensor) => {
    const flat = x.reshape([B * KV, S * D]);
    return keyStarts.map((s0, j) => tf.slice(flat, [0, s0 * D], [B * KV, keyRows(j) * D]).reshape([B, KV, keyRows(j), D]) as tf.Tensor4D);
  };

  const run = tf.customGrad(((q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, save: tf.GradSaveFunc) => {
    // attentionBias's padding term, [B, 1, 1, 1, S]; saved, as the caller may dispose the mask before the backward pass.
    const padBias = opts.attentionMask
      ? tf.mul(tf.sub(1, tf.cast(opts.attentionMask, 'float32')), MASKED).reshape([B, 1, 1, 1, S])
      : null;
    const kBlocks = keySlices(k);
    const vBlocks = keySlices(v);
    const outputs: tf.Tensor[] = [];
    const rowMax: tf.Tensor[] = [];
    const rowSum: tf.Tensor[] = [];
    queries.forEach(({ t0, rows, keys }, i) => {
      const qi = scaledQueries(q, t0, rows); // [B, KV, groups·rows, D]
      let m: tf.Tensor | null = null; // running row max, [B, KV, groups·rows, 1]
      let l: tf.Tensor | null = null; // running Σ exp(score − m)
      let out: tf.Tensor | null = null; // running softmax·v over the key blocks so far, [B, KV, groups·rows, D]
      for (const { block: j, visibility } of keys) {
        const next = tf.tidy(() => {
          const block = blockSoftmax(blockScores(qi, kBlocks[j], i, j, visibility, padBias));
          const blockOut = tf.matMul(block.probs, vBlocks[j]);
          if (!m || !l || !out) return [block.max, block.sum, blockOut];
          // Both partial softmaxes re-weighted to the new max (Alg. 1 line 10, normalised as it goes).
          const mNew = tf.maximum(m, block.max);
          const oldWeight = tf.mul(l, tf.exp(tf.sub(m, mNew)));
          const newWeight = tf.mul(block.sum, tf.exp(tf.sub(block.max, mNew)));
          const lNew = tf.add(oldWeight, newWeight);
          return [mNew, lNew, tf.div(tf.add(tf.mul(out, oldWeight), tf.mul(blockOut, newWeight)), lNew)];
        });
        tf.dispose([m, l, out].filter((t): t is tf.Tensor => t !== null));
        [m, l, out] = next;
      }
      if (!m || !l || !out) throw new Error('internal: a query block with no visible key block');
      outputs.push(out.reshape([B, H, rows, D]));
      rowMax.push(m);
      rowSum.push(l);
      tf.dispose([qi, out]);
    });
    const value = (outputs.length === 1 ? outputs[0] : tf.concat(outputs, 2)) as tf.Tensor4D; // [B, H, T, D]
    save([q, k, v, value, ...rowMax, ...rowSum, ...(padBias ? [padBias] : [])]);
    return { value, gradFunc: (dy: tf.Tensor4D, saved: tf.Tensor[]) => backward(dy, saved) };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D) => tf.Tensor4D;

  /** FlashAttention-2 Alg. 2 with the query blocks outside, so one block's q, dO and D live at a time. */
  function backward(dy: tf.Tensor4D, saved: tf.Tensor[]): tf.Tensor[] {
    return tf.tidy(() => {
      const [q, k, v, out] = saved;
      const n = queries.length;
      const rowMax = saved.slice(4, 4 + n);
      const rowSum = saved.slice(4 + n, 4 + 2 * n);
      const padBias = saved[4 + 2 * n] ?? null;
      const kBlocks = keySlices(k);
      const vBlocks = keySlices(v);
      const dK: Array<tf.Tensor | null> = keyStarts.map(() => null); // Σ dSᵀ·(scale·Q)
      const dV: Array<tf.Tensor | null> = keyStarts.map(() => null); // Σ Pᵀ·dO
      const dQ: tf.Tensor[] = [];
      queries.forEach(({ t0, rows, keys }, i) => {
        const [qi, dOi, rowDot] = tf.tidy(() => {
          const dOi = fold(dy, t0, rows);
          return [scaledQueries(q, t0, rows), dOi, tf.sum(tf.mul(dOi, fold(out, t0, rows)), -1, true)]; // D_i = rowsum(dO ∘ O)
        });
        let dq: tf.Tensor | null = null; // Σ dS·K, scaled at the end
        for (const { block: j, visibility } of keys) {
          const [dvTerm, dkTerm, dqNext] = tf.tidy(() => {
            // P = exp(S − m)/l = softmax_blk(S)·f with the row factor f = sum·exp(max − m)/l; f is
            // applied to the [rows, D] dO and D_i instead of the [rows, cols] probabilities.
            const block = blockSoftmax(blockScores(qi, kBlocks[j], i, j, visibility, padBias));
            const factor = tf.div(tf.mul(block.sum, tf.exp(tf.sub(block.max, rowMax[i]))), rowSum[i]);
            const dOf = tf.mul(dOi, factor);
            const dp = tf.matMul(dOf, vBlocks[j], false, true); // f·dP
            const ds = tf.mul(block.probs, tf.sub(dp, tf.mul(rowDot, factor))); // P ∘ (dP − D_i)
            const dqTerm = tf.matMul(ds, kBlocks[j]);
            return [tf.matMul(block.probs, dOf, true, false), tf.matMul(ds, qi, true, false), dq ? tf.add(dq, dqTerm) : dqTerm];
          });
          dV[j] = sumInto(dV[j], dvTerm);
          dK[j] = sumInto(dK[j], dkTerm);
          dq?.dispose();
          dq = dqNext;
        }
        if (!dq) throw new Error('internal: a query block with no visible key block');
        dQ.push(tf.mul(dq, scale).reshape([B, H, rows, D]));
        tf.dispose([qi, dOi, rowDot, dq]);
      });
      // Keys no query sees (left of every query's window) get zero gradients.
      const keyGrads = (list: Array<tf.Tensor | null>) => tf.concat(list.map((g, j) => g ?? tf.zeros([B, KV, keyRows(j), D])), 2);
      const dq = dQ.length === 1 ? dQ[0] : tf.concat(dQ, 2);
      return [dq, keyGrads(dK), keyGrads(dV)];
    });
  }

  return run(q, k, v);
}

/**
 * A block's softmax over its last axis with its row max and row sum Σ exp(s − max). tfjs-backend-wasm
 * runs Exp as a scalar loop (~12 ns an element, more than the rest of a block pair together) and
 * Softmax through XNNPACK's vectorised kernel (~1 ns), so every score-sized exponential goes through
 * tf.softmax; the sum comes back from the largest probability, exp(0)/sum.
 */
function blockSoftmax(scores: tf.Tensor): { probs: tf.Tensor; max: tf.Tensor; sum: tf.Tensor } {
  const probs = tf.softmax(scores);
  return { probs, max: tf.max(scores, -1, true), sum: tf.reciprocal(tf.max(probs, -1, true)) };
}

/** old + term, disposing both. */
function sumInto(old: tf.Tensor | null, term: tf.Tensor): tf.Tensor {
  if (!old) return term;
  const sum = tf.add(old, term);
  tf.dispose([old, term]);
  return sum;
}

function checkShapes(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, opts: AttentionOptions) {
  const [B, H, T, D] = q.shape;
  const [, KV, S] = k.shape;
  if (k.shape[0] !== B || k.shape[3] !== D || v.shape.join() !== k.shape.join() || H % KV !== 0 || S !== opts.past + T) {
    throw new Error(`internal: attention shapes q [${q.shape}], k [${k.shape}], v [${v.shape}] with past ${opts.past}`);
  }
  return { B, H, KV, T, S, D, groups: H / KV };
}

/**
 * Peak bytes one value+gradient call allocates (its output and gradients included, its inputs and
 * upstream gradient not), for the memory estimator. Bytes of distinct buffers: what the heap holds,
 * not tf.memory().numBytes, which counts a reshape or a tensor the tape saved a second time. Counted
 * from the ops above and checked against a measurement in attention.test.ts:
 *  - plain: 7 score-sized [B, H, T, S] tensors at the softmax gradient (the product, the scaled
 *    scores and the probabilities the tape keeps; the probabilities' gradient; the softmax
 *    gradient's dy·y, Σ·y and result), the [B|1, 1, T, S] causal and padded biases the tape keeps;
 *  - chunked: m and l per row, and at the last query block of the backward pass one block pair's
 *    [B, H, block, block] temporaries, the key/value blocks, the dK/dV accumulators, the dQ blocks
 *    done so far and the block's q, dO, D and dQ; or, at the very end, those concatenated.
 */
export function attentionActivationBytes(
  B: number,
  H: number,
  KV: number,
  T: number,
  S: number,
  D: number,
  chunked: boolean,
  blockSize: number = DEFAULT_BLOCK_SIZE,
): number {
  const qSize = B * H * T * D;
  const kvSize = B * KV * S * D;
  if (!chunked) return FLOAT_BYTES * (7 * B * H * T * S + (B + 1) * T * S + 2 * qSize + 2 * kvSize);
  const rows = Math.min(blockSize, T);
  const cols = Math.min(blockSize, S);
  const queryBlocks = Math.ceil(T / blockSize);
  const lastQueryBlock = 6 * B * H * rows * cols + 2 * rows * cols + 4 * kvSize + 2 * qSize + (5 * qSize) / queryBlocks;
  const concatenated = 3 * qSize + 6 * kvSize;
  return FLOAT_BYTES * (3 * B * H * T + Math.max(lastQueryBlock, concatenated));
}
