/**
 * `lowrank train --method sltrain|fedsvd|diffora` end to end through the CLI's own entry point in
 * this process: 2 steps with default flags on a tiny pre-trained Llama, then the exports (SLTrain
 * merged only; FedSVD's and DiffoRA's PEFT LoRA equal to their merged weights), and a run stopped
 * mid-way and resumed ending exactly as the uninterrupted one (FedSVD stops inside a round and inside
 * a client's local steps, with and without DP-SGD noise; DiffoRA inside its search).
 */
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readPeftAdapter } from '../core/export/peft.ts';
import { openStore } from '../core/store/index.ts';
import * as tf from '../core/tf.ts';
import { FINETUNE_DEFAULTS, loadTrainedRun, runFinetune, type FinetuneConfig, type FinetuneEvent } from '../core/train/finetune.ts';
import { needs } from './helpers/optional-parts.ts';
import { cliWorkspace, logitsOf, lowrank, maxDiff } from './fixtures/cli-in-process.ts';

const ws = cliWorkspace('lowrank-finetune-sltrain-fedsvd-diffora-');
const { root, modelDir, data } = ws;

async function trainTwoSteps(id: string, extra: string[] = []): Promise<{ runId: string; lr: number; log: string[] }> {
  const trained = await lowrank(['train', '--model', modelDir, '--data', data, '--method', id, ...extra, '--steps', '2', '--json']);
  expect(trained.code).toBe(0);
  const done = trained.lines.at(-1)!;
  expect(Number.isFinite(done.train_loss)).toBe(true);
  const log = trained.lines.filter((l) => l.event === 'log').map((l) => String(l.message));
  const store = openStore();
  try {
    const run = store.getRun(done.run_id as string);
    return { runId: run.id, lr: (run.config as unknown as FinetuneConfig).lr, log };
  } finally {
    store.close();
  }
}

