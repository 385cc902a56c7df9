/** Sampling's top-k cut (Fan et al. 2018): only the k most likely tokens are ever drawn, in their renormalised proportions. */
import { describe, expect, it } from 'vitest';
import { Random } from '../random.ts';
import { sampleToken } from './generate.ts';

describe('sampleToken with top-k', () => {
  const logits = Float32Array.from([0.5, 2.0, -1.0, 1.5, 0.0]); // order by probability: 1, 3, 0, 4, 2

  it('top-k 1 is greedy at any temperature', () => {
    const rng = new Random(1);
    for (let i = 0; i < 200; i++) expect(sampleToken(logits, 3, 1, rng, 1)).toBe(1);
  });

  it('top-k 2 draws only the two most likely tokens, in proportion e^2 : e^1.5 at temperature 1', () => {
    const rng = new Random(2);
    const counts = new Map<number, number>();
    const draws = 20_000;
    for (let i = 0; i < draws; i++) {
      const t = sampleToken(logits, 1, 1, rng, 2);
      counts.set(t, (counts.get(t) ?? 0) + 1);
    }
    expect([...counts.keys()].sort()).toEqual([1, 3]);
    const expected = Math.exp(2) / (Math.exp(2) + Math.exp(1.5)); // 0.6225
    // Binomial standard error at 20,000 draws is 0.0034; 4 of them.
    expect(Math.abs(counts.get(1)! / draws - expected)).toBeLessThan(0.014);
  });

  it('top-k 0 leaves every token possible', () => {
    const rng = new Random(3);
    const seen = new Set<number>();
    for (let i = 0; i < 5000; i++) seen.add(sampleToken(logits, 2, 1, rng, 0));
    expect(seen.size).toBe(5);
  });
});
