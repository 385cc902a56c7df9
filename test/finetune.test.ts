/**
 * Fine-tuning end to end on a tiny model pre-trained here (so it has a real byte-level BPE
 * tokenizer with ChatML tokens): determinism, no tensor leak, resume after SIGKILL reproducing
 * the uninterrupted final loss, PEFT export -> reload -> same logits as the merged export, and
 * bad dataset records reported with their line numbers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '../core/tf.ts';
import { initBackend } from '../core/backend/index.ts';
import { FINETUNE_DEFAULTS, runFinetune, type FinetuneConfig, type FinetuneEvent } from '../core/train/finetune.ts';
import { openStore } from '../core/store/index.ts';
import { SafetensorsFile } from '../core/io/safetensors.ts';
import { buildTinyModel } from './fixtures/tiny-trained-model.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-finetune-'));
const modelDir = path.join(root, 'model');
const data = path.join(root, 'reviews.jsonl');
const home = path.join(root, 'home');
const cli = path.resolve(import.meta.dirname, '..', 'bin', 'lowrank.js');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

beforeAll(async () => {
  await initBackend();
  const records = await buildTinyModel(modelDir);
  fs.writeFileSync(data, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
});

function config(overrides: Partial<FinetuneConfig> = {}): FinetuneConfig {
  return {
    ...FINETUNE_DEFAULTS,
    model: modelDir, data, method: 'lora', params: { rank: 4, alpha: 8, dropout: 0 }, targets: ['q_proj', 'v_proj'],
    steps: 8, epochs: null, batchSize: 4, seqLen: 48, lr: 1e-2, evalEvery: 4, checkpointEvery: 4, validation: 0.1,
    metricExamples: 4, ...overrides,
  };
}

/** NaN equals NaN under toBe/toEqual (Object.is), and NaN goes through JSON as null: a diverged run must not pass as "the same". */
function expectFiniteLosses(losses: unknown[], label: string): void {
  expect(losses.length, label).toBeGreaterThan(0);
  losses.forEach((loss, i) => expect(Number.isFinite(loss), `${label}[${i}] = ${loss}`).toBe(true));
}

function lowrank(args: string[]) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, LOWRANK_HOME: home } });
}

function trainArgs(extra: string[] = []): string[] {
  return [
    'train', '--model', modelDir, '--data', data, '--method', 'lora', '--rank', '4', '--alpha', '8', '--dropout', '0.1',
    '--target', 'q_proj,v_proj', '--steps', '12', '--batch-size', '4', '--seq-len', '48', '--lr', '1e-2',
    '--eval-every', '100', '--checkpoint-every', '3', '--metric-examples', '0', '--json', ...extra,
  ];
}

