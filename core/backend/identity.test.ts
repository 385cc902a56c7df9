// The wasm backend's zero-copy Identity (wasm/identity.ts): a clone shares the buffer, outlives
// its source, frees it with the last reference, and gradients through saved tensors still match
// the cpu backend.
import * as tf from '../tf.ts';
import { beforeAll, describe, expect, it } from 'vitest';
import { errorVsCpu, seededTensor } from './cpu-parity.ts';
import { initBackend } from './index.ts';

interface Counted { numDataIds(): number }

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

describe('wasm Identity', () => {
  it('clones without allocating, and the buffer lives until the last reference goes', () => {
    const backend = tf.backend() as unknown as Counted;
    const x = seededTensor([33, 7], 1);
    const values = x.dataSync().slice();
    const before = backend.numDataIds();
    const y = tf.clone(x);
    expect(backend.numDataIds()).toBe(before); // shared, not copied
    x.dispose();
    expect(y.dataSync()).toEqual(values);
    expect(backend.numDataIds()).toBe(before);
    y.dispose();
    expect(backend.numDataIds()).toBe(before - 1);
  });

  it('gradients that save their inputs (exp, mul, softmax, tanh) match cpu', async () => {
    const err = await errorVsCpu('wasm', () => {
      const x = seededTensor([9, 17], 2);
      const f = (a: tf.Tensor) => tf.sum(tf.mul(tf.softmax(tf.mul(a, tf.exp(tf.tanh(a)))), a));
      return tf.grad(f)(x);
    });
    expect(err).toBeLessThanOrEqual(1e-5);
  });

  it('leaves no tensors or buffers behind across gradient steps', () => {
    const backend = tf.backend() as unknown as Counted;
    const x = tf.variable(seededTensor([16, 16], 3));
    const step = () => tf.tidy(() => {
      const { grads } = tf.variableGrads(() => tf.sum(tf.exp(tf.matMul(x, x))) as tf.Scalar, [x]);
      x.assign(tf.sub(x, tf.mul(grads[x.name], 1e-6)));
    });
    step();
    const [tensors, buffers] = [tf.memory().numTensors, backend.numDataIds()];
    for (let i = 0; i < 3; i++) step();
    expect(tf.memory().numTensors).toBe(tensors);
    expect(backend.numDataIds()).toBe(buffers);
    x.dispose();
  });
});
