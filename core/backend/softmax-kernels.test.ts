// The native attention softmax on wasm against the composite softmax(scale·s + bias) on cpu: value
// and the scores' gradient over causal, padded (per-sequence) and odd-width masks and large scores;
// the Llama attention really takes the fused path, and composite ops without the addon; bad input.
import * as tf from '../tf.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorVsCpu, seededTensor } from './cpu-parity.ts';
import { initBackend } from './index.ts';
import { nativeAddon, nativeSwitch } from './native/addon.ts';
import { needs } from '../../test/helpers/optional-parts.ts';
import { MASKED_SOFTMAX_KERNELS } from './softmax-kernels.ts';
import { fusedOpActive, maskedSoftmax, maskedSoftmaxComposite } from '../models/fused-ops.ts';
import { attentionBias } from '../models/causal-lm.ts';

const native = nativeAddon();

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});
afterAll(() => {
  nativeSwitch.enabled = true;
});

/** A causal mask, with the first `pad[b]` keys of sequence b padded when given (per-sequence bias). */
function mask(B: number, T: number, pad?: number[]): tf.Tensor4D {
  const padding = pad ? tf.tensor2d(pad.flatMap((p) => Array.from({ length: T }, (_, t) => (t < p ? 0 : 1))), [B, T], 'int32') : undefined;
  return attentionBias(B, T, 0, padding, null) as tf.Tensor4D;
}

function valueAndGrad(op: typeof maskedSoftmax, shape: [number, number, number, number], amplitude: number, pad?: number[]): tf.Tensor[] {
  const [B, , T] = shape;
  const scores = tf.mul(seededTensor(shape, 1), amplitude) as tf.Tensor4D;
  const bias = mask(B, T, pad);
  const dy = seededTensor(shape, 2);
  const scale = 1 / Math.sqrt(32);
  return [op(scores, bias, scale), tf.grad((s: tf.Tensor) => tf.sum(tf.mul(op(s as tf.Tensor4D, bias, scale), dy)))(scores)];
}

describe('native masked softmax on wasm', needs('native'), () => {
  const CASES: Array<{ shape: [number, number, number, number]; pad?: number[] }> = [
    { shape: [1, 1, 1, 1] },
    { shape: [2, 3, 5, 5] },
    { shape: [2, 8, 17, 17] },
    { shape: [3, 2, 33, 33], pad: [0, 4, 32] },
    { shape: [1, 4, 128, 128] },
  ];
  for (const { shape, pad } of CASES) {
    for (const amplitude of [1, 40]) {
      it(`[${shape}]${pad ? ` padded ${pad}` : ''} scores ±${amplitude}: probabilities and d scores match the composite on cpu`, async () => {
        const err = await errorVsCpu('wasm', () => valueAndGrad(maskedSoftmax, shape, amplitude, pad), () => valueAndGrad(maskedSoftmaxComposite, shape, amplitude, pad));
        expect(err).toBeLessThanOrEqual(1e-5);
      });
    }
  }

  it('the fused kernels run (no Softmax), and composite ops without the native addon', async () => {
    expect(fusedOpActive('maskedSoftmax')).toBe(true);
    const names = async () => (await tf.profile(() => tf.tidy(() => valueAndGrad(maskedSoftmax, [2, 2, 6, 6], 1)))).kernels.map((k) => k.name);
    const fused = await names();
    expect(fused).toEqual(expect.arrayContaining([MASKED_SOFTMAX_KERNELS.forward, MASKED_SOFTMAX_KERNELS.grad]));
    expect(fused).not.toContain('Softmax');
    nativeSwitch.enabled = false;
    try {
      expect(fusedOpActive('maskedSoftmax')).toBe(false);
      expect(await names()).toContain('Softmax');
    } finally {
      nativeSwitch.enabled = true;
    }
  });

  it('a NaN or infinite score gives a NaN row, as tf.softmax does (a diverging run must not look finite)', () => {
    const values = Array.from({ length: 2 * 2 * 4 * 4 }, (_, i) => (i % 7) - 3);
    values[1 * 16 + 2 * 4 + 1] = NaN; // head 1, query 2: a NaN score among visible keys
    values[3 * 16 + 3 * 4 + 0] = Infinity; // head 3, query 3: +∞
    const scores = tf.tensor4d(values, [2, 2, 4, 4]);
    const bias = mask(2, 4);
    const rowsWithNaN = (t: tf.Tensor) => {
      const v = t.dataSync();
      return Array.from({ length: v.length / 4 }, (_, r) => r).filter((r) => [0, 1, 2, 3].some((j) => Number.isNaN(v[r * 4 + j])));
    };
    const fused = rowsWithNaN(maskedSoftmax(scores, bias, 0.5));
    expect(fused).toEqual([6, 15]);
    expect(fused).toEqual(rowsWithNaN(maskedSoftmaxComposite(scores, bias, 0.5)));
  });

  it('leaks no tensors across steps', () => {
    const step = () => tf.tidy(() => valueAndGrad(maskedSoftmax, [2, 2, 9, 9], 2)).forEach((t) => t.dispose());
    step();
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) step();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('a mask that does not fit the scores takes the composite path; the addon refuses wrong sizes', async () => {
    const scores = seededTensor([2, 2, 4, 4], 1) as tf.Tensor4D;
    const oddMask = tf.zeros([2, 2, 4, 4]) as tf.Tensor4D; // one mask per head: not the kernel's layout
    const kernels = (await tf.profile(() => maskedSoftmax(scores, oddMask, 1))).kernels.map((k) => k.name);
    expect(kernels).not.toContain(MASKED_SOFTMAX_KERNELS.forward);
    if (!native.ok) return;
    const a = new Float32Array(16);
    expect(() => native.addon.maskedSoftmax(a, new Float32Array(5), a, 1, 1, 4, 4, 1)).toThrow(/bias \[1 or B, T, S\]/);
    expect(() => native.addon.maskedSoftmaxGrad(a, a, new Float32Array(15), 4, 1)).toThrow(/differ in length/);
    expect(() => native.addon.maskedSoftmaxGrad(a, a, a, 3, 1)).toThrow(/whole rows/);
  });
});
