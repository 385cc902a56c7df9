/**
 * Logits parity: the tfjs models loaded from tiny random checkpoints (written in the key names and
 * shapes transformers saves) against the independent float64 reference in test/reference/.
 * Also: KV-cache generation == no-cache generation, and the loss against the reference loss.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '../core/tf.ts';
import { initBackend } from '../core/backend/index.ts';
import { loadModel } from '../core/models/load.ts';
import { causalLmLoss } from '../core/models/causal-lm.ts';
import { generate } from '../core/models/generate.ts';
import { TINY_CHECKPOINT_KINDS, writeTinyCheckpoint } from './fixtures/tiny-checkpoints.ts';
import { referenceLogits, referenceLoss, weightsFromTensors } from './reference/reference-lm.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-parity-'));
/**
 * float32 against the float64 reference: measured at most ~1e-6 relative on every kind here. 1e-5
 * leaves 10× for summation order while a dropped norm epsilon or a wrong RoPE base still fails.
 */
const PARITY_TOLERANCE = 1e-5;

function relativeError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < want.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(got[i] - want[i]));
    maxRef = Math.max(maxRef, Math.abs(want[i]));
  }
  return maxDiff / maxRef;
}

function idsFor(vocab: number, n: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (seed * 31 + i * 17 + ((i * i) % 7)) % vocab);
}

beforeAll(async () => {
  await initBackend();
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

describe.each(TINY_CHECKPOINT_KINDS)('%s', (kind) => {
  const dir = path.join(root, kind);
  const checkpoint = writeTinyCheckpoint(dir, kind, 7);
  const { weights, shapes } = weightsFromTensors(checkpoint.tensors);
  const vocab = checkpoint.config.vocab_size as number;

  it('logits match the float64 reference (relative error <= 1e-5)', () => {
    const model = loadModel(dir);
    const ids = idsFor(vocab, 12, 3);
    const want = referenceLogits(checkpoint.config, weights, shapes, ids).flat();
    const got = tf.tidy(() => model.forward(tf.tensor2d(ids, [1, ids.length], 'int32')).logits.dataSync());
    expect(got.length).toBe(want.length);
    expect(relativeError(got, want)).toBeLessThanOrEqual(PARITY_TOLERANCE);
    model.dispose();
  });

  it('batched, right-padded inputs give each row its own logits, and the loss matches the reference', () => {
    const model = loadModel(dir);
    const a = idsFor(vocab, 10, 5);
    const b = idsFor(vocab, 6, 9);
    const padded = [...b, 0, 0, 0, 0];
    const mask = [...a.map(() => 1), ...b.map(() => 1), 0, 0, 0, 0];
    const labelsB = [...b, -100, -100, -100, -100];
    const { logits, loss } = tf.tidy(() => {
      const out = model.forward(tf.tensor2d([...a, ...padded], [2, 10], 'int32'), {
        attentionMask: tf.tensor2d(mask, [2, 10], 'int32'),
      });
      const l = causalLmLoss(out.logits, tf.tensor2d([...a, ...labelsB], [2, 10], 'int32'));
      return { logits: out.logits.arraySync() as number[][][], loss: l.loss.dataSync()[0] };
    });
    expect(relativeError(logits[0].flat(), referenceLogits(checkpoint.config, weights, shapes, a).flat())).toBeLessThanOrEqual(PARITY_TOLERANCE);
    expect(relativeError(logits[1].slice(0, b.length).flat(), referenceLogits(checkpoint.config, weights, shapes, b).flat())).toBeLessThanOrEqual(PARITY_TOLERANCE);
    // Mean over all 9 + 5 predicted tokens, as transformers averages over the batch's valid labels.
    const la = referenceLoss(checkpoint.config, weights, shapes, a, a);
    const lb = referenceLoss(checkpoint.config, weights, shapes, b, b);
    const want = (la * 9 + lb * 5) / 14;
    expect(Math.abs(loss - want) / want).toBeLessThanOrEqual(PARITY_TOLERANCE);
    model.dispose();
  });

  it('KV-cache generation equals no-cache generation token for token', () => {
    const model = loadModel(dir);
    const prompt = idsFor(vocab, 5, 11);
    const before = tf.memory().numTensors;
    const cached = generate(model, prompt, { maxNewTokens: 12, temperature: 0.9, topP: 0.9, seed: 4, useCache: true });
    const uncached = generate(model, prompt, { maxNewTokens: 12, temperature: 0.9, topP: 0.9, seed: 4, useCache: false });
    expect(cached).toEqual(uncached);
    expect(cached.length).toBe(12);
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
  });
});
