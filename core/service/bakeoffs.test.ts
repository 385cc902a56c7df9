/**
 * The method comparison behind the wizard's "compare methods on my data": the plan (same seed,
 * data and budget for every method, each at its paper learning rate or the wizard's, the wizard's
 * method keeping its settings), and the service's queue: one run at a time in the order chosen,
 * a run that cannot start skipped with its reason, then the comparison and the recommendation.
 * Jobs are stand-ins that write their run to the store (no training here: test/e2e/bakeoff.test.ts
 * trains three methods in the browser).
 */
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { StudioService } from '../service.ts';
import { BUNDLED_MODEL_DIR, RESOURCES_DIR } from '../resources.ts';
import { FINETUNE_DEFAULTS } from '../train/finetune.ts';
import { LowrankError } from '../errors.ts';
import { planBakeoff } from './bakeoffs.ts';
import type { Bakeoff, FinetuneConfigInput } from '../contract.ts';
import type { Job, JobHandlers, JobRequest, JobRunner } from './jobs.ts';

const DATA = path.join(RESOURCES_DIR, 'datasets', 'review-sentiment.jsonl');
const config: FinetuneConfigInput = {
  ...FINETUNE_DEFAULTS,
  model: BUNDLED_MODEL_DIR,
  data: DATA,
  method: 'lora',
  params: { rank: 4 },
  targets: ['q_proj', 'v_proj'],
  steps: 8,
  epochs: null,
  lr: 1e-3,
  seed: 5,
  name: 'mine',
};

describe('planBakeoff', () => {
  it('gives every method the same data, seed and budget, each at its paper rate; the wizard\'s method keeps its settings', () => {
    const plan = planBakeoff({ config, methods: ['lora', 'galore', 'svfit'], learningRate: 'paper' });
    expect(plan.map((p) => p.method)).toEqual(['lora', 'galore', 'svfit']);
    for (const p of plan) {
      expect(p.config).toMatchObject({ model: BUNDLED_MODEL_DIR, data: DATA, seed: 5, steps: 8, epochs: null, batchSize: config.batchSize, seqLen: config.seqLen });
      expect(p.config.name).toBe(`mine: ${p.method}`);
    }
    const [lora, galore, svfit] = plan;
    expect(lora.config).toMatchObject({ params: { rank: 4 }, targets: ['q_proj', 'v_proj'], lr: 2e-4 });
    expect(lora.lrSource).toMatch(/^paper: LoRA paper Table 11/);
    // GaLore: its defaults on every linear, at the official scripts' 1e-2.
    expect(galore.config).toMatchObject({ params: {}, targets: 'all-linear', lr: 1e-2 });
    // SVFit pins no rate (no official code): the wizard's, said so.
    expect(svfit.config.lr).toBe(1e-3);
    expect(svfit.lrSource).toMatch(/no paper rate pinned/);
    expect(planBakeoff({ config, methods: ['lora', 'galore'], learningRate: 'config' }).map((p) => p.config.lr)).toEqual([1e-3, 1e-3]);
  });

  it('refuses an unknown method or a bad setting before anything runs', () => {
    expect(() => planBakeoff({ config, methods: ['lora', 'nope'], learningRate: 'paper' })).toThrow(/unknown method "nope"/);
    expect(() => planBakeoff({ config: { ...config, params: { rank: 0 } }, methods: ['lora', 'dora'], learningRate: 'paper' })).toThrow(/rank/);
  });
});

describe('bakeoffs in the service', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-bakeoffs-'));
  const started: string[] = [];
  let running = 0;
  let mostAtOnce = 0;
  const accuracy: Record<string, number> = { lora: 0.8, dora: 0.82, vera: 0.1 };
  // A stand-in job: creates its run, "trains" for 30 ms, finishes it with made-up figures.
  // VeRA's refuses to start, as a config that does not fit a method would.
  let service: StudioService;
  const jobRunner: JobRunner = <T,>(request: JobRequest, handlers: JobHandlers = {}) => {
    if (request.kind !== 'train') throw new Error(`unexpected job ${request.kind}`);
    const cfg = request.config;
    const result = new Promise<T>((resolve, reject) => {
      // Asynchronous, as a forked job is: its first event comes after startJob returned.
      setTimeout(() => {
        if (cfg.method === 'vera') return reject(new LowrankError('BAD_ARGUMENT', 'method vera: stand-in refusal'));
        started.push(cfg.method);
        running++;
        mostAtOnce = Math.max(mostAtOnce, running);
        const store = service.store;
        const run = store.createRun({ method: cfg.method, kind: 'finetune', name: cfg.name, config: cfg as never, trainableParams: 1000 });
        store.startRun(run.id);
        handlers.onEvent?.({ type: 'run-started', runId: run.id, totalSteps: cfg.steps!, trainableParams: 1000, estimate: {} as never });
        setTimeout(() => {
          store.finishRun(run.id, {
            status: 'completed', finalTrainLoss: 0.5, finalValLoss: 0.5, tokensPerSecond: 100, wallSeconds: 30, measuredPeakRss: 200 * 2 ** 20,
            taskMetricName: 'exact_match', taskMetricValue: accuracy[cfg.method],
          });
          running--;
          resolve({} as T);
        }, 30);
      }, 5);
    });
    const job: Job<T> = { result, stop: () => {}, pid: undefined, signal: () => {}, exited: result.then(() => undefined, () => undefined) };
    return job;
  };
  service = new StudioService({ home: path.join(root, 'home'), transport: 'websocket', fileDialog: false, jobRunner });
  afterAll(async () => {
    await service.close();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('trains the chosen methods one at a time, in order, skips one that cannot start, then compares and recommends', async () => {
    const { bakeoffId } = (await service.call('bakeoffs.start', { config, methods: ['lora', 'vera', 'dora'], learningRate: 'config' })) as { bakeoffId: string };
    const first = (await service.call('bakeoffs.get', { bakeoffId })) as Bakeoff;
    expect(first.entries.map((e) => [e.method, e.lr])).toEqual([['lora', 1e-3], ['vera', 1e-3], ['dora', 1e-3]]);
    expect(first.done).toBe(false);
    let state = first;
    for (let i = 0; i < 100 && !state.done; i++) {
      await new Promise((r) => setTimeout(r, 20));
      state = (await service.call('bakeoffs.get', { bakeoffId })) as Bakeoff;
    }
    expect(state.done).toBe(true);
    expect(started).toEqual(['lora', 'dora']);
    expect(mostAtOnce).toBe(1);
    expect(state.entries.map((e) => e.status)).toEqual(['completed', 'not-started', 'completed']);
    expect(state.entries[1].error).toMatch(/stand-in refusal/);
    expect(state.comparison!.runs.map((r) => r.method)).toEqual(['lora', 'dora']);
    expect(state.comparison!.runs.every((r) => r.config.seed === 5 && r.config.steps === 8)).toBe(true);
    // Both within 5 points; equal parameters, memory and time: the higher accuracy wins every ratio.
    expect(state.recommendation).toMatchObject({ quality: 'accuracy', best: { method: 'dora', value: 0.82 }, candidates: ['lora', 'dora'] });
    expect(state.recommendation!.perParameter.method).toBe('dora');
  });

  it('refuses an unknown comparison with a line that says where its runs are', async () => {
    await expect(service.call('bakeoffs.get', { bakeoffId: 'no-such-id' })).rejects.toThrow(/no method comparison no-such-id in this session.*Runs list/);
    await expect(service.call('bakeoffs.start', { config, methods: ['lora'], learningRate: 'paper' })).rejects.toThrow(/methods/);
  });
});
