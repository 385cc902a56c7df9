/**
 * LoRA-XS: Low-Rank Adaptation with Extremely Small Number of Parameters (Bałazy et al.,
 * arXiv:2405.17604; MohammadrezaBanaei/LoRA-XS utils/initialization_utils.py). From the truncated
 * SVD W₀ ≈ U_r·Σ_r·V_rᵀ of each frozen weight [out, in]:
 *   B = U_r [out, r] and A = Σ_r·V_rᵀ [r, in] are frozen (the paper's code factorises W₀ᵀ, so its
 *   "V" is our U_r), and only R [r, r] ~ N(0, 1e-5²) trains:
 *   h = W₀x + s·B·R·A·dropout(x),  s = α/r, with α = r (s = 1) in the paper's runs.
 * Trainable count: r² per wrapped module, whatever its size.
 *
 * Export: exact plain LoRA, lora_B = s·B·R, lora_A = A (s = 1 in the file). Re-attaching that
 * export (AttachContext.initial) recomputes the same SVD and recovers R = Bᵀ·lora_B / s, since
 * BᵀB = I_r; the saved trainable `<path>.loraxs_R` is accepted too.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import { truncatedSvd, type TruncatedSvdOptions } from '../linalg/svd.ts';
import type { Method } from './method.ts';
import { InitialValues } from './initial-values.ts';
import { attachFactored, checkSvdRank, countWithoutSvd, type FactoredLayer, type LinearTarget, linearTargets, svdSchemaFields, weightOutIn64 } from './factored-adapter.ts';
import { dropoutField, resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';
import { variableFrom } from './lora.ts';

/** The frozen factors from the top-r SVD of W [out, in]: B = U_r [out, r], A = Σ_r·V_rᵀ [r, in], float32. */
export function loraxsFactors(w: Float64Array, m: number, n: number, r: number, opts: TruncatedSvdOptions): { b: Float32Array; a: Float32Array } {
  const svd = truncatedSvd(w, m, n, r, opts);
  return { b: Float32Array.from(svd.U), a: Float32Array.from(svd.Vt, (v, k) => svd.S[Math.floor(k / n)] * v) };
}

/**
 * One wrapped module: frozen B [out, r] and A [r, in], trainable R [r, r] (`<path>.loraxs_R`) from
 * `rInit`; h = W₀x + s·B·R·A·x. Shared with LoRA-SB (lorasb.ts), which only initialises differently.
 */
export function loraxsLayer(target: LinearTarget, b: Float32Array, a: Float32Array, rInit: Float32Array, r: number, s: number): FactoredLayer {
  const { outFeatures: m, inFeatures: n } = target;
  const B = tf.tensor2d(b, [m, r]);
  const A = tf.tensor2d(a, [r, n]);
  const R = variableFrom(tf.tensor2d(rInit, [r, r]));
  return {
    target,
    trainable: [['loraxs_R', R]],
    frozen: [B, A],
    // s·x·Aᵀ·Rᵀ·Bᵀ: three thin products, never the [out, in] ΔW.
    update: (x) => tf.mul(tf.matMul(tf.matMul(tf.matMul(x, A, false, true), R, false, true), B, false, true), s),
    factors: () => ({ B: tf.mul(tf.matMul(B, R), s) as tf.Tensor2D, A: tf.clone(A) }),
  };
}

/** R from a saved plain-LoRA export: R = Bᵀ·lora_B / s; lora_A must be this model's A. */
function recoverR(target: LinearTarget, initial: InitialValues, b: Float32Array, a: Float32Array, r: number, s: number): Float32Array {
  const { path, outFeatures: m, inFeatures: n } = target;
  const loraA = initial.take(`${path}.lora_A.weight`, [r, n]);
  const loraB = initial.take(`${path}.lora_B.weight`, [m, r]);
  let diff = 0;
  let scale = 0;
  for (let k = 0; k < a.length; k++) {
    diff = Math.max(diff, Math.abs(loraA[k] - a[k]));
    scale = Math.max(scale, Math.abs(a[k]));
  }
  if (diff > 1e-4 * scale) {
    throw new LowrankError('SHAPE_MISMATCH', `saved adapter's ${path}.lora_A is not this model's Σ·Vᵀ (off by ${diff.toExponential(2)}); it was trained on another base model or SVD setting`);
  }
  const R = new Float32Array(r * r);
  for (let p = 0; p < r; p++) {
    for (let q = 0; q < r; q++) {
      let sum = 0;
      for (let i = 0; i < m; i++) sum += b[i * r + p] * loraB[i * r + q];
      R[p * r + q] = sum / s;
    }
  }
  return R;
}

export const loraxs: Method = {
  id: 'loraxs',
  family: 'adapter',
  paper: { title: 'LoRA-XS: Low-Rank Adaptation with Extremely Small Number of Parameters', year: 2024, url: 'https://arxiv.org/abs/2405.17604' },
  paperLearningRate: { value: 4e-3, source: 'MohammadrezaBanaei/LoRA-XS scripts/run_math_tuning.sh (r = 64, MetaMathQA; ALGORITHMS.md LoRA-XS (d))' },
  summary: 'Freeze B and A from the SVD of each weight and train only a tiny r×r matrix between them.',
  parameterPrefix: 'loraxs_',
  schema: [
    { name: 'rank', type: 'integer', default: 64, min: 1, max: 4096, description: 'r; each module trains an r×r matrix (the paper\'s math runs use 64, GLUE 4–25)' },
    { name: 'alpha', type: 'number', default: 0, min: 0, description: 'α; the update is scaled by α/r. 0 means α = r (s = 1), the paper\'s setting' },
    dropoutField(),
    ...svdSchemaFields(10, 'the paper\'s TruncatedSVD uses n_iter = 10'),
  ],
  mergeable: true,
  exportFormats: ['peft', 'merged'],

  countTrainable: countWithoutSvd('loraxs', () => loraxs.schema, (r) => r * r),

  attach(model, given, ctx) {
    const params = resolveParams('loraxs', loraxs.schema, given);
    const r = params.rank as number;
    const s = ((params.alpha as number) || r) / r;
    const targets = linearTargets(model, 'loraxs', ctx.targets);
    checkSvdRank('loraxs', targets, r);
    const initial = InitialValues.from(ctx.initial);
    const initRandom = new Random(ctx.seed);
    return attachFactored({
      method: loraxs,
      model,
      params,
      ctx,
      targets,
      initial,
      dropout: params.dropout as number,
      layer(target) {
        const { path, outFeatures: m, inFeatures: n } = target;
        const { b, a } = loraxsFactors(weightOutIn64(model, target), m, n, r, {
          method: params.svd as 'auto' | 'exact' | 'randomized',
          niter: params.svd_niter as number,
          seed: ctx.seed,
        });
        const gaussian = () => Float32Array.from({ length: r * r }, () => 1e-5 * initRandom.normal());
        const rInit = initial?.peek(`${path}.loraxs_R`)
          ? initial.take(`${path}.loraxs_R`, [r, r])
          : initial
            ? recoverR(target, initial, b, a, r, s)
            : gaussian();
        return loraxsLayer(target, b, a, rInit, r, s);
      },
    });
  },
};

registerMethod(loraxs);
