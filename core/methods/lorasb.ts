/**
 * LoRA-SB: Initialization Using Update Approximation is a Silver Bullet for Extreme Efficient
 * Low-Rank Fine-Tuning (Ponkshe et al., arXiv:2411.19557; RaghavSinghal10/lora-sb: train_*.py,
 * utils/gradient_utils.py `estimate_and_process_grads_torch_3`, ALGORITHMS.md §9).
 *
 * LoRA-XS's architecture (loraxs.ts: frozen B [out, r], A [r, in], trainable R [r, r],
 * h = W₀x + s·B·R·A·x), initialised from an approximate first full-fine-tuning step instead of W₀:
 *   G   = Σ_b ∇_W (loss_b / n_b) over the run's first N training examples (batches of eg_bs)
 *   ΔŴ  = −η_eff·sign(G)        (Adam's first step is ≈ −lr·sign(g); η_eff as train_*.py computes it:
 *                                 lr / (warmup_ratio · T_est), T_est = ⌈N_train / eg_bs⌉ · epochs, the
 *                                 length of the eg_bs gradient loader, not the optimizer's step count)
 *   ΔŴ ≈ U_r·diag(σ)·V_rᵀ (top-r SVD):  B = U_r,  A = V_rᵀ,  R = diag(σ),  s = 1 (α forced to r)
 * W₀ is NOT compensated: the model starts at W₀ + B·R·A, the best rank-r approximation of the
 * full-fine-tuning step, and only R trains (r² numbers per module). BᵀB = I_r, and the gradient
 * reaching R is Bᵀ·G·Aᵀ, the full gradient projected on the update's own subspace.
 *
 * Export: exact plain LoRA, lora_B = s·B·R, lora_A = A (alpha = r) — on the ORIGINAL base, since W₀
 * was never changed. Re-attaching that export needs no gradients: A = lora_A and B·R = lora_B is
 * split by a QR factorisation (B orthonormal, R upper triangular), which gives the same ΔW.
 * A run's checkpoint holds only R; rebuilding the run recomputes G from the same samples in the
 * same order, so B and A come out the same.
 */
import { LowrankError } from '../errors.ts';
import { truncatedSvd, type TruncatedSvdOptions } from '../linalg/svd.ts';
import type { BaseGradientSource, Method } from './method.ts';
import { InitialValues } from './initial-values.ts';
import { attachFactored, checkSvdRank, countWithoutSvd, type LinearTarget, linearTargets, svdSchemaFields } from './factored-adapter.ts';
import { loraxsLayer } from './loraxs.ts';
import { dropoutField, resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

/** A stored weight (row-major, [in, out] when transposed) as [out, in] float64. */
function outIn64(target: LinearTarget, stored: Float32Array): Float64Array {
  const { outFeatures: m, inFeatures: n, transposed } = target;
  const w = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) w[i * n + j] = transposed ? stored[j * m + i] : stored[i * n + j];
  return w;
}

/**
 * ΔŴ = −η·sign(G) for G [out, in], and its top-r SVD as LoRA-SB's factors: B = U_r [out, r]
 * (orthonormal columns), A = V_rᵀ [r, in] (orthonormal rows), σ [r] (R = diag(σ)).
 */
export function lorasbFactors(g: Float64Array, m: number, n: number, r: number, eta: number, opts: TruncatedSvdOptions): { b: Float32Array; a: Float32Array; sigma: Float64Array; update: Float64Array } {
  const update = Float64Array.from(g, (v) => -eta * Math.sign(v));
  const svd = truncatedSvd(update, m, n, r, opts);
  return { b: Float32Array.from(svd.U), a: Float32Array.from(svd.Vt), sigma: svd.S, update };
}

/**
 * η_eff as lora-sb computes it (train_arithmetic.py, train_cr.py: `total_training_steps =
 * len(train_loader) * args.epochs; eff_lr = args.lr/(args.warmup_ratio * total_training_steps)`), where
 * train_loader batches the training set by eg_bs, the gradient estimate's batch size.
 */
export function officialEffectiveLearningRate(schedule: BaseGradientSource['schedule'], gradBatchSize: number): number {
  const loaderLength = Math.ceil(schedule.trainExamples / gradBatchSize);
  return schedule.lr / (schedule.warmupRatio * loaderLength * schedule.epochs);
}

/**
 * Splits a saved lora_B [m, r] = B·R into B with orthonormal columns and R [r, r] (modified
 * Gram–Schmidt, run twice for orthogonality to working precision). Refuses a rank-deficient lora_B.
 */
