/**
 * SVFit: Parameter-Efficient Fine-Tuning of Large Pre-Trained Models Using Singular Values
 * (Sun et al., arXiv:2409.05926; no official code was found, ALGORITHMS.md "SVFit"). With the top-r
 * SVD W₀ = U_r·diag(σ)·V_rᵀ + W_e of each frozen weight [out, in], only the r singular values train:
 *   W = U_r·diag(s)·V_rᵀ + W_e,  s [r] starting at σ;  U_r, V_r and W_e frozen.
 * Written as W₀ + U_r·diag(s − σ)·V_rᵀ, which is the same weight, keeps the stored W₀ untouched
 * and makes the step-0 output exactly the base model's (s − σ = 0 to the bit).
 * Trainable count: r per wrapped module. The paper leaves how r is chosen unclear (it says the top
 * r values hold "over 99 %" of the matrix); here r is a fixed hyper-parameter.
 *
 * Export: exact plain LoRA, lora_B = U_r·diag(s − σ), lora_A = V_rᵀ, s = 1. Re-attaching it
 * recovers s = σ + diag(U_rᵀ·lora_B); the saved trainable `<path>.svfit_s` is accepted too.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { truncatedSvd } from '../linalg/svd.ts';
import type { Method } from './method.ts';
import { InitialValues } from './initial-values.ts';
import { attachFactored, checkSvdRank, countWithoutSvd, type LinearTarget, linearTargets, svdSchemaFields, weightOutIn64 } from './factored-adapter.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';
import { variableFrom } from './lora.ts';

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
    { name: 'rank', type: 'integer', default: 8, min: 1, max: 4096, description: 'r, how many of the largest singular values of each weight train (r numbers per module)' },
    ...svdSchemaFields(4, 'as pissa'),
  ],
  mergeable: true,
  exportFormats: ['peft', 'merged'],

  countTrainable: countWithoutSvd('svfit', () => svfit.schema, (r) => r),

  attach(model, given, ctx) {
    const params = resolveParams('svfit', svfit.schema, given);
    const r = params.rank as number;
    const targets = linearTargets(model, 'svfit', ctx.targets);
    checkSvdRank('svfit', targets, r);
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
        const svd = truncatedSvd(weightOutIn64(model, target), m, n, r, {
          method: params.svd as 'auto' | 'exact' | 'randomized',
          niter: params.svd_niter as number,
          seed: ctx.seed,
        });
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
