/**
 * SVFit: Parameter-Efficient Fine-Tuning of Large Pre-Trained Models Using Singular Values
 * (Sun et al., arXiv:2409.05926; no official code was found, ALGORITHMS.md "SVFit"). With the top-r
 * SVD W₀ = U_r·diag(σ)·V_rᵀ + W_e of each frozen weight [out, in], only the r singular values train:
 *   W = U_r·diag(s)·V_rᵀ + W_e,  s [r] starting at σ;  U_r, V_r and W_e frozen.
 * Written as W₀ + U_r·diag(s − σ)·V_rᵀ, which is the same weight, keeps the stored W₀ untouched
 * and makes the step-0 output exactly the base model's (s − σ = 0 to the bit).
 * Trainable count: r per wrapped module. The rank follows the paper's rule by default (§III: the
 * top-r singular values "capture over 99 % of the matrix's information"): per matrix, the fewest
 * leading σ whose squares hold `energy` = 0.99 of Σσ² (= ‖W‖²_F). The paper does not say σ² or σ;
 * σ² is the Frobenius energy, so W_r is then within √(1 − energy)·‖W‖_F of W (Eckart–Young). Ranks
 * differ by matrix, so the PEFT export lists them in rank_pattern. `rank_rule: fixed` takes `rank`
 * for every matrix instead, `full` all min(out, in) values (the reading of the paper's 16× claim:
 * 2·d·8 LoRA values against d singular values per d×d matrix). The rule needs each weight's whole
 * spectrum: one exact (Jacobi) SVD per module, a fraction of a second at 256 wide but minutes at
 * 1–2k wide; `fixed` keeps the fast randomized top-r SVD.
 *
 * Export: exact plain LoRA, lora_B = U_r·diag(s − σ), lora_A = V_rᵀ, s = 1. Re-attaching it
 * recovers s = σ + diag(U_rᵀ·lora_B); the saved trainable `<path>.svfit_s` is accepted too.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { jacobiSvd, truncatedSvd, type SvdResult } from '../linalg/svd.ts';
import { symmetricEigen } from '../linalg/symmetric-eigen.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import type { Method, MethodParams } from './method.ts';
import { InitialValues } from './initial-values.ts';
import { attachFactored, checkSvdRank, countWithoutSvd, type LinearTarget, linearTargets, svdSchemaFields, weightOutIn64 } from './factored-adapter.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';
import { variableFrom } from './lora.ts';

/** SVFit's rank rule: the fewest leading singular values (descending) whose squares hold `energy` of Σσ². */
export function energyRank(sigma: ArrayLike<number>, energy: number): number {
  let total = 0;
  for (let i = 0; i < sigma.length; i++) total += sigma[i] ** 2;
  if (total === 0) return 1; // a zero matrix: one (zero) value, so the module still has a trainable
  let kept = 0;
  for (let k = 0; k < sigma.length; k++) {
    kept += sigma[k] ** 2;
    // A relative slack of 1e-12 so that energy = 1 keeps exactly the nonzero spectrum despite rounding.
    if (kept >= energy * total * (1 - 1e-12)) return k + 1;
  }
  return sigma.length;
}

/** The SVD the rank rule needs: the top `rank` triplets (fixed), or the whole spectrum cut by the rule. */
function svfitSvd(w: Float64Array, m: number, n: number, params: MethodParams, seed: number): SvdResult {
  const rule = params.rank_rule as 'energy' | 'fixed' | 'full';
  if (rule === 'fixed') {
    return truncatedSvd(w, m, n, params.rank as number, { method: params.svd as 'auto' | 'exact' | 'randomized', niter: params.svd_niter as number, seed });
  }
  // The rule needs every singular value: one exact (Jacobi) SVD, then the top r triplets of it.
  const svd = jacobiSvd(w, m, n);
  const r = rule === 'full' ? svd.k : energyRank(svd.S, params.energy as number);
  const U = new Float64Array(m * r);
  for (let i = 0; i < m; i++) for (let t = 0; t < r; t++) U[i * r + t] = svd.U[i * svd.k + t];
  return { m, n, k: r, U, S: svd.S.slice(0, r), Vt: svd.Vt.slice(0, r * n) };
}

