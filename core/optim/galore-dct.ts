/**
 * SVD-free low-rank AdamW with a DCT basis (Modoranu et al., arXiv:2505.17967), as the official
 * code computes it (IST-DASLab/ISTA-DASLab-Optimizers `fft_low_rank/dct_adamw.py`
 * DCTAdamW.dct_low_rank_step, `utils/dct.py`; notes in ALGORITHMS.md §4). GaLore's step
 * (core/optim/galore.ts) with the SVD replaced by a column selection from a fixed orthonormal basis:
 *   Q [d, d], Q[a, b] = c_a·√(2/d)·cos(π·a·(2b+1)/(2d)), c_0 = 1/√2, else 1; d = the smaller side,
 *       built once per size and shared by every matrix of that size
 *   W ← W·(1 − lr·λ)                                       (decay first)
 *   if t = 1 or t mod T = 0 (t counts from 1):  right (m ≥ n): S = G·Q, score_j = ‖S_{:,j}‖₁;
 *       left: S = Qᵀ·G, score_i = ‖S_{i,:}‖₁;  I = top-r(score)
 *   R = G·Q_{:,I} (right) or Q_{:,I}ᵀ·G (left);  M ← β1·M + (1−β1)·R;  V ← β2·V + (1−β2)·R²
 *   W ← W − lr·√(1−β2ᵗ)/(1−β1ᵗ) · back(M / (√V + ε·√(1−β2ᵗ)))   with P = Q_{:,I}ᵀ (right) or Q_{:,I} (left)
 * Moments are neither reset nor rotated on reselection (the class defaults rotate_subspace=False,
 * use_ef=False), and the class default T is 1: the columns are re-chosen at every step.
 * Per matrix the state is the r indices and the low-rank moments, no projector: 4·(r + 2·r·max(m,n))
 * bytes, plus 4·d² once per basis size. No SVD is computed anywhere.
 * top-r comes back sorted by score (torch's sorted=False order is unspecified); the moments'
 * columns follow the order of I, which only matters across a reselection.
 */
import * as tf from '../tf.ts';
import type { AdamWOptions } from './adamw.ts';
import { GaLore, adamDirection, projectBack, projectionOf, type LowRankOptions, type ProjectedParameter, type Projection } from './galore.ts';

/** The orthonormal DCT matrix Q [d, d] of `utils/dct.py`, row-major, computed in float64. */
export function dctMatrix(d: number): Float32Array {
  const q = new Float32Array(d * d);
  for (let a = 0; a < d; a++) {
    const c = (a === 0 ? Math.SQRT1_2 : 1) * Math.sqrt(2 / d);
    for (let b = 0; b < d; b++) q[a * d + b] = c * Math.cos((Math.PI * a * (2 * b + 1)) / (2 * d));
  }
  return q;
}

/** Low-rank options of the DCT optimizer: GaLore's without α, proj_type (always 'std') or SVD settings. */
export type DctLowRankOptions = Pick<LowRankOptions, 'projected' | 'rank' | 'updateProjGap'>;

/**
 * Exact optimizer-state bytes of the DCT optimizer over `shapes`, without allocating it: per
 * projected matrix r indices + M, V (2·r·max(m,n)); one d×d basis per distinct d; AdamW's 2·numel
 * for every other parameter. All 4-byte elements.
 */
export function dctStateBytes(shapes: Map<string, number[]>, opts: Pick<DctLowRankOptions, 'projected' | 'rank'>): number {
  const projected = new Set(opts.projected);
  const sizes = new Set<number>();
  let elements = 0;
  for (const [name, shape] of shapes) {
    if (!projected.has(name)) {
      elements += 2 * shape.reduce((a, b) => a * b, 1);
      continue;
    }
    const p = projectionOf(shape, opts.rank, 'std');
    elements += p.r + 2 * p.lowRankShape[0] * p.lowRankShape[1];
    sizes.add(Math.min(p.m, p.n));
  }
  for (const d of sizes) elements += d * d;
  return 4 * elements;
}

export class DctAdamW extends GaLore {
  protected override readonly subspaceKey: string = 'indices';
  /** Q by size d, built once. */
  private readonly bases = new Map<number, tf.Tensor2D>();

  constructor(params: Map<string, tf.Variable>, lowRank: DctLowRankOptions, adam: AdamWOptions = {}) {
    // The class's ε is torch's 1e-8; α is not part of the method.
    super(params, { ...lowRank, scale: 1, projType: 'std' }, { ...adam, epsilon: adam.epsilon ?? 1e-8 });
    for (const l of this.layers) {
      const d = Math.min(l.projection.m, l.projection.n);
      if (!this.bases.has(d)) this.bases.set(d, tf.tensor2d(dctMatrix(d), [d, d]));
    }
  }

  /** The basis of one size (for tests: QᵀQ = I). */
  basis(d: number): tf.Tensor2D | undefined {
    return this.bases.get(d);
  }

  /** The selected column indices of a projected matrix. */
  selectedIndices(name: string): number[] {
    const layer = this.layers.find((l) => l.name === name);
    return layer ? Array.from(layer.projector.dataSync()) : [];
  }

  protected override subspaceShape(projection: Projection): number[] {
    return [projection.r];
  }

  protected override sharedStateBytes(): number {
    let bytes = 0;
    for (const q of this.bases.values()) bytes += 4 * q.size;
    return bytes;
  }

  protected override refreshesAt(completed: number): boolean {
    const t = completed + 1;
    return t === 1 || t % this.lowRank.updateProjGap === 0;
  }

  private basisOf(layer: ProjectedParameter): tf.Tensor2D {
    return this.bases.get(Math.min(layer.projection.m, layer.projection.n))!;
  }

  /** P = Q_{:,I}ᵀ [r, n] (right) or Q_{:,I} [m, r] (left), gathered from the shared basis. */
  protected override projectorOf(layer: ProjectedParameter): tf.Tensor2D {
    const columns = tf.gather(this.basisOf(layer), tf.cast(layer.projector, 'int32'), 1) as tf.Tensor2D;
    return layer.projection.side === 'right' ? tf.transpose(columns) : columns;
  }

  /** I = the r columns of G·Q (right) or rows of Qᵀ·G (left) of largest ℓ1 norm. */
  protected override refreshProjector(layer: ProjectedParameter, g: tf.Tensor2D): void {
    tf.tidy(() => {
      const q = this.basisOf(layer);
      const right = layer.projection.side === 'right';
      const s = right ? tf.matMul(g, q) : tf.matMul(q, g, true, false);
      const scores = tf.sum(tf.abs(s), right ? 0 : 1) as tf.Tensor1D;
      const { indices } = tf.topk(scores, layer.projection.r);
      layer.projector.assign(tf.cast(indices, 'float32'));
    });
  }

  protected override updatedWeight(layer: ProjectedParameter, _g: tf.Tensor2D, p: tf.Tensor2D, _r: tf.Tensor2D, m: tf.Tensor, v: tf.Tensor, rate: number): tf.Tensor {
    let w: tf.Tensor = layer.param;
    if (this.weightDecay > 0 && !this.noDecay(layer.name)) w = tf.mul(w, 1 - rate * this.weightDecay);
    const direction = projectBack(adamDirection(m, v, this.stepCount, this.beta1, this.beta2, this.epsilon), p, layer.projection.side);
    return tf.sub(w, tf.mul(direction, rate));
  }

  override dispose(): void {
    super.dispose();
    for (const q of this.bases.values()) q.dispose();
    this.bases.clear();
  }
}
