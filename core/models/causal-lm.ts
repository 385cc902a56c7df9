/**
 * What every causal LM in the project shares: the weight store, the linear-layer hook that
 * adapter methods plug into, the KV cache, attention masks and the causal-LM loss.
 * Architectures (llama.ts, gpt2.ts) only say how a block is wired.
 */
import * as tf from '../tf.ts';
import { expectedWeights, type ModelConfig } from './config.ts';
import { CROSS_ENTROPY_KERNELS } from '../backend/cross-entropy-kernels.ts';
import { fusedOpActive } from './fused-ops.ts';
import { recomputed, type CheckpointPlan } from './recompute.ts';
import { linearCrossEntropy } from './linear-cross-entropy.ts';

/** Logits of more bytes than this go through the chunked head + loss (linear-cross-entropy.ts) instead of one tensor. */
export const CHUNKED_LOGITS_ABOVE_BYTES = 512 * 1024 ** 2;
import { FrozenWeight, frozenGather, frozenLinear, frozenLinearCrossEntropy } from './frozen-weight.ts';

/**
 * An adapter replaces how one linear module computes its output. `base` computes the frozen
 * layer (x·Wᵀ + b), so LoRA-style methods add to it and others (DoRA, ...) may rescale it.
 */
export interface LinearAdapter {
  /**
   * x [N, in] -> [N, out]. `weight()` gives the frozen weight as stored ([out, in], or [in, out] for
   * GPT-2's Conv1D: see CausalLM.isTransposedLinear), materialised for the enclosing tf.tidy when it
   * lives in native memory (only DoRA's forward needs it); `training` switches dropout on.
   */
  apply(x: tf.Tensor2D, base: (x: tf.Tensor2D) => tf.Tensor2D, weight: () => tf.Tensor2D, training: boolean): tf.Tensor2D;
}

/** Keys and values per layer, [B, kvHeads, S, headDim], after RoPE. */
export type KVCache = {
  keys: tf.Tensor4D[];
  values: tf.Tensor4D[];
  /** Number of positions already cached. */
  length: number;
};

export interface ForwardOptions {
  /** [B, S_total] 1 = attend, 0 = padding; S_total = cache length + T. */
  attentionMask?: tf.Tensor2D;
  /** Read and extended; the result's cache holds the new tensors (the caller disposes the old). */
  cache?: KVCache;
  /** Return a cache even when none was passed in (the first step of generation). */
  useCache?: boolean;
  /** Training mode hooks (dropout in adapters) read this. */
  training?: boolean;
  /** Logits of each row's last position only ([B, 1, V]): what generation reads. */
  lastPositionOnly?: boolean;
}

export interface ForwardResult {
  logits: tf.Tensor3D; // [B, T, V]
  cache?: KVCache;
}

export abstract class CausalLM {
  readonly config: ModelConfig;
  /**
   * Weights by the names in the checkpoint (GPT-2 normalised to the `transformer.` prefix), as tensors.
   * An entry here takes precedence over a frozen one of the same name (PiSSA's residual, full fine-tuning's variables).
   */
  readonly weights: Map<string, tf.Tensor>;
  /** Frozen base weights held in native memory (frozen-weight.ts), by the same names. */
  readonly frozen: Map<string, FrozenWeight>;
  /**
   * Weights too large for one GPU buffer binding (a 152 k-token embedding is 544 MB in float32, the
   * binding limit 128 MB on many adapters), held as row shards [rows_i, C] in order (loadModel's shardAbove).
   */
  readonly shards = new Map<string, tf.Tensor2D[]>();
  /** The backend's largest buffer binding (a GPU's maxStorageBufferBindingSize), or null where there is none. */
  maxBindingBytes: number | null = null;
  /** Adapter per full module path, e.g. `model.layers.0.self_attn.q_proj`. */
  readonly adapters = new Map<string, LinearAdapter>();
  training = false;
  /** Activation checkpointing per decoder layer while training (recompute.ts); null keeps every activation. */
  checkpointing: CheckpointPlan | null = null;
  /**
   * Told as each decoder layer finishes its forward and (under a gradient tape) its backward pass: a
   * first step of a large model takes minutes, and this is how a person sees it move. Called
   * synchronously, mid-step.
   */
  layerProgress: ((layer: number, layers: number, pass: 'forward' | 'backward') => void) | null = null;
  /**
   * Shown each decoder layer's output [B·T, C] as the forward pass makes it (inside the caller's tape
   * and tidy scope): how a distilling method (PELA) reads the student's and the teacher's block outputs.
   */
  layerOutputs: ((layer: number, x: tf.Tensor2D) => void) | null = null;

