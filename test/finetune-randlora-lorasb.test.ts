/**
 * `lowrank train --method randlora|lorasb` end to end through the CLI's own entry point in this
 * process: a few steps on a tiny pre-trained checkpoint, then `lowrank export` as PEFT and merged.
 * RandLoRA's PEFT form is peft's RANDLORA adapter (shared bases + λ, γ); LoRA-SB's is a plain LoRA
 * that, applied to the ORIGINAL base (W₀ is never compensated), gives the merged model's logits.
 */
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SafetensorsFile } from '../core/io/safetensors.ts';
import { openStore } from '../core/store/index.ts';
import { loadTrainedRun } from '../core/train/finetune.ts';
import { validationLoss } from '../core/train/evaluate.ts';
import { cliWorkspace, logitsOf, lowrank, maxDiff, trainAndExport } from './fixtures/cli-in-process.ts';

const ws = cliWorkspace('lowrank-finetune-randlora-lorasb-');
const { modelDir } = ws;

const METHODS: Array<[string, string[]]> = [
  ['randlora', ['--rank', '4', '--alpha', '8']],
  ['lorasb', ['--rank', '4', '--param', 'grad_samples=6', '--param', 'grad_batch_size=3']],
];

describe('lowrank train --method', () => {
  it.each(METHODS)('%s trains a few steps and exports PEFT and merged weights', async (id, params) => {
    const { runId, peft, config, mergedLogits } = await trainAndExport(ws, id, params);
    if (id === 'randlora') {
      expect(config).toMatchObject({ peft_type: 'RANDLORA', r: 4, randlora_alpha: 8, save_projection: true, target_modules: ['q_proj', 'v_proj'] });
      const file = SafetensorsFile.open(path.join(peft, 'adapter_model.safetensors'));
      const shapes = new Map([...file.tensors].map(([k, t]) => [k, t.shape]));
      file.close();
      // q [32, 32], v [16, 32]: d_buf = 32, D_buf = 32, N_max = 8; v has d = 16, N = 4.
      expect(shapes.get('base_model.randlora_A')).toEqual([4, 1, 32]);
      expect(shapes.get('base_model.randlora_B')).toEqual([32, 8, 4]);
      expect(shapes.get('base_model.model.model.layers.0.self_attn.v_proj.randlora_lambda')).toEqual([4, 4]);
      expect(shapes.get('base_model.model.model.layers.1.self_attn.v_proj.randlora_gamma')).toEqual([4, 16]);
      expect(shapes.size).toBe(2 + 2 * 2 * 2);
      return;
    }
    expect(config).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 4, target_modules: ['q_proj', 'v_proj'] });
    // The checkpoint holds only R: rebuilding the run recomputes G from the same first samples, so
    // B and A come out the same and the rebuilt model scores the validation loss the run recorded.
    const store = openStore();
    try {
      const run = store.getRun(runId);
      const rebuilt = await loadTrainedRun(store, runId);
      try {
        const again = validationLoss(rebuilt.model, rebuilt.dataset.validation.slice(0, 256), rebuilt.config.batchSize);
        expect(Math.abs(again - run.finalValLoss!)).toBeLessThanOrEqual(1e-6 * Math.abs(run.finalValLoss!));
      } finally {
        rebuilt.attached.detach();
        rebuilt.model.dispose();
      }
    } finally {
      store.close();
    }
    const adapterLogits = await logitsOf(modelDir, peft); // the ORIGINAL base + the adapter
    expect(maxDiff(adapterLogits, mergedLogits) / Math.max(...mergedLogits.map(Math.abs))).toBeLessThanOrEqual(1e-5);
  });
});