describe('fine-tuning', () => {
  it('gives the same loss curve for the same seed and keeps tf.memory().numTensors flat', async () => {
    const store = openStore(path.join(root, 'home-determinism'));
    const curves: number[][] = [];
    const counts: number[] = [];
    for (let i = 0; i < 2; i++) {
      const losses: number[] = [];
      await runFinetune(store, config(), (e) => {
        if (e.type === 'step') {
          losses.push(e.loss);
          counts.push(tf.memory().numTensors);
        }
      });
      curves.push(losses);
    }
    store.close();
    expect(curves[0]).toHaveLength(8);
    expectFiniteLosses(curves[0], 'first run losses');
    expectFiniteLosses(curves[1], 'second run losses');
    expect(curves[1]).toEqual(curves[0]);
    expect(curves[0][7]).toBeLessThan(curves[0][0]);
    // Within a run every step ends with the same number of live tensors.
    expect(counts.slice(1, 8)).toEqual(counts.slice(1, 8).map(() => counts[1]));
  });

  it('resumes after a SIGKILL and reproduces the uninterrupted final loss', async () => {
    const full = lowrank(trainArgs());
    expect(full.status, full.stderr).toBe(0);
    const lines = full.stdout.trim().split('\n').map((l) => JSON.parse(l));
    const done = lines.find((l) => l.event === 'done');
    expect(done.status).toBe('completed');

    // Same run in a child that is killed at step 8, two steps after its checkpoint at step 6: steps 7
    // and 8 are logged, then run again by the resume.
    const child = spawn(process.execPath, [cli, ...trainArgs()], { env: { ...process.env, LOWRANK_HOME: home } });
    let runId = '';
    let out = '';
    await new Promise<void>((resolve) => {
      child.stdout.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        for (const line of out.split('\n').slice(0, -1)) {
          const event = JSON.parse(line);
          runId ||= event.run_id;
          if (event.event === 'step' && event.step === 8) child.kill('SIGKILL');
        }
      });
      child.on('exit', () => resolve());
    });
    expect(runId).not.toBe('');
    const store = openStore(home);
    expect(store.getRun(runId).status).toBe('interrupted');
    store.close();

    const resumed = lowrank(['train', '--resume', runId, '--json']);
    expect(resumed.status, resumed.stderr).toBe(0);
    const resumedDone = resumed.stdout.trim().split('\n').map((l) => JSON.parse(l)).find((l) => l.event === 'done');
    expect(resumedDone.run_id).toBe(runId);
    expectFiniteLosses([done.train_loss, resumedDone.train_loss], 'uninterrupted, resumed train_loss');
    expect(resumedDone.train_loss).toBe(done.train_loss);
    // Each step's loss once in the stored curve, equal to the uninterrupted run's.
    const after = openStore(home);
    const curve = after.metrics(runId, { split: 'train', name: 'loss' });
    after.close();
    expect(curve.map((m) => m.step)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    const uninterrupted = lines.filter((l) => l.event === 'step').map((l) => l.loss);
    expect(curve.map((m) => m.value)).toEqual(uninterrupted);
  });

  it.each([
    ['galore', { rank: 4, update_proj_gap: 3 }],
    ['fira', { rank: 4, update_proj_gap: 3 }],
    ['frugal', { density: 0.25, update_proj_gap: 3 }],
    ['galore-dct', { rank: 4, update_proj_gap: 3 }],
  ] as const)('%s: a run stopped at step 4 and resumed ends exactly as the uninterrupted one', async (method, params) => {
    // T = 3: the subspace changes before the stop and after the resume (GaLore, Fira, FRUGAL at t = 3
    // and 6 completed steps; the DCT selection at steps 3 and 6), so the resumed steps 5 and 6 run on
    // the restored projector (DCT: indices), moments, step count and Fira's scalar.
    const store = openStore(path.join(root, `home-${method}`));
    const cfg = config({ method, params: { ...params }, targets: 'all-linear', evalEvery: 100, checkpointEvery: 100, metricExamples: 0 });
    const record = (losses: number[]) => (e: FinetuneEvent) => {
      if (e.type === 'step') losses.push(e.loss);
    };
    const uninterrupted: number[] = [];
    await runFinetune(store, cfg, record(uninterrupted));
    const first: number[] = [];
    const stopped = await runFinetune(store, cfg, record(first), { shouldStop: () => first.length >= 4 });
    expect(stopped.status).toBe('cancelled');
    expect(first).toHaveLength(4);
    // As if its process had been killed after the step-4 checkpoint (the SIGKILL test above covers that path).
    store.db.prepare("UPDATE runs SET status = 'interrupted' WHERE id = ?").run(stopped.runId);
    const rest: number[] = [];
    const resumed = await runFinetune(store, cfg, record(rest), {}, stopped.runId);
    expect(resumed.status).toBe('completed');
    expect(uninterrupted).toHaveLength(8);
    expectFiniteLosses(uninterrupted, 'uninterrupted losses');
    expectFiniteLosses([...first, ...rest], 'stopped + resumed losses');
    expect([...first, ...rest]).toEqual(uninterrupted);
    expect(uninterrupted[7]).toBeLessThan(uninterrupted[0]);
    // The run records the method's optimizer state, smaller than AdamW's 8 bytes per weight.
    const run = store.getRun(stopped.runId);
    expect(run.stateBytes! - 4 * run.trainableParams!).toBeLessThan(8 * run.trainableParams!);
    store.close();
  });

  it('exports PEFT and merged: base + adapter logits equal the merged model logits', () => {
    const r = lowrank(trainArgs(['--steps', '6']));
    expect(r.status, r.stderr).toBe(0);
    const runId = JSON.parse(r.stdout.trim().split('\n').pop()!).run_id as string;
    const peft = path.join(root, 'peft');
    const merged = path.join(root, 'merged');
    expect(lowrank(['export', '--run', runId, '--format', 'peft', '--out', peft]).status).toBe(0);
    expect(lowrank(['export', '--run', runId, '--format', 'merged', '--out', merged]).status).toBe(0);
    const config = JSON.parse(fs.readFileSync(path.join(peft, 'adapter_config.json'), 'utf8'));
    expect(config).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 8, task_type: 'CAUSAL_LM', use_rslora: false, use_dora: false });
    const ids = '5,60,7,99,120,3';
    const a = JSON.parse(lowrank(['logits', '--model', modelDir, '--adapter', peft, '--ids', ids, '--json']).stdout).logits.flat() as number[];
    const b = JSON.parse(lowrank(['logits', '--model', merged, '--ids', ids, '--json']).stdout).logits.flat() as number[];
    const base = JSON.parse(lowrank(['logits', '--model', modelDir, '--ids', ids, '--json']).stdout).logits.flat() as number[];
    const maxRef = Math.max(...b.map(Math.abs));
    expect(Math.max(...a.map((v, i) => Math.abs(v - b[i]))) / maxRef).toBeLessThanOrEqual(1e-5);
    // and the adapter did change the model
    expect(Math.max(...a.map((v, i) => Math.abs(v - base[i])))).toBeGreaterThan(1e-4);
    // An existing destination is refused and left as it was.
    const again = lowrank(['export', '--run', runId, '--format', 'peft', '--out', peft]);
    expect(again.status).toBe(2);
    expect(again.stderr).toMatch(/already exists/);
  });

  it.each([
    // DyLoRA: the per-step rank and the dropout masks come from one generator restored on resume.
    ['dylora', { rank: 4, alpha: 8, dropout: 0.1, export_rank: 2 }],
    // SoRA: the gates' AdamW moments (no weight decay) and the stage of a linear ξ schedule that prunes gates.
    ['sora', { rank: 4, alpha: 8, dropout: 0.1, sparse_lambda: 5, threshold: 0.1, threshold_schedule: 'linear', threshold_max: 0.3, threshold_stages: 4 }],
  ] as const)('%s: a run stopped at step 4 and resumed ends exactly as the uninterrupted one', async (method, params) => {
    const store = openStore(path.join(root, `home-${method}`));
    const cfg = config({ method, params: { ...params }, targets: ['q_proj', 'v_proj'], evalEvery: 100, checkpointEvery: 100, metricExamples: 0 });
    const record = (losses: number[]) => (e: FinetuneEvent) => {
      if (e.type === 'step') losses.push(e.loss);
    };
    const uninterrupted: number[] = [];
    const full = await runFinetune(store, cfg, record(uninterrupted));
    if (method === 'sora') {
      // The threshold did prune: some gate entries of the final checkpoint are exactly 0.
      const file = SafetensorsFile.open(path.join(store.runDir(full.runId), 'checkpoint', 'trainable.safetensors'));
      const gates = [...file.tensors.keys()].filter((k) => k.endsWith('.lora_gate')).flatMap((k) => [...file.readFloat32(k)]);
      file.close();
      expect(gates).toHaveLength(4 * 4); // 2 layers × (q, v) × r
      expect(gates.filter((g) => g === 0).length).toBeGreaterThan(0);
    }
    const first: number[] = [];
    const stopped = await runFinetune(store, cfg, record(first), { shouldStop: () => first.length >= 4 });
    expect(stopped.status).toBe('cancelled');
    store.db.prepare("UPDATE runs SET status = 'interrupted' WHERE id = ?").run(stopped.runId);
    const rest: number[] = [];
    const resumed = await runFinetune(store, cfg, record(rest), {}, stopped.runId);
    expect(resumed.status).toBe('completed');
    expect(rest).toHaveLength(4);
    expect(uninterrupted).toHaveLength(8);
    expectFiniteLosses(uninterrupted, 'uninterrupted losses');
    expectFiniteLosses([...first, ...rest], 'stopped + resumed losses');
    expect([...first, ...rest]).toEqual(uninterrupted);
    store.close();
  });

  it('reports bad dataset records with their line numbers', () => {
    const bad = path.join(root, 'bad.jsonl');
    const good = fs.readFileSync(data, 'utf8').split('\n').slice(0, 5);
    good.splice(2, 0, '{"messages": [{"role": "user", "content": "hi"}');
    good.splice(4, 0, '{"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]}');
    fs.writeFileSync(bad, good.join('\n') + '\n');
    const r = lowrank(['train', '--model', modelDir, '--data', bad, '--method', 'lora', '--steps', '1']);
    expect(r.status).toBe(2);
    const message = r.stderr.trim();
    expect(message.split('\n')).toHaveLength(1);
    expect(message).toContain('bad.jsonl:3');
    expect(message).toContain('bad.jsonl:5');
    expect(message).toMatch(/--on-bad-line skip/);
  });
});
