/**
 * GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection (Zhao et al.,
 * arXiv:2403.03507, Algorithm 1), as the official code computes it (jiaweizzhao/GaLore
 * `galore_torch/adamw.py` AdamW.step and `galore_projector.py`; notes in ALGORITHMS.md §1).
 *
 * For each projected weight W [m, n] with gradient G and t = completed steps:
 *   if t mod T = 0:  P ← top-r singular vectors of G      ('right' P = V_rᵀ [r, n], 'left' P = U_r [m, r])
 *   R = G·Pᵀ [m, r] (right)  or  Pᵀ·G [r, n] (left)       (the smaller side is projected under 'std')
 *   t ← t + 1;  M ← β1·M + (1−β1)·R;  V ← β2·V + (1−β2)·R²   (moments stay in the low-rank shape
 *                                                              and are never reset or rotated)
 *   N = M / (√V + ε);  η = lr·√(1−β2ᵗ)/(1−β1ᵗ)
 *   W ← W − η·α·back(N),  back(N) = N·P (right) or P·N (left)   (α, "scale", only here)
 *   W ← W − lr·λ·W                                              (decoupled decay after the step, lr not η)
 * Every other parameter (embeddings, norms, lm_head) takes plain AdamW in the same optimizer.
 * State per projected matrix: P + M + V = r·min(m,n) + 2·r·max(m,n) floats under 'std'.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { truncatedSvd } from '../linalg/svd.ts';
import { AdamW, type AdamWOptions } from './adamw.ts';
import type { Optimizer, OptimizerState } from './registry.ts';

/** Which side of each gradient is projected (GaLoreProjector's proj_type; the two-sided 'full' is not offered). */
export type ProjectionType = 'std' | 'reverse_std' | 'left' | 'right';
export type SvdMethod = 'auto' | 'exact' | 'randomized';
/**
 * The subspace size of each matrix: a rank r (GaLore), or FRUGAL's density ρ, r = round(ρ·k) with
 * k the length of the projected side (n for a right projection, m for a left one).
 */
export type SubspaceRank = number | { density: number };

export interface LowRankOptions {
  /** Names of the 2-D parameters to project (the targets' weights); every other parameter gets AdamW. */
  projected: Iterable<string>;
  /** Rank r (or FRUGAL's density), clamped to min(m, n) of each matrix. */
  rank: SubspaceRank;
  /** T: the projector is recomputed from the gradient at every step t with t mod T = 0. */
  updateProjGap: number;
  /** α, applied on back-projection only. */
  scale: number;
  projType: ProjectionType;
  /** core/linalg/svd.ts truncatedSvd: 'auto' = exact Jacobi for small matrices, randomized otherwise. */
  svd?: SvdMethod;
  /** Subspace iterations of the randomized SVD. */
  svdNiter?: number;
  /** Seed of the randomized SVD's test matrix (combined with the step and the matrix index). */
  seed?: number;
}

/** How one [m, n] matrix is projected. */
export interface Projection {
  m: number;
  n: number;
  /** Effective rank: min(rank, m, n). */
  r: number;
  side: 'left' | 'right';
  /** P: [r, n] (right) or [m, r] (left). */
  projectorShape: [number, number];
  /** R, M, V: [m, r] (right) or [r, n] (left). */
  lowRankShape: [number, number];
}

/** Python's round(): halves go to the even neighbour (FRUGAL computes r = round(ρ·k) in Python). */
export function roundHalfEven(x: number): number {
  const floor = Math.floor(x);
  const frac = x - floor;
  if (frac !== 0.5) return Math.round(x);
  return floor % 2 === 0 ? floor : floor + 1;
}

export function projectionOf(shape: number[], rank: SubspaceRank, projType: ProjectionType): Projection {
  if (shape.length !== 2) throw new LowrankError('BAD_ARGUMENT', `GaLore projects 2-D weights only, got shape [${shape.join(', ')}]`);
  const [m, n] = shape;
  const tall = m >= n;
  const side = projType === 'std' ? (tall ? 'right' : 'left') : projType === 'reverse_std' ? (tall ? 'left' : 'right') : projType;
  // A density that rounds to 0 rows/columns would project nothing; at least one is kept.
  const wanted = typeof rank === 'number' ? rank : Math.max(1, roundHalfEven(rank.density * (side === 'right' ? n : m)));
  const r = Math.min(wanted, m, n);
  return side === 'right'
    ? { m, n, r, side, projectorShape: [r, n], lowRankShape: [m, r] }
    : { m, n, r, side, projectorShape: [m, r], lowRankShape: [r, n] };
}

