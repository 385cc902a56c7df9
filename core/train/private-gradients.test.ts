/**
 * The trainer's DP-SGD path on a hand example (Abadi et al., Alg. 1; Opacus): each example's gradient
 * is clipped to C on its own, the clipped gradients are summed, noise σ·C·z is added, and the sum is
 * divided by the step's example count; no global clipping follows.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import type { Optimizer } from '../optim/registry.ts';
import { train, type Batch } from './trainer.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

/** An optimizer that only records the gradient it is given. */
function recorder(seen: number[][]): Optimizer {
  return {
    stepCount: 0,
    step: (grads) => void seen.push([...grads.get('w')!.dataSync()]),
    stateBytes: () => 0,
    getWeights: () => ({ step: 0, tensors: new Map() }),
    setWeights: () => {},
    dispose: () => {},
  };
}

describe('DP-SGD in the trainer', () => {
  // Three examples of two "tokens"; the loss of a batch is the mean over its examples of w·x_b with
  // x_b = (ids[b, 0], ids[b, 1]), so example b's own gradient is x_b: (3, 4), (0, 1) and (6, 8).
  const batch: Batch = { ids: Int32Array.from([3, 4, 0, 1, 6, 8]), labels: new Int32Array(6), batchSize: 3, seqLen: 2 };
  let w: tf.Variable;
  beforeAll(() => {
    w = tf.variable(tf.tensor1d([0.5, -0.25]));
  });
  const lossFn = (b: Batch) =>
    tf.tidy(() => {
      const x = tf.tensor2d(Float32Array.from(b.ids), [b.batchSize, 2]);
      return { loss: tf.mean(tf.sum(tf.mul(x, w), 1)) as tf.Scalar, tokens: tf.scalar(b.batchSize) };
    });
  const options = { totalSteps: 1, clipNorm: 0.1, schedule: { kind: 'constant' as const, lr: 0.1, totalSteps: 1, warmupSteps: 0 } };

  it('clips each example to C, sums, and divides by the example count (σ = 0)', async () => {
    const seen: number[][] = [];
    await train(new Map([['w', w]]), recorder(seen), () => batch, lossFn, { ...options, privacy: { clipNorm: 2, noiseMultiplier: 0, normal: () => tf.scalar(0) } });
    // ‖(3,4)‖ = 5 → ×2/5 = (1.2, 1.6); ‖(0,1)‖ = 1 → kept; ‖(6,8)‖ = 10 → (1.2, 1.6). Sum (2.4, 4.2) / 3.
    // (Opacus' factor is C / (‖g‖ + 1e-6).) The run's clipNorm 0.1 is not applied on top.
    const want = [(1.2 * 5) / (5 + 1e-6) + (6 * 2) / (10 + 1e-6), (1.6 * 5) / (5 + 1e-6) + 1 + (8 * 2) / (10 + 1e-6)].map((v) => v / 3);
    expect(seen).toHaveLength(1);
    expect(seen[0][0]).toBeCloseTo(want[0], 6);
    expect(seen[0][1]).toBeCloseTo(want[1], 6);
  });

  it('adds σ·C times the noise to the sum before dividing', async () => {
    const seen: number[][] = [];
    const noise = [0.5, -1.5];
    const normal = (shape: number[]) => tf.tensor(noise, shape);
    await train(new Map([['w', w]]), recorder(seen), () => batch, lossFn, { ...options, privacy: { clipNorm: 2, noiseMultiplier: 0.7, normal } });
    const clipped = [1.2 * (5 / (5 + 1e-6)) + 1.2 * (10 / (10 + 1e-6)), 1.6 * (5 / (5 + 1e-6)) + 1 + 1.6 * (10 / (10 + 1e-6))];
    expect(seen[0][0]).toBeCloseTo((clipped[0] + 0.7 * 2 * noise[0]) / 3, 6);
    expect(seen[0][1]).toBeCloseTo((clipped[1] + 0.7 * 2 * noise[1]) / 3, 6);
  });
});
