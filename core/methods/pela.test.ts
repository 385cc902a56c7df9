/**
 * PELA (Guo et al., CVPR 2024; guoyang9/PELA) on tiny Llama (GQA, tied) and GPT-2 (Conv1D)
 * checkpoints. The defining properties: the compressed model keeps at most 1/c of each compressed
 * layer's parameters (r = ⌊in·out/(c(in+out))⌋) and starts from the best rank-r approximation
 * (Eckart–Young against an exact SVD); the distillation loss it reports is the mean block-output MSE
 * against the original model, recomputed here from two independent models (the dense merged student
 * and the untouched teacher), and the weight-perturbation term is (max|B·A − W₀| − ε)² from plain
 * loops; after the distillation share of the steps neither term is taken. Also: merged export equals
 * the trained model, detach restores the base, no tensor leaks.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import { getMethod } from './index.ts';
import { pelaModules, pelaRank } from './pela.ts';
import { weightOutIn64 } from './factored-adapter.ts';
import { disposeAll, logits, modelWithWeights, relativeError, tinyModel, tokenIds, trainer } from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

/** Each decoder block's output of `model` on `ids`, as plain arrays. */
function blockOutputs(model: CausalLM, ids: tf.Tensor2D): Float32Array[] {
  const out: Float32Array[] = [];
  model.layerOutputs = (_i, x) => void out.push(x.dataSync() as Float32Array);
  try {
    tf.tidy(() => void model.hidden(ids));
  } finally {
    model.layerOutputs = null;
  }
  return out;
}

