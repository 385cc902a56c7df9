/**
 * Fault injection: contention on one store. Two `lowrank train` runs start at the same moment on a
 * store that does not exist yet (so they also create and migrate it together), beside two processes
 * that append metrics as fast as they can (core/store/fixtures/metric-writer.ts, each well over
 * 1,000 rows/s, contending for the write lock with each other and with the runs), while this process
 * reads like the app does, every few milliseconds. No one may see
 * "database is locked" (SQLITE_BUSY); both runs complete, on the same losses (same config and seed:
 * contention must not change a result); every read sees whole transactions, and never fewer rows
 * than the read before.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initBackend } from '../../core/backend/index.ts';
import { openStore } from '../../core/store/index.ts';
import type { RunStore } from '../../core/store/store.ts';
import type { JsonObject } from '../../core/store/types.ts';
import { isLowrankError } from '../../core/errors.ts';
import { FINETUNE_DEFAULTS, runFinetune, type FinetuneConfig } from '../../core/train/finetune.ts';
import { buildTinyModel } from '../fixtures/tiny-trained-model.ts';
import { recordOutcome } from '../helpers/reliability-record.ts';
import { CliProcess, MAX_LOSS_ULPS, checked, expectStoreSound, float32Ulps } from './harness.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-faults-concurrency-'));
const modelDir = path.join(root, 'model');
const data = path.join(root, 'reviews.jsonl');
const home = path.join(root, 'home');
const metricWriter = path.resolve(import.meta.dirname, '..', '..', 'core', 'store', 'fixtures', 'metric-writer.ts');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const STEPS = 24;
const LOCKED = /database is locked|SQLITE_BUSY/i;

beforeAll(async () => {
  await initBackend();
  const records = await buildTinyModel(modelDir);
  fs.writeFileSync(data, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
});

function trainArgs(name: string): string[] {
  return [
    'train', '--model', modelDir, '--data', data, '--method', 'lora', '--rank', '4', '--alpha', '8', '--dropout', '0.1',
    '--target', 'q_proj,v_proj', '--steps', String(STEPS), '--batch-size', '4', '--seq-len', '48', '--lr', '1e-2',
    '--eval-every', '4', '--checkpoint-every', '2', '--metric-examples', '0', '--json', '--name', name,
  ];
}

/** What one read of the app sees, checked against itself and against the previous read. */
function readLikeTheApp(store: RunStore, previousRows: Map<string, number>): void {
  // One read transaction: the run list, metrics and checkpoints of one moment.
  store.db.transaction(() => {
    for (const run of store.listRuns()) {
      const metrics = store.metrics(run.id);
      const before = previousRows.get(run.id) ?? 0;
      if (metrics.length < before) throw new Error(`run ${run.name}: ${metrics.length} metric rows after ${before}`);
      previousRows.set(run.id, metrics.length);
      const rowsPerStep = new Map<number, number>();
      for (const m of metrics) if (m.split === 'train') rowsPerStep.set(m.step, (rowsPerStep.get(m.step) ?? 0) + 1);
      const steps = [...rowsPerStep.keys()];
      // The writer logs steps 0, 1, 2... with 20 rows each; a trainer steps 1, 2, 3... with 4 train rows each.
      const first = run.name === 'killed' ? 0 : 1;
      const perStep = run.name === 'killed' ? 20 : 4;
      if (steps.some((step, i) => step !== first + i)) throw new Error(`run ${run.name}: steps ${steps.join(',')} have a gap`);
      for (const [step, rows] of rowsPerStep) if (rows !== perStep) throw new Error(`run ${run.name}: step ${step} has ${rows} of ${perStep} rows`);
      const lastStep = steps.length ? steps[steps.length - 1] : 0;
      const checkpoint = store.latestCheckpoint(run.id);
      if (checkpoint && checkpoint.step > lastStep) throw new Error(`run ${run.name}: checkpoint of step ${checkpoint.step} before the metrics of that step`);
      store.samples(run.id);
    }
  })();
}

interface MetricWriter {
  /** When each committed step (20 rows) was reported. */
  commits: number[];
  stderr: string;
  stop(): Promise<void>;
}

