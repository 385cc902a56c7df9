/**
 * PiSSA: Principal Singular values and Singular vectors Adaptation (Meng et al., arXiv:2404.02948),
 * as a LoRA initialisation (peft `LoraLayer.pissa_init`). With W = U·S·Vᵀ and s the LoRA scaling:
 *   A₀ = diag(√(S_r/s))·V_rᵀ [r, in],  B₀ = U_r·diag(√(S_r/s)) [out, r]      (paper Eq. 2–3)
 *   W_res = W − s·B₀·A₀ is stored as the frozen weight, so W_res + s·B₀·A₀ = W at step 0.
 * peft divides S by the scaling so any α works; the paper (and the defaults here) set α = r, s = 1.
 *
 * Export: an adapter trained on W_res only fits W_res. Like peft's `save_pretrained(...,
 * path_initial_model_for_weight_conversion=...)`, the PEFT export is a plain LoRA for the ORIGINAL
 * W: ΔW = s·(B·A − B₀·A₀) = s·[B | −B₀]·[A; A₀], rank 2r, with α doubled (α·√2 under rsLoRA) so the
 * scaling is unchanged. Re-attaching that export (AttachContext.initial) splits it back into A, B,
 * A₀, B₀ and rebuilds W_res without another SVD.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { truncatedSvd } from '../linalg/svd.ts';
import { assignValues, defineLoraMethod, loraSchema, loraTrainableCount, plainLora, type LoraLayer, type LoraVariant } from './lora.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

const A0 = 'pissa_A0';
const B0 = 'pissa_B0';

/** Top-r SVD of W [out, in] -> A₀, B₀ (row-major float32) as peft's pissa_init computes them. */
function principalFactors(
  layer: LoraLayer,
  w: Float64Array,
  method: 'auto' | 'exact' | 'randomized',
  niter: number,
  seed: number,
): { a0: Float32Array; b0: Float32Array } {
  const { r, inFeatures: n, outFeatures: m, scaling } = layer;
  const svd = truncatedSvd(w, m, n, r, { method, niter, seed });
  const root = Array.from(svd.S, (sigma) => Math.sqrt(sigma / scaling)); // √(S_r / s)
  const a0 = new Float32Array(r * n);
  for (let t = 0; t < r; t++) for (let j = 0; j < n; j++) a0[t * n + j] = root[t] * svd.Vt[t * n + j];
  const b0 = new Float32Array(m * r);
  for (let i = 0; i < m; i++) for (let t = 0; t < r; t++) b0[i * r + t] = svd.U[i * r + t] * root[t];
  return { a0, b0 };
}