describe('lowrank train --method sltrain|fedsvd|diffora', () => {
  it('sltrain trains 2 steps with default flags (its paper rate, every linear) and exports merged weights only', async () => {
    const { runId, lr } = await trainTwoSteps('sltrain');
    expect(lr).toBe(3e-3);
    const merged = path.join(root, 'sltrain-merged');
    expect((await lowrank(['export', '--run', runId, '--format', 'merged', '--out', merged])).code).toBe(0);
    expect(maxDiff(await logitsOf(merged), await logitsOf(modelDir))).toBeGreaterThan(1e-5);
    const refused = await lowrank(['export', '--run', runId, '--format', 'peft', '--out', path.join(root, 'sltrain-peft')]);
    expect(refused.code).toBe(2);
  });

  it('sltrain base=replace on an NF4 base: the merged export is exactly the trained W = s·B·A + S, not moved onto the original weights', needs('native'), async () => {
    const { runId } = await trainTwoSteps('sltrain', ['--base-dtype', 'nf4', '--param', 'base=replace']);
    const ids = [5, 60, 7, 99, 120, 3]; // the ids logitsOf feeds `lowrank logits`
    const store = openStore();
    let inEngine: number[];
    try {
      const prepared = await loadTrainedRun(store, runId);
      expect(prepared.model.frozen.get('model.layers.0.self_attn.q_proj.weight')?.kind).toBe('nf4');
      inEngine = tf.tidy(() => Array.from(prepared.model.forward(tf.tensor2d([ids], [1, ids.length], 'int32')).logits.dataSync()));
      prepared.attached.detach();
      prepared.model.dispose();
    } finally {
      store.close();
    }
    const merged = path.join(root, 'sltrain-replace-nf4-merged');
    expect((await lowrank(['export', '--run', runId, '--format', 'merged', '--dtype', 'float32', '--out', merged])).code).toBe(0);
    // Every linear is replaced (the default targets), so the export and the run compute the same model.
    expect(maxDiff(await logitsOf(merged), inEngine) / Math.max(...inEngine.map(Math.abs))).toBeLessThanOrEqual(1e-6);
  });

  it.each([
    // 6 clients of 6 examples each; both steps are the first sampled client's.
    ['fedsvd', 3e-4, { peft_type: 'LORA', r: 8, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] }],
    // Both steps search (an A/B step, a γ step), then the top half of the 4 modules is kept: 2 of them, named by path.
    ['diffora', 2e-4, { peft_type: 'LORA', r: 8, lora_alpha: 16 }],
  ] as const)('%s trains 2 steps with default flags and its PEFT export gives the merged model’s logits', async (id, rate, fields) => {
    const { runId, lr, log } = await trainTwoSteps(id);
    expect(lr).toBe(rate);
    // The run's log reports the method's structure: FedSVD's round, DiffoRA's chosen modules.
    if (id === 'fedsvd') expect(log).toContainEqual(expect.stringMatching(/^step 2: round 1: B averaged over clients \d; B·A re-factorised, max \|A·Aᵀ − I\| = \d\.\de-\d+$/));
    else expect(log).toContainEqual(expect.stringMatching(/^step 2: search done: LoRA kept on 2 of 4 modules \(model\.layers\.\d\.self_attn\.[qv]_proj, model\.layers\.\d\.self_attn\.[qv]_proj\)$/));
    const peft = path.join(root, `${id}-peft`);
    const merged = path.join(root, `${id}-merged`);
    expect((await lowrank(['export', '--run', runId, '--format', 'peft', '--out', peft])).code).toBe(0);
    expect((await lowrank(['export', '--run', runId, '--format', 'merged', '--out', merged])).code).toBe(0);
    const config = JSON.parse(fs.readFileSync(path.join(peft, 'adapter_config.json'), 'utf8'));
    expect(config).toMatchObject(fields);
    const modules = [...readPeftAdapter(peft).tensors.keys()].filter((k) => k.endsWith('.lora_A.weight'));
    expect(modules).toHaveLength(id === 'diffora' ? 2 : 4); // DiffoRA exports the selected modules only
    const mergedLogits = await logitsOf(merged);
    expect(maxDiff(mergedLogits, await logitsOf(modelDir))).toBeGreaterThan(1e-5);
    const adapterLogits = await logitsOf(modelDir, peft);
    expect(maxDiff(adapterLogits, mergedLogits) / Math.max(...mergedLogits.map(Math.abs))).toBeLessThanOrEqual(1e-5);
  });

  it.each([
    ['sltrain', { rank: 2, density: 0.05 }],
    // Rounds of 2 clients × 3 local steps: the stop after step 4 falls inside round 0's second client.
    ['fedsvd', { rank: 4, dropout: 0.1, clients: 4, client_fraction: 0.5, local_steps: 3 }],
    ['fedsvd', { rank: 4, dropout: 0, clients: 4, client_fraction: 0.5, local_steps: 3, dp: true, noise_multiplier: 0.5, dp_clip: 1 }],
    // 6 search steps: the stop after step 4 falls inside the search, between an A/B step and a γ step.
    ['diffora', { rank: 4, dropout: 0.1, search_fraction: 0.75 }],
  ] as const)('%s: a run stopped at step 4 and resumed ends exactly as the uninterrupted one (%o)', async (method, params) => {
    const store = openStore(path.join(root, `home-${method}-${'dp' in params ? 'dp' : 'plain'}`));
    const cfg: FinetuneConfig = {
      ...FINETUNE_DEFAULTS, model: modelDir, data, method, params: { ...params }, targets: ['q_proj', 'v_proj'], steps: 8, epochs: null,
      batchSize: 4, seqLen: 48, lr: 1e-2, evalEvery: 100, checkpointEvery: 100, validation: 0.1, metricExamples: 0,
    };
    const record = (losses: number[]) => (e: FinetuneEvent) => {
      if (e.type === 'step') losses.push(e.loss);
    };
    const uninterrupted: number[] = [];
    const full = await runFinetune(store, cfg, record(uninterrupted));
    expect(full.status).toBe('completed');
    const first: number[] = [];
    const stopped = await runFinetune(store, cfg, record(first), { shouldStop: () => first.length >= 4 });
    expect(stopped.status).toBe('cancelled');
    store.db.prepare("UPDATE runs SET status = 'interrupted' WHERE id = ?").run(stopped.runId);
    const rest: number[] = [];
    const resumed = await runFinetune(store, cfg, record(rest), {}, stopped.runId);
    expect(resumed.status).toBe('completed');
    expect(uninterrupted).toHaveLength(8);
    expect(rest).toHaveLength(4);
    uninterrupted.forEach((loss) => expect(Number.isFinite(loss)).toBe(true));
    expect([...first, ...rest]).toEqual(uninterrupted);
    expect(resumed.valLoss).toBe(full.valLoss);
    store.close();
  });
});
