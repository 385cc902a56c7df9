/**
 * The bake-off's recommendation on hand-made figures: the winners per parameter, per MB and per
 * minute computed here by hand, a tiny-parameter method that learned little kept out by the
 * tolerance, the validation-loss fallback for data without answers, and no pick when nothing learned.
 */
import { describe, expect, it } from 'vitest';
import { recommend, type BakeoffEntry } from './recommend.ts';

const MB = 1024 * 1024;
const entries: BakeoffEntry[] = [
  { method: 'lora', accuracy: 0.86, valLoss: 0.42, trainableParams: 57_344, memoryBytes: 200 * MB, wallSeconds: 60 },
  { method: 'dora', accuracy: 0.88, valLoss: 0.41, trainableParams: 60_416, memoryBytes: 215 * MB, wallSeconds: 70 },
  { method: 'vera', accuracy: 0.84, valLoss: 0.5, trainableParams: 7_168, memoryBytes: 220 * MB, wallSeconds: 65 },
  // 0.05 / 128 would beat every ratio above: it is 83 points behind the best, so it does not compete.
  { method: 'svfit', accuracy: 0.05, valLoss: 3.1, trainableParams: 128, memoryBytes: 180 * MB, wallSeconds: 40 },
];

describe('recommend', () => {
  it('picks the best accuracy per parameter, per MB and per minute among methods within 5 points of the best', () => {
    const r = recommend(entries)!;
    expect(r.quality).toBe('accuracy');
    expect(r.best).toEqual({ method: 'dora', value: 0.88 });
    expect(r.candidates).toEqual(['lora', 'dora', 'vera']);
    // Per 1k parameters: lora 0.86/57.344 = 0.0150, dora 0.88/60.416 = 0.0146, vera 0.84/7.168 = 0.117.
    expect(r.perParameter.method).toBe('vera');
    expect(r.perParameter.value).toBeCloseTo(0.84 / 7168, 12);
    // Per MB: lora 0.86/200 = 0.00430, dora 0.88/215 = 0.00409, vera 0.84/220 = 0.00382.
    expect(r.perMegabyte.method).toBe('lora');
    expect(r.perMegabyte.value).toBeCloseTo(0.86 / 200, 12);
    // Per minute: lora 0.86/1 = 0.86, dora 0.88/(70/60) = 0.754, vera 0.84/(65/60) = 0.775.
    expect(r.perMinute.method).toBe('lora');
    expect(r.explanation).toMatch(/within 5 points/);
    expect(r.explanation).toContain('dora at 88.0 %');
    expect(r.explanation).not.toContain('svfit');
  });

  it('ranks by validation loss when the data has no answers: the cheapest run within 5 % of the best loss', () => {
    const r = recommend(entries.map((e) => ({ ...e, accuracy: null })))!;
    expect(r.quality).toBe('validation loss');
    expect(r.best).toEqual({ method: 'dora', value: 0.41 });
    // 0.41 · 1.05 = 0.4305: lora (0.42) and dora compete; vera (0.5) and svfit do not.
    expect(r.candidates).toEqual(['lora', 'dora']);
    expect(r.perParameter.method).toBe('lora');
    expect(r.perMegabyte.method).toBe('lora');
    expect(r.perMinute.method).toBe('lora');
    expect(r.explanation).toMatch(/no answers to score/);
  });

  it('recommends nothing when no method got an answer right or no run finished', () => {
    expect(recommend(entries.map((e) => ({ ...e, accuracy: 0 })))).toBeNull();
    expect(recommend([])).toBeNull();
  });
});
