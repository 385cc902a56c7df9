/**
 * The language-model head and its cross-entropy as one op that never holds [tokens × vocab]:
 * loss = Σᵢ wᵢ·(logsumexp(hᵢ·Wᵀ) − hᵢ·W[tᵢ]), computed over vocabulary chunks.
 *
 * The unfused path (causal-lm.ts: logits = h·Wᵀ, then weightedCrossEntropy) keeps the logits
 * [N, V] for the backward pass and then builds their gradient, another [N, V]: with Qwen's 151,936-
 * token vocabulary that is 622 MB per 1,024 tokens, twice. Here the forward pass keeps a running
 * row max and Σexp over chunks (the online log-sum-exp of Milakov & Gimelshein 2018, "Online
 * normalizer calculation for softmax", eq. 5) and saves only lse [N]; the backward pass recomputes
 * each chunk's logits (one more h·W_cᵀ product per chunk) and turns them straight into dh and, for
 * a trainable weight, dW. The same idea as Apple's Cut Cross-Entropy (Wijmans et al. 2024,
 * arXiv:2411.09009) and Liger's FusedLinearCrossEntropy, in plain tfjs ops so it runs on every
 * backend (cpu, wasm, webgpu).
 *
 * Chunks never cross a shard boundary: each shard is cut into chunks of `chunkRows` vocabulary
 * rows (its last chunk shorter), so a chunk's weight is a row slice of one shard, or the shard
 * itself when it fits in one chunk (no copy at all).
 */
import * as tf from '../tf.ts';

/** Default bound on one [N, Vc] float32 logits chunk. */
export const DEFAULT_CHUNK_BYTES = 64 * 2 ** 20;

const FLOAT_BYTES = 4;

/** Rows of the vocabulary per chunk, so that one [N, rows] float32 chunk stays under chunkBytes. */
export function chunkRows(N: number, chunkBytes = DEFAULT_CHUNK_BYTES): number {
  return Math.max(1, Math.floor(chunkBytes / (FLOAT_BYTES * N)));
}

/** One vocabulary chunk: rows [start, start + rows) of shard `shard`, global rows from `offset`. */
interface VocabChunk {
  shard: number;
  start: number;
  rows: number;
  offset: number;
}

function vocabChunks(shardRows: number[], rowsPerChunk: number): VocabChunk[] {
  const chunks: VocabChunk[] = [];
  let offset = 0;
  shardRows.forEach((rows, shard) => {
    for (let start = 0; start < rows; start += rowsPerChunk) {
      chunks.push({ shard, start, rows: Math.min(rowsPerChunk, rows - start), offset: offset + start });
    }
    offset += rows;
  });
  return chunks;
}

/** The chunk's weight rows [Vc, C]: the shard itself when the chunk is all of it, else a slice. */
function chunkWeight(shards: tf.Tensor2D[], c: VocabChunk): tf.Tensor2D {
  const shard = shards[c.shard];
  return c.rows === shard.shape[0] ? shard : tf.slice(shard, [c.start, 0], [c.rows, shard.shape[1]]);
}

/**
 * Where each row's target falls in the chunk: `index` [N] int32, the target's column in the chunk
 * (clamped into it, so it is always a valid index), and `inChunk` [N] float32, 1 where the target
 * really is in this chunk and 0 elsewhere.
 */
function targetsInChunk(targets: tf.Tensor1D, c: VocabChunk): { index: tf.Tensor1D; inChunk: tf.Tensor1D } {
  const local = tf.sub(targets, tf.scalar(c.offset, 'int32'));
  const inChunk = tf.cast(tf.logicalAnd(tf.greaterEqual(local, tf.scalar(0, 'int32')), tf.less(local, tf.scalar(c.rows, 'int32'))), 'float32');
  const index = tf.minimum(tf.maximum(local, tf.scalar(0, 'int32')), tf.scalar(c.rows - 1, 'int32'));
  return { index: index as tf.Tensor1D, inChunk: inChunk as tf.Tensor1D };
}

/** Shape errors name the argument at fault: a mismatch here would otherwise surface as a matMul error deep in a chunk. */
function checkShapes(h: tf.Tensor2D, shards: tf.Tensor2D[], targets: tf.Tensor1D, weights: tf.Tensor1D): void {
  const [N, C] = h.shape;
  if (h.rank !== 2) throw new Error(`linearCrossEntropy: h must be [N, C], got [${h.shape}]`);
  if (shards.length === 0) throw new Error('linearCrossEntropy: weightShards is empty; pass at least one [V, C] shard');
  shards.forEach((s, i) => {
    if (s.rank !== 2 || s.shape[1] !== C) throw new Error(`linearCrossEntropy: weightShards[${i}] is [${s.shape}], expected [rows, ${C}] to match h [${h.shape}]`);
  });
  if (targets.shape.join() !== `${N}` || targets.dtype !== 'int32') throw new Error(`linearCrossEntropy: targets must be int32 [${N}], got ${targets.dtype} [${targets.shape}]`);
  if (weights.shape.join() !== `${N}`) throw new Error(`linearCrossEntropy: weights must be [${N}], got [${weights.shape}]`);
}