/** Floats of GaLore state for one projected matrix: P + M + V (+ `extra`, Fira's scalar). */
export function projectedStateFloats(p: Projection, extra = 0): number {
  const size = (s: [number, number]) => s[0] * s[1];
  return size(p.projectorShape) + 2 * size(p.lowRankShape) + extra;
}

/**
 * Exact optimizer-state bytes of GaLore (extraPerMatrix 0) or Fira (1) over `shapes` without
 * allocating it: projected matrices as projectedStateFloats, every other parameter AdamW's 2·numel.
 */
export function lowRankStateBytes(shapes: Map<string, number[]>, opts: Pick<LowRankOptions, 'projected' | 'rank' | 'projType'>, extraPerMatrix = 0): number {
  const projected = new Set(opts.projected);
  let floats = 0;
  for (const [name, shape] of shapes) {
    floats += projected.has(name) ? projectedStateFloats(projectionOf(shape, opts.rank, opts.projType), extraPerMatrix) : 2 * shape.reduce((a, b) => a * b, 1);
  }
  return 4 * floats;
}

/**
 * torch-style bias-corrected Adam direction (FRUGAL's and the DCT optimizer's ε placement):
 * M / (1−β1ᵗ) / (√V / √(1−β2ᵗ) + ε). GaLore instead puts ε outside the correction.
 */
export function adamDirection(m: tf.Tensor, v: tf.Tensor, t: number, beta1: number, beta2: number, epsilon: number): tf.Tensor2D {
  return tf.tidy(() => {
    const denom = tf.add(tf.div(tf.sqrt(v), Math.sqrt(1 - Math.pow(beta2, t))), epsilon);
    return tf.div(tf.div(m, 1 - Math.pow(beta1, t)), denom) as tf.Tensor2D;
  });
}

/** One projected parameter and its state. */
export interface ProjectedParameter {
  name: string;
  index: number;
  param: tf.Variable;
  projection: Projection;
  /**
   * The per-matrix subspace state: P (GaLore, Fira, FRUGAL: projectorShape), or the r selected
   * DCT column indices (galore-dct: [r], stored as float32 integers so checkpoints stay float32).
   */
  projector: tf.Variable;
  expAvg: tf.Variable;
  expAvgSq: tf.Variable;
}

/** R = G·Pᵀ (right) or Pᵀ·G (left). */
export function project(g: tf.Tensor2D, p: tf.Tensor2D, side: Projection['side']): tf.Tensor2D {
  return side === 'right' ? tf.matMul(g, p, false, true) : tf.matMul(p, g, true, false);
}

/** back(X) = X·P (right) or P·X (left), without α. */
export function projectBack(x: tf.Tensor2D, p: tf.Tensor2D, side: Projection['side']): tf.Tensor2D {
  return side === 'right' ? tf.matMul(x, p) : tf.matMul(p, x);
}

export class GaLore implements Optimizer {
  readonly beta1: number;
  readonly beta2: number;
  readonly epsilon: number;
  readonly weightDecay: number;
  readonly lowRank: Required<Omit<LowRankOptions, 'projected'>>;
  protected readonly layers: ProjectedParameter[] = [];
  private readonly rest: AdamW;
  protected readonly noDecay: (name: string) => boolean;
  private readonly lrScale: (name: string) => number;
  private t = 0;
  /** Name of the subspace state in checkpoints (`<param>.projector`; the DCT optimizer's `<param>.indices`). */
  protected readonly subspaceKey: string = 'projector';

