/**
 * LoRA-SB (Ponkshe et al., arXiv:2411.19557; RaghavSinghal10/lora-sb) on tiny Llama (GQA, tied) and
 * GPT-2 (Conv1D) checkpoints. The defining property: the initial update s·B·R·A is the best rank-r
 * approximation of the first full-fine-tuning step ΔŴ = −η·sign(G), with G the summed gradient
 * of the first samples computed independently here (the `full` method's variables, tf.variableGrads,
 * one loop per batch), checked against Eckart–Young with an exact SVD. Also: BᵀB = I_r, only R
 * trains (L·r² numbers), W₀ is not compensated so the export reproduces the trained model on the
 * ORIGINAL base, re-attaching the export continues, no tensor leaks, detach frees everything.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import { causalLmLoss, type CausalLM } from '../models/causal-lm.ts';
import { accumulateBaseGradients } from '../train/base-gradients.ts';
import type { Batch } from '../train/trainer.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import type { AttachedMethod, BaseGradientSource } from './method.ts';
import { disposeAll, logits, modelWithWeights, referenceMerge, relativeError, tinyModel, tokenIds, train, trainer } from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const r = 4;
const SAMPLES = 5;
const GRAD_BATCH = 2; // batches of 2, 2, 1
const ETA = 1e-3;
const PARAMS = { rank: r, grad_samples: SAMPLES, grad_batch_size: GRAD_BATCH, init_lr: ETA, svd: 'exact' };
const T = 7;

/** The fine-tuning run's role, on fixed token rows: the first `samples` rows in batches of `batchSize`. */
function gradientSource(model: CausalLM, rows: Int32Array, schedule: BaseGradientSource['schedule'] = { lr: 0.05, warmupRatio: 0.1, trainExamples: 10, epochs: 1 }): BaseGradientSource {
  return {
    schedule,
    gradients(names, samples, batchSize) {
      const batches: Batch[] = [];
      for (let from = 0; from < samples; from += batchSize) {
        const n = Math.min(batchSize, samples - from);
        const ids = rows.slice(from * T, (from + n) * T);
        batches.push({ ids, labels: ids, batchSize: n, seqLen: T });
      }
      return accumulateBaseGradients(model, names, batches);
    },
  };
}

function sampleRows(model: CausalLM): Int32Array {
  const ids = tokenIds(model.config.vocabSize, SAMPLES, T, 9);
  const rows = ids.dataSync() as Int32Array;
  ids.dispose();
  return rows.slice();
}

/** G = Σ_b ∇_W (loss_b / n_b) per target weight, independently: `full`'s variables and tf.variableGrads. */
function referenceGradients(model: CausalLM, rows: Int32Array, weightNames: string[]): Map<string, Float32Array> {
  const full = getMethod('full').attach(model, {}, { targets: [], seed: 0 });
  const vars = weightNames.map((n) => full.trainable.get(n)!);
  const sums = weightNames.map((n) => new Float64Array(model.weight(n).size));
  for (let from = 0; from < SAMPLES; from += GRAD_BATCH) {
    const n = Math.min(GRAD_BATCH, SAMPLES - from);
    const ids = tf.tensor2d(rows.slice(from * T, (from + n) * T), [n, T], 'int32');
    const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.div(causalLmLoss(model.forward(ids).logits, ids).loss, n) as tf.Scalar), vars);
    vars.forEach((v, i) => grads[v.name].dataSync().forEach((g, k) => (sums[i][k] += g)));
    disposeAll([value, ids, ...Object.values(grads)]);
  }
  full.detach();
  return new Map(weightNames.map((n, i) => [n, Float32Array.from(sums[i])]));
}

/** [out, in] float64 from a stored weight-shaped array. */
function outIn(model: CausalLM, path: string, stored: ArrayLike<number>): { w: Float64Array; m: number; n: number } {
  const [rows, cols] = model.weight(`${path}.weight`).shape;
  const transposed = model.isTransposedLinear(path);
  const [m, n] = transposed ? [cols, rows] : [rows, cols];
  const w = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) w[i * n + j] = transposed ? stored[j * m + i] : stored[i * n + j];
  return { w, m, n };
}

