/**
 * SLTrain specifics (Han et al., arXiv:2406.02214): the sparse support is fixed and holds
 * ⌊δ·out·in⌋ positions, the merged weight is W₀ + s·B·A + S (checked in float64 from the trained
 * tensors), the sparse values' gradient is the dense weight gradient read at the support, and the
 * official `replace` layer starts at W = S.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { causalLmLoss } from '../models/causal-lm.ts';
import { buildModel } from '../models/load.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import type { SltrainAttached } from './sltrain.ts';
import { sltrainRank, sparseCount } from './sltrain.ts';
import {
  disposeAll,
  expectNeutralAttachAndCleanDetach,
  logits,
  modelWithWeights,
  randomize,
  relativeError,
  tinyModel,
  tokenIds,
  train,
} from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

describe('sltrain', () => {
  it('keeps the base model at step 0 and detaches cleanly', () => {
    expectNeutralAttachAndCleanDetach('llama-gqa-tied', 'sltrain', {});
    expectNeutralAttachAndCleanDetach('gpt2', 'sltrain', { rank: 2, density: 0.05 });
  });

  it('trains A, B and values on a fixed support of ⌊δ·out·in⌋ positions; merged = W₀ + s·B·A + S', () => {
    const { model, original } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, 'all-linear');
    const params = { density: 0.05 };
    const method = getMethod('sltrain');
    const counted = method.countTrainable!(model, params, targets);
    const attached = method.attach(model, params, { targets, seed: 11 }) as SltrainAttached;
    expect(attached.trainableParameterCount()).toBe(counted);
    const before = new Map(targets.map((p) => [p, Int32Array.from(attached.support(p))]));
    const ids = tokenIds(model.config.vocabSize, 2, 9, 4);
    train(model, attached, ids, 4, 0.05);

    const path = 'model.layers.1.mlp.down_proj'; // [out 32, in 64]
    const w0 = original.get(`${path}.weight`)!;
    const [m, n] = w0.shape;
    const r = sltrainRank(0, { outFeatures: m, inFeatures: n });
    expect(r).toBe(8); // min(32, 64) / 4
    for (const p of targets) {
      const [rows, cols] = model.weightShape(`${p}.weight`);
      expect(attached.support(p)).toEqual(before.get(p)); // I never changes
      expect(attached.support(p).length).toBe(Math.floor(0.05 * rows * cols));
    }
    // Re-attaching with the run's seed regenerates the same support (it is never stored).
    const other = tinyModel('llama-gqa-tied').model;
    const again = method.attach(other, params, { targets, seed: 11 }) as SltrainAttached;
    for (const p of targets) expect(again.support(p)).toEqual(before.get(p));
    again.detach();
    other.dispose();

    const support = attached.support(path);
    const a = attached.trainable.get(`${path}.sltrain_A`)!.dataSync();
    const b = attached.trainable.get(`${path}.sltrain_B`)!.dataSync();
    const v = attached.trainable.get(`${path}.sltrain_values`)!.dataSync();
    expect(Math.max(...b.map(Math.abs))).toBeGreaterThan(0); // B and V did train
    expect(Math.max(...v.map(Math.abs))).toBeGreaterThan(0);
    const merged = attached.mergedWeights();
    const got = merged.get(`${path}.weight`)!.dataSync();
    const scaling = 32 / r;
    const sparse = new Map<number, number>();
    support.forEach((position, k) => sparse.set(position, v[k]));
    let worst = 0;
    let offSupport = 0;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let low = 0;
        for (let t = 0; t < r; t++) low += b[i * r + t] * a[t * n + j];
        const want = w0.data[i * n + j] + scaling * low + (sparse.get(i * n + j) ?? 0);
        worst = Math.max(worst, Math.abs(got[i * n + j] - want));
        if (!sparse.has(i * n + j)) offSupport = Math.max(offSupport, Math.abs(got[i * n + j] - w0.data[i * n + j] - scaling * low));
      }
    }
    expect(worst).toBeLessThan(1e-5);
    expect(offSupport).toBeLessThan(1e-5);

    // The adapter's forward equals the merged dense model.
    const dense = modelWithWeights(model, merged);
    const adapted = logits(model, ids);
    expect(relativeError(logits(dense, ids), adapted)).toBeLessThan(1e-5);
    disposeAll(merged.values());
    ids.dispose();
    attached.detach();
    model.dispose();
  });

  it('gives the sparse values the dense weight gradient read at the support', () => {
    const { model } = tinyModel('llama-untied');
    const path = 'model.layers.0.self_attn.o_proj';
    const attached = getMethod('sltrain').attach(model, { rank: 2, density: 0.1 }, { targets: [path], seed: 5 }) as SltrainAttached;
    const ids = tokenIds(model.config.vocabSize, 2, 8, 2);
    const values = attached.trainable.get(`${path}.sltrain_values`)!;
    tf.tidy(() => values.assign(tf.randomNormal(values.shape, 0, 0.05, 'float32', 1)));
    const loss = (m: typeof model) => causalLmLoss(m.forward(ids).logits, ids).loss;
    const { grads } = tf.variableGrads(() => loss(model), [values]);
    const dv = grads[values.name].dataSync();
    // Reference: the dense model with W = W₀ + S as a variable, its gradient gathered at I.
    const merged = attached.mergedWeights();
    const weight = tf.variable(merged.get(`${path}.weight`)!);
    const weights = new Map(model.weights);
    weights.set(`${path}.weight`, weight);
    const dense = buildModel(model.config, weights);
    const { grads: denseGrads } = tf.variableGrads(() => loss(dense), [weight]);
    const dw = denseGrads[weight.name].dataSync();
    const want = Array.from(attached.support(path), (position) => dw[position]);
    expect(relativeError(dv, want)).toBeLessThan(1e-5);
    disposeAll([...Object.values(grads), ...Object.values(denseGrads), ...merged.values(), weight, ids]);
    attached.detach();
    model.dispose();
  });

  it('replace: the official layer drops W₀ and starts at W = S with values in ±1/√in', () => {
    const { model } = tinyModel('qwen2'); // q/k/v carry biases, kept as loaded
    const targets = resolveTargets(model, ['q_proj', 'up_proj']);
    const attached = getMethod('sltrain').attach(model, { base: 'replace' }, { targets, seed: 3 }) as SltrainAttached;
    const merged = attached.mergedWeights();
    for (const path of targets) {
      const [m, n] = model.weightShape(`${path}.weight`);
      const w = merged.get(`${path}.weight`)!.dataSync();
      const support = attached.support(path);
      expect(support.length).toBe(sparseCount(0.03, { outFeatures: m, inFeatures: n }));
      const onSupport = new Set(support);
      let nonzero = 0;
      w.forEach((value, position) => {
        if (value !== 0) nonzero++;
        if (!onSupport.has(position)) expect(value).toBe(0);
        else expect(Math.abs(value)).toBeLessThanOrEqual(1 / Math.sqrt(n));
      });
      expect(nonzero).toBe(support.length);
    }
    const ids = tokenIds(model.config.vocabSize, 1, 6, 3);
    const dense = modelWithWeights(model, merged);
    expect(relativeError(logits(dense, ids), logits(model, ids))).toBeLessThan(1e-5);
    disposeAll([...merged.values(), ids]);
    attached.detach();
    model.dispose();
  });

  it('on GPT-2’s Conv1D weights ([in, out]) the forward equals the merged weights in the stored layout', () => {
    const { model } = tinyModel('gpt2');
    const targets = resolveTargets(model, 'all-linear');
    const attached = getMethod('sltrain').attach(model, { rank: 2, density: 0.1 }, { targets, seed: 2 });
    randomize(attached, 6, 0.05);
    const ids = tokenIds(model.config.vocabSize, 2, 6, 1);
    const merged = attached.mergedWeights();
    expect(relativeError(logits(modelWithWeights(model, merged), ids), logits(model, ids))).toBeLessThan(1e-5);
    disposeAll([...merged.values(), ids]);
    attached.detach();
    model.dispose();
  });

  it('refuses a density that leaves a module no sparse entry, naming the module and the fix', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, ['k_proj']);
    expect(() => getMethod('sltrain').attach(model, { density: 1e-4 }, { targets, seed: 0 })).toThrow(/density 0\.0001 leaves no sparse entry in model\.layers\.0\.self_attn\.k_proj.*raise density/);
    expect(model.adapters.size).toBe(0);
    model.dispose();
  });
});