/**
 * Σᵢ wᵢ·(logsumexp(h_i·Wᵀ) − h_i·W[tᵢ]) for h [N, C] and W [V, C] given as row shards `weightShards` (W = concat(shards, 0);
 * one shard is the common case; several when one tensor would exceed a GPU binding limit), targets [N] int32 in [0, V),
 * weights [N] float32. Gradient to h always; to the shards only when `trainableWeight` is true (a frozen embedding/lm_head
 * gets none and costs no dW product). `targets` and `weights` get no gradient.
 */
export function linearCrossEntropy(
  h: tf.Tensor2D,
  weightShards: tf.Tensor2D[],
  targets: tf.Tensor1D,
  weights: tf.Tensor1D,
  opts: { trainableWeight?: boolean; chunkBytes?: number } = {},
): tf.Scalar {
  checkShapes(h, weightShards, targets, weights);
  const trainable = opts.trainableWeight ?? false;
  const [N, C] = h.shape;
  const chunks = vocabChunks(weightShards.map((s) => s.shape[0]), chunkRows(N, opts.chunkBytes));
  // i·Vc, to pick zᵢ[tᵢ] from a chunk's flattened logits (causal-lm.ts picks from the full logits the same way).
  const rowStarts = (rows: number) => tf.mul(tf.range(0, N, 1, 'int32'), tf.scalar(rows, 'int32'));

  const forward = (x: tf.Tensor2D, shards: tf.Tensor2D[]) => {
    let rowMax: tf.Tensor1D | null = null; // running max over the chunks so far, [N]
    let sumExp: tf.Tensor1D | null = null; // running Σ exp(z − rowMax), [N]
    let picked: tf.Tensor1D | null = null; // zᵢ[tᵢ], filled in by the chunk that holds tᵢ, [N]
    for (const c of chunks) {
      const next = tf.tidy(() => {
        const z = tf.matMul(x, chunkWeight(shards, c), false, true); // [N, Vc]
        // Each [N, Vc] tensor is disposed as soon as it is read, so that no more than two are alive
        // at once. That includes the flat view: tfjs' engine counts a reshape's bytes again.
        const { index, inChunk } = targetsInChunk(targets, c);
        const flat = z.reshape([N * c.rows]);
        const zt = tf.mul(tf.gather(flat, tf.add(rowStarts(c.rows), index)), inChunk);
        flat.dispose();
        const chunkMax = tf.max(z, 1) as tf.Tensor1D;
        const max = rowMax ? tf.maximum(rowMax, chunkMax) : chunkMax;
        const shifted = tf.sub(z, max.reshape([N, 1]));
        z.dispose();
        const e = tf.exp(shifted);
        shifted.dispose();
        const chunkSum = tf.sum(e, 1);
        e.dispose();
        // Rescale the old sum to the new max: Σ exp(z − m_old)·exp(m_old − m_new).
        const sum = rowMax && sumExp ? tf.add(tf.mul(sumExp, tf.exp(tf.sub(rowMax, max))), chunkSum) : chunkSum;
        return [max, sum, picked ? tf.add(picked, zt) : zt] as tf.Tensor1D[];
      });
      tf.dispose([rowMax, sumExp, picked].filter((t): t is tf.Tensor1D => t != null));
      [rowMax, sumExp, picked] = next;
    }
    const lse = tf.add(tf.log(sumExp!), rowMax!) as tf.Tensor1D; // [N]
    const value = tf.sum(tf.mul(tf.sub(lse, picked!), weights)) as tf.Scalar;
    return { value, lse };
  };

  /** dh and, when trainable, one dW per shard: each chunk's logits recomputed and used at once. */
  const backward = (dy: tf.Tensor, x: tf.Tensor2D, lse: tf.Tensor1D, targets: tf.Tensor1D, weights: tf.Tensor1D, shards: tf.Tensor2D[]) => {
    const scale = tf.mul(weights, dy) as tf.Tensor1D; // wᵢ·dy, [N]
    const scaleColumn = scale.reshape([N, 1]);
    const lseColumn = lse.reshape([N, 1]);
    let dh: tf.Tensor2D = tf.zeros([N, C]);
    const dShardPieces: tf.Tensor2D[][] = shards.map(() => []);
    for (const c of chunks) {
      const [nextDh, dwc] = tf.tidy(() => {
        const wc = chunkWeight(shards, c);
        const z = tf.matMul(x, wc, false, true); // [N, Vc]
        const shifted = tf.sub(z, lseColumn);
        z.dispose();
        const p = tf.exp(shifted); // softmax
        shifted.dispose();
        const g = tf.mul(p, scaleColumn); // wᵢ·dy·softmax, [N, Vc]
        p.dispose();
        // The −wᵢ·dy at the target column goes straight into the products (−wᵢ·dy·W[tᵢ] for dh,
        // −wᵢ·dy·hᵢ scattered to row tᵢ of dW) rather than into g: no [N, Vc] one-hot is built.
        const { index, inChunk } = targetsInChunk(targets, c);
        const targetScale = tf.mul(scale, inChunk).reshape([N, 1]);
        const dhChunk = tf.sub(tf.matMul(g, wc), tf.mul(tf.gather(wc, index), targetScale)); // [N, C]
        const out: tf.Tensor2D[] = [tf.add(dh, dhChunk)];
        if (trainable) {
          const targetRows = tf.scatterND(index.reshape([N, 1]), tf.mul(x, targetScale), [c.rows, C]);
          out.push(tf.sub(tf.matMul(g, x, true, false), targetRows)); // [Vc, C]
        }
        return out;
      });
      dh.dispose();
      dh = nextDh;
      if (dwc) dShardPieces[c.shard].push(dwc);
    }
    tf.dispose([scale, scaleColumn, lseColumn]);
    if (!trainable) return [dh];
    const dShards = dShardPieces.map((pieces) => {
      if (pieces.length === 1) return pieces[0];
      const whole = tf.concat(pieces, 0);
      tf.dispose(pieces);
      return whole;
    });
    return [dh, ...dShards];
  };

  // A frozen weight is captured here rather than passed in, so the tape never asks for its gradient.
  const op = tf.customGrad(((...args: unknown[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    const [x, ...inputShards] = args as tf.Tensor2D[];
    const shards = trainable ? inputShards : weightShards;
    const { value, lse } = forward(x, shards);
    // Everything the backward pass reads is saved, even what the closure holds: the engine disposes
    // the forward pass's intermediates (targets and weights built inside a training step, say)
    // before it runs gradients, but keeps what was saved. Saved clones share their data: only
    // lse [N] is new memory.
    save([x, lse, targets, weights, ...shards]);
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [savedX, savedLse, savedTargets, savedWeights, ...savedShards] = saved;
        return backward(dy, savedX as tf.Tensor2D, savedLse as tf.Tensor1D, savedTargets as tf.Tensor1D, savedWeights as tf.Tensor1D, savedShards as tf.Tensor2D[]);
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (...inputs: tf.Tensor[]) => tf.Scalar;
  return trainable ? op(h, ...weightShards) : op(h);
}

/**
 * Bytes this op keeps for backward and its transient peak, vs the unfused path (logits + their
 * gradient), for the memory estimator. One shard and a frozen weight are assumed: a trainable
 * weight costs both paths the dW [V, C] itself, and the fused one also its per-chunk pieces before
 * they are concatenated (another V·C·4, not counted here).
 *
 * - unfused: saved = the logits [N, V]; transient = their gradient [N, V] (the wasm cross-entropy
 *   kernel's; tfjs' composite gradient holds several [N, V] tensors more).
 * - fused: saved = lse [N]; transient = two [N, Vc] chunks alive at once (logits → shifted →
 *   exp → scaled, each disposed once read), the chunk's weight slice [Vc, C] when W spans several
 *   chunks, and the old and new dh [N, C] while it accumulates.
 * Real memory, not tfjs' engine count: that counts the clones either path saves for backward (W's
 * among them, V·C·4) as if they were copies, though they share their data on cpu, wasm and webgpu.
 */
export function linearCrossEntropyBytes(N: number, V: number, C: number, fused: boolean, chunkBytes = DEFAULT_CHUNK_BYTES): { saved: number; transient: number } {
  if (!fused) return { saved: FLOAT_BYTES * N * V, transient: FLOAT_BYTES * N * V };
  const rows = Math.min(V, chunkRows(N, chunkBytes));
  const slice = rows < V ? rows * C : 0;
  return { saved: FLOAT_BYTES * N, transient: FLOAT_BYTES * (2 * N * rows + slice + 2 * N * C) };
}
