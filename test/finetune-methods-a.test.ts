/**
 * ALLoRA, SwitchLoRA, LoRA-Pro, SaRA and CoDyRA (drslora) end to end: `lowrank train --method ID`
 * for 2 steps with the default flags (each method's paper learning rate, its default targets and
 * hyper-parameters) on a tiny pre-trained Llama checkpoint, through the CLI's own entry point in this
 * process; then `lowrank export` merged and, where the update is exactly low-rank, as PEFT, whose
 * base + adapter logits equal the merged model's. And a run stopped at step 4 and resumed ends exactly
 * as the uninterrupted one, for each method with the state it keeps between steps.
 */
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FINETUNE_DEFAULTS, runFinetune, type FinetuneConfig, type FinetuneEvent } from '../core/train/finetune.ts';
import { openStore } from '../core/store/index.ts';
import { SafetensorsFile } from '../core/io/safetensors.ts';
import { cliWorkspace, logitsOf, lowrank, maxDiff } from './fixtures/cli-in-process.ts';

const ws = cliWorkspace('lowrank-finetune-methods-a-');
const { root, modelDir } = ws;

const METHODS: Array<[string, boolean]> = [
  ['allora', true],
  ['lorapro', true],
  ['drslora', true],
  ['switchlora', false],
  ['sara', false],
];

describe('lowrank train --method with default flags', () => {
  it.each(METHODS)('%s trains 2 steps and exports merged (and PEFT where exact)', async (id, peft) => {
    const trained = await lowrank(['train', '--model', modelDir, '--data', ws.data, '--method', id, '--steps', '2', '--json']);
    expect(trained.code).toBe(0);
    const done = trained.lines.at(-1)!;
    expect(Number.isFinite(done.train_loss)).toBe(true);
    const runId = done.run_id as string;
    const merged = path.join(root, `${id}-merged`);
    expect((await lowrank(['export', '--run', runId, '--format', 'merged', '--out', merged])).code).toBe(0);
    const mergedLogits = await logitsOf(merged);
    expect(maxDiff(mergedLogits, await logitsOf(modelDir))).toBeGreaterThan(0); // trained
    const peftDir = path.join(root, `${id}-peft`);
    const exported = await lowrank(['export', '--run', runId, '--format', 'peft', '--out', peftDir]);
    if (!peft) {
      expect(exported.code).toBe(2); // full-rank or sparse: no PEFT LoRA represents it
      return;
    }
    expect(exported.code).toBe(0);
    const config = JSON.parse(fs.readFileSync(path.join(peftDir, 'adapter_config.json'), 'utf8'));
    expect(config.peft_type).toBe('LORA');
    const adapterLogits = await logitsOf(modelDir, peftDir);
    expect(maxDiff(adapterLogits, mergedLogits) / Math.max(...mergedLogits.map(Math.abs))).toBeLessThanOrEqual(1e-5);
  });
});

function config(overrides: Partial<FinetuneConfig>): FinetuneConfig {
  return {
    ...FINETUNE_DEFAULTS,
    model: modelDir, data: ws.data, method: 'lora', params: {}, targets: ['q_proj', 'v_proj'],
    steps: 8, epochs: null, batchSize: 4, seqLen: 48, lr: 1e-2, evalEvery: 100, checkpointEvery: 100, validation: 0.1,
    metricExamples: 0, ...overrides,
  };
}

describe('resume', () => {
  it.each([
    ['allora', { rank: 4 }],
    // The full-size Adam moments of the equivalent gradient live in the optimizer state.
    ['lorapro', { rank: 4 }],
    // Gates thresholded from step 2 on a rising κ: the schedule is a function of the step.
    ['drslora', { rank: 4, dense_fraction: 0.25, kappa_stages: 3, max_kappa: 0.05 }],
    // Switched weights, candidate pools, pointers, frozen counters and per-row Adam steps.
    // r = 8 at the shortest interval, the rate decaying over the whole run (descent 1, not 10 % of
    // it): rows switch on both sides of the stop, and N_w = 3 spans it.
    ['switchlora', { rank: 8, switch_interval: 10, switch_descent: 1, frozen_steps: 3 }],
    // The re-selected mask (at step 2) in the optimizer state; the rank term's matrix drawn each step.
    ['sara', { selection: 'fraction', fraction: 0.1, progressive_at: 0.25, nuclear_min_dim: 0 }],
  ] as const)('%s: a run stopped at step 4 and resumed ends exactly as the uninterrupted one', async (method, params) => {
    const store = openStore(path.join(root, `home-${method}`));
    const cfg = config({ method, params: { ...params } });
    const record = (losses: number[]) => (e: FinetuneEvent) => {
      if (e.type === 'step') losses.push(e.loss);
    };
    const uninterrupted: number[] = [];
    const full = await runFinetune(store, cfg, record(uninterrupted));
    const first: number[] = [];
    const stopped = await runFinetune(store, cfg, record(first), { shouldStop: () => first.length >= 4 });
    expect(stopped.status).toBe('cancelled');
    store.db.prepare("UPDATE runs SET status = 'interrupted' WHERE id = ?").run(stopped.runId);
    const rest: number[] = [];
    const resumed = await runFinetune(store, cfg, record(rest), {}, stopped.runId);
    expect(resumed.status).toBe('completed');
    expect(rest).toHaveLength(4);
    expect(uninterrupted).toHaveLength(8);
    uninterrupted.forEach((loss) => expect(Number.isFinite(loss)).toBe(true));
    expect([...first, ...rest]).toEqual(uninterrupted);
    const checkpoint = path.join(store.runDir(full.runId), 'checkpoint');
    if (method === 'switchlora') {
      // Switches did happen: some module's A rows are no longer the initial candidates K−r..K−1.
      const file = SafetensorsFile.open(path.join(checkpoint, 'optimizer.safetensors'));
      const moved = [...file.tensors.keys()].filter((k) => k.endsWith('.switchlora_control')).some((k) => {
        const control = file.readFloat32(k);
        const K = k.includes('v_proj') ? 16 : 32;
        return [...control.slice(0, 8)].some((c, i) => c !== K - 8 + i);
      });
      file.close();
      expect(moved).toBe(true);
    }
    if (method === 'drslora') {
      const file = SafetensorsFile.open(path.join(checkpoint, 'trainable.safetensors'));
      const gates = [...file.tensors.keys()].filter((k) => k.endsWith('.lora_gate')).flatMap((k) => [...file.readFloat32(k)]);
      file.close();
      expect(gates).toHaveLength(4 * 4);
      expect(gates.filter((g) => g === 0).length).toBeGreaterThan(0);
    }
    store.close();
  });
});
