/**
 * Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint? (Chen et al.,
 * arXiv:2410.01623), as the official code computes it (xichen-fy/Fira `optimizer_torch/
 * fira_adamw.py` AdamW.step; notes in ALGORITHMS.md §2). GaLore's step (core/optim/galore.ts),
 * and the gradient's component outside the subspace is used too instead of being dropped:
 *   φ = ‖N‖ / (‖R‖ + 1e-8) per row of N [m, r] (right) or per column of N [r, n] (left)  (paper Eq. 6,
 *       N = M/(√V+ε) without bias correction; the code picks the axis by N's shape, which under
 *       'std' is the same as by side: a tall N is normed per row, a wide one per column)
 *   S = (G − α·back(R)) ⊙ φ                     (the code subtracts α·P·R, not P·R as the paper writes:
 *                                                 `project_back` multiplies by α; followed here)
 *   norm-growth limiter (paper Eq. 8): s undefined → s ← ‖S‖; else if ‖S‖/(s + 1e-8) > γ,
 *       S ← S·γ/ρ; then s ← ‖S‖ (after limiting)
 *   W ← W − η·(α·back(N) + S)                   (full-rank update), then GaLore's decoupled decay.
 * State: GaLore's + one float s per projected matrix.
 */
import * as tf from '../tf.ts';
import type { AdamWOptions } from './adamw.ts';
import { GaLore, projectBack, restore, type LowRankOptions, type ProjectedParameter, type Projection } from './galore.ts';
import type { OptimizerState } from './registry.ts';

export interface FiraOptions {
  /** γ of the norm-growth limiter (hard-coded 1.01 in the official code). */
  gamma?: number;
}

/** φ and S = (G − α·back(R)) ⊙ φ for one matrix; φ has length m (right) or n (left). */
export function firaScaledResidual(
  g: tf.Tensor2D,
  r: tf.Tensor2D,
  normalized: tf.Tensor2D,
  p: tf.Tensor2D,
  side: Projection['side'],
  alpha: number,
): { phi: tf.Tensor1D; residual: tf.Tensor2D } {
  return tf.tidy(() => {
    const axis = side === 'right' ? 1 : 0;
    const phi = tf.div(tf.norm(normalized, 'euclidean', axis), tf.add(tf.norm(r, 'euclidean', axis), 1e-8)) as tf.Tensor1D;
    const outside = tf.sub(g, tf.mul(projectBack(r, p, side), alpha));
    const residual = tf.mul(outside, side === 'right' ? tf.reshape(phi, [-1, 1]) : tf.reshape(phi, [1, -1])) as tf.Tensor2D;
    return { phi, residual };
  });
}

/**
 * The norm-growth limiter: with the previous limited norm s (null on the first step), scales S
 * down so ‖S‖ ≤ γ·s. Returns the limited S and its norm (the next s), as tensors (no sync).
 */
export function limitNormGrowth(residual: tf.Tensor2D, previous: tf.Scalar | null, gamma: number): { limited: tf.Tensor2D; norm: tf.Scalar } {
  return tf.tidy(() => {
    const norm = tf.norm(residual) as tf.Scalar;
    if (!previous) return { limited: tf.clone(residual), norm };
    const ratio = tf.div(norm, tf.add(previous, 1e-8));
    const limiter = tf.div(tf.maximum(ratio, gamma), gamma);
    return { limited: tf.div(residual, limiter) as tf.Tensor2D, norm: tf.div(norm, limiter) as tf.Scalar };
  });
}

export class Fira extends GaLore {
  readonly gamma: number;
  /** s per projected matrix, [1]; meaningful once the matrix has taken a step. */
  private readonly residualNorms = new Map<string, tf.Variable>();
  private readonly started = new Set<string>();

  constructor(params: Map<string, tf.Variable>, lowRank: LowRankOptions, fira: FiraOptions = {}, adam: AdamWOptions = {}) {
    super(params, lowRank, adam);
    this.gamma = fira.gamma ?? 1.01;
    for (const l of this.layers) this.residualNorms.set(l.name, tf.tidy(() => tf.variable(tf.zeros([1]), false)));
  }

  protected override extraStateFloats(): number {
    return 1;
  }

  protected override direction(layer: ProjectedParameter, g: tf.Tensor2D, r: tf.Tensor2D, normalized: tf.Tensor2D): tf.Tensor2D {
    const p = layer.projector as tf.Tensor as tf.Tensor2D;
    const alpha = this.lowRank.scale;
    const { residual } = firaScaledResidual(g, r, normalized, p, layer.projection.side, alpha);
    const s = this.residualNorms.get(layer.name)!;
    const previous = this.started.has(layer.name) ? (tf.reshape(s, []) as tf.Scalar) : null;
    const { limited, norm } = limitNormGrowth(residual, previous, this.gamma);
    s.assign(tf.reshape(norm, [1]));
    this.started.add(layer.name);
    return tf.add(tf.mul(projectBack(normalized, p, layer.projection.side), alpha), limited);
  }

  override getWeights(): OptimizerState {
    const state = super.getWeights();
    for (const [name, s] of this.residualNorms) if (this.started.has(name)) state.tensors.set(`${name}.residual_norm`, s);
    return state;
  }

  override setWeights(state: OptimizerState): void {
    super.setWeights(state);
    this.started.clear();
    for (const [name, s] of this.residualNorms) if (restore(state, `${name}.residual_norm`, s)) this.started.add(name);
  }

  override dispose(): void {
    super.dispose();
    for (const s of this.residualNorms.values()) s.dispose();
  }
}
