/**
 * Shared by the core/methods tests: tiny models from test/fixtures, logits, a few training steps,
 * and an independent float64 implementation of peft's merge (W + s·B·A, DoRA's rule) written with
 * plain loops over the exported adapter, so the methods are never checked against themselves.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { optimizerFor } from '../optim/registry.ts';
import { causalLmLoss, type CausalLM } from '../models/causal-lm.ts';
import { buildModel, canonicalWeightName, loadModel } from '../models/load.ts';
import { writeTinyCheckpoint, type TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';
import type { AttachedMethod, MethodParams } from './method.ts';
import { expect } from 'vitest';
import { getMethod } from './registry.ts';
import { resolveTargets } from './targets.ts';

export interface TinyModel {
  model: CausalLM;
  /** The checkpoint's weights by the model's (canonical) names, straight from the fixture. */
  original: Map<string, { shape: number[]; data: Float32Array }>;
}

export function tinyModel(kind: TinyCheckpointKind, seed = 7): TinyModel {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `lowrank-methods-${kind}-`));
  try {
    const checkpoint = writeTinyCheckpoint(dir, kind, seed);
    const model = loadModel(dir);
    const original = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const t of checkpoint.tensors) original.set(canonicalWeightName(model.config, t.name), { shape: t.shape, data: t.data });
    return { model, original };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export function tokenIds(vocab: number, batch: number, length: number, seed: number): tf.Tensor2D {
  const ids = Array.from({ length: batch * length }, (_, i) => (seed * 31 + i * 17 + ((i * i) % 7)) % vocab);
  return tf.tensor2d(ids, [batch, length], 'int32');
}

export function logits(model: CausalLM, ids: tf.Tensor2D, training = false): Float32Array {
  const before = model.training;
  model.training = training;
  try {
    return tf.tidy(() => model.forward(ids).logits.dataSync() as Float32Array);
  } finally {
    model.training = before;
  }
}

