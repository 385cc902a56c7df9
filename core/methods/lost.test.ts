/**
 * LOST (arXiv:2508.02668; ALGORITHMS.md §7) on tiny Llama (GQA, tied), Qwen2 (biases) and GPT-2
 * (Conv1D) checkpoints. The defining property, reconstruction at init, is checked against float64
 * figures computed here from the original weights and the trained tensors, never from lost.ts's own
 * selection: with ρ = 1 and r + k = min(out, in) the layer is W; with the defaults the rank-r part is
 * Eckart–Young optimal (σ from an exact Jacobi SVD), the sparse channels are the top-L2 columns of
 * the remainder, and ‖W − W_eff‖² is exactly the remainder's unselected columns. Also: the sparse
 * path reads only x[:, I]; the SiLU branch equals a hand computation and has no merged form; merged
 * export equals the trained model; AdamW β = (0.9, 0.95).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import { weightOutIn64, type LinearTarget } from './factored-adapter.ts';
import { lostColumnCount, lostRank, type LostAttached } from './lost.ts';
import { disposeAll, expectNeutralAttachAndCleanDetach, logits, modelWithWeights, randomize, relativeError, tinyModel, tokenIds, train } from './method-test-helpers.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import type { MethodParams } from './method.ts';
import { estimateMethods } from '../service/estimates.ts';
import { writeTinyCheckpoint } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const GAMMA = 0.5;

/** A module in peft's Linear view (W [out, in]), whether or not it is wrapped. */
function targetOf(model: CausalLM, path: string): LinearTarget {
  const [rows, cols] = model.weightShape(`${path}.weight`);
  const transposed = model.isTransposedLinear(path);
  return { path, transposed, outFeatures: transposed ? cols : rows, inFeatures: transposed ? rows : cols };
}

/** W_eff [out, in] of a module in float64, from the merged export (stored layout undone). */
function mergedOutIn(model: CausalLM, merged: Map<string, tf.Tensor>, path: string): Float64Array {
  const probe = modelWithWeights(model, merged); // the merged weight read through the model's own accessor
  return weightOutIn64(probe, targetOf(model, path));
}

/** γ·B·A [out, in] in float64 from the module's trained factors. */
function lowRankPart(attached: LostAttached, path: string, m: number, n: number, gamma = GAMMA): Float64Array {
  const a = attached.trainable.get(`${path}.lost_A`)!.dataSync();
  const b = attached.trainable.get(`${path}.lost_B`)!.dataSync();
  const r = a.length / n;
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
    let sum = 0;
    for (let t = 0; t < r; t++) sum += b[i * r + t] * a[t * n + j];
    out[i * n + j] = gamma * sum;
  }
  return out;
}

const squaredNorm = (v: ArrayLike<number>) => Array.from(v).reduce((s, x) => s + x * x, 0);

/** The module's adapter as a function of x [N, in] (LOST never calls the base layer). */
function layerOf(model: CausalLM, path: string): (x: tf.Tensor2D) => tf.Tensor2D {
  const adapter = model.adapters.get(path)!;
  const never = (): tf.Tensor2D => {
    throw new Error('LOST must not read the replaced weight');
  };
  return (x) => adapter.apply(x, never, never, false);
}