  constructor(config: ModelConfig, weights: Map<string, tf.Tensor>, frozen: Map<string, FrozenWeight> = new Map()) {
    this.config = config;
    this.weights = weights;
    this.frozen = frozen;
  }

  /** The hidden states after the final norm, [B·T, C], and the extended cache when asked for. */
  abstract hidden(ids: tf.Tensor2D, opts?: ForwardOptions): { hidden: tf.Tensor2D; cache?: KVCache };

  /** Name of the output projection's weight [V, C]: the token embedding when the head is tied. */
  abstract headWeightName(): string;

  /** Full paths of the linear modules adapters can wrap, in layer order. */
  abstract linearModules(): string[];

  /** Whether a linear module stores its weight [in, out] (GPT-2 Conv1D) instead of [out, in]. */
  abstract isTransposedLinear(modulePath: string): boolean;

  forward(ids: tf.Tensor2D, opts: ForwardOptions = {}): ForwardResult {
    const [B, T] = ids.shape;
    const { hidden, cache } = this.hidden(ids, opts);
    if (opts.lastPositionOnly) {
      const C = this.config.hiddenSize;
      const last = tf.slice(hidden.reshape([B, T, C]), [0, T - 1, 0], [B, 1, C]).reshape([B, C]) as tf.Tensor2D;
      return { logits: this.head(last).reshape([B, 1, this.config.vocabSize]), cache };
    }
    return { logits: this.head(hidden).reshape([B, T, this.config.vocabSize]), cache };
  }

  /** Mean next-token loss of `labels` (see causalLmLoss) without materialising [B·T, V] logits where the head allows. */
  loss(ids: tf.Tensor2D, labels: tf.Tensor2D, opts: ForwardOptions = {}): { loss: tf.Scalar; tokens: tf.Scalar } {
    const { hidden } = this.hidden(ids, opts);
    const { targets, weights, tokens } = nextTokenTargets(labels);
    const name = this.headWeightName();
    const adapted = name === 'lm_head.weight' && this.adapters.has('lm_head');
    const frozen = adapted || this.weights.has(name) ? undefined : this.frozen.get(name);
    if (frozen) return { loss: frozenLinearCrossEntropy(hidden, frozen, targets, weights), tokens };
    const shards = adapted ? undefined : this.shards.get(name);
    // A sharded head, or logits too large for one buffer: the projection and the loss in vocabulary chunks.
    const logitsLimit = Math.min(CHUNKED_LOGITS_ABOVE_BYTES, this.maxBindingBytes ?? Infinity);
    if (shards || (!adapted && hidden.shape[0] * this.config.vocabSize * 4 > logitsLimit)) {
      const w = shards ?? [this.weight(name) as tf.Tensor2D];
      return { loss: linearCrossEntropy(hidden, w, targets, weights, { trainableWeight: w.some((t) => t instanceof tf.Variable) }), tokens };
    }
    return { loss: weightedCrossEntropy(this.head(hidden), targets, weights), tokens };
  }

  /** Logits [N, V] of hidden states [N, C]. */
  head(hidden: tf.Tensor2D): tf.Tensor2D {
    const name = this.headWeightName();
    if (name === 'lm_head.weight' && (this.adapters.has('lm_head') || !this.shards.has(name))) return this.linear('lm_head', hidden);
    const shards = this.shards.get(name);
    if (shards) return tf.concat(shards.map((s) => tf.matMul(hidden, s, false, true)), 1) as tf.Tensor2D;
    const frozen = this.weights.has(name) ? undefined : this.frozen.get(name);
    return frozen ? frozenLinear(hidden, frozen) : tf.matMul(hidden, this.weight(name) as tf.Tensor2D, false, true);
  }

