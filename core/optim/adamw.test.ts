import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { AdamW, clipByGlobalNorm } from './adamw.ts';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('AdamW', () => {
  it('matches two steps computed by hand (torch.optim.AdamW semantics)', () => {
    const p = tf.variable(tf.tensor1d([1, -2]), true, 'adamw-test/p');
    const opt = new AdamW(new Map([['p', p]]), { beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0.1 });
    const lr = 0.01;
    // Step 1, g = [0.5, -1]: m = 0.1g, v = 0.001g²; m̂ = g, v̂ = g² -> update = sign(g) (up to ε).
    opt.step(new Map([['p', tf.tensor1d([0.5, -1])]]), lr);
    const w1 = [1 * (1 - lr * 0.1) - lr * (0.5 / (0.5 + 1e-8)), -2 * (1 - lr * 0.1) - lr * (-1 / (1 + 1e-8))];
    expect(Array.from(p.dataSync())[0]).toBeCloseTo(w1[0], 6);
    expect(Array.from(p.dataSync())[1]).toBeCloseTo(w1[1], 6);
    // Step 2, g = [1, 1].
    opt.step(new Map([['p', tf.tensor1d([1, 1])]]), lr);
    const g1 = [0.5, -1];
    const g2 = [1, 1];
    const want = w1.map((w, i) => {
      const m = 0.9 * (0.1 * g1[i]) + 0.1 * g2[i];
      const v = 0.999 * (0.001 * g1[i] ** 2) + 0.001 * g2[i] ** 2;
      const mHat = m / (1 - 0.9 ** 2);
      const vHat = v / (1 - 0.999 ** 2);
      return w * (1 - lr * 0.1) - (lr * mHat) / (Math.sqrt(vHat) + 1e-8);
    });
    const got = Array.from(p.dataSync());
    expect(got[0]).toBeCloseTo(want[0], 6);
    expect(got[1]).toBeCloseTo(want[1], 6);
    expect(opt.stateBytes()).toBe(2 * 2 * 4);
    opt.dispose();
    p.dispose();
  });

  it('restores its state exactly through getWeights/setWeights', () => {
    const make = () => tf.variable(tf.tensor1d([0.3, 0.7, -0.1]), true);
    const a = make();
    const b = make();
    const optA = new AdamW(new Map([['w', a]]));
    const g = () => new Map([['w', tf.tensor1d([0.2, -0.4, 0.9])]]);
    optA.step(g(), 0.1);
    b.assign(a);
    const optB = new AdamW(new Map([['w', b]]));
    optB.setWeights(optA.getWeights());
    optA.step(g(), 0.1);
    optB.step(g(), 0.1);
    expect(Array.from(b.dataSync())).toEqual(Array.from(a.dataSync()));
  });

  it('clips the global gradient norm', () => {
    const grads = new Map([['a', tf.tensor1d([3, 0])], ['b', tf.tensor1d([0, 4])]]);
    const { grads: clipped, norm } = clipByGlobalNorm(grads, 1);
    expect(norm).toBeCloseTo(5, 6);
    expect(Array.from(clipped.get('a')!.dataSync())[0]).toBeCloseTo(0.6, 5);
    expect(Array.from(clipped.get('b')!.dataSync())[1]).toBeCloseTo(0.8, 5);
  });
});

describe('AdamW memory', () => {
  it('creating and disposing an optimizer leaves no tensors behind', () => {
    const p = tf.variable(tf.ones([3, 4]), true);
    const before = tf.memory().numTensors;
    const opt = new AdamW(new Map([['p', p]]));
    opt.dispose();
    expect(tf.memory().numTensors).toBe(before);
    p.dispose();
  });
});
