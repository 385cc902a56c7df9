/**
 * `lowrank train --method loram|pela` end to end with the default flags (2 steps) on a tiny
 * pre-trained Llama, through the CLI's own entry point in this process, then `lowrank export`.
 * LoRAM's PEFT export (the recovered adapter) on the FULL base gives the merged model's logits;
 * PELA logs its distillation loss and exports merged weights. Both resume exactly: a run stopped at
 * step 2 of 4 and resumed ends on the uninterrupted run's losses (LoRAM: stru pruning recomputed from
 * the same first samples, dropout masks from the saved state; PELA: distillation share by step).
 */
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readPeftAdapter } from '../core/export/peft.ts';
import { openStore } from '../core/store/index.ts';
import { FINETUNE_DEFAULTS, runFinetune, type FinetuneConfig, type FinetuneEvent } from '../core/train/finetune.ts';
import { cliWorkspace, logitsOf, lowrank, maxDiff } from './fixtures/cli-in-process.ts';

const ws = cliWorkspace('lowrank-finetune-loram-pela-');
const { root, modelDir } = ws;

async function trainTwoSteps(id: string): Promise<{ runId: string; logs: string[] }> {
  // Default flags but the step count and the held-out task metric (slow, and not what this checks).
  const trained = await lowrank(['train', '--model', modelDir, '--data', ws.data, '--method', id, '--steps', '2', '--metric-examples', '0', '--json']);
  expect(trained.code).toBe(0);
  const done = trained.lines.at(-1)!;
  expect(Number.isFinite(done.train_loss)).toBe(true);
  return { runId: done.run_id as string, logs: trained.lines.filter((l) => l.event === 'log').map((l) => String(l.message)) };
}

function expectSameLossesAfterResume(id: string, params: Record<string, number | string | boolean>): Promise<void> {
  const store = openStore(path.join(root, `home-${id}-resume`));
  const cfg: FinetuneConfig = {
    ...FINETUNE_DEFAULTS,
    model: modelDir, data: ws.data, method: id, params, targets: ['q_proj', 'v_proj', 'down_proj'],
    steps: 4, epochs: null, batchSize: 4, seqLen: 48, lr: 1e-2, evalEvery: 100, checkpointEvery: 100, metricExamples: 0,
  };
  const record = (losses: number[]) => (e: FinetuneEvent) => void (e.type === 'step' && losses.push(e.loss));
  return (async () => {
    const uninterrupted: number[] = [];
    await runFinetune(store, cfg, record(uninterrupted));
    const first: number[] = [];
    const stopped = await runFinetune(store, cfg, record(first), { shouldStop: () => first.length >= 2 });
    expect(stopped.status).toBe('cancelled');
    store.db.prepare("UPDATE runs SET status = 'interrupted' WHERE id = ?").run(stopped.runId);
    const rest: number[] = [];
    await runFinetune(store, cfg, record(rest), {}, stopped.runId);
    expect(uninterrupted).toHaveLength(4);
    uninterrupted.forEach((loss) => expect(Number.isFinite(loss)).toBe(true));
    expect([...first, ...rest]).toEqual(uninterrupted);
    if (id === 'pela') {
      // The stopped-and-resumed run logged its distillation loss for the distilling steps 1 and 2 only.
      const logged = store.metrics(stopped.runId, { split: 'train', name: 'distill_loss' }).map((m) => m.step);
      expect([...new Set(logged)].sort()).toEqual([1, 2]);
    }
    store.close();
  })();
}

describe('lowrank train --method loram', () => {
  it('trains 2 steps with the default flags; the recovered PEFT adapter on the full base gives the merged logits', async () => {
    const { runId, logs } = await trainTwoSteps('loram');
    // 2 layers (too shallow for layers 4..L−2): both pruned, 1 of 2 kv heads and round(0.15·64) = 10 of 64 channels kept.
    expect(logs).toContain('step 1: trains on a pruned model (stru): decoder layers 0–1 keep 1 of 2 key/value heads (2 of 4 query heads) and 10 of 64 MLP channels; evaluation and export use the full model with the recovered adapter');
    const peft = path.join(root, 'loram-peft');
    const merged = path.join(root, 'loram-merged');
    expect((await lowrank(['export', '--run', runId, '--format', 'peft', '--out', peft])).code).toBe(0);
    expect((await lowrank(['export', '--run', runId, '--format', 'merged', '--out', merged])).code).toBe(0);
    const config = JSON.parse(fs.readFileSync(path.join(peft, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    expect(config).toMatchObject({ peft_type: 'LORA', r: 8, lora_alpha: 16, lora_dropout: 0.05 });
    expect((config.target_modules as string[]).sort()).toEqual(['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']);
    // Full-size factors, zero on the pruned rows: kv heads 2 -> 1 kept, so half of k_proj's 16 output rows of B are 0.
    const adapter = readPeftAdapter(peft);
    const kB = adapter.tensors.get('base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight')!;
    expect(kB.shape).toEqual([16, 8]);
    const zeroRows = Array.from({ length: 16 }, (_, i) => kB.data.slice(i * 8, (i + 1) * 8).every((v) => v === 0)).filter(Boolean).length;
    expect(zeroRows).toBe(8);
    const base = await logitsOf(modelDir);
    const mergedLogits = await logitsOf(merged);
    const adapterLogits = await logitsOf(modelDir, peft);
    expect(maxDiff(mergedLogits, base)).toBeGreaterThan(1e-6);
    expect(maxDiff(adapterLogits, mergedLogits) / Math.max(...mergedLogits.map(Math.abs))).toBeLessThanOrEqual(1e-5);
  });

  it('resumes exactly', async () => {
    await expectSameLossesAfterResume('loram', {});
  });
});

describe('lowrank train --method pela', () => {
  it('trains 2 steps with the default flags, logs its distillation loss and exports merged weights', async () => {
    const { runId, logs } = await trainTwoSteps('pela');
    expect(logs.some((l) => /^step 1: compressed 14 linear layers to rank ⌊in·out\/\(3·\(in\+out\)\)⌋: \d+ of their \d+ parameters/.test(l))).toBe(true);
    expect(logs).toContain('step 1: distillation ends after this step; fine-tuning on the task loss alone for the remaining 1 of 2 steps');
    const store = openStore();
    try {
      const distill = store.metrics(runId, { split: 'train', name: 'distill_loss' });
      expect(distill.map((m) => m.step)).toEqual([1]); // distill_fraction 0.5 of 2 steps
      expect(distill[0].value).toBeGreaterThan(0);
      expect(store.metrics(runId, { split: 'train', name: 'weight_perturbation' })).toHaveLength(1);
    } finally {
      store.close();
    }
    const merged = path.join(root, 'pela-merged');
    expect((await lowrank(['export', '--run', runId, '--format', 'merged', '--out', merged])).code).toBe(0);
    const refused = await lowrank(['export', '--run', runId, '--format', 'peft', '--out', path.join(root, 'pela-peft')]);
    expect(refused.code).toBe(2);
    expect(maxDiff(await logitsOf(merged), await logitsOf(modelDir))).toBeGreaterThan(1e-4);
  });

  it('resumes exactly', async () => {
    await expectSameLossesAfterResume('pela', {});
  });
});
