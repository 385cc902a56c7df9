/**
 * ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws (Huang & Balestriero, arXiv:2410.09692),
 * as pinned in ALGORITHMS.md "ALLoRA" from the paper's §4.2, §4.4–4.5, App. C and App. F Listing 1
 * (the authors' repository could not be read):
 *   h = W₀x + B·A·x             no dropout, no scaling (s = 1), A ~ kaiming-uniform(a=√5), B = 0
 * and in the backward pass only the gradients reaching A and B are rescaled per output row i by
 *   c_i = 1 / √(‖(B·A)_{i,:}‖₂ + 1/η²)                        (the norm unsquared, §4.4)
 * with δ = ∂L/∂h and δ̃ = δ ⊙ c:  ∂L/∂B = δ̃ᵀ·(A·x),  ∂L/∂A = (δ̃·B)ᵀ·x,  while ∂L/∂x = δ·B·A stays
 * unscaled. c is taken from the current A and B in the forward pass and is a constant of the backward
 * pass (no gradient flows through it); it is the same for every example of the batch. At B = 0 every
 * c_i = η: the first step is LoRA's times η (Listing 1: 1/η² = 1/4, so η = 2).
 * ‖(B·A)_{i,:}‖² is read as B_i·(A·Aᵀ)·B_iᵀ from the r×r Gram matrix, never forming B·A.
 *
 * The update is exactly low-rank: merged W' = W₀ + B·A, and the PEFT export is a plain LoRA with
 * lora_alpha = r (peft's scaling 1). A saved plain LoRA with s = 1 continues training as ALLoRA.
 */
import * as tf from '../tf.ts';
import { Random } from '../random.ts';
import type { Method } from './method.ts';
import { InitialValues } from './initial-values.ts';
import { attachFactored, linearTargets } from './factored-adapter.ts';
import { assignValues, variableFrom } from './lora.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

/** c_i = 1/√(‖(B·A)_{i,:}‖₂ + 1/η²) for every output row, [out] (a new tensor, no gradient). */
export function rowScale(A: tf.Tensor2D, B: tf.Tensor2D, inverseEtaSquared: number): tf.Tensor1D {
  return tf.tidy(() => {
    const gram = tf.matMul(A, A, false, true); // A·Aᵀ [r, r]
    const rowNormSq = tf.relu(tf.sum(tf.mul(tf.matMul(B, gram), B), 1)); // ‖(B·A)_i‖² [out]; relu drops rounding below 0
    return tf.rsqrt(tf.add(tf.sqrt(rowNormSq), inverseEtaSquared)) as tf.Tensor1D;
  });
}

/**
 * x [N, in] -> x·Aᵀ·Bᵀ [N, out], with ALLoRA's backward: A's and B's gradients from δ ⊙ c, x's from δ.
 */
export function alloraProduct(x: tf.Tensor2D, A: tf.Tensor2D, B: tf.Tensor2D, inverseEtaSquared: number): tf.Tensor2D {
  const op = tf.customGrad(((input: tf.Tensor2D, a: tf.Tensor2D, b: tf.Tensor2D, save: tf.GradSaveFunc) => {
    const ax = tf.matMul(input, a, false, true); // A·x as rows [N, r]
    save([input, a, b, ax]);
    return {
      value: tf.matMul(ax, b, false, true), // [N, out]
      gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) => {
        const [xs, as, bs, axs] = saved as tf.Tensor2D[];
        const scaled = tf.mul(dy, tf.reshape(rowScale(as, bs, inverseEtaSquared), [1, -1])) as tf.Tensor2D; // δ̃ [N, out]
        const dB = tf.matMul(scaled, axs, true, false); // δ̃ᵀ·(A·x)  [out, r]
        const dA = tf.matMul(tf.matMul(scaled, bs), xs, true, false); // (δ̃·B)ᵀ·x  [r, in]
        const dx = tf.matMul(tf.matMul(dy, bs), as); // δ·B·A, unscaled  [N, in]
        return [dx, dA, dB];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor2D, a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor2D;
  return op(x, A, B);
}

export const allora: Method = {
  id: 'allora',
  variantOf: 'lora',
  family: 'adapter',
  paper: { title: 'ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws', year: 2024, url: 'https://arxiv.org/abs/2410.09692' },
  summary: 'LoRA without dropout or scaling whose A, B gradients are scaled per output row by 1/√(‖(BA)ᵢ‖ + 1/η²): fast while the update is small, damped as it grows.',
  paperLearningRate: { value: 1e-4, source: 'arXiv:2410.09692 §5: base learning rate l_b = 1e-4 of the η² ∈ {1, 2, 4} sweeps (ALGORITHMS.md ALLoRA (d))' },
  parameterPrefix: 'lora_',
  schema: [
    // The commonsense runs follow DoRA's setup, r ∈ {16, 32} (§5): the smaller one.
    { name: 'rank', type: 'integer', default: 16, min: 1, max: 4096, description: 'r, the rank of B·A (no α: the update is unscaled)' },
    // App. F Listing 1 sets 1/η² = 1/4; the sweeps use η² ∈ {1, 2, 4}.
    { name: 'eta', type: 'number', default: 2, min: 1e-6, description: 'η; gradients of A and B are scaled per output row by 1/√(‖(BA)ᵢ‖₂ + 1/η²), η at B·A = 0' },
  ],
  mergeable: true,
  exportFormats: ['peft', 'merged'],

  attach(model, given, ctx) {
    const params = resolveParams('allora', allora.schema, given);
    const r = params.rank as number;
    const inverseEtaSquared = 1 / (params.eta as number) ** 2;
    const targets = linearTargets(model, 'allora', ctx.targets);
    const initial = InitialValues.from(ctx.initial);
    const initRandom = new Random(ctx.seed);
    return attachFactored({
      method: allora,
      model,
      params,
      ctx,
      targets,
      initial,
      dropout: 0,
      layer(target) {
        const { path, inFeatures: n, outFeatures: m } = target;
        const bound = 1 / Math.sqrt(n); // kaiming_uniform_(a=√5) on [r, in], as peft's LoRA
        const A = variableFrom(tf.tensor2d(Float32Array.from({ length: r * n }, () => (2 * initRandom.next() - 1) * bound), [r, n]));
        const B = variableFrom(tf.zeros([m, r]) as tf.Tensor2D);
        if (initial) {
          assignValues(A, initial.take(`${path}.lora_A.weight`, [r, n]));
          assignValues(B, initial.take(`${path}.lora_B.weight`, [m, r]));
        }
        return {
          target,
          trainable: [
            ['lora_A.weight', A],
            ['lora_B.weight', B],
          ],
          frozen: [],
          update: (x) => alloraProduct(x, A as tf.Tensor2D, B as tf.Tensor2D, inverseEtaSquared),
          factors: () => ({ B: tf.clone(B) as tf.Tensor2D, A: tf.clone(A) as tf.Tensor2D }),
        };
      },
    });
  },
};

registerMethod(allora);