function savedState(attached: AttachedMethod): Map<string, Float32Array> {
  const { tensors } = attached.peftAdapter!();
  const saved = new Map([...tensors].map(([k, t]) => [k, (t.dataSync() as Float32Array).slice()]));
  disposeAll(tensors.values());
  return saved;
}

describe.each(['llama-gqa-tied', 'gpt2'] as TinyCheckpointKind[])('lorasb on %s', (kind) => {
  it('starts at the best rank-r approximation of the first full-FT step −η·sign(G); BᵀB = I; A Aᵀ = I; R = diag(σ)', () => {
    const { model } = tinyModel(kind);
    const rows = sampleRows(model);
    const targets = resolveTargets(model, kind === 'gpt2' ? ['c_attn', 'mlp.c_proj'] : ['q_proj', 'down_proj']);
    const G = referenceGradients(model, rows, targets.map((p) => `${p}.weight`));
    // init_lr 0: η_eff as the official code, lr / (warmup_ratio · ⌈examples / eg_bs⌉ · epochs) =
    // 2e-3 / (0.1 · ⌈9 / 2⌉ · 4) = 1e-3 = ETA (GRAD_BATCH = 2).
    const schedule = { lr: 2e-3, warmupRatio: 0.1, trainExamples: 9, epochs: 4 };
    const attached = getMethod('lorasb').attach(model, { ...PARAMS, init_lr: 0 }, { targets, seed: 1, baseGradients: gradientSource(model, rows, schedule) });
    const { config, tensors } = attached.peftAdapter!();
    expect(config).toMatchObject({ peft_type: 'LORA', r, lora_alpha: r, use_rslora: false }); // s = 1
    const report: string[] = [];
    for (const path of targets) {
      const { w: g, m, n } = outIn(model, path, G.get(`${path}.weight`)!);
      const update = Float64Array.from(g, (v) => -ETA * Math.sign(v)); // ΔŴ [out, in]
      const loraA = tensors.get(`base_model.model.${path}.lora_A.weight`)!.dataSync(); // A [r, in]
      const loraB = tensors.get(`base_model.model.${path}.lora_B.weight`)!.dataSync(); // s·B·R [out, r]
      const sigma = jacobiSvd(update, m, n).S;
      // s·B·R·A, and ‖ΔŴ − s·B·R·A‖²_F against Eckart–Young's Σ_{k>r} σ_k².
      let residual = 0;
      let norm = 0;
      let inner = 0; // ⟨ΔŴ, s·B·R·A⟩ = Σ_{k≤r} σ_k² for the truncation itself (−Σ if the sign were flipped)
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) {
          let bra = 0;
          for (let t = 0; t < r; t++) bra += loraB[i * r + t] * loraA[t * n + j];
          residual += (update[i * n + j] - bra) ** 2;
          inner += update[i * n + j] * bra;
          norm += update[i * n + j] ** 2;
        }
      }
      const tail = Array.from(sigma.slice(r)).reduce((acc, x) => acc + x * x, 0);
      const head = Array.from(sigma.slice(0, r)).reduce((acc, x) => acc + x * x, 0);
      expect(Math.abs(residual - tail) / tail).toBeLessThan(1e-4);
      expect(Math.abs(inner - head) / head).toBeLessThan(1e-4);
      // The same subspace as the exact truncation: B·R columns are σ_k·u_k, so (B·R)ᵀ(B·R) = diag(σ_k²) (BᵀB = I, R = diag σ),
      // and A's rows are orthonormal.
      let worstB = 0;
      let worstA = 0;
      for (let p = 0; p < r; p++) {
        for (let q = 0; q < r; q++) {
          let bb = 0;
          for (let i = 0; i < m; i++) bb += loraB[i * r + p] * loraB[i * r + q];
          worstB = Math.max(worstB, Math.abs(bb / (sigma[p] * sigma[q]) - (p === q ? 1 : 0)));
          let aa = 0;
          for (let j = 0; j < n; j++) aa += loraA[p * n + j] * loraA[q * n + j];
          worstA = Math.max(worstA, Math.abs(aa - (p === q ? 1 : 0)));
        }
      }
      expect(worstB).toBeLessThan(1e-5);
      expect(worstA).toBeLessThan(1e-5);
      report.push(`${path}: ‖ΔŴ − BRA‖²/‖ΔŴ‖² = ${(residual / norm).toFixed(4)} vs Eckart–Young ${(tail / norm).toFixed(4)}`);
    }
    console.log(`lorasb ${kind}: ${report.join('; ')}`);
    disposeAll(tensors.values());
    attached.detach();
    model.dispose();
  });

  it('trains only R (L·r²); W₀ is not compensated, so the export on the ORIGINAL base reproduces the trained model; re-attaching continues; no leaks', () => {
    const { model, original } = tinyModel(kind);
    const rows = sampleRows(model);
    const ids = tokenIds(model.config.vocabSize, 2, 6, 3);
    const baseLogits = logits(model, ids);
    const tensorsBefore = tf.memory().numTensors;
    const targets = resolveTargets(model, 'all-linear');
    const attached = getMethod('lorasb').attach(model, { ...PARAMS, init_lr: 0, dropout: 0.1 }, { targets, seed: 2, baseGradients: gradientSource(model, rows) });
    expect(attached.trainableParameterCount()).toBe(targets.length * r * r);
    expect([...attached.trainable.keys()]).toEqual(targets.map((p) => `${p}.loraxs_R`));
    expect(relativeError(logits(model, ids), baseLogits)).toBeGreaterThan(1e-3); // starts at W₀ + rank-r(ΔŴ), not W₀

    for (const w of model.weights.values()) expect(w).not.toBeInstanceOf(tf.Variable);
    const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.sum(tf.square(model.forward(ids).logits)) as tf.Scalar));
    const byVariable = new Map([...attached.trainable].map(([n, v]) => [v.name, n]));
    expect(Object.keys(grads).sort()).toEqual([...byVariable.keys()].sort());
    value.dispose();
    disposeAll(Object.values(grads));

    const loop = trainer(model, attached, ids, 0.01);
    loop.step();
    const count = tf.memory().numTensors;
    loop.step();
    loop.step();
    expect(tf.memory().numTensors).toBe(count);
    loop.dispose();
    const adapterLogits = logits(model, ids);

    const merged = attached.mergedWeights();
    expect(relativeError(logits(modelWithWeights(model, merged), ids), adapterLogits)).toBeLessThanOrEqual(1e-5);
    const { config, tensors } = attached.peftAdapter!();
    const reference = referenceMerge(config, tensors, original); // float64, on the ORIGINAL base weights
    expect([...reference.keys()].sort()).toEqual([...merged.keys()].sort());
    for (const [name, want] of reference) expect(relativeError(merged.get(name)!.dataSync(), want)).toBeLessThanOrEqual(1e-5);
    disposeAll([...merged.values(), ...tensors.values()]);

    const saved = savedState(attached);
    attached.detach();
    expect(model.adapters.size).toBe(0);
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    expect(logits(model, ids)).toEqual(baseLogits);
    // No gradient source needed to continue: A = lora_A, B·R = lora_B split by QR.
    const again = getMethod('lorasb').attach(model, PARAMS, { targets, seed: 99, initial: saved });
    expect(relativeError(logits(model, ids), adapterLogits)).toBeLessThanOrEqual(1e-5);
    train(model, again, ids, 1, 0.01); // and it trains on
    again.detach();
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    ids.dispose();
    model.dispose();
  });
});

describe('lorasb', () => {
  it('refuses to attach without a gradient source (and leaves nothing attached)', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const before = tf.memory().numTensors;
    expect(() => getMethod('lorasb').attach(model, PARAMS, { targets: resolveTargets(model, ['q_proj']), seed: 0 })).toThrow(/only a fine-tuning run provides/);
    expect(model.adapters.size).toBe(0);
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
  });
});