/** max |got − want| / max |want|. */
export function relativeError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} != ${want.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    diff = Math.max(diff, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  return diff / scale;
}

/**
 * The method's optimizer (AdamW unless it brings its own) on the causal-LM loss in training mode
 * (dropout on), with its lrScale and its training hooks (beforeStep, trainingPenalty, afterOptimizerStep).
 */
export function trainer(model: CausalLM, attached: AttachedMethod, ids: tf.Tensor2D, lr = 0.05, totalSteps = 100): { step(): void; dispose(): void } {
  const optimizer = optimizerFor(attached, { weightDecay: 0, lrScale: (n) => attached.lrScale(n) });
  const names = [...attached.trainable.keys()];
  const vars = names.map((n) => attached.trainable.get(n)!);
  let count = 0;
  return {
    step() {
      model.training = true;
      const at = { step: count++, totalSteps, lr };
      try {
        attached.beforeStep?.(at);
        const loss = () => {
          const value = causalLmLoss(model.forward(ids).logits, ids).loss;
          const batch = { ids: ids.dataSync() as Int32Array, batchSize: ids.shape[0], seqLen: ids.shape[1] };
          return attached.trainingPenalty ? tf.add(value, attached.trainingPenalty(batch)) : value;
        };
        const { value, grads } = tf.variableGrads(() => tf.tidy(loss) as tf.Scalar, vars);
        optimizer.step(new Map(names.map((n, i) => [n, grads[vars[i].name]])), lr);
        attached.afterOptimizerStep?.(at);
        value.dispose();
        for (const g of Object.values(grads)) g.dispose();
      } finally {
        model.training = false;
      }
    },
    dispose: () => optimizer.dispose(),
  };
}

/** `steps` optimizer steps (see trainer). */
export function train(model: CausalLM, attached: AttachedMethod, ids: tf.Tensor2D, steps: number, lr = 0.05): void {
  const loop = trainer(model, attached, ids, lr);
  for (let step = 0; step < steps; step++) loop.step();
  loop.dispose();
}

/** A model built from the base weights with `merged` in place of the weights it names; no adapters. */
export function modelWithWeights(model: CausalLM, merged: Map<string, tf.Tensor>, base: Map<string, tf.Tensor> = model.weights): CausalLM {
  const weights = new Map(base);
  for (const [name, t] of merged) weights.set(name, t);
  return buildModel(model.config, weights);
}

/**
 * peft's merge, float64, from adapter_config fields and exported tensors applied to the ORIGINAL
 * base weights: for each wrapped module, W' = W + s·B·A with s = α/r (α/√r under use_rslora), W in
 * [out, in] (transposed when fan_in_fan_out), then under use_dora W' ← m ⊙ W' / ‖W'‖ per output row.
 * Returns the merged weights in the stored layout.
 */
export function referenceMerge(
  config: Record<string, unknown>,
  tensors: Map<string, tf.Tensor>,
  original: TinyModel['original'],
): Map<string, Float64Array> {
  const r = config.r as number;
  const alpha = config.lora_alpha as number;
  const s = config.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
  const merged = new Map<string, Float64Array>();
  for (const [key, aTensor] of tensors) {
    if (!key.endsWith('.lora_A.weight')) continue;
    const modulePath = key.slice('base_model.model.'.length, -'.lora_A.weight'.length);
    const a = aTensor.dataSync();
    const b = tensors.get(`base_model.model.${modulePath}.lora_B.weight`)!.dataSync();
    const w = original.get(`${modulePath}.weight`)!;
    const transposed = config.fan_in_fan_out === true && modulePath !== 'lm_head';
    const [out, inn] = transposed ? [w.shape[1], w.shape[0]] : [w.shape[0], w.shape[1]];
    if (aTensor.shape[0] !== r || aTensor.shape[1] !== inn) throw new Error(`${key}: shape [${aTensor.shape}] is not [${r}, ${inn}]`);
    const at = (o: number, i: number) => (transposed ? i * out + o : o * inn + i);
    const result = new Float64Array(out * inn);
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inn; i++) {
        let delta = 0;
        for (let t = 0; t < r; t++) delta += b[o * r + t] * a[t * inn + i];
        result[at(o, i)] = w.data[at(o, i)] + s * delta;
      }
    }
    if (config.use_dora) {
      const m = tensors.get(`base_model.model.${modulePath}.lora_magnitude_vector`)!.dataSync();
      for (let o = 0; o < out; o++) {
        let norm = 0;
        for (let i = 0; i < inn; i++) norm += result[at(o, i)] ** 2;
        norm = Math.sqrt(norm);
        for (let i = 0; i < inn; i++) result[at(o, i)] *= m[o] / norm;
      }
    }
    merged.set(`${modulePath}.weight`, result);
  }
  return merged;
}

/** Sets every trainable tensor to small random values (so B ≠ 0 and the adapter does something). */
export function randomize(attached: AttachedMethod, seed: number, std = 0.1): void {
  let k = 0;
  for (const v of attached.trainable.values()) {
    tf.tidy(() => v.assign(tf.add(v, tf.randomNormal(v.shape, 0, std, 'float32', seed + k++))));
  }
}

export function disposeAll(tensors: Iterable<tf.Tensor>): void {
  for (const t of tensors) t.dispose();
}

/**
 * Attaches `id` to a fresh tiny model on every linear layer: the output at step 0 is within
 * `tolerance` (relative) of the base's, exactly equal when 0; detach then restores the model with no
 * adapter and no tensor left behind.
 */
export function expectNeutralAttachAndCleanDetach(kind: TinyCheckpointKind, id: string, params: MethodParams, tolerance = 0): void {
  const { model } = tinyModel(kind);
  const ids = tokenIds(model.config.vocabSize, 2, 7, 1);
  const before = logits(model, ids);
  const tensorsBefore = tf.memory().numTensors;
  const attached = getMethod(id).attach(model, params, { targets: resolveTargets(model, 'all-linear'), seed: 3 });
  if (tolerance === 0) expect(logits(model, ids)).toEqual(before);
  else expect(relativeError(logits(model, ids), before)).toBeLessThanOrEqual(tolerance);
  attached.detach();
  expect(model.adapters.size).toBe(0);
  expect(tf.memory().numTensors).toBe(tensorsBefore);
  expect(logits(model, ids)).toEqual(before);
  ids.dispose();
  model.dispose();
}
