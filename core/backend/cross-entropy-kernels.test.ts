// The fused softmax cross-entropy kernels on wasm (native addon) against the composite loss on
// cpu: value and logits gradient, odd shapes, extreme logits, zero weights, targets at both ends of
// the vocabulary; the loss really takes the fused path, and the composite one without the addon;
// bad input errors.
import * as tf from '../tf.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorVsCpu, seededValues } from './cpu-parity.ts';
import { initBackend } from './index.ts';
import { nativeAddon, nativeSwitch } from './native/addon.ts';
import { needs } from '../../test/helpers/optional-parts.ts';
import { CROSS_ENTROPY_KERNELS } from './cross-entropy-kernels.ts';
import { causalLmLoss, compositeWeightedCrossEntropy, weightedCrossEntropy } from '../models/causal-lm.ts';
import { fusedOpActive, setFusedOps } from '../models/fused-ops.ts';

const TOLERANCE = 1e-5;
const native = nativeAddon();

/** Logits scaled to ±`scale`, targets spread over [0, V) including 0 and V − 1, some zero weights. */
function inputs(rows: number, vocab: number, scale: number, seed: number) {
  const logits = tf.mul(tf.tensor2d(seededValues(rows * vocab, seed), [rows, vocab]), scale) as tf.Tensor2D;
  const targets = tf.tensor1d(Array.from({ length: rows }, (_, i) => (i === 0 ? 0 : i === 1 ? vocab - 1 : (i * 7919) % vocab)), 'int32');
  const weights = tf.tensor1d(Array.from({ length: rows }, (_, i) => (i % 5 === 3 ? 0 : (1 + (i % 3)) / rows)));
  return { logits, targets, weights };
}

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});
afterAll(() => {
  nativeSwitch.enabled = true;
  setFusedOps(true);
});

// Vocabulary 1 is left out: the composite reference's tf.oneHot needs a depth of at least 2.
const SHAPES: Array<[number, number]> = [[1, 2], [2, 3], [5, 7], [9, 8], [33, 257], [17, 4099]];

{
  describe('wasm native kernels match the composite loss on cpu', needs('native'), () => {
    for (const [rows, vocab] of SHAPES) {
      for (const scale of [1, 40]) {
        it(`[${rows}, ${vocab}] logits ±${scale}: loss and d(logits)`, async () => {
          const err = await errorVsCpu('wasm', () => {
            const { logits, targets, weights } = inputs(rows, vocab, scale, rows * 31 + vocab);
            const f = (z: tf.Tensor) => tf.mul(weightedCrossEntropy(z as tf.Tensor2D, targets, weights), 1.7);
            const { value, grad } = tf.valueAndGrad(f)(logits);
            return [value, grad];
          }, () => {
            const { logits, targets, weights } = inputs(rows, vocab, scale, rows * 31 + vocab);
            const f = (z: tf.Tensor) => tf.mul(compositeWeightedCrossEntropy(z as tf.Tensor2D, targets, weights), 1.7);
            const { value, grad } = tf.valueAndGrad(f)(logits);
            return [value, grad];
          });
          expect(err).toBeLessThanOrEqual(TOLERANCE);
        });
      }
    }
  });
}