/**
 * Above this much Jacobi work (m·n·min(m, n), about a 1024×1024 matrix) the wizard's count does not
 * run the SVD and gives the rule's upper bound, min(m, n) per module; attach still counts exactly.
 */
const COUNT_SVD_WORK_LIMIT = 2 ** 30;

/** Whether the weight's values are in this model (a model built from config.json alone only implies it). */
function weightLoaded(model: CausalLM, name: string): boolean {
  try {
    tf.tidy(() => model.weight(name));
    return true;
  } catch {
    return false;
  }
}

/** The rank each target gets under the rule, from the weights (an SVD per target for `energy`). */
function ranksOf(model: CausalLM, targets: LinearTarget[], params: MethodParams): number[] {
  const rule = params.rank_rule as string;
  return targets.map((t) => {
    const most = Math.min(t.inFeatures, t.outFeatures);
    if (rule === 'fixed') return params.rank as number;
    if (rule === 'full') return most;
    // Without weights (the size check before loading), or where the SVD would keep the wizard
    // waiting, the count is its upper bound: every singular value.
    if (t.inFeatures * t.outFeatures * most > COUNT_SVD_WORK_LIMIT || !weightLoaded(model, `${t.path}.weight`)) return most;
    return energyRank(singularValues(weightOutIn64(model, t), t.outFeatures, t.inFeatures), params.energy as number);
  });
}

/**
 * The singular values of w [m, n], descending, for the count: square roots of the eigenvalues of the
 * smaller Gram matrix (w·wᵀ or wᵀ·w). One tridiagonal eigensolve, about 20× faster than the Jacobi SVD
 * attach runs, and what the energy rule needs: σ² is what it sums, and the Gram's rounding (~ε·σ₁²)
 * moves a cumulative share by ~1e-13, far below any boundary the rule could fall on.
 */
function singularValues(w: Float64Array, m: number, n: number): Float64Array {
  const k = Math.min(m, n);
  const gram = new Float64Array(k * k);
  if (m <= n) {
    for (let i = 0; i < m; i++) {
      for (let j = 0; j <= i; j++) {
        let dot = 0;
        for (let c = 0; c < n; c++) dot += w[i * n + c] * w[j * n + c];
        gram[i * k + j] = gram[j * k + i] = dot;
      }
    }
  } else {
    for (let r = 0; r < m; r++) {
      const row = r * n;
      for (let i = 0; i < n; i++) {
        const wi = w[row + i];
        if (wi === 0) continue;
        for (let j = 0; j <= i; j++) gram[i * k + j] += wi * w[row + j];
      }
    }
    for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) gram[j * k + i] = gram[i * k + j];
  }
  const { values } = symmetricEigen(gram, k); // ascending
  return Float64Array.from({ length: k }, (_, i) => Math.sqrt(Math.max(0, values[k - 1 - i])));
}

/** s from a saved plain-LoRA export: s_k = σ_k + U_kᵀ·lora_B[:, k]; lora_A must be this model's V_rᵀ. */
function recoverValues(target: LinearTarget, initial: InitialValues, u: Float32Array, vt: Float32Array, sigma: Float32Array): Float32Array {
  const { path, outFeatures: m, inFeatures: n } = target;
  const r = sigma.length;
  const loraA = initial.take(`${path}.lora_A.weight`, [r, n]);
  const loraB = initial.take(`${path}.lora_B.weight`, [m, r]);
  const diff = loraA.reduce((worst, x, k) => Math.max(worst, Math.abs(x - vt[k])), 0);
  if (diff > 1e-4) {
    throw new LowrankError('SHAPE_MISMATCH', `saved adapter's ${path}.lora_A is not this model's V_rᵀ (off by ${diff.toExponential(2)}); it was trained on another base model or SVD setting`);
  }
  return Float32Array.from(sigma, (s, k) => {
    let dot = 0;
    for (let i = 0; i < m; i++) dot += u[i * r + k] * loraB[i * r + k];
    return s + dot;
  });
}