function splitOrthonormal(path: string, loraB: Float32Array, m: number, r: number): { b: Float32Array; R: Float32Array } {
  const q = Float64Array.from(loraB); // columns orthonormalised in place, [m, r]
  const R = new Float64Array(r * r);
  let scale = 0;
  for (const v of loraB) scale = Math.max(scale, Math.abs(v));
  for (let j = 0; j < r; j++) {
    for (let pass = 0; pass < 2; pass++) {
      for (let k = 0; k < j; k++) {
        let dot = 0;
        for (let i = 0; i < m; i++) dot += q[i * r + k] * q[i * r + j];
        for (let i = 0; i < m; i++) q[i * r + j] -= dot * q[i * r + k];
        R[k * r + j] += dot;
      }
    }
    let norm = 0;
    for (let i = 0; i < m; i++) norm += q[i * r + j] ** 2;
    norm = Math.sqrt(norm);
    if (!(norm > 1e-6 * scale * Math.sqrt(m))) {
      throw new LowrankError('BAD_ARGUMENT', `saved adapter's ${path}.lora_B has rank < ${r}; it is not a LoRA-SB export (B·R with R invertible)`);
    }
    for (let i = 0; i < m; i++) q[i * r + j] /= norm;
    R[j * r + j] = norm;
  }
  return { b: Float32Array.from(q), R: Float32Array.from(R) };
}

export const lorasb: Method = {
  id: 'lorasb',
  variantOf: 'loraxs',
  family: 'adapter',
  paper: {
    title: 'Initialization Using Update Approximation is a Silver Bullet for Extreme Efficient Low-Rank Fine-Tuning',
    year: 2024,
    url: 'https://arxiv.org/abs/2411.19557',
  },
  paperLearningRate: { value: 2e-3, source: 'RaghavSinghal10/lora-sb train_cr.py runs (commonsense, Llama-3.1-8B, r = 96; ALGORITHMS.md LoRA-SB (d)); arithmetic uses 1e-4' },
  summary: 'LoRA-XS started from the best rank-r approximation of a first full fine-tuning step estimated from a few samples; trains r×r per module.',
  parameterPrefix: 'loraxs_',
  schema: [
    { name: 'rank', type: 'integer', default: 96, min: 1, max: 4096, description: 'r; each module trains an r×r matrix (the paper\'s LLM runs use 96, GLUE 24)' },
    {
      name: 'grad_samples',
      type: 'integer',
      default: 50,
      min: 1,
      max: 100000,
      description: 'N, the first training examples whose summed gradient estimates the full fine-tuning step (50 arithmetic, 170 commonsense, 2 GLUE)',
    },
    { name: 'grad_batch_size', type: 'integer', default: 3, min: 1, max: 4096, description: 'batch size of that gradient estimate (the code\'s eg_bs: 3, or 10 for commonsense)' },
    {
      name: 'init_lr',
      type: 'number',
      default: 0,
      min: 0,
      description: 'η_eff in ΔŴ = −η_eff·sign(G); 0 = as the official code: lr / (warmup_ratio · ⌈train examples / grad_batch_size⌉ · epochs)',
    },
    dropoutField(),
    ...svdSchemaFields(10, 'the code\'s torch.svd_lowrank niter'),
  ],
  mergeable: true,
  exportFormats: ['peft', 'merged'],

  countTrainable: countWithoutSvd('lorasb', () => lorasb.schema, (r) => r * r),

  attach(model, given, ctx) {
    const params = resolveParams('lorasb', lorasb.schema, given);
    const r = params.rank as number;
    const s = 1; // the code forces α = r
    const targets = linearTargets(model, 'lorasb', ctx.targets);
    checkSvdRank('lorasb', targets, r);
    const initial = InitialValues.from(ctx.initial);
    let gradients: Map<string, Float32Array> | undefined;
    let eta = params.init_lr as number;
    if (!initial) {
      const source = ctx.baseGradients;
      if (!source) {
        throw new LowrankError(
          'BAD_ARGUMENT',
          'method lorasb initialises from gradients of the first training samples, which only a fine-tuning run provides (lowrank train); to load a trained LoRA-SB adapter, pass it as initial values',
        );
      }
      if (eta === 0) eta = officialEffectiveLearningRate(source.schedule, params.grad_batch_size as number);
      // Before any module is wrapped: the gradients of the unmodified base model.
      gradients = source.gradients(targets.map((t) => `${t.path}.weight`), params.grad_samples as number, params.grad_batch_size as number);
    }
    const svdOptions: TruncatedSvdOptions = { method: params.svd as 'auto' | 'exact' | 'randomized', niter: params.svd_niter as number, seed: ctx.seed };
    return attachFactored({
      method: lorasb,
      model,
      params,
      ctx,
      targets,
      initial,
      dropout: params.dropout as number,
      layer(target) {
        const { path, outFeatures: m, inFeatures: n } = target;
        if (initial) {
          const a = initial.take(`${path}.lora_A.weight`, [r, n]);
          const { b, R } = splitOrthonormal(path, initial.take(`${path}.lora_B.weight`, [m, r]), m, r);
          return loraxsLayer(target, b, a, Float32Array.from(R, (v) => v / s), r, s);
        }
        const g = outIn64(target, gradients!.get(`${path}.weight`)!);
        const { b, a, sigma } = lorasbFactors(g, m, n, r, eta, svdOptions);
        const rInit = new Float32Array(r * r);
        for (let k = 0; k < r; k++) rInit[k * r + k] = sigma[k] / s;
        return loraxsLayer(target, b, a, rInit, r, s);
      },
    });
  },
};

registerMethod(lorasb);
