/**
 * `lowrank train --method <id>` end to end for the factored adapters (vera, loraxs, svfit, nola),
 * through the CLI's own entry point in this process (no extra node start-up per command): a few
 * steps on a tiny pre-trained checkpoint, then `lowrank export` as PEFT and merged. Where the PEFT
 * export is a plain LoRA, base + adapter logits equal the merged model's; VeRA's is peft's VERA form.
 */
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readPeftAdapter } from '../core/export/peft.ts';
import { cliWorkspace, logitsOf, lowrank, maxDiff, trainAndExport } from './fixtures/cli-in-process.ts';

const ws = cliWorkspace('lowrank-finetune-methods-');
const { root, modelDir } = ws;

const METHODS: Array<[string, string[]]> = [
  ['vera', ['--rank', '8']],
  ['loraxs', ['--rank', '4']],
  // SVFit at its default rank rule (99 % of Σσ² per matrix): ranks differ by module, in rank_pattern.
  ['svfit', []],
  ['nola', ['--rank', '4', '--alpha', '8', '--param', 'num_basis=16']],
];

describe('lowrank train --method', () => {
  it.each(METHODS)('%s trains a few steps and exports PEFT and merged weights', async (id, params) => {
    const { runId, peft, config, mergedLogits } = await trainAndExport(ws, id, params);
    if (id === 'vera') {
      expect(config).toMatchObject({ peft_type: 'VERA', r: 8, save_projection: true, target_modules: ['q_proj', 'v_proj'] });
      return;
    }
    if (id === 'svfit') {
      expect(config).toMatchObject({ peft_type: 'LORA', target_modules: ['q_proj', 'v_proj'] });
      expect(config.lora_alpha).toBe(config.r);
      expect(config.alpha_pattern).toEqual(config.rank_pattern); // s = 1 in every module
    } else {
      expect(config).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 4, target_modules: ['q_proj', 'v_proj'] });
    }
    const adapterLogits = await logitsOf(modelDir, peft);
    expect(maxDiff(adapterLogits, mergedLogits) / Math.max(...mergedLogits.map(Math.abs))).toBeLessThanOrEqual(1e-5);
  });
  it.each([
    // DyLoRA trains rank 4 and exports the rank-2 truncation: r = 2, lora_alpha = α.
    ['dylora', ['--rank', '4', '--alpha', '8', '--param', 'export_rank=2']],
    // SoRA with a threshold that prunes gates within 3 steps: the export has the reduced ranks.
    ['sora', ['--rank', '4', '--alpha', '8', '--param', 'threshold=0.3,sparse_lambda=5']],
  ])('%s trains a few steps and exports a reduced-rank PEFT LoRA equal to the merged weights', async (id, params) => {
    const { runId, peft, config, mergedLogits } = await trainAndExport(ws, id, params);
    const adapter = readPeftAdapter(peft);
    const ranks = [...adapter.tensors].filter(([k]) => k.endsWith('.lora_A.weight')).map(([, t]) => t.shape[0]);
    if (id === 'dylora') {
      expect(config).toMatchObject({ peft_type: 'LORA', r: 2, lora_alpha: 8 });
      expect(ranks.every((r) => r === 2)).toBe(true);
    } else {
      expect(config.peft_type).toBe('LORA');
      expect(ranks.reduce((a, b) => a + b, 0)).toBeLessThan(4 * ranks.length); // pruned below rank 4 overall
    }
    const adapterLogits = await logitsOf(modelDir, peft);
    expect(maxDiff(adapterLogits, mergedLogits) / Math.max(...mergedLogits.map(Math.abs))).toBeLessThanOrEqual(1e-5);
    if (id !== 'dylora') return;
    // The same training exported at rank 3 without retraining: A's first 3 rows, and again exact.
    const peft3 = path.join(root, 'dylora-peft-3');
    const merged3 = path.join(root, 'dylora-merged-3');
    expect((await lowrank(['export', '--run', runId, '--format', 'peft', '--param', 'export_rank=3', '--out', peft3])).code).toBe(0);
    expect((await lowrank(['export', '--run', runId, '--format', 'merged', '--param', 'export_rank=3', '--out', merged3])).code).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(peft3, 'adapter_config.json'), 'utf8'))).toMatchObject({ r: 3, lora_alpha: 8 });
    const adapter3 = readPeftAdapter(peft3);
    for (const [key, t] of adapter.tensors) {
      if (!key.endsWith('.lora_A.weight')) continue;
      expect([...adapter3.tensors.get(key)!.data].slice(0, t.data.length)).toEqual([...t.data]);
    }
    const merged3Logits = await logitsOf(merged3);
    expect(maxDiff(merged3Logits, mergedLogits)).toBeGreaterThan(1e-6); // a different rank, a different model
    const adapter3Logits = await logitsOf(modelDir, peft3);
    expect(maxDiff(adapter3Logits, merged3Logits) / Math.max(...merged3Logits.map(Math.abs))).toBeLessThanOrEqual(1e-5);
    // Parameters the trained tensors depend on cannot change at export.
    const refused = await lowrank(['export', '--run', runId, '--format', 'peft', '--param', 'rank=2', '--out', path.join(root, 'dylora-rank-2')]);
    expect(refused.code).toBe(2);
  });
});
