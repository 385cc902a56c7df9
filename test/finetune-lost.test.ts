/**
 * `lowrank train --method lost` end to end through the CLI's own entry point in this process: 2 steps
 * with default flags on a tiny pre-trained Llama (its paper rate, every linear, the linear branch),
 * then `lowrank export`: the merged folder's logits equal the trained run's in-engine logits, PEFT is
 * refused; with `activation=silu` merged and GGUF are refused too, and the app's export options say
 * why. `lowrank methods` lists it. A run stopped mid-way and resumed ends exactly as the
 * uninterrupted one (the channels I are recomputed from W on resume, the rest comes from the checkpoint).
 */
import { describe, expect, it, vi } from 'vitest';
import * as path from 'node:path';
import * as tf from '../core/tf.ts';
import { exportOptions } from '../core/export/availability.ts';
import { getMethod } from '../core/methods/index.ts';
import { openStore } from '../core/store/index.ts';
import { FINETUNE_DEFAULTS, loadTrainedRun, runFinetune, type FinetuneConfig, type FinetuneEvent } from '../core/train/finetune.ts';
import { main } from '../core/cli.ts';
import { needs } from './helpers/optional-parts.ts';
import { cliWorkspace, logitsOf, lowrank, maxDiff } from './fixtures/cli-in-process.ts';

const ws = cliWorkspace('lowrank-finetune-lost-');
const { root, modelDir, data } = ws;
const IDS = [5, 60, 7, 99, 120, 3]; // the ids logitsOf feeds `lowrank logits`

async function trainTwoSteps(extra: string[] = []): Promise<{ runId: string; log: string[] }> {
  const trained = await lowrank(['train', '--model', modelDir, '--data', data, '--method', 'lost', ...extra, '--steps', '2', '--json']);
  expect(trained.code).toBe(0);
  const done = trained.lines.at(-1)!;
  expect(Number.isFinite(done.train_loss)).toBe(true);
  return { runId: done.run_id as string, log: trained.lines.filter((l) => l.event === 'log').map((l) => String(l.message)) };
}

