/**
 * `lowrank bench-train` (used by `lowrank bench --real`, one child process per configuration so
 * each peak RSS is its own): LoRA r 8 (α 16, no dropout) on q,k,v,o of a model folder, AdamW at
 * lr 1e-4 with gradient clipping at 1, through the project's trainer on given token batches (the
 * ones the PyTorch peer trains on), timing every step. Prints one JSON object: steady-state
 * tokens/s over the steps after the warm-up, each step's seconds and loss, the peak RSS (VmHWM),
 * the wasm heap's size, the native bytes of the frozen base, and the memory estimate for the run.
 */
import * as fs from 'node:fs';
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { initBackend } from '../backend/index.ts';
import { train, type Batch } from '../train/trainer.ts';
import { setUpTraining } from '../train/setup.ts';
import { optimizerFor } from '../optim/registry.ts';
import { peakRssBytes } from '../train/memory.ts';
import { BASE_DTYPES } from '../models/frozen-weight.ts';
import type { Flags } from '../cli.ts';
import { choiceFlag, numberFlag, printJson, requireString } from './flags.ts';

export interface BatchFile {
  batches: Array<{ ids: number[][]; labels: number[][] }>;
}

function readBatches(file: string): Batch[] {
  let parsed: BatchFile;
  try {
    parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as BatchFile;
  } catch (e) {
    throw new LowrankError('BAD_ARGUMENT', `--batches ${file}: not a readable JSON batch file (${(e as Error).message})`);
  }
  return parsed.batches.map((b, i) => {
    const rows = b.ids.length;
    const seqLen = b.ids[0]?.length ?? 0;
    if (rows === 0 || seqLen < 2 || b.ids.some((r) => r.length !== seqLen) || b.labels.length !== rows) {
      throw new LowrankError('BAD_ARGUMENT', `--batches ${file}: batch ${i} is not a rectangular ids/labels pair`);
    }
    return { ids: Int32Array.from(b.ids.flat()), labels: Int32Array.from(b.labels.flat()), batchSize: rows, seqLen };
  });
}

export async function benchTrainCommand(flags: Flags): Promise<void> {
  const modelDir = requireString(flags, 'model', 'a Hugging Face model folder');
  const batches = readBatches(requireString(flags, 'batches', 'a JSON file of token batches'));
  const steps = numberFlag(flags, 'steps', 5, { integer: true, min: 1 });
  const warmup = numberFlag(flags, 'warmup', 1, { integer: true, min: 0 });
  const backend = await initBackend();
  const { batchSize, seqLen } = batches[0];
  const setup = await setUpTraining({
    modelDir,
    methodId: 'lora',
    params: { rank: 8, alpha: 16, dropout: 0 },
    targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj'],
    batchSize,
    seqLen,
    seed: 0,
    baseDtype: choiceFlag(flags, 'base-dtype', BASE_DTYPES, 'auto'),
    gradientCheckpointing: choiceFlag(flags, 'gradient-checkpointing', ['auto', 'on', 'off'] as const, 'auto'),
  });
  const { model, attached, estimate } = setup;
  const optimizer = optimizerFor(attached, { weightDecay: 0 });
  const stepSeconds: number[] = [];
  const losses: number[] = [];
  let last = 0;
  model.training = true;
  await train(
    attached.trainable,
    optimizer,
    (step) => batches[step % batches.length],
    (batch) => {
      const ids = tf.tensor2d(batch.ids, [batch.batchSize, batch.seqLen], 'int32');
      const labels = tf.tensor2d(batch.labels, [batch.batchSize, batch.seqLen], 'int32');
      return model.loss(ids, labels);
    },
    { totalSteps: warmup + steps, clipNorm: 1, schedule: { kind: 'constant', lr: 1e-4, totalSteps: warmup + steps, warmupSteps: 0 } },
    {
      onStep: (r) => {
        stepSeconds.push(r.elapsedSeconds - last);
        last = r.elapsedSeconds;
        losses.push(r.loss);
        if (!flags.json) console.error(`step ${r.step}/${warmup + steps}: ${stepSeconds.at(-1)!.toFixed(2)} s, loss ${r.loss.toFixed(4)}`);
      },
    },
  );
  const measured = stepSeconds.slice(warmup);
  const seconds = measured.reduce((a, b) => a + b, 0);
  const heap = (tf.backend() as unknown as { wasm?: { HEAPU8: Uint8Array } }).wasm?.HEAPU8.buffer.byteLength ?? null;
  const result = {
    engine: 'lowrank',
    backend: backend.backend,
    model: modelDir,
    batch: batchSize,
    seq: seqLen,
    steps,
    warmup,
    tokensPerSecond: (steps * batchSize * seqLen) / seconds,
    stepSeconds,
    losses,
    firstLoss: losses[0],
    peakRssBytes: peakRssBytes(),
    wasmHeapBytes: heap,
    frozenBytes: model.frozenBytes(),
    baseDtype: setup.baseDtype,
    checkpointing: setup.checkpointing,
    checkpointedLayers: setup.checkpointedLayers,
    estimate,
    trainable: attached.trainableParameterCount(),
  };
  optimizer.dispose();
  attached.detach();
  model.dispose();
  printJson(result);
}
