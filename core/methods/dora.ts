/**
 * DoRA: Weight-Decomposed Low-Rank Adaptation (Liu et al., arXiv:2402.09353), as a LoRA variant
 * (peft `DoraLinearVariant`, tuners/lora/dora.py). The weight is split into magnitude and
 * direction and LoRA adapts the direction (Eq. 5):
 *   W' = m ⊙ (W₀ + s·B·A) / ‖W₀ + s·B·A‖_c
 * where ‖·‖_c is the L2 norm of each output row over the input dimension (peft's
 * `torch.linalg.norm(W + s·BA, dim=1)` on the [out, in] weight), m [out] is trainable and starts
 * at ‖W₀‖_c so W' = W₀ at step 0. The norm is treated as a constant in the backward pass (§4.3:
 * "treating ‖V + ΔV‖_c as a constant, thereby detaching it from the gradient graph"), as peft does.
 */
import * as tf from '../tf.ts';
import { defineLoraMethod, deltaWeight, loraSchema, variableFrom, plainLora, type LoraLayer, type LoraVariant } from './lora.ts';
import { registerMethod } from './registry.ts';

export const MAGNITUDE = 'lora_magnitude_vector';

/** ‖W₀ + s·B·A‖_c [out] for W₀ [out, in]. */
export function columnWeightNorm(layer: LoraLayer, weight: tf.Tensor2D): tf.Tensor1D {
  return tf.tidy(() => {
    const combined = tf.add(weight, deltaWeight(layer));
    return tf.sqrt(tf.sum(tf.square(combined), 1)) as tf.Tensor1D;
  });
}

/**
 * ‖W₀ + s·B·A‖_c as a constant of the backward pass (torch's `.detach()`): computed inside a
 * custom gradient, so the tape records no ops for it, and its gradient to A and B is zero.
 */
export function detachedColumnWeightNorm(layer: LoraLayer, weight: tf.Tensor2D): tf.Tensor1D {
  const detached = tf.customGrad(() => ({
    value: columnWeightNorm(layer, weight),
    gradFunc: () => [tf.zerosLike(layer.A), tf.zerosLike(layer.B)],
  }));
  return detached(layer.A, layer.B) as tf.Tensor1D;
}

function magnitude(layer: LoraLayer): tf.Variable {
  return layer.extra.get(MAGNITUDE) as tf.Variable;
}

export const doraVariant: LoraVariant = {
  ...plainLora,
  configFields: { use_dora: true },

  init(layer, model, params, initial, seed) {
    plainLora.init(layer, model, params, initial, seed);
    // peft's DoraLinearLayer.update_layer: m = ‖W₀ + s·B·A‖_c with the initial A, B (B = 0 ⇒ ‖W₀‖_c).
    const m = initial
      ? tf.tensor1d(initial.take(`${layer.path}.${MAGNITUDE}`, [layer.outFeatures]))
      : tf.tidy(() => {
          const stored = model.weight(`${layer.path}.weight`) as tf.Tensor2D;
          return columnWeightNorm(layer, layer.transposed ? tf.transpose(stored) : stored);
        });
    layer.extra.set(MAGNITUDE, variableFrom(m));
  },

  trainable: (layer) => [[MAGNITUDE, magnitude(layer)]],

  forward(layer, x, base, weight, dropout) {
    const stored = weight();
    const w = layer.transposed ? tf.transpose(stored) : stored; // [out, in]
    const norm = detachedColumnWeightNorm(layer, w); // [out], constant in the backward (§4.3)
    const scale = tf.div(magnitude(layer), norm); // m / ‖W₀ + s·B·A‖_c   [out]
    const input = dropout ? dropout(x) : x;
    const update = tf.mul(tf.matMul(tf.matMul(input, layer.A, false, true), layer.B, false, true), layer.scaling); // [N, out]
    if (!dropout) {
      // W'x + b = scale ⊙ (W₀x + s·B·A·x) + b; the bias is base(0).
      const bias = base(tf.zeros([1, layer.inFeatures]));
      return tf.add(tf.mul(tf.add(tf.sub(base(x), bias), update), scale), bias);
    }
    // With dropout, peft's DoraLinearVariant.forward: W₀x + b + (scale − 1) ⊙ W₀·x̃ + scale ⊙ s·B·A·x̃,
    // x̃ = dropout(x); it equals the line above when x̃ = x.
    const frozen = tf.matMul(input, w, false, true); // W₀·x̃   [N, out]
    return tf.add(base(x), tf.add(tf.mul(frozen, tf.sub(scale, 1)), tf.mul(update, scale)));
  },

  mergedWeight(layer, weight) {
    // peft merge: (m / ‖W₀ + ΔW‖_c)[:, None] ⊙ (W₀ + ΔW).
    const combined = tf.add(weight, deltaWeight(layer));
    const norm = tf.sqrt(tf.sum(tf.square(combined), 1));
    return tf.mul(combined, tf.div(magnitude(layer), norm).reshape([layer.outFeatures, 1]));
  },

  // peft saves the magnitude as `<path>.lora_magnitude_vector`, without `.weight`
  // (LoraModel._get_adapter_state_dict strips it to keep the pre-refactor format).
  peftTensors: (layer) => [...plainLora.peftTensors(layer), [MAGNITUDE, tf.clone(magnitude(layer))]],
};

export const dora = defineLoraMethod({
  id: 'dora',
  variantOf: 'lora',
  family: 'adapter',
  paper: { title: 'DoRA: Weight-Decomposed Low-Rank Adaptation', year: 2024, url: 'https://arxiv.org/abs/2402.09353' },
  paperLearningRate: { value: 2e-4, source: 'NVlabs/DoRA commonsense_reasoning/llama2_7B_DoRA.sh (Llama-2-7B, commonsense 170k)' },
  summary: 'Split each weight into a trainable magnitude and a direction that LoRA adapts.',
  schema: loraSchema(),
  variant: doraVariant,
});

registerMethod(dora);
