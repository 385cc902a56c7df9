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

describe('trainer speed and time left', () => {
  /** Busy-waits: the step, evaluation and checkpoint durations the test controls. */
  const spin = (ms: number) => {
    const until = performance.now() + ms;
    while (performance.now() < until);
  };
  /** An optimizer that changes nothing: these tests time the loop, not the update. */
  const noOptimizer = (): Optimizer => ({
    stepCount: 0,
    step: () => {},
    stateBytes: () => 0,
    getWeights: () => ({ step: 0, tensors: new Map() }),
    setWeights: () => {},
    dispose: () => {},
  });

  it('takes tokens/s and the ETA from recent steps, not from a slow start, and counts the evaluations left', async () => {
    const x = tf.variable(tf.scalar(1));
    const optimizer = noOptimizer();
    // 4 tokens a step; the first step is slow (set-up, a projector's SVD), the others 60 ms; an evaluation every 4 steps takes 150 ms.
    const batch: Batch = { ids: new Int32Array(4), labels: new Int32Array(4), batchSize: 1, seqLen: 4 };
    const total = 12;
    const reports: Array<{ step: number; eta: number; tokensPerSecond: number; at: number }> = [];
    let step = 0;
    await train(
      new Map([['x', x]]),
      optimizer,
      () => batch,
      () => {
        spin(step === 0 ? 600 : 60);
        return { loss: tf.square(x) as tf.Scalar, tokens: tf.scalar(4) };
      },
      { totalSteps: total, clipNorm: 0, evalEvery: 4, schedule: { kind: 'constant', lr: 0.1, totalSteps: total, warmupSteps: 0 } },
      {
        beforeStep: (s) => (step = s),
        onStep: (r) => reports.push({ step: r.step, eta: r.etaSeconds, tokensPerSecond: r.tokensPerSecond, at: performance.now() }),
        onEval: () => spin(150),
      },
    );
    const end = performance.now();
    // After 5 steps (one evaluation measured), the ETA is within 30 % of the time that was really left.
    const fifth = reports[4];
    const left = (end - fifth.at) / 1000;
    console.log(`[eta] after step 5: estimated ${fifth.eta.toFixed(3)} s, really ${left.toFixed(3)} s; tokens/s at the end ${reports.at(-1)!.tokensPerSecond.toFixed(1)}`);
    expect(Math.abs(fifth.eta - left) / left).toBeLessThan(0.3);
    // Tokens/s: 4 tokens over the wall time between two step reports with no evaluation between them
    // (steps 9-12), not the average from the start, which the 600 ms first step and the evaluations drag down.
    const intervals = [9, 10, 11].map((i) => (reports[i].at - reports[i - 1].at) / 1000).sort((a, b) => a - b);
    const recent = 4 / intervals[1];
    const fromStart = (4 * total) / ((reports.at(-1)!.at - reports[0].at) / 1000 + 0.6);
    const last = reports.at(-1)!.tokensPerSecond;
    console.log(`[tokens/s] reported ${last.toFixed(1)}, between recent reports ${recent.toFixed(1)}, from the start ${fromStart.toFixed(1)}`);
    expect(Math.abs(last - recent) / recent).toBeLessThan(0.15);
    expect(last).toBeGreaterThan(1.3 * fromStart);
    expect(reports.at(-1)!.eta).toBeLessThan(0.2);
    x.dispose();
  });

  it('starts the ETA from the steps Review timed for this configuration, so slow first steps do not set it alone', async () => {
    const x = tf.variable(tf.scalar(1));
    const optimizer = noOptimizer();
    const batch: Batch = { ids: new Int32Array(4), labels: new Int32Array(4), batchSize: 1, seqLen: 4 };
    // Steps 1-4 run at 3x their speed's time (something else had the cores: a page loading beside the
    // run), then 40 ms; Review timed two steps of 40 ms before the run.
    const total = 30;
    const run = async (priorStepSeconds?: number[]) => {
      const reports: Array<{ eta: number; at: number }> = [];
      let step = 0;
      await train(
        new Map([['x', x]]),
        optimizer,
        () => batch,
        () => {
          spin(step < 4 ? 120 : 40);
          return { loss: tf.square(x) as tf.Scalar, tokens: tf.scalar(4) };
        },
        { totalSteps: total, clipNorm: 0, schedule: { kind: 'constant', lr: 0.1, totalSteps: total, warmupSteps: 0 }, priorStepSeconds },
        { beforeStep: (s) => (step = s), onStep: (r) => reports.push({ eta: r.etaSeconds, at: performance.now() }) },
      );
      const end = performance.now();
      const fifth = reports[4];
      return Math.abs(fifth.eta - (end - fifth.at) / 1000) / ((end - fifth.at) / 1000);
    };
    const withPrior = await run([0.04, 0.04]);
    const without = await run();
    console.log(`[eta] after step 5 of 30 with 4 slow first steps: ${(100 * withPrior).toFixed(0)} % off with Review's timed steps, ${(100 * without).toFixed(0)} % without`);
    expect(withPrior).toBeLessThan(0.15);
    expect(without).toBeGreaterThan(0.5); // the 5 steps' lower quartile is a slow step: the case the prior is for
    x.dispose();
  });
});
