/** Seeded splits and padded batches. */
import { describe, expect, it } from 'vitest';
import { makeBatches, splitTrainValidation, validationCount } from './batches.ts';
import { IGNORE_INDEX, type Example } from './tokenize-dataset.ts';

const items = Array.from({ length: 50 }, (_, i) => i);

describe('splitTrainValidation', () => {
  it('is the same for the same seed, disjoint, complete, and in file order', () => {
    const a = splitTrainValidation(items, 0.2, 7);
    const b = splitTrainValidation(items, 0.2, 7);
    expect(a).toEqual(b);
    expect(a.validation).toHaveLength(10);
    expect(a.train).toHaveLength(40);
    expect([...a.train, ...a.validation].sort((x, y) => x - y)).toEqual(items);
    expect(a.train.filter((i) => a.validation.includes(i))).toEqual([]);
    expect(a.validation).toEqual([...a.validation].sort((x, y) => x - y));
  });

  it('differs between seeds and is not just the head or tail', () => {
    const a = splitTrainValidation(items, 10, 1).validation;
    const b = splitTrainValidation(items, 10, 2).validation;
    expect(a).not.toEqual(b);
    expect(a).not.toEqual(items.slice(0, 10));
    expect(a).not.toEqual(items.slice(40));
  });

  it('takes a count or a fraction, and refuses splits that leave nothing to train', () => {
    expect(validationCount(50, 0)).toBe(0);
    expect(validationCount(50, 0.05)).toBe(3); // 2.5 rounds to 3
    expect(validationCount(50, 0.001)).toBe(1);
    expect(validationCount(50, 12)).toBe(12);
    expect(() => validationCount(3, 3)).toThrow('a validation split of 3 takes 3 of 3 records and leaves none to train on; use a smaller --validation');
    expect(() => validationCount(50, 1.5)).toThrow(/a fraction in \[0, 1\) or a whole number/);
    expect(splitTrainValidation(items, 0, 3)).toEqual({ train: items, validation: [] });
  });
});

const example = (ids: number[], trainedFrom: number, source: string): Example => ({
  ids: Int32Array.from(ids),
  labels: Int32Array.from(ids.map((id, t) => (t >= trainedFrom ? id : IGNORE_INDEX))),
  source,
});

describe('makeBatches', () => {
  const examples = [example([5, 6, 7], 1, 'a'), example([8, 9], 0, 'b'), example([10, 11, 12, 13], 2, 'c')];

  it('right-pads to seqLen with the pad id, label -100 and mask 0', () => {
    const [batch, last] = makeBatches(examples, 2, 4, { padTokenId: 99 });
    expect(batch!.batchSize).toBe(2);
    expect(batch!.seqLen).toBe(4);
    expect([...batch!.ids]).toEqual([5, 6, 7, 99, 8, 9, 99, 99]);
    expect([...batch!.labels]).toEqual([-100, 6, 7, -100, 8, 9, -100, -100]);
    expect([...batch!.attentionMask!]).toEqual([1, 1, 1, 0, 1, 1, 0, 0]);
    // The last, smaller batch holds one full row: no padding, no mask.
    expect(last!.batchSize).toBe(1);
    expect([...last!.ids]).toEqual([10, 11, 12, 13]);
    expect(last!.attentionMask).toBeUndefined();
    expect(makeBatches(examples, 2, 4, { padTokenId: 0, dropLast: true })).toHaveLength(1);
  });

  it('pads to the longest row on request', () => {
    const [batch] = makeBatches(examples.slice(0, 2), 2, 16, { padTokenId: 0, padToLongest: true });
    expect(batch!.seqLen).toBe(3);
    expect([...batch!.ids]).toEqual([5, 6, 7, 8, 9, 0]);
  });

  it('shuffles deterministically per (seed, epoch)', () => {
    const many = Array.from({ length: 20 }, (_, i) => example([i + 1], 0, `s${i}`));
    const order = (seed: number, epoch: number) => makeBatches(many, 4, 1, { padTokenId: 0, seed, epoch }).flatMap((b) => [...b.ids]);
    expect(order(3, 0)).toEqual(order(3, 0));
    expect(order(3, 1)).toEqual(order(3, 1));
    expect(order(3, 0)).not.toEqual(order(3, 1));
    expect(order(3, 0)).not.toEqual(order(4, 0));
    expect([...order(3, 1)].sort((a, b) => a - b)).toEqual(many.map((_, i) => i + 1));
  });

  it('refuses an example longer than seqLen', () => {
    expect(() => makeBatches(examples, 2, 3, { padTokenId: 0 })).toThrow('c: example of 4 tokens does not fit seqLen 3');
  });
});