describe('pela', () => {
  it.each<TinyCheckpointKind>(['llama-gqa-tied', 'gpt2'])('%s: compresses every linear layer to at most 1/c of its parameters, starting from the best rank-r approximation', (kind) => {
    const { model } = tinyModel(kind);
    const c = 3;
    const targets = pelaModules(model);
    expect(targets).toHaveLength(model.linearModules().length); // every block linear has ≥ 10 outputs here
    let totalBefore = 0;
    for (const t of model.weights.values()) totalBefore += t.size;
    let compressedBefore = 0;
    let compressedAfter = 0;
    for (const t of targets) {
      const r = pelaRank(t.inFeatures, t.outFeatures, c);
      expect(r * (t.inFeatures + t.outFeatures)).toBeLessThanOrEqual((t.inFeatures * t.outFeatures) / c);
      compressedBefore += t.inFeatures * t.outFeatures;
      compressedAfter += r * (t.inFeatures + t.outFeatures);
    }
    const attached = getMethod('pela').attach(model, { svd: 'exact' }, { targets: [], seed: 0 });
    expect(attached.trainableParameterCount()).toBe(totalBefore - compressedBefore + compressedAfter);
    expect(compressedAfter / compressedBefore).toBeLessThanOrEqual(1 / c);
    expect(compressedAfter / compressedBefore).toBeGreaterThan(1 / c - 0.05);

    // ‖W − B·A‖²_F = Σ_{k>r} σ_k² for the first module (σ from an exact Jacobi SVD of the original W).
    const t = targets[0];
    const r = pelaRank(t.inFeatures, t.outFeatures, c);
    const w = weightOutIn64(model, t);
    const a = attached.trainable.get(`${t.path}.pela_A`)!.dataSync();
    const b = attached.trainable.get(`${t.path}.pela_B`)!.dataSync();
    const { outFeatures: m, inFeatures: n } = t;
    let residual = 0;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let ba = 0;
        for (let k = 0; k < r; k++) ba += b[i * r + k] * a[k * n + j];
        residual += (w[i * n + j] - ba) ** 2;
      }
    }
    const tail = Array.from(jacobiSvd(w, m, n).S.slice(r)).reduce((acc, s) => acc + s * s, 0);
    expect(Math.abs(residual - tail) / tail).toBeLessThan(1e-9); // measured 5e-15
    attached.detach();
    model.dispose();
  });

  it('logs the block-output distillation loss and the weight-perturbation term of the step, and drops both after the distillation share', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 2, 7, 4);
    const teacherModel = tinyModel('llama-gqa-tied').model; // the original model, untouched
    const eps = 1e-3;
    const targets = pelaModules(model);
    const attached = getMethod('pela').attach(model, { svd: 'exact', perturbation_eps: eps }, { targets: [], seed: 0 });
    const loop = trainer(model, attached, ids, 1e-2, 4); // 4 steps, distill_fraction 0.5: steps 0 and 1 distil
    loop.step(); // the student's embeddings, norms and factors move away from the teacher's
    expect(attached.stepMetrics!().distill_loss).toBeGreaterThan(0);
    // The reference for step 1: the dense student W' = B·A (and its trained weights) against the teacher, block by block.
    const merged = attached.mergedWeights();
    const student = modelWithWeights(teacherModel, merged);
    const [hs, ht] = [blockOutputs(student, ids), blockOutputs(teacherModel, ids)];
    expect(hs).toHaveLength(model.config.numLayers);
    const mse = hs.map((h, l) => h.reduce((acc, v, k) => acc + (v - ht[l][k]) ** 2, 0) / h.length);
    const wantDistill = mse.reduce((x, y) => x + y, 0) / mse.length;
    let wantPerturbation = 0;
    for (const t of targets) {
      const w = weightOutIn64(teacherModel, t);
      const [a, b] = [attached.trainable.get(`${t.path}.pela_A`)!.dataSync(), attached.trainable.get(`${t.path}.pela_B`)!.dataSync()];
      const r = a.length / t.inFeatures;
      let worst = 0;
      for (let i = 0; i < t.outFeatures; i++) {
        for (let j = 0; j < t.inFeatures; j++) {
          let ba = 0;
          for (let k = 0; k < r; k++) ba += b[i * r + k] * a[k * t.inFeatures + j];
          worst = Math.max(worst, Math.abs(ba - w[i * t.inFeatures + j]));
        }
      }
      wantPerturbation += (worst - eps) ** 2 / targets.length;
    }
    expect(wantDistill).toBeGreaterThan(1e-4); // the compressed model is not the original
    loop.step();
    const second = attached.stepMetrics!();
    expect(Math.abs(second.distill_loss - wantDistill) / wantDistill).toBeLessThan(1e-6); // measured 3e-8
    expect(Math.abs(second.weight_perturbation - wantPerturbation) / wantPerturbation).toBeLessThan(1e-6); // measured 5e-8
    loop.step();
    expect(attached.stepMetrics!()).toEqual({}); // fine-tuning: the task loss alone
    const penalty = attached.trainingPenalty!({ ids: ids.dataSync() as Int32Array, batchSize: 2, seqLen: 7 });
    expect(penalty.dataSync()[0]).toBe(0);
    penalty.dispose();
    loop.dispose();
    disposeAll(merged.values()); // all of `student`'s weights
    teacherModel.dispose();
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('exports merged weights that give the trained model\'s logits; detach restores the base with no tensor left', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 2, 7, 5);
    const before = logits(model, ids);
    const tensorsBefore = tf.memory().numTensors;
    const attached = getMethod('pela').attach(model, {}, { targets: [], seed: 0 });
    const loop = trainer(model, attached, ids, 1e-2, 2);
    loop.step();
    loop.step();
    loop.dispose();
    const inEngine = logits(model, ids);
    expect(relativeError(inEngine, before)).toBeGreaterThan(1e-3);
    const merged = attached.mergedWeights();
    // Every weight changed: the compressed ones are B·A, the others trained (embeddings, norms).
    expect(merged.size).toBe(model.weights.size);
    const dense = modelWithWeights(model, merged); // every name replaced: no tensor shared with `model`
    expect(relativeError(logits(dense, ids), inEngine)).toBeLessThan(2e-6); // measured 1.9e-7
    disposeAll(merged.values());
    attached.detach();
    expect(model.adapters.size).toBe(0);
    expect(model.layerOutputs).toBeNull();
    expect(logits(model, ids)).toEqual(before);
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    ids.dispose();
    model.dispose();
  });
});
