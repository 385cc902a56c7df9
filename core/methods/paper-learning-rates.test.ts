/**
 * Each method's default learning rate comes from its paper or official code (MethodInfo
 * .paperLearningRate), with the source named; `lowrank train` without --lr trains at it. The rates
 * below are checked against the scripts and tables each source names (ALGORITHMS.md and the repos).
 */
import { describe, expect, it } from 'vitest';
import { getMethod, listMethods } from './index.ts';
import { finetuneConfigFromFlags } from '../cli/train-commands.ts';
import { FINETUNE_DEFAULTS } from '../train/finetune.ts';

/** The methods registered before the rates were added, each with the rate its source uses; null: none pinned. */
const EXPECTED: Record<string, number | null> = {
  full: 2e-5, lora: 2e-4, rslora: 2e-4, dora: 2e-4, pissa: 2e-5, loraplus: 1e-4, vera: 4e-3, randlora: 1e-4, loraxs: 4e-3,
  lorasb: 2e-3, svfit: null, nola: 1e-3, dylora: 4e-4, sora: 8e-4, galore: 1e-2, fira: 1e-2, frugal: 1e-3, 'galore-dct': null,
};

describe('paper learning rates', () => {
  it('each method declares the rate of its paper or code, with the source, or none where no source pins one', () => {
    for (const [id, value] of Object.entries(EXPECTED)) {
      const rate = getMethod(id).paperLearningRate;
      if (value === null) {
        expect(rate, id).toBeUndefined();
        continue;
      }
      expect(rate?.value, id).toBe(value);
      // A source a reader can open: a repository script or a paper table, not just a number.
      expect(rate!.source, id).toMatch(/\.(sh|py)\b|Table \d|appendix|ALGORITHMS\.md|paper/);
    }
    // A method registered later that declares a rate declares a positive one with a source.
    for (const m of listMethods()) {
      if (m.paperLearningRate) {
        expect(m.paperLearningRate.value, m.id).toBeGreaterThan(0);
        expect(m.paperLearningRate.source.length, m.id).toBeGreaterThan(15);
      }
    }
  });

  it('is what `lowrank train` uses without --lr; --lr still wins', () => {
    const flags = { model: 'm', data: 'd.jsonl' };
    expect(finetuneConfigFromFlags({ ...flags, method: 'dora' }).lr).toBe(2e-4);
    expect(finetuneConfigFromFlags({ ...flags, method: 'galore' }).lr).toBe(1e-2);
    expect(finetuneConfigFromFlags({ ...flags, method: 'dora', lr: '5e-3' }).lr).toBe(5e-3);
    expect(finetuneConfigFromFlags({ ...flags, method: 'svfit' }).lr).toBe(FINETUNE_DEFAULTS.lr);
  });
});
