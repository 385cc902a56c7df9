/**
 * A tiny Llama pre-trained here on the sample dataset's text (as test/finetune.test.ts does), so
 * the e2e tests have a base model with a real byte-level BPE tokenizer and ChatML tokens while
 * the bundled model is being re-trained. Cached in `dir` across runs of the same process tree.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { initBackend } from '../../core/backend/index.ts';
import { pretrain } from '../../core/train/pretrain.ts';
import { makeReviewRecords } from '../../scripts/make-demo-dataset.ts';

export async function buildTinyModel(dir: string): Promise<string> {
  if (fs.existsSync(path.join(dir, 'config.json'))) return dir;
  await initBackend();
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const corpus = path.join(path.dirname(dir), 'tiny-corpus.txt');
  const records = makeReviewRecords(200, 1);
  fs.writeFileSync(corpus, records.map((r) => r.messages.map((m) => m.content).join(' ')).join('\n\n'));
  await pretrain(
    {
      data: corpus, out: dir, vocabSize: 320, hiddenSize: 32, layers: 2, heads: 4, kvHeads: 2, intermediateSize: 64,
      seqLen: 32, batchSize: 4, steps: 4, lr: 1e-2, warmupSteps: 1, minLrRatio: 0.1, weightDecay: 0.1, seed: 1,
      evalEvery: 4, checkpointEvery: 4, dtype: 'float32', resume: false, samplePrompt: 'The',
    },
    { log: () => {}, step: () => {} },
  );
  return dir;
}

// `node --import tsx test/e2e/tiny-model.ts DIR`: build one by hand.
if (process.argv[1] === import.meta.filename) {
  console.log(await buildTinyModel(path.resolve(process.argv[2] ?? '.lowrank-tmp/tiny-model')));
}
