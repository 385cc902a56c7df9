/**
 * The trainer's method hooks on a hand example: beforeStep runs before the step's loss,
 * afterOptimizerStep right after the optimizer, both with the step's scheduled lr; a penalty is
 * differentiated with the loss (its gradient reaches the optimizer) but left out of the reported loss.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import type { Optimizer } from '../optim/registry.ts';
import { train, type Batch } from './trainer.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

describe('trainer hooks', () => {
  it('calls beforeStep / afterOptimizerStep around each step and trains on, but does not report, the penalty', async () => {
    const x = tf.variable(tf.scalar(2));
    const events: string[] = [];
    const seenGrads: number[] = [];
    const optimizer: Optimizer = {
      stepCount: 0,
      step(grads, lr) {
        seenGrads.push(grads.get('x')!.dataSync()[0]);
        events.push(`optimizer lr=${lr}`);
      },
      stateBytes: () => 0,
      getWeights: () => ({ step: 0, tensors: new Map() }),
      setWeights: () => {},
      dispose: () => {},
    };
    const batch: Batch = { ids: new Int32Array(1), labels: new Int32Array(1), batchSize: 1, seqLen: 1 };
    const reported: number[] = [];
    await train(
      new Map([['x', x]]),
      optimizer,
      () => batch,
      () => {
        events.push('loss');
        // loss (x − 1)² = 1, penalty 3x = 6: d/dx = 2(x − 1) + 3 = 5
        return { loss: tf.square(tf.sub(x, 1)) as tf.Scalar, tokens: tf.scalar(1), penalty: tf.mul(x, 3) as tf.Scalar };
      },
      { totalSteps: 2, clipNorm: 0, schedule: { kind: 'constant', lr: 0.5, totalSteps: 2, warmupSteps: 0 } },
      {
        beforeStep: (step, lr) => events.push(`before ${step} lr=${lr}`),
        afterOptimizerStep: (step, lr) => events.push(`after ${step} lr=${lr}`),
        onStep: (r) => reported.push(r.loss),
      },
    );
    expect(events).toEqual(['before 0 lr=0.5', 'loss', 'optimizer lr=0.5', 'after 0 lr=0.5', 'before 1 lr=0.5', 'loss', 'optimizer lr=0.5', 'after 1 lr=0.5']);
    expect(seenGrads).toEqual([5, 5]);
    expect(reported).toEqual([1, 1]);
    x.dispose();
  });
});
