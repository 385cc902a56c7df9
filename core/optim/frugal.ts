/**
 * FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training
 * (Zmushko et al., arXiv:2411.07837), the `GaloreOptimizer` variant with proj_type svd, as the
 * authors' code computes it (`frugal/proj_optimizer_templates.py` ProjOptimizer.step,
 * `frugal/adamw.py` _compute_update; notes in ALGORITHMS.md §3). Built on GaLore's projector
 * (core/optim/galore.ts): the gradient is split into the part inside the top-r SVD subspace, which
 * gets state-full AdamW, and the residual, which gets a state-free rule:
 *   W ← (1 − lr·λ)·W                                      (decoupled decay first, unlike GaLore)
 *   if t mod T = 0:  P ← top-r SVD of G;  if reset_statistics: M = V = 0 and the Adam step k = 0
 *   k ← k + 1;  R = down(G);  M ← β1·M + (1−β1)·R;  V ← β2·V + (1−β2)·R²
 *   u = −lr·s_p·up( M/(1−β1ᵏ) / (√V/√(1−β2ᵏ) + ε) )       (torch's ε placement)
 *   G_res = G − up(down(G))                               (orthogonal to the subspace: G_res·Pᵀ = 0)
 *   sign_sgd: u −= lr·s_p·s_i·sign(G_res);  sgd: u −= lr·s_p·s_i·G_res;  no: nothing
 *   W ← W + u                                             (full rank unless the rule is `no`)
 * r = round(ρ·k), k the projected side's length; s_p is `scale` (proj_params_lr_scale), s_i the
 * inactive_lr_scale. With rule `no` and no reset this is GaLore with α = s_p (up to ε placement
 * and decay order). The state-free part holds nothing, so the state is exactly GaLore's.
 * Since every projected matrix refreshes at the same steps, k = (t mod T) + 1 under reset and
 * k = t otherwise: it follows from the step count, which checkpoints already hold.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import type { AdamWOptions } from './adamw.ts';
import { GaLore, adamDirection, projectBack, type LowRankOptions, type ProjectedParameter } from './galore.ts';

/** What FRUGAL does with the gradient outside the subspace. */
export type StateFreeRule = 'sign_sgd' | 'sgd' | 'no';

export interface FrugalOptions {
  /** Default `sign_sgd`. */
  rule?: StateFreeRule;
  /** Zero the moments (and the Adam step) whenever the subspace changes; default true. */
  resetStatistics?: boolean;
  /** s_i: learning-rate scale of the state-free part; default 1 (the code's pre-training value; 0.1 for fine-tuning). */
  inactiveLrScale?: number;
}

/** The state-free update of the residual, before −lr·s_p·s_i: sign(G_res), G_res or nothing. */
export function stateFreeDirection(residual: tf.Tensor2D, rule: StateFreeRule): tf.Tensor2D | null {
  if (rule === 'sign_sgd') return tf.sign(residual);
  if (rule === 'sgd') return residual;
  return null;
}

export class Frugal extends GaLore {
  readonly rule: StateFreeRule;
  readonly resetStatistics: boolean;
  readonly inactiveLrScale: number;

  constructor(params: Map<string, tf.Variable>, lowRank: LowRankOptions, frugal: FrugalOptions = {}, adam: AdamWOptions = {}) {
    // FRUGAL's AdamW uses torch's ε = 1e-8 (GaLore's class has 1e-6).
    super(params, lowRank, { ...adam, epsilon: adam.epsilon ?? 1e-8 });
    this.rule = frugal.rule ?? 'sign_sgd';
    if (!['sign_sgd', 'sgd', 'no'].includes(this.rule)) throw new LowrankError('BAD_ARGUMENT', `FRUGAL rule must be sign_sgd, sgd or no, got "${this.rule}"`);
    this.resetStatistics = frugal.resetStatistics ?? true;
    this.inactiveLrScale = frugal.inactiveLrScale ?? 1;
  }

  protected override onSubspaceChange(layer: ProjectedParameter): void {
    if (!this.resetStatistics) return;
    tf.tidy(() => {
      layer.expAvg.assign(tf.zerosLike(layer.expAvg));
      layer.expAvgSq.assign(tf.zerosLike(layer.expAvgSq));
    });
  }

  /** k, the Adam step of the projected moments for the step now running (stepCount already counts it). */
  private adamStep(): number {
    return this.resetStatistics ? ((this.stepCount - 1) % this.lowRank.updateProjGap) + 1 : this.stepCount;
  }

  protected override updatedWeight(layer: ProjectedParameter, g: tf.Tensor2D, p: tf.Tensor2D, r: tf.Tensor2D, m: tf.Tensor, v: tf.Tensor, rate: number): tf.Tensor {
    const side = layer.projection.side;
    const sp = this.lowRank.scale;
    let w: tf.Tensor = layer.param;
    if (this.weightDecay > 0 && !this.noDecay(layer.name)) w = tf.mul(w, 1 - rate * this.weightDecay);
    const adam = projectBack(adamDirection(m, v, this.adamStep(), this.beta1, this.beta2, this.epsilon), p, side);
    w = tf.sub(w, tf.mul(adam, rate * sp));
    const free = stateFreeDirection(tf.sub(g, projectBack(r, p, side)) as tf.Tensor2D, this.rule);
    if (free) w = tf.sub(w, tf.mul(free, rate * sp * this.inactiveLrScale));
    return w;
  }
}