describe('lowrank train --method lost', () => {
  it('is listed by `lowrank methods --json` with its paper rate and every-linear default', async () => {
    const printed: string[] = [];
    const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => (printed.push(String(chunk)), true));
    try {
      expect(await main(['methods', '--json'])).toBe(0);
    } finally {
      write.mockRestore();
    }
    const methods = JSON.parse(printed.join('')) as Array<{ id: string; family: string; defaultTargets?: string; paperLearningRate?: { value: number } }>;
    expect(methods.find((m) => m.id === 'lost')).toMatchObject({ family: 'adapter', defaultTargets: 'all-linear', paperLearningRate: { value: 1e-3 } });
  });

  it('trains 2 steps with default flags; the merged export gives the trained run\'s in-engine logits; PEFT is refused', async () => {
    const { runId, log } = await trainTwoSteps();
    expect(log).toContainEqual(expect.stringMatching(/^step 1: LOST on 14 linear layers: .* trainable values in place of \d+ weights/));
    const store = openStore();
    let inEngine: number[];
    let params: Record<string, unknown>;
    try {
      const config = store.getRun(runId).config as unknown as FinetuneConfig;
      expect(config.lr).toBe(1e-3);
      params = config.params;
      const prepared = await loadTrainedRun(store, runId);
      inEngine = tf.tidy(() => Array.from(prepared.model.forward(tf.tensor2d([IDS], [1, IDS.length], 'int32')).logits.dataSync()));
      prepared.attached.detach();
      prepared.model.dispose();
    } finally {
      store.close();
    }
    const merged = path.join(root, 'lost-merged');
    expect((await lowrank(['export', '--run', runId, '--format', 'merged', '--out', merged])).code).toBe(0);
    const mergedLogits = await logitsOf(merged);
    expect(maxDiff(mergedLogits, inEngine) / Math.max(...inEngine.map(Math.abs))).toBeLessThanOrEqual(1e-6); // measured 2.5e-7 (the task asks 1e-5)
    expect(maxDiff(mergedLogits, await logitsOf(modelDir))).toBeGreaterThan(1e-5); // W_eff is not W
    const refused = await lowrank(['export', '--run', runId, '--format', 'peft', '--out', path.join(root, 'lost-peft')]);
    expect(refused.code).toBe(2);
    const options = Object.fromEntries(exportOptions(getMethod('lost'), modelDir, params as never).formats.map((f) => [f.format, f]));
    expect(options.peft.reason).toMatch(/W_eff − W is not low-rank/);
    expect(options.merged.available && options.gguf.available).toBe(true);
  });

  it('on an NF4 base the merged export is still exactly the trained layers (W_eff is the whole weight, not an update)', needs('native'), async () => {
    const { runId } = await trainTwoSteps(['--base-dtype', 'nf4', '--param', 'rank=2']);
    const store = openStore();
    let inEngine: number[];
    try {
      const prepared = await loadTrainedRun(store, runId);
      expect(prepared.model.frozen.get('model.layers.0.self_attn.q_proj.weight')?.kind).toBe('nf4'); // the base W the SVD read was quantized
      inEngine = tf.tidy(() => Array.from(prepared.model.forward(tf.tensor2d([IDS], [1, IDS.length], 'int32')).logits.dataSync()));
      prepared.attached.detach();
      prepared.model.dispose();
    } finally {
      store.close();
    }
    const merged = path.join(root, 'lost-nf4-merged');
    expect((await lowrank(['export', '--run', runId, '--format', 'merged', '--dtype', 'float32', '--out', merged])).code).toBe(0);
    expect(maxDiff(await logitsOf(merged), inEngine) / Math.max(...inEngine.map(Math.abs))).toBeLessThanOrEqual(1e-6);
  });

  it('activation=silu: merged and GGUF are refused with the reason; the export options say so', async () => {
    const { runId } = await trainTwoSteps(['--param', 'activation=silu']);
    for (const format of ['merged', 'gguf', 'peft']) {
      const refused = await lowrank(['export', '--run', runId, '--format', format, '--out', path.join(root, `lost-silu-${format}`)]);
      expect(refused.code, format).toBe(2);
    }
    const store = openStore();
    try {
      const { params } = store.getRun(runId).config as unknown as FinetuneConfig;
      const options = Object.fromEntries(exportOptions(getMethod('lost'), modelDir, params).formats.map((f) => [f.format, f]));
      for (const format of ['peft', 'merged', 'gguf']) expect(options[format].available, format).toBe(false);
      expect(options.merged.reason).toMatch(/activation silu .* no merged weight reproduces them; the run itself \(its checkpoint\) is what is kept/);
      expect(options.gguf.reason).toBe(options.merged.reason);
    } finally {
      store.close();
    }
  });

  it.each<[Record<string, number | string>]>([
    [{ rank: 2, channel_ratio: 0.1 }],
    [{ rank: 2, channel_ratio: 0.1, activation: 'silu' }],
  ])('a run stopped at step 2 and resumed ends exactly as the uninterrupted one (%o)', async (params) => {
    const store = openStore(path.join(root, `home-resume-${params.activation ?? 'none'}`));
    const cfg: FinetuneConfig = {
      ...FINETUNE_DEFAULTS, model: modelDir, data, method: 'lost', params: { ...params }, targets: ['q_proj', 'v_proj', 'down_proj'],
      steps: 4, epochs: null, batchSize: 4, seqLen: 48, lr: 1e-2, evalEvery: 100, checkpointEvery: 100, metricExamples: 0,
    };
    const record = (losses: number[]) => (e: FinetuneEvent) => void (e.type === 'step' && losses.push(e.loss));
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
    store.close();
  });
});
