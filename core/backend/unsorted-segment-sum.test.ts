// The wasm UnsortedSegmentSum kernel against the cpu backend, and the embedding gradient
// (tf.grad through tf.gather) that needs it, end to end on wasm.
import * as tf from '../tf.ts';
import { beforeAll, describe, expect, it } from 'vitest';
import { errorVsCpu, seededTensor, seededValues } from './cpu-parity.ts';
import { initBackend } from './index.ts';

const TOLERANCE = 1e-5;

/**
 * Segment ids in [-1, numSegments]: repeats, and out-of-range values at both ends. Typed 1-D as
 * tf.unsortedSegmentSum's signature wants; like TensorFlow's op, the kernel takes any rank.
 */
function segmentIds(shape: number[], numSegments: number, seed: number): tf.Tensor1D {
  const size = shape.reduce((a, b) => a * b, 1);
  const u = seededValues(size, seed);
  const ids = Int32Array.from(u, (v) => Math.floor(((v + 1) / 2) * (numSegments + 2)) - 1);
  const t: tf.Tensor = tf.tensor(ids, shape, 'int32');
  return t as tf.Tensor1D;
}

beforeAll(async () => {
  const info = await initBackend({ backend: 'wasm' });
  expect(info.kernels).toContain('UnsortedSegmentSum');
});

describe('UnsortedSegmentSum on wasm matches cpu', () => {
  const CASES: Array<{ x: number[]; ids: number[]; segments: number }> = [
    { x: [1], ids: [1], segments: 1 },
    { x: [7], ids: [7], segments: 3 },
    { x: [33, 5], ids: [33], segments: 10 },
    { x: [65, 3, 7], ids: [65], segments: 33 },
    { x: [3, 7], ids: [3], segments: 1 },
  ];
  for (const { x, ids, segments } of CASES) {
    it(`x [${x}] ids [${ids}] numSegments ${segments}`, async () => {
      const err = await errorVsCpu('wasm', () =>
        tf.unsortedSegmentSum(seededTensor(x, 1), segmentIds(ids, segments, 2), segments));
      expect(err).toBeLessThanOrEqual(TOLERANCE);
    });
  }

  it('takes rank-2 ids over x\'s first two dims (reference: the same sum with both flattened)', async () => {
    // The cpu kernel cannot broadcast rank-2 ids itself, so the reference flattens them.
    const err = await errorVsCpu(
      'wasm',
      () => tf.unsortedSegmentSum(seededTensor([4, 3, 2], 1), segmentIds([4, 3], 5, 2), 5),
      () => tf.unsortedSegmentSum(tf.reshape(seededTensor([4, 3, 2], 1), [12, 2]), tf.reshape(segmentIds([4, 3], 5, 2), [12]) as tf.Tensor1D, 5),
    );
    expect(err).toBeLessThanOrEqual(TOLERANCE);
  });

  it('sums int32 values exactly and keeps the dtype', async () => {
    await tf.setBackend('wasm');
    const x = tf.tensor2d([[1, 2], [3, 4], [5, 6], [7, 8]], [4, 2], 'int32');
    const y = tf.unsortedSegmentSum(x, tf.tensor1d([1, 0, 1, 5], 'int32'), 3);
    expect(y.dtype).toBe('int32');
    expect(Array.from(y.dataSync())).toEqual([3, 4, 6, 8, 0, 0]);
    tf.dispose([x, y]);
  });
});

describe('tf.grad through tf.gather on wasm', () => {
  it('embedding table gradient (axis 0, repeated ids) matches cpu', async () => {
    const err = await errorVsCpu('wasm', () => {
      const table = seededTensor([65, 7], 1); // [V, D]
      const ids = tf.tensor2d(Int32Array.from({ length: 15 }, (_, i) => (i * 13) % 20), [3, 5], 'int32'); // [B, T]
      const w = seededTensor([3, 5, 7], 3);
      return tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids), w)))(table);
    });
    expect(err).toBeLessThanOrEqual(TOLERANCE);
  });

  it('gather along axis 1 matches cpu', async () => {
    const err = await errorVsCpu('wasm', () => {
      const x = seededTensor([3, 33, 5], 1);
      const ids = tf.tensor1d([0, 32, 7, 7, 1], 'int32');
      const w = seededTensor([3, 5, 5], 3);
      return tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids, 1), w)))(x);
    });
    expect(err).toBeLessThanOrEqual(TOLERANCE);
  });

  it('leaves no tensors or backend data behind', async () => {
    await tf.setBackend('wasm');
    const table = seededTensor([65, 7], 1);
    const ids = tf.tensor1d([1, 2, 2, 64], 'int32');
    const backend = tf.backend() as unknown as { numDataIds(): number };
    const step = () => tf.dispose(tf.grad((t: tf.Tensor) => tf.sum(tf.gather(t, ids)))(table));
    step();
    const tensors = tf.memory().numTensors;
    const dataIds = backend.numDataIds();
    for (let i = 0; i < 5; i++) step();
    expect(tf.memory().numTensors).toBe(tensors);
    expect(backend.numDataIds()).toBe(dataIds);
    tf.dispose([table, ids]);
  });
});
