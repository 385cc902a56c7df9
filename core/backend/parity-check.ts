/**
 * Checks a backend against the cpu backend in a process of its own, for backends that must be
 * chosen before anything else runs (the threaded wasm build: LOWRANK_THREADS; webgpu):
 *
 *   LOWRANK_BACKEND=wasm LOWRANK_THREADS=2 node --import tsx core/backend/parity-check.ts <model dir>...
 *
 * starts the backend the environment asks for, computes the logits and every weight gradient of
 * the loss for a fixed batch on it and on cpu, and prints one JSON line: the backend info and, per
 * model, the worst relative error (cpu-parity.ts) of the logits and of the gradients, and of a few
 * larger matmuls (matmulVsCpu). The process
 * must then exit by itself, which is part of the check (threads must not keep it alive).
 */
import { pathToFileURL } from 'node:url';
import * as tf from '../tf.ts';
import { initBackend } from './index.ts';
import { errorVsCpu, relativeError, seededTensor } from './cpu-parity.ts';
import { loadModel } from '../models/load.ts';
import { causalLmLoss, type CausalLM } from '../models/causal-lm.ts';

export interface ParityResult {
  dir: string;
  logits: number;
  grads: number;
  /** The gradient with the worst error. */
  worstGrad: string;
}

/** Logits and every weight gradient of the causal-LM loss for a fixed batch, on the active backend. */
export function forwardBackward(dir: string): { logits: Float32Array; grads: Map<string, Float32Array> } {
  return forwardBackwardOf(loadModel(dir));
}

/** forwardBackward of a model already built (a page without files: the engine-window test); disposes it. */
export function forwardBackwardOf(model: CausalLM): { logits: Float32Array; grads: Map<string, Float32Array> } {
  const V = model.config.vocabSize;
  const ids = Array.from({ length: 2 * 9 }, (_, i) => (i * 13 + 5) % V);
  let result: { logits: Float32Array; grads: Map<string, Float32Array> } | undefined;
  tf.tidy(() => {
    const x = tf.tensor2d(ids, [2, 9], 'int32');
    const logits = Float32Array.from(model.forward(x).logits.dataSync());
    const names = [...model.weights.keys()];
    const grads = tf.grads((...ws: tf.Tensor[]) => {
      names.forEach((n, i) => model.weights.set(n, ws[i]));
      return causalLmLoss(model.forward(x).logits, x).loss;
    })(names.map((n) => model.weights.get(n)!));
    result = { logits, grads: new Map(names.map((n, i) => [n, Float32Array.from(grads[i].dataSync())])) };
  });
  model.dispose();
  return result!;
}

export async function parityVsCpu(dirs: string[]): Promise<ParityResult[]> {
  const backend = tf.getBackend();
  const results: ParityResult[] = [];
  for (const dir of dirs) {
    await tf.setBackend(backend);
    const got = forwardBackward(dir);
    await tf.setBackend('cpu');
    const want = forwardBackward(dir);
    await tf.setBackend(backend);
    let grads = 0;
    let worstGrad = '';
    for (const [name, g] of want.grads) {
      const e = relativeError(got.grads.get(name)!, g);
      if (e >= grads) [grads, worstGrad] = [e, name];
    }
    results.push({ dir, logits: relativeError(got.logits, want.logits), grads, worstGrad });
  }
  return results;
}

/**
 * Products big enough for XNNPACK to split across its threadpool (the tiny models' are not), in
 * the four forms of a training step, through whatever BatchMatMul kernel is registered.
 */
export async function matmulVsCpu(): Promise<Record<string, number>> {
  const backend = tf.getBackend();
  const cases: Record<string, () => tf.Tensor> = {
    'A·B 192x160x224': () => tf.matMul(seededTensor([192, 160], 1), seededTensor([160, 224], 2)),
    'Aᵀ·B 192x160x224': () => tf.matMul(seededTensor([160, 192], 3), seededTensor([160, 224], 4), true, false),
    'A·Bᵀ 192x160x224': () => tf.matMul(seededTensor([192, 160], 5), seededTensor([224, 160], 6), false, true),
    'batched 3x 96x64x80': () => tf.matMul(seededTensor([3, 96, 64], 7), seededTensor([3, 64, 80], 8)),
  };
  const out: Record<string, number> = {};
  for (const [name, fn] of Object.entries(cases)) out[name] = await errorVsCpu(backend, fn);
  return out;
}

async function main(dirs: string[]): Promise<void> {
  const info = await initBackend();
  const results = await parityVsCpu(dirs);
  const matmul = await matmulVsCpu();
  console.log(JSON.stringify({ info, results, matmul }));
}

// No top-level await: this module is also bundled into a classic script (the engine-window test page).
if (process.argv[1] != null && import.meta.url === pathToFileURL(process.argv[1]).href) void main(process.argv.slice(2));