  constructor(params: Map<string, tf.Variable>, lowRank: LowRankOptions, adam: AdamWOptions = {}) {
    // The official class defaults: β = (0.9, 0.999), ε = 1e-6, no weight decay.
    this.beta1 = adam.beta1 ?? 0.9;
    this.beta2 = adam.beta2 ?? 0.999;
    this.epsilon = adam.epsilon ?? 1e-6;
    this.weightDecay = adam.weightDecay ?? 0;
    this.noDecay = adam.noDecay ?? (() => false);
    this.lrScale = adam.lrScale ?? (() => 1);
    const { rank, updateProjGap, scale, projType } = lowRank;
    if (typeof rank === 'number' && !(Number.isInteger(rank) && rank >= 1)) throw new LowrankError('BAD_ARGUMENT', `GaLore rank must be a positive integer, got ${rank}`);
    if (typeof rank !== 'number' && !(rank.density > 0 && rank.density <= 1)) throw new LowrankError('BAD_ARGUMENT', `density must be in (0, 1], got ${rank.density}`);
    if (!(Number.isInteger(updateProjGap) && updateProjGap >= 1)) throw new LowrankError('BAD_ARGUMENT', `GaLore update_proj_gap must be a positive integer, got ${updateProjGap}`);
    this.lowRank = { rank, updateProjGap, scale, projType, svd: lowRank.svd ?? 'auto', svdNiter: lowRank.svdNiter ?? 4, seed: lowRank.seed ?? 0 };
    const projected = new Set(lowRank.projected);
    for (const name of projected) {
      if (!params.has(name)) throw new LowrankError('BAD_ARGUMENT', `GaLore: "${name}" is not a trainable parameter`);
    }
    const rest = new Map<string, tf.Variable>();
    for (const [name, param] of params) {
      if (!projected.has(name)) {
        rest.set(name, param);
        continue;
      }
      const projection = projectionOf(param.shape, rank, projType);
      // tidy frees the zeros handles; the variables (which tidy does not track) keep the data.
      const zeros = (shape: number[]) => tf.tidy(() => tf.variable(tf.zeros(shape), false));
      this.layers.push({
        name,
        index: this.layers.length,
        param,
        projection,
        projector: zeros(this.subspaceShape(projection)),
        expAvg: zeros(projection.lowRankShape),
        expAvgSq: zeros(projection.lowRankShape),
      });
    }
    this.rest = new AdamW(rest, { ...adam, beta1: this.beta1, beta2: this.beta2, epsilon: this.epsilon, weightDecay: this.weightDecay });
  }

  get stepCount(): number {
    return this.t;
  }

  /** Projected matrices (name, shape, side, effective rank), for reports and tests. */
  get projections(): Array<{ name: string } & Projection> {
    return this.layers.map((l) => ({ name: l.name, ...l.projection }));
  }

  /** Floats of extra state per projected matrix beyond P, M, V (Fira's scalar). */
  protected extraStateFloats(): number {
    return 0;
  }

  /** Bytes held once for all matrices (the DCT optimizer's bases). */
  protected sharedStateBytes(): number {
    return 0;
  }

  stateBytes(): number {
    let floats = 0;
    for (const l of this.layers) floats += l.projector.size + l.expAvg.size + l.expAvgSq.size + this.extraStateFloats();
    return 4 * floats + this.sharedStateBytes() + this.rest.stateBytes();
  }

  /** Shape of the per-matrix subspace state: P's. */
  protected subspaceShape(projection: Projection): number[] {
    return projection.projectorShape;
  }

  /** Whether the step that follows `completed` steps recomputes the subspace (GaLore: t mod T = 0). */
  protected refreshesAt(completed: number): boolean {
    return completed % this.lowRank.updateProjGap === 0;
  }

  /** Called right after a subspace change, before the moments are updated (FRUGAL resets them). */
  protected onSubspaceChange(_layer: ProjectedParameter): void {}

  /** P [r, n] (right) or [m, r] (left) for this step; called inside a tidy. */
  protected projectorOf(layer: ProjectedParameter): tf.Tensor2D {
    return layer.projector as tf.Tensor as tf.Tensor2D;
  }

  /** Learning-rate multiplier of a parameter (the run's per-name scale). */
  protected rateOf(name: string, lr: number): number {
    return lr * this.lrScale(name);
  }

  step(grads: Map<string, tf.Tensor>, lr: number): void {
    const completed = this.t;
    this.t += 1;
    this.rest.step(grads, lr);
    for (const layer of this.layers) {
      const g = grads.get(layer.name) as tf.Tensor2D | undefined;
      if (!g) continue;
      if (this.refreshesAt(completed)) {
        this.refreshProjector(layer, g, completed);
        this.onSubspaceChange(layer);
      }
      const rate = this.rateOf(layer.name, lr);
      tf.tidy(() => {
        const p = this.projectorOf(layer);
        const r = project(g, p, layer.projection.side);
        const m = tf.add(tf.mul(layer.expAvg, this.beta1), tf.mul(r, 1 - this.beta1));
        const v = tf.add(tf.mul(layer.expAvgSq, this.beta2), tf.mul(tf.square(r), 1 - this.beta2));
        layer.expAvg.assign(m);
        layer.expAvgSq.assign(v);
        layer.param.assign(this.updatedWeight(layer, g, p, r, m, v, rate));
      });
    }
  }

