/**
 * Training through the service: a job runs in its own process and reports events; when the
 * service goes away mid-run (the app quit or crashed), the next service finds the run
 * interrupted and `runs.resume` continues it from its last checkpoint to completion.
 */
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { StudioService } from '../service.ts';
import { BUNDLED_MODEL_DIR, RESOURCES_DIR } from '../resources.ts';
import type { StudioEvent } from '../contract.ts';
import type { Metric, Run } from '../store/types.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-resume-'));
const home = path.join(root, 'home');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function waitFor(service: StudioService, predicate: (e: StudioEvent) => boolean, timeoutMs = 120_000): Promise<StudioEvent> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timed out waiting for an event')), timeoutMs);
    const off = service.subscribe((e) => {
      if (predicate(e)) {
        clearTimeout(timer);
        off();
        resolve(e);
      }
    });
  });
}

describe.skipIf(!fs.existsSync(path.join(BUNDLED_MODEL_DIR, 'config.json')))('service training', () => {
  it('resumes an interrupted run from its checkpoint', async () => {
    const first = new StudioService({ home, transport: 'websocket', fileDialog: false });
    const info = (await first.call('app.info', {})) as { finetuneDefaults: Record<string, unknown> };
    const config = {
      ...info.finetuneDefaults,
      model: BUNDLED_MODEL_DIR,
      data: path.join(RESOURCES_DIR, 'datasets', 'review-sentiment.jsonl'),
      method: 'lora',
      params: { rank: 2 },
      steps: 6,
      epochs: null,
      batchSize: 2,
      seqLen: 48,
      evalEvery: 100,
      checkpointEvery: 2,
      metricExamples: 0,
    };
    const checkpoint = waitFor(first, (e) => e.type === 'checkpoint' && e.step === 2);
    const { runId } = (await first.call('runs.start', { config })) as { runId: string };
    await checkpoint;
    await first.close(); // kills the job as an app crash would, leaving the run 'running' in the store

    const second = new StudioService({ home, transport: 'websocket', fileDialog: false });
    try {
      expect(((await second.call('runs.get', { runId })) as { run: Run }).run.status).toBe('interrupted');
      const finished = waitFor(second, (e) => e.type === 'run-finished' || e.type === 'run-failed');
      await second.call('runs.resume', { runId });
      const end = await finished;
      expect(end.type).toBe('run-finished');
      const { run, metrics } = (await second.call('runs.get', { runId })) as { run: Run; metrics: Metric[] };
      expect(run.status).toBe('completed');
      expect(Math.max(...metrics.filter((m) => m.name === 'loss').map((m) => m.step))).toBe(6);

      // The same config run through without a break: the trainer resumes exactly (optimizer state,
      // data order and dropout from the step), so the resumed run must end on the same loss.
      const uninterruptedEnd = waitFor(second, (e) => (e.type === 'run-finished' || e.type === 'run-failed') && e.runId !== runId);
      const { runId: uninterruptedId } = (await second.call('runs.start', { config })) as { runId: string };
      expect((await uninterruptedEnd).type).toBe('run-finished');
      const uninterrupted = (await second.call('runs.get', { runId: uninterruptedId })) as { run: Run; metrics: Metric[] };
      const lossAt = (ms: Metric[], step: number) => ms.filter((m) => m.name === 'loss' && m.split === 'train' && m.step === step).at(-1)?.value;
      const resumedLoss = lossAt(metrics, 6)!;
      const uninterruptedLoss = lossAt(uninterrupted.metrics, 6)!;
      expect(Number.isFinite(resumedLoss)).toBe(true);
      expect(Number.isFinite(uninterruptedLoss)).toBe(true);
      // Measured: equal to the last bit at every step after the checkpoint (3..6), so equality is asserted.
      for (let step = 3; step <= 6; step++) expect(lossAt(metrics, step), `loss at step ${step}`).toBe(lossAt(uninterrupted.metrics, step));
      expect(resumedLoss).toBe(uninterruptedLoss);
      expect(run.finalTrainLoss).toBe(uninterrupted.run.finalTrainLoss);
    } finally {
      await second.close();
    }
  }, 240_000);
});