describe('lost', () => {
  it('with ρ = 1 and r + k = min(out, in) the layers are W at init (the model\'s logits unchanged)', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, 'all-linear');
    const attached = getMethod('lost').attach(model, { channel_ratio: 1, svd: 'exact' }, { targets, seed: 0 });
    const merged = attached.mergedWeights();
    let worst = 0;
    for (const path of targets) {
      const w = weightOutIn64(model, targetOf(model, path));
      const eff = mergedOutIn(model, merged, path);
      worst = Math.max(worst, Math.sqrt(squaredNorm(w.map((v, i) => v - eff[i])) / squaredNorm(w)));
    }
    expect(worst).toBeLessThan(1e-6); // measured 4.6e-8 (the task asks 1e-5)
    disposeAll(merged.values());
    attached.detach();
    model.dispose();
    expectNeutralAttachAndCleanDetach('llama-gqa-tied', 'lost', { channel_ratio: 1, svd: 'exact' }, 1e-5);
  });

  it('defaults: Eckart–Young rank-r part, top-L2 residual columns, ‖W − W_eff‖² = the unselected residual columns', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, 'all-linear');
    const attached = getMethod('lost').attach(model, { svd: 'exact' }, { targets, seed: 0 }) as LostAttached;
    const merged = attached.mergedWeights();
    for (const path of targets) {
      const [m, n] = model.weightShape(`${path}.weight`);
      const r = lostRank(0, { outFeatures: m, inFeatures: n });
      expect(r).toBe(Math.floor(Math.min(m, n) / 4));
      const w = weightOutIn64(model, targetOf(model, path));
      // The remainder W − γ·B·A, from the trained tensors (r + k = min(out, in) on these widths: no tail).
      const low = lowRankPart(attached, path, m, n);
      const rest = w.map((v, i) => v - low[i]);
      const tail = Array.from(jacobiSvd(w, m, n).S.slice(r)).reduce((s, sigma) => s + sigma * sigma, 0);
      // Eckart–Young; measured ≤ 3.2e-15 (the factors' float32 rounding is orthogonal to the remainder to first order)
      expect(Math.abs(squaredNorm(rest) - tail) / tail).toBeLessThan(1e-12);
      // The chosen columns are the top max(1, ⌊0.05·in⌋) of the remainder by L2 norm.
      const norms = Array.from({ length: n }, (_, j) => Math.sqrt(Array.from({ length: m }, (_, i) => rest[i * n + j] ** 2).reduce((s, x) => s + x, 0)));
      const columns = Array.from(attached.columns(path));
      expect(columns).toHaveLength(lostColumnCount(0.05, { outFeatures: m, inFeatures: n }));
      expect(columns).toEqual([...columns].sort((p, q) => p - q));
      const chosen = new Set(columns);
      const weakestChosen = Math.min(...columns.map((j) => norms[j]));
      const strongestLeft = Math.max(...norms.filter((_, j) => !chosen.has(j)));
      expect(weakestChosen).toBeGreaterThanOrEqual(strongestLeft - 1e-6 * Math.max(...norms));
      // ‖W − W_eff‖² = Σ_{j∉I} ‖rest[:, j]‖² ≤ Σ_{i>r} σ_i².
      const eff = mergedOutIn(model, merged, path);
      const error = squaredNorm(w.map((v, i) => v - eff[i]));
      const unselected = norms.reduce((s, x, j) => s + (chosen.has(j) ? 0 : x * x), 0);
      expect(Math.abs(error - unselected) / unselected).toBeLessThan(1e-7); // measured ≤ 3.2e-9
      expect(error).toBeLessThanOrEqual(tail);
      // The sparse values are those columns of the remainder divided by 1 − γ.
      const values = attached.trainable.get(`${path}.lost_values`)!.dataSync();
      let worst = 0;
      for (let i = 0; i < m; i++) columns.forEach((j, q) => (worst = Math.max(worst, Math.abs((1 - GAMMA) * values[i * columns.length + q] - rest[i * n + j]))));
      expect(worst).toBeLessThan(1e-7 * Math.max(...norms)); // measured ≤ 2.7e-8
    }
    disposeAll(merged.values());
    attached.detach();
    model.dispose();
  });

  it('the sparse path reads only x[:, I]: other channels change only the low-rank output and get no gradient through it', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const path = 'model.layers.1.mlp.down_proj'; // [out 32, in 64]
    const attached = getMethod('lost').attach(model, { channel_ratio: 0.25 }, { targets: [path], seed: 0 }) as LostAttached;
    const layer = layerOf(model, path);
    const columns = attached.columns(path);
    expect(columns).toHaveLength(16);
    const inI = new Set(columns);
    const x = tf.randomNormal([5, 64], 0, 1, 'float32', 1) as tf.Tensor2D;
    const noise = tf.randomNormal([5, 64], 0, 1, 'float32', 2) as tf.Tensor2D;
    const outside = tf.tensor2d(Array.from({ length: 64 }, (_, j) => (inI.has(j) ? 0 : 1)), [1, 64]);
    const x2 = tf.add(x, tf.mul(noise, outside)) as tf.Tensor2D;
    // y − γ·x·Aᵀ·Bᵀ (by hand) is the sparse branch: unchanged, and equal to (1 − γ)·x[:, I]·W_sᵀ by hand.
    const a = attached.trainable.get(`${path}.lost_A`)!.dataSync();
    const b = attached.trainable.get(`${path}.lost_B`)!.dataSync();
    const v = attached.trainable.get(`${path}.lost_values`)!.dataSync();
    const r = a.length / 64;
    const sparseByHand = (input: Float32Array, withLowRank: Float32Array) => {
      const got: number[] = [];
      const want: number[] = [];
      for (let row = 0; row < 5; row++) {
        const h = Array.from({ length: r }, (_, t) => Array.from({ length: 64 }, (_, j) => input[row * 64 + j] * a[t * 64 + j]).reduce((s, z) => s + z, 0));
        for (let i = 0; i < 32; i++) {
          const low = h.reduce((s, z, t) => s + z * b[i * r + t], 0);
          got.push(withLowRank[row * 32 + i] - GAMMA * low);
          want.push((1 - GAMMA) * Array.from(columns).reduce((s, j, q) => s + input[row * 64 + j] * v[i * 16 + q], 0));
        }
      }
      return { got, want };
    };
    const first = sparseByHand(x.dataSync() as Float32Array, tf.tidy(() => layer(x).dataSync() as Float32Array));
    const second = sparseByHand(x2.dataSync() as Float32Array, tf.tidy(() => layer(x2).dataSync() as Float32Array));
    expect(relativeError(first.got, first.want)).toBeLessThan(1e-6); // measured 9.3e-8
    expect(relativeError(second.got, first.want)).toBeLessThan(1e-6); // measured 1.1e-7
    expect(relativeError(tf.tidy(() => layer(x2).dataSync()), tf.tidy(() => layer(x).dataSync()))).toBeGreaterThan(1e-2); // the low-rank branch did change
    // With the low-rank branch silenced (A = 0), dy/dx is zero outside I and not inside.
    const A = attached.trainable.get(`${path}.lost_A`)!;
    tf.tidy(() => A.assign(tf.zerosLike(A)));
    const dx = tf.tidy(() => tf.grad((input: tf.Tensor) => tf.sum(tf.mul(layer(input as tf.Tensor2D), tf.randomNormal([5, 32], 0, 1, 'float32', 3))))(x).dataSync());
    for (let j = 0; j < 64; j++) {
      const column = Array.from({ length: 5 }, (_, row) => Math.abs(dx[row * 64 + j]));
      if (inI.has(j)) expect(Math.max(...column)).toBeGreaterThan(0);
      else expect(Math.max(...column)).toBe(0);
    }
    disposeAll([x, noise, outside, x2]);
    attached.detach();
    model.dispose();
  });

  it.each<['llama-gqa-tied' | 'qwen2' | 'gpt2', MethodParams]>([
    ['llama-gqa-tied', {}],
    ['qwen2', { rank: 2 }], // q/k/v biases train and are exported
    ['gpt2', { rank: 2, channel_ratio: 0.1 }], // Conv1D weights stored [in, out]
  ])('%s: after training, the merged weights give the trained model\'s logits; the count is r(in+out) + |I|·out (+ bias)', (kind, params) => {
    const { model } = tinyModel(kind);
    const targets = resolveTargets(model, 'all-linear');
    const method = getMethod('lost');
    const ids = tokenIds(model.config.vocabSize, 2, 7, 3);
    const original = logits(model, ids);
    const counted = method.countTrainable!(model, params, targets);
    const attached = method.attach(model, params, { targets, seed: 4 }) as LostAttached;
    let count = 0;
    for (const t of targets.map((path) => targetOf(model, path))) {
      const r = lostRank((params.rank as number | undefined) ?? 0, t);
      count += r * (t.inFeatures + t.outFeatures) + attached.columns(t.path).length * t.outFeatures + (model.hasWeight(`${t.path}.bias`) ? t.outFeatures : 0);
    }
    expect(attached.trainableParameterCount()).toBe(count);
    expect(counted).toBe(count);
    const [line] = attached.takeLogLines!();
    expect(line).toMatch(new RegExp(`^LOST on ${targets.length} linear layers: .* = ${count} trainable values in place of \\d+ weights \\(\\d+\\.\\d %\\); at init ‖W − W_eff‖/‖W‖ = \\d\\.\\d\\de-?\\d+$`));
    const before = logits(model, ids);
    train(model, attached, ids, 3, 0.02);
    const inEngine = logits(model, ids);
    expect(relativeError(inEngine, before)).toBeGreaterThan(1e-3);
    const merged = attached.mergedWeights();
    if (kind === 'qwen2') {
      const bias = merged.get('model.layers.0.self_attn.q_proj.bias')!.dataSync();
      expect(relativeError(bias, model.weight('model.layers.0.self_attn.q_proj.bias').dataSync())).toBeGreaterThan(1e-4); // the bias trained
    }
    expect(relativeError(logits(modelWithWeights(model, merged), ids), inEngine)).toBeLessThan(1e-6); // measured ≤ 2.8e-7
    disposeAll(merged.values());
    attached.detach();
    expect(logits(model, ids)).toEqual(original); // detach puts the original layers back
    ids.dispose();
    model.dispose();
  });

  it('silu: the forward equals γ·SiLU(x·Aᵀ)·Bᵀ + (1 − γ)·x[:, I]·W_sᵀ + b by hand; no merged, GGUF or PEFT form, each with its reason', () => {
    const { model } = tinyModel('qwen2');
    const path = 'model.layers.0.self_attn.q_proj'; // [48, 48] with a bias
    const gamma = 0.3;
    const method = getMethod('lost');
    const attached = method.attach(model, { activation: 'silu', blend_gamma: gamma, rank: 5, channel_ratio: 0.2 }, { targets: [path], seed: 0 }) as LostAttached;
    randomize(attached, 9, 0.1);
    const [m, n] = [48, 48];
    const x = tf.randomNormal([3, n], 0, 1, 'float32', 5) as tf.Tensor2D;
    const got = tf.tidy(() => layerOf(model, path)(x).dataSync());
    const xs = x.dataSync();
    const [a, b, v, bias] = ['lost_A', 'lost_B', 'lost_values', 'lost_bias'].map((name) => attached.trainable.get(`${path}.${name}`)!.dataSync());
    const columns = attached.columns(path);
    const r = 5;
    const want: number[] = [];
    for (let row = 0; row < 3; row++) {
      const h = Array.from({ length: r }, (_, t) => {
        let z = 0;
        for (let j = 0; j < n; j++) z += xs[row * n + j] * a[t * n + j];
        return z / (1 + Math.exp(-z)); // SiLU
      });
      for (let i = 0; i < m; i++) {
        let low = 0;
        for (let t = 0; t < r; t++) low += h[t] * b[i * r + t];
        let sparse = 0;
        columns.forEach((j, q) => (sparse += xs[row * n + j] * v[i * columns.length + q]));
        want.push(gamma * low + (1 - gamma) * sparse + bias[i]);
      }
    }
    expect(relativeError(got, want)).toBeLessThan(1e-6); // measured 9.5e-8
    expect(() => attached.mergedWeights()).toThrow(/activation silu puts SiLU between its two factors, so its layers are not linear maps.*checkpoint/);
    const refused = method.unavailableExports!(attached.params);
    expect(Object.keys(refused).sort()).toEqual(['gguf', 'merged', 'peft']);
    expect(refused.peft).toMatch(/W_eff − W is not low-rank.*no merged form either/);
    // The linear branch: only PEFT is refused, and it says why.
    const linear = method.unavailableExports!({ ...attached.params, activation: 'none' });
    expect(Object.keys(linear)).toEqual(['peft']);
    expect(linear.peft).toMatch(/W_eff − W is not low-rank and no PEFT LoRA reproduces it; export the merged model or GGUF instead$/);
    x.dispose();
    attached.detach();
    model.dispose();
  });

  it('sparse_init weight (the author\'s code): W_s = W[:, I] and unscaled factors, so W is not reconstructed', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const path = 'model.layers.0.mlp.up_proj'; // [64, 32]
    const attached = getMethod('lost').attach(model, { sparse_init: 'weight', channel_ratio: 0.25, svd: 'exact' }, { targets: [path], seed: 0 }) as LostAttached;
    const [m, n] = [64, 32];
    const w = weightOutIn64(model, targetOf(model, path));
    const values = attached.trainable.get(`${path}.lost_values`)!.dataSync();
    const columns = attached.columns(path);
    for (let i = 0; i < m; i++) columns.forEach((j, q) => expect(values[i * columns.length + q]).toBeCloseTo(w[i * n + j], 6));
    // γ·B·A = γ·W_r: ‖W − B·A‖² is the Eckart–Young tail.
    const r = lostRank(0, { outFeatures: m, inFeatures: n });
    const low = lowRankPart(attached, path, m, n, 1);
    const tail = Array.from(jacobiSvd(w, m, n).S.slice(r)).reduce((s, sigma) => s + sigma * sigma, 0);
    expect(Math.abs(squaredNorm(w.map((x, k) => x - low[k])) - tail) / tail).toBeLessThan(1e-5);
    const merged = attached.mergedWeights();
    const eff = mergedOutIn(model, merged, path);
    expect(Math.sqrt(squaredNorm(w.map((x, k) => x - eff[k])) / squaredNorm(w))).toBeGreaterThan(0.1);
    disposeAll(merged.values());
    attached.detach();
    model.dispose();
  });

  it('the wizard\'s estimate counts its trainable values without attaching, with AdamW\'s two moments each', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-lost-estimate-'));
    try {
      writeTinyCheckpoint(dir, 'llama-gqa-tied', 7);
      const estimate = (await estimateMethods(dir, 2, 16, 'all-linear')).find((e) => e.id === 'lost')!;
      expect(estimate.error).toBeNull();
      const { model } = tinyModel('llama-gqa-tied');
      let count = 0;
      for (const path of resolveTargets(model, 'all-linear')) {
        const t = targetOf(model, path);
        count += lostRank(0, t) * (t.inFeatures + t.outFeatures) + lostColumnCount(0.05, t) * t.outFeatures;
      }
      model.dispose();
      expect(estimate.trainableParams).toBe(count);
      expect(estimate.estimate.optimizerBytes).toBe(8 * count);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('trains with AdamW β = (0.9, 0.95); refuses a rank a module cannot take, naming it and the fix', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, ['k_proj']);
    const attached = getMethod('lost').attach(model, {}, { targets, seed: 0 });
    const optimizer = attached.createOptimizer!({ weightDecay: 0 }) as unknown as { beta1: number; beta2: number; dispose(): void };
    expect([optimizer.beta1, optimizer.beta2]).toEqual([0.9, 0.95]);
    optimizer.dispose();
    attached.detach();
    expect(() => getMethod('lost').attach(model, { rank: 17 }, { targets, seed: 0 })).toThrow(/method lost: rank 17 exceeds min\(out, in\) = 16 of model\.layers\.0\.self_attn\.k_proj; choose rank ≤ 16/);
    expect(() => getMethod('lost').countTrainable!(model, { rank: 17 }, targets)).toThrow(/rank 17 exceeds/);
    expect(model.adapters.size).toBe(0);
    model.dispose();
  });
});
