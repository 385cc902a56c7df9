/**
 * Fault injection: a run that diverges. An absurd learning rate (1e39, warmed up over 100 steps so
 * the first steps stay finite) drives the weights towards float32's limit until the loss turns NaN.
 * The run must stop on that step with NUMERIC naming it and pointing at the learning rate, end
 * 'failed', and keep the checkpoint of the step before: whole, finite, and loadable for export. A
 * checkpoint is never written from non-finite weights, and the trainer never applies a NaN gradient.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '../../core/tf.ts';
import { initBackend } from '../../core/backend/index.ts';
import { isLowrankError } from '../../core/errors.ts';
import { openStore } from '../../core/store/index.ts';
import { loadTrainedRun } from '../../core/train/finetune.ts';
import { saveTrainingCheckpoint } from '../../core/train/checkpoint.ts';
import { train } from '../../core/train/trainer.ts';
import type { Optimizer } from '../../core/optim/registry.ts';
import { buildTinyModel } from '../fixtures/tiny-trained-model.ts';
import { recordOutcome } from '../helpers/reliability-record.ts';
import { CliProcess, checked, expectStoreSound, folderContents, readCheckpoint } from './harness.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-faults-numeric-'));
const modelDir = path.join(root, 'model');
const data = path.join(root, 'reviews.jsonl');
const home = path.join(root, 'home');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

beforeAll(async () => {
  await initBackend();
  const records = await buildTinyModel(modelDir);
  fs.writeFileSync(data, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
});

/** An optimizer that records the gradients it is given and applies plain SGD. */
function recordingSgd(params: Map<string, tf.Variable>, seen: number[][]): Optimizer {
  return {
    stepCount: 0,
    step(grads, lr) {
      seen.push([...grads.values()].flatMap((g) => [...g.dataSync()]));
      for (const [name, g] of grads) tf.tidy(() => params.get(name)!.assign(tf.sub(params.get(name)!, tf.mul(g, lr))));
    },
    stateBytes: () => 0,
    getWeights: () => ({ step: 0, tensors: new Map() }),
    setWeights: () => {},
    dispose: () => {},
  };
}