describe('the causal-LM loss on wasm', needs('native'), () => {
  beforeAll(() => {
    nativeSwitch.enabled = true;
  });
  it('runs the fused kernels (and the native addon where it is built)', async () => {
    expect(fusedOpActive('crossEntropy')).toBe(true);
    const { logits, targets } = inputs(4, 11, 1, 3);
    const labels = tf.reshape(targets, [2, 2]) as tf.Tensor2D;
    let nativeCalls = 0;
    const original = native.ok ? native.addon.crossEntropyGrad : null;
    if (native.ok) {
      native.addon.crossEntropyGrad = (...args) => {
        nativeCalls++;
        original!.apply(native.addon, args);
      };
    }
    try {
      const lossAndGrad = tf.valueAndGrad((z: tf.Tensor) => causalLmLoss(tf.reshape(z, [2, 2, 11]) as tf.Tensor3D, labels).loss);
      const profile = await tf.profile(() => {
        const { value, grad } = lossAndGrad(logits);
        tf.dispose([value, grad]);
      });
      const names = profile.kernels.map((k) => k.name);
      expect(names).toEqual(expect.arrayContaining([CROSS_ENTROPY_KERNELS.forward, CROSS_ENTROPY_KERNELS.grad]));
      expect(names).not.toContain('Exp');
      if (native.ok) expect(nativeCalls).toBe(1);
    } finally {
      if (native.ok && original != null) native.addon.crossEntropyGrad = original;
    }
  });

  it('runs the composite ops without the native addon', async () => {
    nativeSwitch.enabled = false;
    try {
      expect(fusedOpActive('crossEntropy')).toBe(false);
      const { logits, targets, weights } = inputs(4, 11, 1, 3);
      const profile = await tf.profile(() => tf.tidy(() => tf.grad((z: tf.Tensor) => weightedCrossEntropy(z as tf.Tensor2D, targets, weights))(logits)));
      const names = profile.kernels.map((k) => k.name);
      expect(names).toContain('Exp');
      expect(names).not.toContain(CROSS_ENTROPY_KERNELS.forward);
    } finally {
      nativeSwitch.enabled = true;
    }
  });

  it('is the composite again with the fused ops turned off, with the same value', () => {
    const { logits, targets, weights } = inputs(6, 13, 3, 9);
    const fused = weightedCrossEntropy(logits, targets, weights).dataSync()[0];
    setFusedOps(false);
    try {
      expect(fusedOpActive('crossEntropy')).toBe(false);
      const composite = weightedCrossEntropy(logits, targets, weights).dataSync()[0];
      expect(Math.abs(fused - composite) / composite).toBeLessThan(1e-6);
    } finally {
      setFusedOps(true);
    }
  });

  it('leaks no tensors across steps', () => {
    const { logits, targets, weights } = inputs(8, 50, 1, 4);
    const step = () => tf.tidy(() => tf.grad((z: tf.Tensor) => weightedCrossEntropy(z as tf.Tensor2D, targets, weights))(logits)).dispose();
    step();
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) step();
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('bad input to the addon', needs('native'), () => {
  const logits = new Float32Array([0, 1, 2, 3, 4, 5]);
  const weights = new Float32Array([1, 1]);
  it('a target outside the vocabulary is an error', () => {
    if (!native.ok) return;
    const targets = new Int32Array([0, 3]);
    expect(() => native.addon.crossEntropy(logits, targets, weights, new Float32Array(2))).toThrow(/outside the vocabulary/);
    expect(() => native.addon.crossEntropyGrad(logits, targets, weights, new Float32Array(2), new Float32Array(6), 1)).toThrow(/outside the vocabulary/);
  });
  it('a NaN logit outside the target column makes the loss NaN (not skipped by the max, not clamped to 0 by exp)', () => {
    if (!native.ok) return;
    const targets = new Int32Array([0, 1]);
    for (const at of [2, 5]) {
      const z = Float32Array.from(logits);
      z[at] = NaN; // row 0 column 2 (in the vector body's tail), row 1 column 2
      const lse = new Float32Array(2);
      expect(native.addon.crossEntropy(z, targets, weights, lse)).toBeNaN();
      // 11 columns: the NaN in the 8-wide body of the row, not its tail.
      const wide = Float32Array.from({ length: 22 }, (_, i) => i % 5);
      wide[at] = NaN;
      expect(native.addon.crossEntropy(wide, targets, weights, new Float32Array(2))).toBeNaN();
    }
  });
  it('mismatched sizes and wrong array types are errors', () => {
    if (!native.ok) return;
    const targets = new Int32Array([0, 1]);
    expect(() => native.addon.crossEntropy(logits, targets, weights, new Float32Array(3))).toThrow(/rows = targets = weights = lse/);
    expect(() => native.addon.crossEntropy(logits, new Float32Array(2) as unknown as Int32Array, weights, new Float32Array(2))).toThrow(/Int32Array targets/);
    expect(() => native.addon.crossEntropyGrad(logits, targets, weights, new Float32Array(2), new Float32Array(5), 1)).toThrow(/grad the size of logits/);
  });
});
