/**
 * SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank Adaptation
 * (Hu et al., arXiv:2409.06633), as the official code runs it (sjtuplayer/SaRA: optim/adamw.py
 * `Sparse`, `AdamW`, `nuclear_norm`, `save_params`; optim/adamw2.py `update_mask`, `step`;
 * examples/finetune.py; ALGORITHMS.md "SaRA"), on the target linear weights of a language model:
 *   M = |W₀| < ε, fixed once on the pretrained values (or, with selection = fraction, the smallest
 *   |w| of each matrix: the paper's "smallest 10–20 %"). The trainable leaf is p = W[M], a 1-D
 *   tensor of |M| values starting at W₀[M]; every other entry stays W₀, bit for bit:
 *     W = W₀ + scatter(p − W₀[M])        (stored layout; the update is elementwise)
 *   The gradient reaching p is the dense ∂L/∂W gathered at M ("unstructured backprop": the dense
 *   gradient exists only transiently inside the layer's backward); AdamW's moments, like p's
 *   gradient, hold |M| values — the memory saving.
 *   Rank term λ·‖W_k ⊙ M_k‖_* added to the training loss, k drawn uniformly each step among the
 *   targets with min(out, in) > 64 (and more than 100 selected entries, adamw2), its (sub)gradient
 *   U·Vᵀ gathered at M, both from one float64 eigendecomposition of the small Gram matrix on the CPU
 *   (tfjs has no SVD; see nuclearNormAndGradient).
 *   Progressive adjustment at optimizer step T_p + 1: M' = (|W_T| < ε) ∧ M; entries that grew past
 *   ε freeze at their value (restored after every later step), the rest train on with their Adam
 *   state kept.
 * Choices where the official code has two paths (ALGORITHMS.md): the default "unstructured
 * backprop" path computes the rank term on tensors its optimizer does not hold, so the term has no
 * effect there; only the `--disable_ub` path (adamw2) applies it and keeps Adam state across the
 * re-selection. Here the term acts and the re-selection follows adamw2, with UB's memory layout.
 * T_p = 2500 of finetune.sh's 5005 steps: here a fraction of the run, 0.5. p starts at W₀[M], not at
 * |W₀[M]| (adamw.py writes |p| at construction, a quirk only its first forward sees). The official
 * weight decay is 1e-2 on p; the run's --weight-decay applies here (decoupled, as AdamW).
 *
 * Export: ΔW is sparse, not low-rank, so no PEFT LoRA represents it exactly: merged weights only.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import { symmetricEigen } from '../linalg/symmetric-eigen.ts';
import { AdamW } from '../optim/adamw.ts';
import type { Optimizer, OptimizerState } from '../optim/registry.ts';
import type { AttachedMethod, Method, TrainingStep } from './method.ts';
import { InitialValues } from './initial-values.ts';
import { linearTargets, type LinearTarget } from './factored-adapter.ts';
import { assignValues, variableFrom } from './lora.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

const VALUES = 'sara_values';

/** Row-major flat indices of the selected entries of a stored weight, ascending. */
export function selectEntries(weight: Float32Array, selection: 'threshold' | 'fraction', threshold: number, fraction: number): { indices: Int32Array; epsilon: number } {
  if (selection === 'threshold') {
    const picked: number[] = [];
    for (let i = 0; i < weight.length; i++) if (Math.abs(weight[i]) < threshold) picked.push(i);
    return { indices: Int32Array.from(picked), epsilon: threshold };
  }
  const count = Math.round(fraction * weight.length);
  const order = Array.from(weight.keys()).sort((a, b) => Math.abs(weight[a]) - Math.abs(weight[b]) || a - b);
  const indices = Int32Array.from(order.slice(0, count)).sort();
  // The matrix's own ε: entries at or above the largest selected |w| count as grown past it.
  const epsilon = count === 0 ? 0 : Math.abs(weight[order[count - 1]]) * (1 + 2 ** -20) + Number.MIN_VALUE;
  return { indices, epsilon };
}

/** The re-selection mask, all ones: a variable that gets no gradient. */
function maskVariable(size: number): tf.Variable<tf.Rank.R1> {
  const ones = tf.ones([size]) as tf.Tensor1D;
  const v = tf.variable(ones, false);
  ones.dispose();
  return v;
}

interface SaraLayer {
  readonly target: LinearTarget;
  readonly shape: [number, number]; // stored
  readonly indices: tf.Tensor1D; // [|M|] int32, into the flattened stored weight
  readonly flat: Int32Array;
  readonly start: tf.Tensor1D; // W₀[M]
  readonly values: tf.Variable<tf.Rank.R1>; // p = W[M]
  readonly active: tf.Variable<tf.Rank.R1>; // 1 where p still trains (M'), else 0
  readonly epsilon: number;
  /** p before the step, while some entries are frozen. */
  before: tf.Tensor1D | null;
}