describe('a diverging run', () => {
  it('lowrank train --lr 1e39 stops with NUMERIC on the first NaN step and keeps the finite checkpoint before it', async () => {
    const child = new CliProcess(
      ['train', '--model', modelDir, '--data', data, '--method', 'lora', '--rank', '4', '--alpha', '8', '--dropout', '0',
        '--target', 'q_proj,v_proj', '--steps', '8', '--batch-size', '4', '--seq-len', '48', '--lr', '1e39', '--warmup', '100',
        '--schedule', 'constant', '--eval-every', '100', '--checkpoint-every', '1', '--metric-examples', '0', '--json'],
      { LOWRANK_HOME: home },
    );
    const exit = await child.exited;
    const steps = child.events.filter((e) => e.event === 'step');
    const runId = child.events[0]?.run_id as string;
    checked(
      (passed, outcome) => recordOutcome({
        suite: 'faults', group: 'NaN/Inf', name: 'lowrank train --lr 1e39 (warm-up 100 steps)',
        expected: 'exit 2, NUMERIC naming the step and the learning rate; run failed; the checkpoint of the step before kept, finite and loadable',
        outcome, passed,
      }),
      () => `exit ${exit.code}: ${child.stderr.trim()}`,
      () => {
        expect(exit.code).toBe(2);
        // Steps 1-3 are finite; the weights after step 3 (about 6e37) give a NaN loss at step 4.
        expect(steps.map((e) => e.step)).toEqual([1, 2, 3]);
        expect(steps.every((e) => Number.isFinite(e.loss))).toBe(true);
        expect(child.stderr.trim().split('\n')).toHaveLength(1);
        expect(child.stderr).toMatch(/^lowrank train: step 4: the loss is NaN and the gradient norm NaN: training diverged; start again with a lower learning rate \(it was 4e\+37 at this step\)/);

        const store = openStore(home);
        try {
          expectStoreSound(store, 'after the NaN');
          const run = store.getRun(runId);
          expect(run.status).toBe('failed');
          expect(run.errorCode).toBe('NUMERIC');
          expect(run.errorMessage).toMatch(/^step 4: /);
          expect(run.finalTrainLoss).toBe(steps[2].loss);
          expect(store.metrics(runId, { name: 'loss' }).map((m) => m.step)).toEqual([1, 2, 3]);
          expect(store.latestCheckpoint(runId)?.step).toBe(3);
        } finally {
          store.close();
        }
        const checkpoint = readCheckpoint(path.join(home, 'runs', runId, 'checkpoint'));
        expect(checkpoint.step).toBe(3);
        expect(checkpoint.finite).toBe(true);
        expect(fs.readdirSync(path.join(home, 'runs', runId))).toEqual(['checkpoint']);
      },
    );

    // Loadable: the run rebuilds from it for export and the playground.
    const store = openStore(home);
    try {
      const loaded = await loadTrainedRun(store, runId);
      try {
        expect(loaded.step).toBe(3);
        for (const v of loaded.attached.trainable.values()) expect(v.dataSync().every(Number.isFinite)).toBe(true);
      } finally {
        loaded.attached.detach();
        loaded.model.dispose();
      }
    } finally {
      store.close();
    }
  });

  it('never writes a checkpoint holding NaN: the previous one stays as it was', () => {
    const dir = path.join(root, 'guard', 'checkpoint');
    fs.mkdirSync(path.dirname(dir), { recursive: true });
    const weight = tf.variable(tf.tensor1d([1, 2, 3]));
    const params = new Map([['w', weight]]);
    const optimizer = recordingSgd(params, []);
    saveTrainingCheckpoint(dir, 2, params, optimizer);
    const before = folderContents(dir);
    weight.assign(tf.tensor1d([1, NaN, 3]));
    let error: unknown;
    try {
      saveTrainingCheckpoint(dir, 3, params, optimizer);
    } catch (e) {
      error = e;
    }
    checked(
      (passed, outcome) => recordOutcome({ suite: 'faults', group: 'NaN/Inf', name: 'checkpoint of weights holding NaN', expected: 'NUMERIC; the previous checkpoint unchanged', outcome, passed }),
      () => (error instanceof Error ? `${isLowrankError(error) ? error.code : 'no code'}: ${error.message}` : 'no error'),
      () => {
        expect(isLowrankError(error) && error.code).toBe('NUMERIC');
        expect((error as Error).message).toMatch(/^step 3: "w" holds NaN at index 1: training diverged/);
        expect(folderContents(dir)).toEqual(before);
        expect(readCheckpoint(dir).step).toBe(2);
        expect(fs.readdirSync(path.dirname(dir))).toEqual(['checkpoint']);
      },
    );
    weight.dispose();
  });

  it('the trainer stops on an infinite loss before the optimizer applies its gradient', async () => {
    const x = tf.variable(tf.scalar(2));
    const params = new Map([['x', x]]);
    const seen: number[][] = [];
    const reported: number[] = [];
    let error: unknown;
    try {
      await train(
        params,
        recordingSgd(params, seen),
        (step) => ({ ids: new Int32Array([step]), labels: new Int32Array(1), batchSize: 1, seqLen: 1 }),
        // (x - 1)² until the third step, whose loss is x / 0 = Infinity.
        (batch) => ({ loss: (batch.ids[0] === 2 ? tf.div(x, 0) : tf.square(tf.sub(x, 1))) as tf.Scalar, tokens: tf.scalar(1) }),
        { totalSteps: 5, clipNorm: 10, schedule: { kind: 'constant', lr: 0.1, totalSteps: 5, warmupSteps: 0 } },
        { onStep: (r) => reported.push(r.step) },
      );
    } catch (e) {
      error = e;
    }
    const after = x.dataSync()[0];
    checked(
      (passed, outcome) => recordOutcome({ suite: 'faults', group: 'NaN/Inf', name: 'trainer: a step with an infinite loss', expected: 'NUMERIC naming step 3; no optimizer update with its gradient', outcome, passed }),
      () => (error instanceof Error ? error.message : 'no error'),
      () => {
        expect(isLowrankError(error) && error.code).toBe('NUMERIC');
        expect((error as Error).message).toMatch(/^step 3: the loss is Infinity/);
        expect(reported).toEqual([1, 2]);
        expect(seen).toHaveLength(2);
        // Two SGD steps on (x - 1)² from 2 with lr 0.1 and the gradient 2(x - 1): 2 -> 1.8 -> 1.64.
        expect(after).toBeCloseTo(1.64, 6);
      },
    );
    x.dispose();
  });
});
