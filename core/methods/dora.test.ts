/**
 * DoRA specifics (Liu et al., arXiv:2402.09353): the magnitude starts at the row norms of W over
 * the input dimension (per output feature, Conv1D included), the norm ‖W + s·B·A‖_c is a constant
 * of the backward pass (§4.3), and the magnitude is exported under peft's key.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { getMethod } from './index.ts';
import { randomize, relativeError, tinyModel } from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const CASES: Array<[TinyCheckpointKind, string]> = [
  ['llama-gqa-tied', 'model.layers.1.self_attn.k_proj'],
  ['gpt2', 'transformer.h.1.attn.c_attn'],
];

describe.each(CASES)('dora on %s (%s)', (kind, path) => {
  it('starts the magnitude at ‖W‖ over the input dimension, one per output feature', () => {
    const { model, original } = tinyModel(kind);
    const attached = getMethod('dora').attach(model, {}, { targets: [path], seed: 1 });
    const m = attached.trainable.get(`${path}.lora_magnitude_vector`)!.dataSync();
    const w = original.get(`${path}.weight`)!;
    const transposed = kind === 'gpt2'; // Conv1D stores [in, out]
    const [out, inn] = transposed ? [w.shape[1], w.shape[0]] : w.shape;
    expect(m.length).toBe(out);
    for (let o = 0; o < out; o++) {
      let sum = 0;
      for (let i = 0; i < inn; i++) sum += w.data[transposed ? i * out + o : o * inn + i] ** 2;
      expect(Math.abs(m[o] - Math.sqrt(sum)) / Math.sqrt(sum)).toBeLessThan(1e-6);
    }
    const { config, tensors } = attached.peftAdapter!();
    expect(config.use_dora).toBe(true);
    expect(tensors.get(`base_model.model.${path}.lora_magnitude_vector`)!.shape).toEqual([out]);
    expect([...tensors.keys()].sort()).toEqual(
      ['lora_A.weight', 'lora_B.weight', 'lora_magnitude_vector'].map((k) => `base_model.model.${path}.${k}`),
    );
    for (const t of tensors.values()) t.dispose();
    attached.detach();
    model.dispose();
  });

  it('treats ‖W + s·B·A‖ as a constant in the backward pass (§4.3), as peft detaches it', () => {
    const { model } = tinyModel(kind);
    const attached = getMethod('dora').attach(model, { rank: 3, alpha: 5 }, { targets: [path], seed: 2 });
    randomize(attached, 3, 0.2);
    const A = attached.trainable.get(`${path}.lora_A.weight`)!;
    const B = attached.trainable.get(`${path}.lora_B.weight`)!;
    const m = attached.trainable.get(`${path}.lora_magnitude_vector`)!;
    const s = 5 / 3;
    const stored = model.weight(`${path}.weight`) as tf.Tensor2D;
    const bias = model.weights.get(`${path}.bias`);
    const transposed = kind === 'gpt2';
    const w = transposed ? tf.transpose(stored) : stored; // [out, in]
    const [out, inn] = w.shape;
    const base = (x: tf.Tensor2D): tf.Tensor2D => {
      const y: tf.Tensor2D = tf.matMul(x, w, false, true);
      return bias ? (tf.add(y, bias) as tf.Tensor2D) : y;
    };
    const x = tf.randomNormal([5, inn], 0, 1, 'float32', 4) as tf.Tensor2D;
    const probe = tf.randomNormal([5, out], 0, 1, 'float32', 5);
    const vars = [A, B, m];
    const gradsOf = (f: () => tf.Tensor) => {
      const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(f(), probe)) as tf.Scalar, vars);
      value.dispose();
      const out = vars.map((v) => grads[v.name].dataSync().slice());
      for (const g of Object.values(grads)) g.dispose();
      return out;
    };
    const adapter = model.adapters.get(path)!;
    const got = gradsOf(() => adapter.apply(x, base, () => stored, false));
    // Eq. 5 written out, with the norm as a tensor built from numbers (no graph behind it).
    const combined = () => tf.add(w, tf.mul(tf.matMul(B, A), s));
    const constantNorm = tf.tidy(() => tf.tensor(tf.sqrt(tf.sum(tf.square(combined()), 1)).dataSync()));
    const rule = (norm: () => tf.Tensor) => () => {
      const y = tf.matMul(x, tf.mul(combined(), tf.div(m, norm()).reshape([out, 1])), false, true);
      return bias ? tf.add(y, bias) : y;
    };
    const detached = gradsOf(rule(() => constantNorm));
    const attachedNorm = gradsOf(rule(() => tf.sqrt(tf.sum(tf.square(combined()), 1))));
    for (let k = 0; k < 3; k++) expect(relativeError(got[k], detached[k])).toBeLessThan(1e-5);
    // The difference matters: letting the gradient flow through the norm gives other A, B gradients.
    expect(relativeError(attachedNorm[0], detached[0])).toBeGreaterThan(1e-3);
    for (const t of [x, probe, constantNorm, ...(transposed ? [w] : [])]) t.dispose();
    attached.detach();
    model.dispose();
  });
});