export const pissaVariant: LoraVariant = {
  ...plainLora,
  configFields: {},

  init(layer, model, params, initial, seed) {
    const { path, r, inFeatures: n, outFeatures: m, scaling } = layer;
    if (r > Math.min(m, n)) {
      throw new LowrankError('BAD_ARGUMENT', `method pissa: rank ${r} exceeds min(out, in) = ${Math.min(m, n)} of ${path}; choose rank ≤ ${Math.min(m, n)}`);
    }
    const name = `${path}.weight`;
    // A base frozen in native memory has no tensor to put back on detach: the residual is simply removed then.
    const original = model.isFrozen(name) ? null : (model.weight(name) as tf.Tensor2D);
    const shape = model.weightShape(name) as [number, number];
    const stored = original ? original.dataSync() : tf.tidy(() => model.weight(name).dataSync());
    // W [out, in] in float64; GPT-2 Conv1D stores [in, out].
    const w = new Float64Array(m * n);
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) w[i * n + j] = layer.transposed ? stored[j * m + i] : stored[i * n + j];

    let a0: Float32Array;
    let b0: Float32Array;
    let a: Float32Array | undefined;
    let b: Float32Array | undefined;
    const savedA = initial?.peek(`${path}.lora_A.weight`);
    if (initial && savedA?.length === 2 * r * n) {
      // Our own converted export: A' = [A; A₀] [2r, in], B' = [B | −B₀] [out, 2r].
      const aPrime = initial.take(`${path}.lora_A.weight`, [2 * r, n]);
      const bPrime = initial.take(`${path}.lora_B.weight`, [m, 2 * r]);
      a = aPrime.slice(0, r * n);
      a0 = aPrime.slice(r * n);
      b = new Float32Array(m * r);
      b0 = new Float32Array(m * r);
      for (let i = 0; i < m; i++) {
        for (let t = 0; t < r; t++) {
          b[i * r + t] = bPrime[i * 2 * r + t];
          b0[i * r + t] = -bPrime[i * 2 * r + r + t];
        }
      }
    } else {
      ({ a0, b0 } = principalFactors(layer, w, params.svd as 'auto' | 'exact' | 'randomized', params.svd_niter as number, seed));
      if (initial) {
        // A rank-r PiSSA adapter (peft's unconverted save): the SVD gives W_res, the file gives A, B.
        a = initial.take(`${path}.lora_A.weight`, [r, n]);
        b = initial.take(`${path}.lora_B.weight`, [m, r]);
      }
    }
    // W_res = W − s·B₀·A₀, in float64 from the float32 factors so W_res + s·B₀·A₀ rounds back to W.
    const residual = new Float32Array(m * n);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let sum = 0;
        for (let t = 0; t < r; t++) sum += b0[i * r + t] * a0[t * n + j];
        const value = w[i * n + j] - scaling * sum;
        if (layer.transposed) residual[j * m + i] = value;
        else residual[i * n + j] = value;
      }
    }
    assignValues(layer.A, a ?? a0);
    assignValues(layer.B, b ?? b0);
    layer.extra.set(A0, tf.tensor2d(a0, [r, n]));
    layer.extra.set(B0, tf.tensor2d(b0, [m, r]));
    if (original) layer.replacedWeight = original;
    else layer.replacedFrozen = true;
    model.weights.set(name, tf.tensor2d(residual, shape));
  },

  peftTensors(layer) {
    const a0 = layer.extra.get(A0) as tf.Tensor2D;
    const b0 = layer.extra.get(B0) as tf.Tensor2D;
    return [
      ['lora_A.weight', tf.concat([layer.A, a0], 0)], // [2r, in]
      ['lora_B.weight', tf.concat([layer.B, tf.neg(b0)], 1)], // [out, 2r]
    ];
  },

  peftConfig(config) {
    // peft save_pretrained with path_initial_model_for_weight_conversion: r ×2, α ×2 (×√2 under
    // rsLoRA) keeps α/r (α/√r); init_lora_weights is saved as true.
    config.r = 2 * (config.r as number);
    config.lora_alpha = (config.lora_alpha as number) * (config.use_rslora ? Math.SQRT2 : 2);
    config.init_lora_weights = true;
  },
};

export const pissa = defineLoraMethod({
  countTrainable: (model, params, targets) => loraTrainableCount(model, resolveParams('pissa', pissa.schema, params), targets),
  id: 'pissa',
  variantOf: 'lora',
  family: 'adapter',
  paper: { title: 'PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language Models', year: 2024, url: 'https://arxiv.org/abs/2404.02948' },
  paperLearningRate: { value: 2e-5, source: 'GraphPKU/PiSSA scripts/run_pissa.sh (Llama-3-8B, MetaMathQA, batch 128)' },
  summary: 'LoRA started from the top-r singular vectors of each weight; the residual stays frozen.',
  // The paper's runs (and peft's examples) use α = r (s = 1) and no dropout.
  schema: [
    ...loraSchema({ alpha: 8, dropout: 0 }),
    {
      name: 'svd',
      type: 'enum',
      default: 'auto',
      choices: ['auto', 'exact', 'randomized'],
      description: "exact: one-sided Jacobi (peft init 'pissa'); randomized: Halko et al. ('pissa_niter_N'); auto picks by matrix size and rank",
    },
    { name: 'svd_niter', type: 'integer', default: 4, min: 0, max: 64, description: 'subspace iterations of the randomized SVD' },
  ],
  variant: pissaVariant,
});

registerMethod(pissa);