  /** Whether the model has the weight (loaded, frozen, or, for a model built without weights to plan a run, implied by config.json). */
  hasWeight(name: string): boolean {
    return this.weights.has(name) || this.frozen.has(name) || this.shards.has(name) || this.expectedShapes().has(name);
  }

  private shapes: Map<string, number[]> | null = null;
  private expectedShapes(): Map<string, number[]> {
    this.shapes ??= expectedWeights(this.config);
    return this.shapes;
  }

  /** Whether `name` is read from native memory (no tensor of it exists). */
  isFrozen(name: string): boolean {
    return !this.weights.has(name) && this.frozen.has(name);
  }

  weightShape(name: string): number[] {
    const w = this.weights.get(name);
    if (w) return w.shape;
    const f = this.frozen.get(name);
    if (f) return [...f.shape];
    const shards = this.shards.get(name);
    if (shards) return [shards.reduce((n, s) => n + s.shape[0], 0), shards[0].shape[1]];
    const expected = this.expectedShapes().get(name);
    if (!expected) throw new Error(`internal: model has no weight ${name}`);
    return expected;
  }

  /**
   * The weight as a tensor. A frozen weight is materialised as a new float32 tensor each call: call
   * this inside tf.tidy (or dispose the result when isFrozen(name)); for shapes use weightShape().
   */
  weight(name: string): tf.Tensor {
    const w = this.weights.get(name);
    if (w) return w;
    const shards = this.shards.get(name);
    if (shards) return tf.concat(shards, 0);
    const f = this.frozen.get(name);
    if (!f) throw new Error(`internal: weight ${name} not loaded`);
    return f.toTensor();
  }

  /**
   * x through every decoder layer, checkpointing those the plan names (recompute.ts) while training
   * without a cache. `constants` are the tensors the layers read that this forward pass creates (RoPE
   * tables, the mask): a recomputed layer gets the saved copies, so `layer` takes them as arguments.
   */
  protected decoderStack(
    x: tf.Tensor2D,
    wantCache: boolean,
    constants: tf.Tensor[],
    layer: (i: number, x: tf.Tensor2D, constants: tf.Tensor[]) => tf.Tensor2D,
  ): tf.Tensor2D {
    const plan = this.checkpointing && this.training && !wantCache ? this.checkpointing : null;
    for (let i = 0; i < this.config.numLayers; i++) {
      const y = plan?.checkpointed(i)
        ? recomputed((input, saved) => layer(i, input, saved), x, constants, plan.layerVariables(i), plan.random)
        : layer(i, x, constants);
      x = this.afterLayer(i, y);
      this.layerOutputs?.(i, x);
    }
    return x;
  }