/** The store's metric-writer fixture: 20 rows per transaction, as fast as it can, until stopped. */
function startMetricWriter(): MetricWriter {
  const child = spawn(process.execPath, ['--import', 'tsx', metricWriter, home], { stdio: ['ignore', 'pipe', 'pipe'] });
  const writer: MetricWriter = { commits: [], stderr: '', stop: async () => {} };
  let pending = '';
  child.stdout.on('data', (chunk: Buffer) => {
    pending += chunk.toString();
    const lines = pending.split('\n');
    pending = lines.pop()!;
    for (const line of lines) if (line.startsWith('step ')) writer.commits.push(performance.now());
  });
  child.stderr.on('data', (chunk: Buffer) => (writer.stderr += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  writer.stop = () => {
    child.kill('SIGKILL');
    return exited;
  };
  return writer;
}

describe('one store, many writers and a reader', () => {
  it('two runs started at once beside two writers of ≥ 1,000 metric rows/s and a reader: no SQLITE_BUSY, both complete alike', async () => {
    const started = performance.now();
    const runs = [new CliProcess(trainArgs('parallel-a'), { LOWRANK_HOME: home }), new CliProcess(trainArgs('parallel-b'), { LOWRANK_HOME: home })];
    // Two writers keep the write lock busy (and contend for it with each other); the fixture names its runs 'killed'.
    const writers = [startMetricWriter(), startMetricWriter()];

    // The app: its own connection, opened while the others create the store, reading every 5 ms.
    const readErrors: string[] = [];
    let reads = 0;
    let reader: RunStore | null = null;
    const previousRows = new Map<string, number>();
    let trainingDone = false;
    const readLoop = (async () => {
      while (!trainingDone) {
        try {
          reader ??= openStore(home);
          readLikeTheApp(reader, previousRows);
          reads++;
        } catch (e) {
          readErrors.push(e instanceof Error ? `${(e as { code?: string }).code ?? ''} ${e.message}` : String(e));
        }
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    })();
    const exits = await Promise.all(runs.map((r) => r.exited));
    const trainingMs = performance.now() - started;
    trainingDone = true;
    await readLoop;
    await Promise.all(writers.map((w) => w.stop()));
    (reader as RunStore | null)?.close();

    // The writers' pace while both runs trained: rows committed over the time from the first commit to the end of the second run.
    const rowsPerSecond = writers.map((w) => {
      const during = w.commits.filter((at) => at <= started + trainingMs);
      return during.length > 1 ? (20 * (during.length - 1) * 1000) / (during[during.length - 1] - during[0]) : 0;
    });
    const losses = runs.map((r) => r.events.filter((e) => e.event === 'step').map((e) => e.loss as number));
    checked(
      (passed, outcome) => recordOutcome({
        suite: 'faults', group: 'concurrency',
        name: 'two runs started at once on a new store, two metric writers and an app reader',
        expected: 'no SQLITE_BUSY anywhere; both runs complete with the same losses; every read consistent',
        outcome, passed,
      }),
      () => `exits ${exits.map((e) => e.code).join(', ')}; ${reads} reads, ${readErrors.length} failed${readErrors.length ? ` (${readErrors[0]})` : ''}; writers ${rowsPerSecond.map(Math.round).join(' + ')} rows/s; ${Math.round(trainingMs)} ms`,
      () => {
        for (const [i, r] of runs.entries()) {
          expect(r.stderr, `run ${i}`).not.toMatch(LOCKED);
          expect(exits[i].code, `run ${i}: ${r.stderr}`).toBe(0);
          expect(r.events.find((e) => e.event === 'done')?.status).toBe('completed');
        }
        for (const w of writers) expect(w.stderr).not.toMatch(LOCKED);
        expect(readErrors).toEqual([]);
        expect(reads).toBeGreaterThan(50);
        for (const rate of rowsPerSecond) expect(rate).toBeGreaterThanOrEqual(1000);
        expect(losses[0]).toHaveLength(STEPS);
        expect(losses[1]).toHaveLength(STEPS);
        // Identical up to the engine's own run-to-run noise (harness.ts, float32Ulps).
        for (let i = 0; i < STEPS; i++) expect(float32Ulps(losses[1][i], losses[0][i]), `step ${i + 1}`).toBeLessThanOrEqual(MAX_LOSS_ULPS);
        const store = openStore(home);
        try {
          expectStoreSound(store, 'after');
          for (const r of runs) {
            const run = store.getRun(r.events[0].run_id!);
            expect(run.status).toBe('completed');
            expect(store.metrics(run.id, { split: 'train' })).toHaveLength(4 * STEPS);
          }
        } finally {
          store.close();
        }
      },
    );
  }, 180_000);

  it('a second process resuming a run that another one is training is refused and leaves that run running', async () => {
    const store = openStore(path.join(root, 'home-double-resume'));
    const config: FinetuneConfig = { ...FINETUNE_DEFAULTS, model: modelDir, data, method: 'lora', steps: 4, epochs: null };
    const live = store.createRun({ method: 'lora', kind: 'finetune', config: config as unknown as JsonObject, name: 'live' });
    // Owned by a process that is alive (this test's parent), as a run another `lowrank train` is training.
    store.startRun(live.id, process.ppid);
    let error: unknown;
    try {
      await runFinetune(store, config, () => {}, {}, live.id);
    } catch (e) {
      error = e;
    }
    const after = store.getRun(live.id);
    store.close();
    checked(
      (passed, outcome) => recordOutcome({
        suite: 'faults', group: 'concurrency', name: '`--resume` of a run that another process is training',
        expected: 'BAD_RUN_STATE; the run stays running in its own process', outcome, passed,
      }),
      () => `${isLowrankError(error) ? error.code : 'no error'}; the run is ${after.status} (pid ${after.pid})`,
      () => {
        expect(isLowrankError(error) && error.code).toBe('BAD_RUN_STATE');
        expect(after.status).toBe('running');
        expect(after.pid).toBe(process.ppid);
      },
    );
  });
});
