/**
 * Seeded train/validation splits and padded batches. Both are pure functions of their seed (and
 * epoch), so a resumed run sees exactly the data order the uninterrupted run saw.
 */
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import type { Tokenizer } from '../tokenize/tokenizer.ts';
import type { Batch } from '../train/trainer.ts';
import { IGNORE_INDEX, type Example } from './tokenize-dataset.ts';

/**
 * How many of `n` items go to validation: a fraction in (0, 1) (rounded, at least 1), or a whole
 * count >= 1. Zero means no validation set. At least one item always stays for training.
 */
export function validationCount(n: number, validation: number): number {
  if (!Number.isFinite(validation) || validation < 0 || (validation >= 1 && !Number.isInteger(validation))) {
    throw new LowrankError('BAD_ARGUMENT', `validation must be a fraction in [0, 1) or a whole number of records, got ${validation}`);
  }
  if (validation === 0) return 0;
  const count = validation < 1 ? Math.max(1, Math.round(n * validation)) : validation;
  if (count >= n) {
    throw new LowrankError(
      'BAD_ARGUMENT',
      `a validation split of ${validation} takes ${count} of ${n} records and leaves none to train on; use a smaller --validation`,
    );
  }
  return count;
}

/**
 * A seeded split: a Fisher–Yates shuffle of the indices (core/random.ts, mulberry32) picks the
 * validation items; both parts keep the file order. The same (n, validation, seed) always gives
 * the same split.
 */
export function splitTrainValidation<T>(items: T[], validation: number, seed: number): { train: T[]; validation: T[] } {
  const count = validationCount(items.length, validation);
  if (count === 0) return { train: items.slice(), validation: [] };
  const order = new Random(seed).shuffle(items.map((_, i) => i));
  const isValidation = new Uint8Array(items.length);
  for (const i of order.slice(0, count)) isValidation[i] = 1;
  return {
    train: items.filter((_, i) => !isValidation[i]),
    validation: items.filter((_, i) => isValidation[i]),
  };
}

/** The pad id of a batch: the tokenizer's pad token, else EOS (padding is masked out anyway), else 0. */
export function padTokenIdOf(tokenizer: Tokenizer): number {
  return tokenizer.padTokenId ?? tokenizer.eosTokenId ?? 0;
}

export interface BatchOptions {
  padTokenId: number;
  /** Shuffle the examples with this seed (omit to keep their order). */
  seed?: number;
  /** Mixed into the seed so each epoch has its own order (default 0). */
  epoch?: number;
  /** Drop a last batch with fewer than batchSize rows (default false). */
  dropLast?: boolean;
  /**
   * Pad each batch only to its longest row instead of seqLen (default false: every batch is
   * [batchSize, seqLen], one shape for the backend to compile, as pre-training uses).
   */
  padToLongest?: boolean;
}

/** A 32-bit mix of (seed, epoch), so epochs' orders are unrelated rather than shifted copies. */
function epochSeed(seed: number, epoch: number): number {
  let h = Math.imul((seed >>> 0) ^ 0x9e3779b9, 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13) ^ (epoch >>> 0), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The order in which makeBatches(…, { seed, epoch }) visits `count` examples. */
export function epochOrder(count: number, seed: number, epoch: number): number[] {
  return new Random(epochSeed(seed, epoch)).shuffle(Array.from({ length: count }, (_, i) => i));
}

/**
 * Examples -> right-padded batches in the shape of core/train/trainer.ts's Batch: padding has
 * the pad id, label -100 and attention mask 0 (the mask is omitted when a batch has no padding).
 */
export function makeBatches(examples: Example[], batchSize: number, seqLen: number, opts: BatchOptions): Batch[] {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new LowrankError('BAD_ARGUMENT', `batch size must be a positive integer, got ${batchSize}`);
  if (!Number.isInteger(seqLen) || seqLen < 1) throw new LowrankError('BAD_ARGUMENT', `seqLen must be a positive integer, got ${seqLen}`);
  const order = opts.seed !== undefined ? epochOrder(examples.length, opts.seed, opts.epoch ?? 0) : examples.map((_, i) => i);
  const batches: Batch[] = [];
  for (let from = 0; from < order.length; from += batchSize) {
    const rows = order.slice(from, from + batchSize).map((i) => examples[i]!);
    if (rows.length < batchSize && opts.dropLast) break;
    const longest = Math.max(...rows.map((r) => r.ids.length));
    const bad = rows.find((r) => r.ids.length > seqLen);
    if (bad) throw new LowrankError('BAD_ARGUMENT', `${bad.source}: example of ${bad.ids.length} tokens does not fit seqLen ${seqLen}`);
    const T = opts.padToLongest ? longest : seqLen;
    const ids = new Int32Array(rows.length * T).fill(opts.padTokenId); // [B, T]
    const labels = new Int32Array(rows.length * T).fill(IGNORE_INDEX); // [B, T]
    const attentionMask = new Int32Array(rows.length * T); // [B, T]
    rows.forEach((row, b) => {
      ids.set(row.ids, b * T);
      labels.set(row.labels, b * T);
      attentionMask.fill(1, b * T, b * T + row.ids.length);
    });
    const padded = rows.some((r) => r.ids.length < T);
    batches.push({ ids, labels, ...(padded ? { attentionMask } : {}), batchSize: rows.length, seqLen: T });
  }
  return batches;
}