  /** Reports layer i's forward pass, and marks x so that its backward pass reports too (layerProgress). */
  protected afterLayer(i: number, x: tf.Tensor2D): tf.Tensor2D {
    const progress = this.layerProgress;
    if (!progress) return x;
    const layers = this.config.numLayers;
    progress(i + 1, layers, 'forward');
    const marked = tf.customGrad(((input: tf.Tensor2D) => ({
      value: tf.clone(input),
      gradFunc: (dy: tf.Tensor) => {
        progress(i + 1, layers, 'backward');
        return dy;
      },
    })) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (input: tf.Tensor2D) => tf.Tensor2D;
    return marked(x);
  }

  /** Rows of an embedding [V, C] for ids [N] → [N, C]. */
  protected embed(name: string, ids: tf.Tensor1D): tf.Tensor2D {
    const shards = this.shards.get(name);
    if (shards) {
      // Each shard serves the ids in its row range; the others read a clamped row and are masked out.
      let start = 0;
      let sum: tf.Tensor2D | null = null;
      for (const shard of shards) {
        const rows = shard.shape[0];
        const int = (v: number) => tf.scalar(v, 'int32');
        const local = tf.sub(ids, int(start));
        const inside = tf.logicalAnd(tf.greaterEqual(local, int(0)), tf.less(local, int(rows)));
        const clamped = tf.minimum(tf.maximum(local, int(0)), int(rows - 1));
        const picked = tf.mul(tf.gather(shard, clamped), tf.cast(inside, 'float32').expandDims(1)) as tf.Tensor2D;
        sum = sum ? tf.add(sum, picked) : picked;
        start += rows;
      }
      return sum!;
    }
    const frozen = this.weights.has(name) ? undefined : this.frozen.get(name);
    return frozen ? frozenGather(ids, frozen) : (tf.gather(this.weight(name), ids) as tf.Tensor2D);
  }

  /** x [N, in] -> [N, out] through module `path`, via its adapter if one is attached. */
  protected linear(path: string, x: tf.Tensor2D): tf.Tensor2D {
    const name = `${path}.weight`;
    const tensor = this.weights.get(name) as tf.Tensor2D | undefined;
    const frozen = tensor ? undefined : this.frozen.get(name);
    if (!tensor && !frozen) throw new Error(`internal: weight ${name} not loaded`);
    const b = this.weights.get(`${path}.bias`);
    const transposed = this.isTransposedLinear(path);
    const base = (input: tf.Tensor2D): tf.Tensor2D => {
      const y: tf.Tensor2D = frozen ? frozenLinear(input, frozen, transposed) : tf.matMul(input, tensor!, false, !transposed);
      return b ? (tf.add(y, b) as tf.Tensor2D) : y;
    };
    const adapter = this.adapters.get(path);
    return adapter ? adapter.apply(x, base, () => tensor ?? frozen!.toTensor(), this.training) : base(x);
  }

  /** Bytes of the frozen weights in native memory. */
  frozenBytes(): number {
    let bytes = 0;
    for (const f of this.frozen.values()) bytes += f.bytes;
    return bytes;
  }

  dispose(): void {
    for (const t of this.weights.values()) t.dispose();
    this.weights.clear();
    for (const f of this.frozen.values()) f.dispose();
    this.frozen.clear();
    for (const list of this.shards.values()) for (const t of list) t.dispose();
    this.shards.clear();
  }
}

export function disposeCache(cache: KVCache | undefined): void {
  if (!cache) return;
  for (const t of cache.keys) t.dispose();
  for (const t of cache.values) t.dispose();
}

/**
 * Additive attention mask [B or 1, 1, T, S]: 0 where query t (at absolute position past+t) may see
 * key s, a large negative number elsewhere. Causal; padding from attentionMask; optional sliding
 * window where key s is visible only when s > position - window (transformers' convention).
 */
export function attentionBias(
  B: number,
  T: number,
  past: number,
  attentionMask: tf.Tensor2D | undefined,
  slidingWindow: number | null,
): tf.Tensor4D {
  const S = past + T;
  const causal = new Float32Array(T * S);
  for (let t = 0; t < T; t++) {
    const pos = past + t;
    for (let s = 0; s < S; s++) {
      const visible = s <= pos && (slidingWindow === null || s > pos - slidingWindow);
      causal[t * S + s] = visible ? 0 : -1e9;
    }
  }
  const bias = tf.tensor4d(causal, [1, 1, T, S]);
  if (!attentionMask) return bias;
  // Padding keys get -1e9 too; [B, S] -> [B, 1, 1, S].
  const pad = tf.mul(tf.sub(1, tf.cast(attentionMask, 'float32')), -1e9).reshape([B, 1, 1, S]);
  return tf.add(bias, pad) as tf.Tensor4D;
}

/**
 * Σᵢ wᵢ·(logsumexp(zᵢ) − zᵢ[tᵢ]) over rows of logits z [N, V], with a hand-written gradient
 * wᵢ·(softmax(zᵢ) − onehot(tᵢ)). One fused op instead of tfjs' generic softmax cross-entropy: no
 * one-hot labels in the forward pass, one exp over the logits each way, and nothing [N, V]-sized
 * kept for the backward pass but the logits themselves. `targets` and `weights` get no gradient.
 */
const compositeWeightedCrossEntropy = tf.customGrad(((logits: tf.Tensor2D, targets: tf.Tensor1D, weights: tf.Tensor1D, save: tf.GradSaveFunc) => {
  const [N, V] = logits.shape;
  const max = tf.max(logits, 1, true); // [N, 1]
  const logSumExp = tf.add(tf.log(tf.sum(tf.exp(tf.sub(logits, max)), 1, true)), max); // [N, 1]
  // zᵢ[tᵢ] by gathering from the flat logits at i·V + tᵢ.
  const picked = tf.gather(logits.reshape([N * V]), tf.add(tf.mul(tf.range(0, N, 1, 'int32'), tf.scalar(V, 'int32')), targets));
  const value = tf.sum(tf.mul(tf.sub(logSumExp.reshape([N]), picked), weights));
  save([logits, logSumExp, targets, weights]);
  return {
    value,
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [z, lse, t, w] = saved as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D, tf.Tensor1D];
      const softmax = tf.exp(tf.sub(z, lse));
      const grad = tf.mul(tf.sub(softmax, tf.oneHot(t, V)), tf.mul(w, dy).reshape([N, 1]));
      return [grad, tf.zerosLike(t), tf.zerosLike(w)];
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (
  logits: tf.Tensor2D,
  targets: tf.Tensor1D,
  weights: tf.Tensor1D,
) => tf.Scalar;

/**
 * The same loss as one fused kernel each way (core/backend/cross-entropy-kernels.ts: two passes
 * over the logits forward, one backward, natively vectorised where the addon is built), where the
 * active backend has them (wasm with the project's kernels).
 */
const fusedWeightedCrossEntropy = tf.customGrad(((logits: tf.Tensor2D, targets: tf.Tensor1D, weights: tf.Tensor1D, save: tf.GradSaveFunc) => {
  const [loss, lse] = tf.engine().runKernel(CROSS_ENTROPY_KERNELS.forward, { logits, targets, weights }) as tf.Tensor[];
  save([logits, targets, weights, lse]);
  return {
    value: loss,
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [z, t, w, l] = saved;
      const grad = tf.engine().runKernel(CROSS_ENTROPY_KERNELS.grad, { logits: z, targets: t, weights: w, lse: l, dy }) as tf.Tensor;
      return [grad, tf.zerosLike(t), tf.zerosLike(w)];
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as typeof compositeWeightedCrossEntropy;

export function weightedCrossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D, weights: tf.Tensor1D): tf.Scalar {
  return fusedOpActive('crossEntropy')
    ? fusedWeightedCrossEntropy(logits, targets, weights)
    : compositeWeightedCrossEntropy(logits, targets, weights);
}

/** The composite form on any backend: the reference the fused kernels are tested against. */
export { compositeWeightedCrossEntropy };

/**
 * Mean next-token cross-entropy: logits[:, t] predicts labels[:, t+1]; labels equal to -100
 * are ignored, as in transformers. The labels are shifted (not the logits, which would copy the
 * largest tensor of the step); the last position has no target. Returns the scalar loss and the
 * number of predicted tokens.
 */
export function causalLmLoss(logits: tf.Tensor3D, labels: tf.Tensor2D): { loss: tf.Scalar; tokens: tf.Scalar } {
  const [B, T, V] = logits.shape;
  const { targets, weights, tokens } = nextTokenTargets(labels);
  const loss = weightedCrossEntropy(logits.reshape([B * T, V]), targets, weights);
  return { loss, tokens };
}

/**
 * For labels [B, T]: the target of each position (the next label, 0 where none), its weight in the
 * mean (1/tokens where a target is taken, 0 elsewhere) and the token count.
 */
export function nextTokenTargets(labels: tf.Tensor2D): { targets: tf.Tensor1D; weights: tf.Tensor1D; tokens: tf.Scalar } {
  const [B, T] = labels.shape;
  const next = tf.concat([tf.slice(labels, [0, 1], [B, T - 1]), tf.fill([B, 1], -100, 'int32')], 1).reshape([B * T]);
  const valid = tf.cast(tf.notEqual(next, -100), 'float32');
  const tokens = tf.sum(valid) as tf.Scalar;
  const targets = tf.mul(tf.cast(next, 'int32'), tf.cast(valid, 'int32')) as tf.Tensor1D;
  const weights = tf.div(valid, tf.maximum(tokens, 1)) as tf.Tensor1D;
  return { targets, weights, tokens };
}
