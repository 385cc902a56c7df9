// The wasm Slice override (wasm/slice.ts) against the cpu backend: every rank from 1 to 5,
// contiguous and strided boxes, -1 sizes, empty slices, float32, int32 and bool, and no leaks.
import * as tf from '../tf.ts';
import { beforeAll, describe, expect, it } from 'vitest';
import { errorVsCpu, seededTensor } from './cpu-parity.ts';
import { initBackend } from './index.ts';

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

const CASES: Array<{ shape: number[]; begin: number[]; size: number[] }> = [
  { shape: [7], begin: [2], size: [4] },
  { shape: [7], begin: [0], size: [-1] },
  { shape: [5, 9], begin: [1, 0], size: [3, 9] }, // contiguous rows
  { shape: [5, 9], begin: [1, 2], size: [3, 5] }, // strided
  { shape: [5, 9], begin: [4, 8], size: [1, 1] },
  { shape: [3, 4, 5], begin: [1, 1, 1], size: [2, -1, 3] },
  { shape: [2, 3, 4, 6], begin: [0, 1, 0, 2], size: [2, 2, 4, 3] },
  { shape: [2, 2, 3, 2, 5], begin: [1, 0, 1, 0, 1], size: [1, 2, 2, 2, 4] },
  { shape: [4, 6], begin: [2, 3], size: [0, 2] }, // empty
];

describe('wasm Slice matches cpu', () => {
  for (const { shape, begin, size } of CASES) {
    it(`[${shape}] begin [${begin}] size [${size}]`, async () => {
      const err = await errorVsCpu('wasm', () => tf.slice(seededTensor(shape, 3), begin, size));
      expect(err).toBeLessThanOrEqual(0);
    });
  }

  it('int32 and bool slices are exact', async () => {
    const ints = tf.tensor2d([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [3, 4], 'int32');
    expect(Array.from(tf.slice(ints, [1, 1], [2, 2]).dataSync())).toEqual([6, 7, 10, 11]);
    const bools = tf.tensor2d([true, false, true, false, false, true], [2, 3], 'bool');
    expect(Array.from(tf.slice(bools, [0, 1], [2, 2]).dataSync())).toEqual([0, 1, 0, 1]);
    tf.dispose([ints, bools]);
  });

  it('leaves no tensors or buffers behind', () => {
    const backend = tf.backend() as unknown as { numDataIds(): number };
    const x = seededTensor([16, 16], 1);
    tf.slice(x, [1, 1], [3, 3]).dispose();
    const [tensors, buffers] = [tf.memory().numTensors, backend.numDataIds()];
    for (let i = 0; i < 3; i++) tf.slice(x, [i, 0], [2, 16]).dispose();
    expect(tf.memory().numTensors).toBe(tensors);
    expect(backend.numDataIds()).toBe(buffers);
    x.dispose();
  });
});
