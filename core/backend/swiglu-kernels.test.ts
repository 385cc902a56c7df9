// The native SwiGLU kernels on wasm against the composite silu(gate)·up on cpu: value and both
// gradients on odd shapes and large activations; the Llama MLP really takes the fused path; without
// the native addon it runs the composite ops; bad input errors.
import * as tf from '../tf.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorVsCpu, seededTensor } from './cpu-parity.ts';
import { initBackend } from './index.ts';
import { nativeAddon, nativeSwitch } from './native/addon.ts';
import { needs } from '../../test/helpers/optional-parts.ts';
import { SWIGLU_KERNELS } from './swiglu-kernels.ts';
import { fusedOpActive, swiGlu, swiGluComposite } from '../models/fused-ops.ts';

const native = nativeAddon();

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});
afterAll(() => {
  nativeSwitch.enabled = true;
});

function valueAndGrads(op: (g: tf.Tensor, u: tf.Tensor) => tf.Tensor, shape: number[], scale: number): tf.Tensor[] {
  const gate = tf.mul(seededTensor(shape, 1), scale);
  const up = seededTensor(shape, 2);
  const dy = seededTensor(shape, 3);
  const f = (g: tf.Tensor, u: tf.Tensor) => tf.sum(tf.mul(op(g, u), dy));
  return [op(gate, up), ...tf.grads(f)([gate, up])];
}

describe('native SwiGLU on wasm', needs('native'), () => {
  for (const shape of [[1, 1], [3, 7], [9, 8], [17, 33], [5, 344]]) {
    for (const scale of [1, 30]) {
      it(`[${shape}] gate ±${scale}: value, d gate and d up match the composite on cpu`, async () => {
        const err = await errorVsCpu('wasm', () => valueAndGrads(swiGlu, shape, scale), () => valueAndGrads(swiGluComposite, shape, scale));
        expect(err).toBeLessThanOrEqual(1e-5);
      });
    }
  }

  it('the Llama MLP activation runs the fused kernels, and composite ops without the native addon', async () => {
    expect(fusedOpActive('swiGlu')).toBe(true);
    const names = async () => (await tf.profile(() => tf.tidy(() => valueAndGrads(swiGlu, [4, 6], 1)))).kernels.map((k) => k.name);
    const fused = await names();
    expect(fused).toEqual(expect.arrayContaining([SWIGLU_KERNELS.forward, SWIGLU_KERNELS.grad]));
    expect(fused).not.toContain('Sigmoid');
    nativeSwitch.enabled = false;
    try {
      expect(fusedOpActive('swiGlu')).toBe(false);
      expect(await names()).toContain('Sigmoid');
    } finally {
      nativeSwitch.enabled = true;
    }
  });

  it('leaks no tensors across steps', () => {
    const step = () => tf.tidy(() => valueAndGrads(swiGlu, [8, 16], 2)).forEach((t) => t.dispose());
    step();
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) step();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('the addon refuses mismatched lengths, wrong types and a bad wrt', () => {
    if (!native.ok) return;
    const [a, b] = [new Float32Array(4), new Float32Array(4)];
    expect(() => native.addon.swiglu(a, b, new Float32Array(3))).toThrow(/differ in length/);
    expect(() => native.addon.swiglu(a, new Float64Array(4) as unknown as Float32Array, b)).toThrow(/takes Float32Arrays/);
    expect(() => native.addon.swigluGrad(a, b, a, b, 2 as 0)).toThrow(/0 for d gate \| 1 for d up/);
  });
});
