/**
 * The compute half of the engine window, bundled for a plain Chromium page (no Node): it starts
 * the webgpu backend the way core/service/engine-window/renderer.ts does (startWindowBackend, on
 * the page's own navigator.gpu), then checks it against the cpu backend in the same page:
 * forward/backward parity of tiny checkpoints and a few LoRA training steps. The models are
 * built from in-memory tensors (the page has no files). Driven by test/engine-window-chromium.test.ts.
 */
import * as tf from '../../core/tf.ts';
import { webgpuErrors } from '../../core/backend/webgpu.ts';
import { relativeError } from '../../core/backend/cpu-parity.ts';
import { forwardBackwardOf } from '../../core/backend/parity-check.ts';
import { buildModel, canonicalWeightName } from '../../core/models/load.ts';
import { expectedWeights, parseModelConfig } from '../../core/models/config.ts';
import type { CausalLM } from '../../core/models/causal-lm.ts';
import { getMethod } from '../../core/methods/index.ts';
import { resolveTargets } from '../../core/methods/targets.ts';
import { AdamW } from '../../core/optim/adamw.ts';
import { train, type Batch } from '../../core/train/trainer.ts';
import { lmLoss } from '../../core/train/pretrain.ts';
import { startWindowBackend } from '../../core/service/engine-window/window-backend.ts';
import { makeTinyCheckpoint, type TinyCheckpointKind } from '../fixtures/tiny-checkpoints.ts';

function tinyModel(kind: TinyCheckpointKind, seed: number): CausalLM {
  const checkpoint = makeTinyCheckpoint(kind, seed);
  const config = parseModelConfig(checkpoint.config as Record<string, unknown>);
  const stored = new Map(checkpoint.tensors.map((t) => [canonicalWeightName(config, t.name), t]));
  const weights = new Map<string, tf.Tensor>();
  for (const [name, shape] of expectedWeights(config)) weights.set(name, tf.tensor(stored.get(name)!.data, shape, 'float32'));
  return buildModel(config, weights);
}

async function parity(kind: TinyCheckpointKind): Promise<{ logits: number; grads: number; worstGrad: string }> {
  await tf.setBackend('webgpu');
  const got = forwardBackwardOf(tinyModel(kind, 2));
  await tf.setBackend('cpu');
  const want = forwardBackwardOf(tinyModel(kind, 2));
  await tf.setBackend('webgpu');
  let grads = 0;
  let worstGrad = '';
  for (const [name, g] of want.grads) {
    const e = relativeError(got.grads.get(name)!, g);
    if (e >= grads) [grads, worstGrad] = [e, name];
  }
  return { logits: relativeError(got.logits, want.logits), grads, worstGrad };
}

/** A fixed batch per step: token ids from a formula, next-token labels. */
function batchAt(vocab: number, step: number): Batch {
  const B = 2;
  const T = 12;
  const ids = new Int32Array(B * T);
  for (let i = 0; i < ids.length; i++) ids[i] = (step * 7 + i * 5 + ((i * i) % 11)) % vocab;
  return { ids, labels: ids, batchSize: B, seqLen: T };
}

async function loraLosses(backend: 'webgpu' | 'cpu', steps: number): Promise<{ losses: number[]; tensorsBefore: number; tensorsAfter: number }> {
  await tf.setBackend(backend);
  const model = tinyModel('llama-gqa-tied', 3);
  const attached = getMethod('lora').attach(model, { rank: 4, alpha: 8, dropout: 0 }, { targets: resolveTargets(model, ['q_proj', 'v_proj']), seed: 5 });
  const optimizer = new AdamW(attached.trainable, { weightDecay: 0 });
  const losses: number[] = [];
  let tensorsBefore = 0;
  model.training = true;
  await train(attached.trainable, optimizer, (step) => batchAt(model.config.vocabSize, step), (batch) => lmLoss(model, batch), {
    totalSteps: steps,
    clipNorm: 1,
    schedule: { kind: 'constant', lr: 2e-2, totalSteps: steps, warmupSteps: 0 },
  }, {
    onStep: (r) => {
      if (r.step === 1) tensorsBefore = tf.memory().numTensors;
      losses.push(r.loss);
    },
  });
  const tensorsAfter = tf.memory().numTensors;
  attached.detach();
  optimizer.dispose();
  model.dispose();
  await tf.setBackend('webgpu');
  return { losses, tensorsBefore, tensorsAfter };
}

async function check(kinds: TinyCheckpointKind[], steps: number) {
  const info = await startWindowBackend();
  const x = tf.tensor1d([1.5, -2, 3.25, 1e-7]);
  const y = tf.mul(x, 2);
  const reads = { sync: Array.from(y.dataSync()), async: Array.from(await tf.sub(y, x).data()) };
  tf.dispose([x, y]);
  // Larger than one 256×256 canvas page of tfjs' readSync, not a multiple of a row.
  const n = 70_003;
  const big = tf.tidy(() => tf.range(0, n).mul(1.5));
  const bigValues = big.dataSync();
  let bigWrong = 0;
  for (let i = 0; i < n; i++) if (bigValues[i] !== i * 1.5) bigWrong++;
  big.dispose();
  const parities: Record<string, Awaited<ReturnType<typeof parity>>> = {};
  for (const kind of kinds) parities[kind] = await parity(kind);
  const webgpu = await loraLosses('webgpu', steps);
  const cpu = await loraLosses('cpu', steps);
  return { info, reads, bigWrong, parities, webgpu, cpu, gpuErrors: [...webgpuErrors()] };
}

(globalThis as { runEngineWindowCheck?: typeof check }).runEngineWindowCheck = check;
