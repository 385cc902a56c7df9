/**
 * `pretrain` on a tiny corpus: the loss falls, no tensors leak across steps, and a run stopped
 * at a checkpoint and resumed ends with exactly the loss and weights of an uninterrupted run.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '../core/tf.ts';
import { initBackend } from '../core/backend/index.ts';
import { pretrain, type PretrainOptions } from '../core/train/pretrain.ts';
import { CheckpointReader } from '../core/io/safetensors.ts';
import { loadModel } from '../core/models/load.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-pretrain-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
beforeAll(async () => {
  await initBackend();
});

const corpus = path.join(root, 'corpus.txt');
const sentences = [
  'The cat sat on the mat and looked at the dog.',
  'A dog ran in the park while the children played.',
  'The children laughed when the cat jumped over the fence.',
  'In the morning the sun rose over the quiet town.',
  'She wrote a letter to her brother who lived in the city.',
];
fs.writeFileSync(corpus, Array.from({ length: 60 }, (_, i) => sentences[i % 5] + ' ' + sentences[(i * 3) % 5]).join('\n\n'));

function options(out: string, overrides: Partial<PretrainOptions> = {}): PretrainOptions {
  return {
    data: corpus, out, vocabSize: 300, hiddenSize: 32, layers: 2, heads: 4, kvHeads: 2, intermediateSize: 64,
    seqLen: 32, batchSize: 4, steps: 12, lr: 1e-2, warmupSteps: 2, minLrRatio: 0.1, weightDecay: 0.1, seed: 3,
    evalEvery: 6, checkpointEvery: 6, dtype: 'float32', resume: false, samplePrompt: 'The', ...overrides,
  };
}

const quiet = { log: () => {}, step: () => {} };

describe('pretrain', () => {
  it('lowers the loss, does not leak tensors, and resumes to the same result', async () => {
    const losses: number[] = [];
    const tensorCounts: number[] = [];
    const full = await pretrain(options(path.join(root, 'full')), {
      log: () => {},
      step: (r) => {
        losses.push(r.loss);
        tensorCounts.push(tf.memory().numTensors);
      },
    });
    expect(losses[losses.length - 1]).toBeLessThan(losses[0] - 0.5);
    // tf.memory().numTensors is flat across steps: nothing a step makes outlives it.
    expect(tensorCounts.slice(1), JSON.stringify(tensorCounts)).toEqual(tensorCounts.slice(1).map(() => tensorCounts[1]));
    expect(loadModel(path.join(root, 'full')).config.numLayers).toBe(2);

    const out = path.join(root, 'resumed');
    let steps = 0;
    const first = await pretrain(options(out), { log: () => {}, step: () => steps++ }, () => steps >= 6);
    expect(steps).toBe(6);
    expect(fs.existsSync(path.join(out, 'model.safetensors'))).toBe(false);
    const resumed = await pretrain(options(out, { resume: true }), quiet);
    expect(first.finalTrainLoss).toBe(losses[5]);
    expect(resumed.finalTrainLoss).toBe(full.finalTrainLoss);
    const a = CheckpointReader.open(path.join(root, 'full'));
    const b = CheckpointReader.open(out);
    for (const name of a.names()) expect(Array.from(b.readFloat32(name))).toEqual(Array.from(a.readFloat32(name)));
    a.close();
    b.close();
  });
});