export const svfit: Method = {
  id: 'svfit',
  family: 'adapter',
  paper: { title: 'SVFit: Parameter-Efficient Fine-Tuning of Large Pre-Trained Models Using Singular Values', year: 2024, url: 'https://arxiv.org/abs/2409.05926' },
  summary: 'Train only the top-r singular values of each weight; its singular vectors and the rest of the spectrum stay frozen.',
  parameterPrefix: 'svfit_',
  schema: [
    {
      name: 'rank_rule', type: 'enum', default: 'energy', choices: ['energy', 'fixed', 'full'],
      description: "how many of each weight's largest singular values train: 'energy' (the paper's rule: the fewest holding `energy` of Σσ², so ranks differ by matrix), 'fixed' (`rank` for every matrix) or 'full' (all of them)",
    },
    { name: 'energy', type: 'number', default: 0.99, min: 0.01, max: 1, description: "share of Σσ² the trained singular values hold under rank_rule 'energy' (the paper: over 99 %)" },
    { name: 'rank', type: 'integer', default: 8, min: 1, max: 4096, description: "r under rank_rule 'fixed': the same number of singular values trains in every module" },
    ...svdSchemaFields(4, 'as pissa'),
  ],
  mergeable: true,
  exportFormats: ['peft', 'merged'],

  countTrainable(model, given, paths) {
    const params = resolveParams('svfit', svfit.schema, given);
    if (params.rank_rule === 'fixed') return countWithoutSvd('svfit', () => svfit.schema, (r) => r)(model, given, paths);
    return ranksOf(model, linearTargets(model, 'svfit', paths), params).reduce((a, b) => a + b, 0);
  },

  attach(model, given, ctx) {
    const params = resolveParams('svfit', svfit.schema, given);
    const targets = linearTargets(model, 'svfit', ctx.targets);
    if (params.rank_rule === 'fixed') checkSvdRank('svfit', targets, params.rank as number);
    const initial = InitialValues.from(ctx.initial);
    return attachFactored({
      method: svfit,
      model,
      params,
      ctx,
      targets,
      initial,
      dropout: 0,
      layer(target) {
        const { path, outFeatures: m, inFeatures: n } = target;
        const svd = svfitSvd(weightOutIn64(model, target), m, n, params, ctx.seed);
        const r = svd.k;
        const u = Float32Array.from(svd.U); // U_r [out, r]
        const vt = Float32Array.from(svd.Vt); // V_rᵀ [r, in]
        const sigma = Float32Array.from(svd.S); // σ [r]
        const start = initial?.peek(`${path}.svfit_s`)
          ? initial.take(`${path}.svfit_s`, [r])
          : initial
            ? recoverValues(target, initial, u, vt, sigma)
            : sigma;
        const U = tf.tensor2d(u, [m, r]);
        const Vt = tf.tensor2d(vt, [r, n]);
        const S0 = tf.tensor1d(sigma);
        const values = variableFrom(tf.tensor1d(start));
        return {
          target,
          trainable: [['svfit_s', values]],
          frozen: [U, Vt, S0],
          // ((x·V_r) ⊙ (s − σ))·U_rᵀ   [N, out]
          update: (x) => tf.matMul(tf.mul(tf.matMul(x, Vt, false, true), tf.sub(values, S0)), U, false, true),
          factors: () => ({ B: tf.mul(U, tf.sub(values, S0)) as tf.Tensor2D, A: tf.clone(Vt) }),
        };
      },
    });
  },
};

registerMethod(svfit);