/**
 * values [|M|] -> the dense flat [size] with values at `indices`, zeros elsewhere; the gradient back
 * to values is the dense gradient gathered at M (tfjs has no gradient for scatterND).
 */
function scatterDense(values: tf.Tensor1D, indices: tf.Tensor1D, size: number): tf.Tensor1D {
  const op = tf.customGrad(((v: tf.Tensor1D) => {
    return {
      value: tf.scatterND(tf.reshape(indices, [-1, 1]), v, [size]) as tf.Tensor1D,
      gradFunc: (dy: tf.Tensor1D) => [tf.gather(dy, indices)],
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (v: tf.Tensor1D) => tf.Tensor1D;
  return op(values);
}

/** The sparse update W − W₀ in the stored layout (dense; its gradient to p is a gather). */
function deltaWeight(layer: SaraLayer): tf.Tensor2D {
  const flat = scatterDense(tf.sub(layer.values, layer.start) as tf.Tensor1D, layer.indices, layer.shape[0] * layer.shape[1]);
  return tf.reshape(flat, layer.shape) as tf.Tensor2D;
}

/**
 * ‖X‖_* and (U·Vᵀ)[M] for X = scatter(p ⊙ active) (stored layout: a Conv1D's [in, out] is the
 * transpose of [out, in], with the same singular values and the transposed U·Vᵀ, so the value and
 * the gradient at each entry are the same). From the Gram matrix of the shorter side, G = X·Xᵀ
 * (or XᵀX) = Q·diag(σ²)·Qᵀ, one O(d³) symmetric eigendecomposition (d = min(out, in)) instead of a
 * Jacobi SVD of X: ‖X‖_* = Σσ, U·Vᵀ = Q·diag(1/σ)·Qᵀ·X (or X·Q·diag(1/σ)·Qᵀ). Directions with
 * σ ≤ 1e-7·σ_max (σ² at float64 rounding) take 0, a valid subgradient.
 */
export function nuclearNormAndGradient(flat: Int32Array, values: ArrayLike<number>, rows: number, cols: number): { value: number; gradient: Float64Array } {
  const wide = rows <= cols;
  const d = wide ? rows : cols;
  // Nonzeros grouped by the longer side's index: [shorter-side index, value] pairs.
  const groups = new Map<number, Array<[number, number]>>();
  for (let k = 0; k < flat.length; k++) {
    if (values[k] === 0) continue;
    const i = Math.floor(flat[k] / cols);
    const j = flat[k] % cols;
    const [short, long] = wide ? [i, j] : [j, i];
    const group = groups.get(long) ?? [];
    group.push([short, values[k]]);
    groups.set(long, group);
  }
  const gram = new Float64Array(d * d);
  for (const group of groups.values()) {
    for (const [s1, v1] of group) for (const [s2, v2] of group) gram[s1 * d + s2] += v1 * v2;
  }
  const { values: lambda, vectors: Q } = symmetricEigen(gram, d);
  const cutoff = Math.max(lambda[d - 1] ?? 0, 0) * 1e-14;
  const inverse = new Float64Array(d);
  let value = 0;
  for (let k = 0; k < d; k++) {
    if (!(lambda[k] > cutoff) || lambda[k] <= 0) continue;
    const sigma = Math.sqrt(lambda[k]);
    value += sigma;
    inverse[k] = 1 / sigma;
  }
  // P = Q·diag(1/σ)·Qᵀ [d, d]
  const P = new Float64Array(d * d);
  for (let s = 0; s < d; s++) {
    for (let t = s; t < d; t++) {
      let sum = 0;
      for (let k = 0; k < d; k++) if (inverse[k] !== 0) sum += Q[s * d + k] * inverse[k] * Q[t * d + k];
      P[s * d + t] = sum;
      P[t * d + s] = sum;
    }
  }
  const gradient = new Float64Array(flat.length);
  for (let k = 0; k < flat.length; k++) {
    const i = Math.floor(flat[k] / cols);
    const j = flat[k] % cols;
    const [short, long] = wide ? [i, j] : [j, i];
    let sum = 0;
    for (const [t, v] of groups.get(long) ?? []) sum += P[short * d + t] * v;
    gradient[k] = sum;
  }
  return { value, gradient };
}

/** ‖X‖_* of X = scatter(p ⊙ active) with gradient (U·Vᵀ)[M] ⊙ active to p. */
function nuclearNorm(layer: SaraLayer): tf.Scalar {
  const [rows, cols] = layer.shape;
  const op = tf.customGrad(((values: tf.Tensor1D, active: tf.Tensor1D) => {
    const p = values.dataSync();
    const a = active.dataSync();
    const { value, gradient } = nuclearNormAndGradient(layer.flat, Float64Array.from(p, (v, k) => v * a[k]), rows, cols);
    const grad = Float32Array.from(gradient, (g, k) => (a[k] === 0 ? 0 : g));
    return {
      value: tf.scalar(value),
      gradFunc: (dy: tf.Scalar) => [tf.mul(tf.tensor1d(grad), dy), tf.zerosLike(active)],
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (values: tf.Tensor1D, active: tf.Tensor1D) => tf.Scalar;
  return op(layer.values, layer.active);
}

/** AdamW on p, with the re-selected masks as part of its state (they change once, at T_p). */
class SaraOptimizer implements Optimizer {
  constructor(private readonly adam: AdamW, private readonly layers: SaraLayer[]) {}
  get stepCount(): number {
    return this.adam.stepCount;
  }
  step(grads: Map<string, tf.Tensor>, lr: number): void {
    this.adam.step(grads, lr);
  }
  stateBytes(): number {
    return this.adam.stateBytes() + this.layers.reduce((n, l) => n + 4 * l.active.size, 0);
  }
  getWeights(): OptimizerState {
    const state = this.adam.getWeights();
    const tensors = new Map(state.tensors);
    for (const l of this.layers) tensors.set(`${l.target.path}.sara_active`, l.active);
    return { step: state.step, tensors };
  }
  setWeights(state: OptimizerState): void {
    this.adam.setWeights(state);
    for (const l of this.layers) {
      const saved = state.tensors.get(`${l.target.path}.sara_active`);
      if (saved) l.active.assign(saved as tf.Tensor1D);
    }
  }
  dispose(): void {
    this.adam.dispose();
  }
}

/** An attached SaRA: `selected` is |M| per module, `activeCount` |M'| (after the re-selection). */
export interface SaraAttached extends AttachedMethod {
  selected(): Map<string, number>;
  activeCount(): Map<string, number>;
}

export const sara: Method = {
  id: 'sara',
  family: 'adapter',
  paper: { title: 'SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank Adaptation', year: 2024, url: 'https://arxiv.org/abs/2409.06633' },
  summary: 'Train only the smallest-magnitude entries of each weight (|w| < ε) as a sparse update with a nuclear-norm term, freezing those that grow past ε halfway; gradients and Adam state only for the selected entries.',
  paperLearningRate: { value: 1e-3 * Math.exp(-350 * 2e-3), source: 'sjtuplayer/SaRA examples/finetune.py: lr = 1e-3·exp(−350·ε) ≈ 4.97e-4 at finetune.sh’s ε = 2e-3 (ALGORITHMS.md SaRA (c))' },
  parameterPrefix: 'sara_',
  // SaRA trains every parameter tensor of the model: here every linear layer.
  defaultTargets: 'all-linear',
  // finetune.sh / finetune.py: ε = 2e-3, λ_rank = 5e-4, T_p = 2500 of 5005 steps, lr = 1e-3·exp(−350ε).
  schema: [
    { name: 'selection', type: 'enum', default: 'threshold', choices: ['threshold', 'fraction'], description: 'threshold: entries with |w| < ε (the code); fraction: the smallest-|w| share of each matrix (the paper’s 10–20 %)' },
    { name: 'threshold', type: 'number', default: 2e-3, min: 0, description: 'ε: entries with |W₀| < ε train (selection = threshold)' },
    { name: 'fraction', type: 'number', default: 0.1, min: 0, max: 1, description: 'share of each matrix that trains (selection = fraction)' },
    { name: 'nuclear_lambda', type: 'number', default: 5e-4, min: 0, description: 'λ_rank, weight of the nuclear norm of one random selected matrix per step' },
    { name: 'nuclear_min_dim', type: 'integer', default: 64, min: 0, description: 'the rank term draws from matrices with min(out, in) above this' },
    { name: 'progressive_at', type: 'number', default: 0.5, min: 0, max: 1, description: 'T_p as a share of the run: then entries with |w| ≥ ε freeze (1 = never)' },
  ],
  mergeable: true,
  exportFormats: ['merged'],

  attach(model, given, ctx): SaraAttached {
    const params = resolveParams('sara', sara.schema, given);
    const lambda = params.nuclear_lambda as number;
    const minDim = params.nuclear_min_dim as number;
    const progressiveAt = params.progressive_at as number;
    const targets = linearTargets(model, 'sara', ctx.targets);
    const initial = InitialValues.from(ctx.initial);
    const random = new Random((ctx.seed ^ 0x5a4a) >>> 0);
    const layers: SaraLayer[] = [];
    const trainable = new Map<string, tf.Variable>();
    let chosen: SaraLayer | null = null;

    const detach = () => {
      for (const l of layers) {
        model.adapters.delete(l.target.path);
        for (const t of [l.indices, l.start, l.values, l.active, l.before]) t?.dispose();
      }
      layers.length = 0;
      trainable.clear();
    };

    try {
      for (const target of targets) {
        const name = `${target.path}.weight`;
        const stored = tf.tidy(() => model.weight(name).dataSync() as Float32Array);
        const shape = model.weightShape(name) as [number, number];
        const { indices, epsilon } = selectEntries(stored, params.selection as 'threshold' | 'fraction', params.threshold as number, params.fraction as number);
        if (indices.length === 0) continue; // nothing of this matrix is below ε: it stays W₀
        const start = Float32Array.from(indices, (i) => stored[i]);
        const layer: SaraLayer = {
          target,
          shape,
          indices: tf.tensor1d(indices, 'int32'),
          flat: indices,
          start: tf.tensor1d(start),
          values: variableFrom(tf.tensor1d(start)),
          active: maskVariable(indices.length),
          epsilon,
          before: null,
        };
        layers.push(layer);
        if (initial) assignValues(layer.values, initial.take(`${target.path}.${VALUES}`, [indices.length]));
        trainable.set(`${target.path}.${VALUES}`, layer.values);
        model.adapters.set(target.path, {
          // x·ΔWᵀ for [out, in], x·ΔW for a Conv1D stored [in, out].
          apply: (x, base) => tf.add(base(x), tf.matMul(x, deltaWeight(layer), false, !target.transposed)),
        });
      }
      if (layers.length === 0) {
        throw new LowrankError('BAD_ARGUMENT', `method sara: no entry of the ${targets.length} target weights has |w| < ${params.threshold}; raise --param threshold or use --param selection=fraction`);
      }
      initial?.assertAllUsed();
    } catch (e) {
      detach();
      throw e;
    }

    const eligible = layers.filter((l) => Math.min(...l.shape) > minDim && l.flat.length > 100);
    const frozenSome = (l: SaraLayer) => tf.tidy(() => tf.min(l.active).dataSync()[0]) === 0;

    return {
      method: sara,
      params,
      trainable,
      lrScale: () => 1,
      createOptimizer: (options) => new SaraOptimizer(new AdamW(trainable, options), layers),
      optimizerStateBytes: () => layers.reduce((n, l) => n + 2 * 4 * l.flat.length + 4 * l.flat.length, 0),
      getRandomState: () => random.getState(),
      setRandomState: (state) => random.setState(state),
      trainableParameterCount: () => layers.reduce((n, l) => n + l.flat.length, 0),
      beforeStep({ step, totalSteps }: TrainingStep) {
        chosen = lambda > 0 && eligible.length > 0 ? eligible[random.int(eligible.length)] : null;
        // adamw2 update_mask at optimizer step T_p + 1: M' = (|W_T| < ε) ∧ M, Adam state kept.
        if (progressiveAt < 1 && step === Math.round(progressiveAt * totalSteps)) {
          for (const l of layers) {
            tf.tidy(() => l.active.assign(tf.mul(l.active, tf.cast(tf.less(tf.abs(l.values), l.epsilon), 'float32')) as tf.Tensor1D));
          }
        }
        for (const l of layers) {
          l.before?.dispose();
          l.before = frozenSome(l) ? (tf.clone(l.values) as tf.Tensor1D) : null;
        }
      },
      trainingPenalty() {
        if (!chosen) return tf.scalar(0);
        return tf.mul(nuclearNorm(chosen), lambda) as tf.Scalar;
      },
      afterOptimizerStep() {
        for (const l of layers) {
          if (!l.before) continue;
          const before = l.before;
          tf.tidy(() => l.values.assign(tf.where(tf.cast(l.active, 'bool'), l.values, before) as tf.Tensor1D));
          before.dispose();
          l.before = null;
        }
      },
      selected: () => new Map(layers.map((l) => [l.target.path, l.flat.length])),
      activeCount: () => new Map(layers.map((l) => [l.target.path, tf.tidy(() => tf.sum(l.active).dataSync()[0])])),
      mergedWeights() {
        const merged = new Map<string, tf.Tensor>();
        for (const l of layers) {
          const name = `${l.target.path}.weight`;
          // W₀ with the selected entries replaced by p: entries outside M are W₀'s own bits.
          merged.set(name, tf.tidy(() => {
            const w = tf.reshape(model.weight(name), [-1]) as tf.Tensor1D;
            const at = tf.reshape(l.indices, [-1, 1]);
            const size = l.shape[0] * l.shape[1];
            const keep = tf.scatterND(at, tf.ones([l.flat.length]), [size]) as tf.Tensor1D; // 1 on M
            const placed = tf.scatterND(at, l.values, [size]);
            return tf.reshape(tf.where(tf.cast(keep, 'bool'), placed, w), l.shape);
          }));
        }
        return merged;
      },
      detach,
    };
  },
};

registerMethod(sara);