  /** W after this step, from the updated moments (inside the step's tidy). */
  protected updatedWeight(layer: ProjectedParameter, g: tf.Tensor2D, _p: tf.Tensor2D, r: tf.Tensor2D, m: tf.Tensor, v: tf.Tensor, rate: number): tf.Tensor {
    const stepSize = (rate * Math.sqrt(1 - Math.pow(this.beta2, this.t))) / (1 - Math.pow(this.beta1, this.t));
    const normalized = tf.div(m, tf.add(tf.sqrt(v), this.epsilon)) as tf.Tensor2D;
    const direction = this.direction(layer, g, r, normalized);
    let w = tf.sub(layer.param, tf.mul(direction, stepSize));
    if (this.weightDecay > 0 && !this.noDecay(layer.name)) w = tf.sub(w, tf.mul(w, rate * this.weightDecay));
    return w;
  }

  /** The update before the step size: α·back(N). Fira adds its scaled residual. */
  protected direction(layer: ProjectedParameter, _g: tf.Tensor2D, _r: tf.Tensor2D, normalized: tf.Tensor2D): tf.Tensor2D {
    return tf.mul(projectBack(normalized, layer.projector as tf.Tensor as tf.Tensor2D, layer.projection.side), this.lowRank.scale);
  }

  /** P from the top-r singular vectors of G (float64 SVD on the CPU; tfjs has none). */
  protected refreshProjector(layer: ProjectedParameter, g: tf.Tensor2D, completed: number): void {
    const { m, n, r, side, projectorShape } = layer.projection;
    const svd = truncatedSvd(Float64Array.from(g.dataSync()), m, n, r, {
      method: this.lowRank.svd,
      niter: this.lowRank.svdNiter,
      // A function of (seed, matrix, step) only, so a resumed run draws the same test matrix.
      seed: (this.lowRank.seed * 1_000_003 + layer.index * 7919 + completed) >>> 0,
    });
    // right: P = V_rᵀ [r, n]; left: P = U_r [m, r].
    const values = side === 'right' ? Float32Array.from(svd.Vt) : Float32Array.from(svd.U);
    tf.tidy(() => layer.projector.assign(tf.tensor2d(values, projectorShape)));
  }

  getWeights(): OptimizerState {
    const tensors = new Map(this.rest.getWeights().tensors);
    for (const l of this.layers) {
      tensors.set(`${l.name}.exp_avg`, l.expAvg);
      tensors.set(`${l.name}.exp_avg_sq`, l.expAvgSq);
      tensors.set(`${l.name}.${this.subspaceKey}`, l.projector);
    }
    return { step: this.t, tensors };
  }

  setWeights(state: OptimizerState): void {
    this.rest.setWeights(state);
    for (const l of this.layers) {
      for (const [key, target] of [['exp_avg', l.expAvg], ['exp_avg_sq', l.expAvgSq], [this.subspaceKey, l.projector]] as const) {
        restore(state, `${l.name}.${key}`, target);
      }
    }
    this.t = state.step;
  }

  dispose(): void {
    this.rest.dispose();
    for (const l of this.layers) {
      l.projector.dispose();
      l.expAvg.dispose();
      l.expAvgSq.dispose();
    }
  }
}

/** Assigns a saved state tensor, refusing one that is missing (after step 0) or of another shape. */
export function restore(state: OptimizerState, key: string, target: tf.Variable): boolean {
  const saved = state.tensors.get(key);
  if (!saved) {
    if (state.step > 0) throw new LowrankError('MISSING_WEIGHT', `optimizer state "${key}" is missing from the checkpoint; it was written by another optimizer or method`);
    return false;
  }
  if (saved.size !== target.size) {
    throw new LowrankError(
      'BAD_ARGUMENT',
      `optimizer state "${key}" has shape [${saved.shape.join(', ')}] but [${target.shape.join(', ')}] is expected; the checkpoint was written with another rank or proj_type`,
    );
  }
  tf.tidy(() => target.assign(tf.reshape(saved, target.shape)));
  return true;
}
