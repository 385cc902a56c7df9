/**
 * SaRA (sara.ts). The defining property (METHODS.md): only the selected entries change — after
 * training, every entry outside M is bit-identical to W₀ and every changed entry was among the
 * smallest |W₀| — and the gradient memory is proportional to the selected count: each module's
 * gradient and Adam moments hold exactly |M| values. Also: the threshold rule against a count over
 * the original weights, the nuclear-norm term's gradient against finite differences, the progressive
 * re-selection freezing entries that grew past ε, merged logits equal to the adapter's, flat tensors.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { optimizerFor } from '../optim/registry.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import { nuclearNormAndGradient, type SaraAttached } from './sara.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import { Random } from '../random.ts';
import { disposeAll, logits, modelWithWeights, relativeError, tinyModel, tokenIds, trainer } from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const KINDS: TinyCheckpointKind[] = ['llama-gqa-tied', 'gpt2'];

describe.each(KINDS)('%s', (kind) => {
  it('changes only the selected smallest-|w| entries, with gradients and Adam state of |M| values', () => {
    const { model, original } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 8, 5);
    const targets = resolveTargets(model, 'all-linear');
    const fraction = 0.15;
    const before = logits(model, ids);
    const attached = getMethod('sara').attach(model, { selection: 'fraction', fraction, nuclear_lambda: 0 }, { targets, seed: 3 }) as SaraAttached;
    expect(logits(model, ids)).toEqual(before); // p starts at W₀[M]: the update is exactly 0
    const selected = attached.selected();
    let total = 0;
    for (const path of targets) {
      const size = original.get(`${path}.weight`)!.data.length;
      expect(selected.get(path)).toBe(Math.round(fraction * size));
      total += selected.get(path)!;
    }
    expect(attached.trainableParameterCount()).toBe(total);
    // Gradients: one per module, |M| values each.
    model.training = true;
    const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.sum(tf.square(model.forward(ids).logits)) as tf.Scalar));
    model.training = false;
    expect(Object.keys(grads).sort()).toEqual([...attached.trainable.values()].map((v) => v.name).sort());
    for (const path of targets) expect(grads[attached.trainable.get(`${path}.sara_values`)!.name].size).toBe(selected.get(path));
    value.dispose();
    disposeAll(Object.values(grads));
    // Adam's two moments plus the re-selection mask: 12 bytes per selected entry, nothing per weight.
    const optimizer = optimizerFor(attached, { weightDecay: 0 });
    expect(optimizer.stateBytes()).toBe(12 * total);
    expect(attached.optimizerStateBytes!()).toBe(12 * total);
    optimizer.dispose();

    const loop = trainer(model, attached, ids, 0.01);
    for (let step = 0; step < 4; step++) loop.step();
    loop.dispose();
    const adapterLogits = logits(model, ids);
    expect(relativeError(adapterLogits, before)).toBeGreaterThan(1e-4);
    const merged = attached.mergedWeights();
    expect(relativeError(logits(modelWithWeights(model, merged), ids), adapterLogits)).toBeLessThanOrEqual(1e-5);
    let changed = 0;
    for (const path of targets) {
      const w0 = original.get(`${path}.weight`)!.data;
      const w = merged.get(`${path}.weight`)!.dataSync();
      // The |M|-th smallest |W₀| of this matrix bounds every entry that may change.
      const bound = [...w0].map(Math.abs).sort((a, b) => a - b)[selected.get(path)! - 1];
      let moved = 0;
      for (let i = 0; i < w0.length; i++) {
        if (w[i] === w0[i]) continue;
        moved++;
        expect(Math.abs(w0[i])).toBeLessThanOrEqual(bound);
      }
      expect(moved).toBeLessThanOrEqual(selected.get(path)!);
      changed += moved;
    }
    expect(changed).toBeGreaterThan(total / 2); // the selected entries did train
    disposeAll(merged.values());
    attached.detach();
    ids.dispose();
    model.dispose();
  });
});

describe('SaRA rank term', () => {
  it.each([
    [12, 30],
    [30, 12],
  ])('on a sparse %d×%d matrix: Σσ and U·Vᵀ at the selected entries equal a Jacobi SVD’s', (rows, cols) => {
    const rng = new Random(rows * 7 + cols);
    const flat = Int32Array.from(Array.from({ length: rows * cols }, (_, i) => i).filter(() => rng.next() < 0.3));
    const values = Float64Array.from(flat, () => rng.normal());
    const { value, gradient } = nuclearNormAndGradient(flat, values, rows, cols);
    const x = new Float64Array(rows * cols);
    flat.forEach((i, k) => (x[i] = values[k]));
    const svd = jacobiSvd(x, rows, cols);
    expect(Math.abs(value - svd.S.reduce((a, b) => a + b, 0)) / value).toBeLessThanOrEqual(1e-10);
    let worst = 0;
    flat.forEach((index, k) => {
      const i = Math.floor(index / cols);
      const j = index % cols;
      let uv = 0;
      for (let t = 0; t < svd.k; t++) uv += svd.U[i * svd.k + t] * svd.Vt[t * cols + j];
      worst = Math.max(worst, Math.abs(uv - gradient[k]));
    });
    expect(worst).toBeLessThanOrEqual(1e-8);
  });
});

describe('sara on llama', () => {
  it('selects exactly the entries with |W₀| < ε (the official rule), and skips matrices with none', () => {
    const { model, original } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, ['q_proj', 'v_proj']);
    const epsilon = 3e-3;
    const attached = getMethod('sara').attach(model, { threshold: epsilon }, { targets, seed: 1 }) as SaraAttached;
    for (const path of targets) {
      const want = original.get(`${path}.weight`)!.data.filter((v) => Math.abs(v) < epsilon).length;
      expect(want).toBeGreaterThan(0);
      expect(attached.selected().get(path)).toBe(want);
    }
    attached.detach();
    expect(() => getMethod('sara').attach(model, { threshold: 1e-12 }, { targets, seed: 1 })).toThrow(/no entry of the 4 target weights has \|w\| < 1e-12; raise --param threshold/);
    expect(model.adapters.size).toBe(0);
    model.dispose();
  });

  it('adds λ·‖W ⊙ M‖_* of one matrix per step, with the gradient finite differences give', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, ['q_proj']);
    const lambda = 0.5;
    const attached = getMethod('sara').attach(model, { selection: 'fraction', fraction: 0.2, nuclear_lambda: lambda, nuclear_min_dim: 0 }, { targets, seed: 1 });
    attached.beforeStep!({ step: 0, totalSteps: 10, lr: 0 });
    const penalty = () => tf.tidy(() => attached.trainingPenalty!().dataSync()[0]);
    const { grads, value } = tf.variableGrads(() => attached.trainingPenalty!(), [...attached.trainable.values()]);
    // One of the two q_proj matrices is drawn for the step: only its values get a gradient.
    const withGradient = [...attached.trainable.values()].filter((v) => grads[v.name]);
    expect(withGradient).toHaveLength(1);
    const [values] = withGradient;
    const analytic = grads[values.name].dataSync().slice();
    const base = Float32Array.from(values.dataSync());
    // ‖X‖_F ≤ ‖X‖_* ≤ √rank·‖X‖_F
    const frobenius = Math.sqrt(base.reduce((s, v) => s + v * v, 0));
    expect(value.dataSync()[0] / lambda).toBeGreaterThanOrEqual(frobenius);
    expect(value.dataSync()[0] / lambda).toBeLessThanOrEqual(Math.sqrt(32) * frobenius);
    const h = 1e-3;
    let worst = 0;
    for (const k of [0, 7, 50, base.length - 1]) {
      const at = (delta: number) => {
        const next = base.slice();
        next[k] += delta;
        tf.tidy(() => values.assign(tf.tensor1d(next)));
        return penalty();
      };
      const numeric = (at(h) - at(-h)) / (2 * h);
      expect(Math.abs(analytic[k])).toBeGreaterThan(0.05 * lambda);
      worst = Math.max(worst, Math.abs(numeric - analytic[k]));
    }
    console.log(`sara: nuclear-norm gradient against central differences, worst |Δ| ${worst.toExponential(2)} (λ = ${lambda})`);
    expect(worst).toBeLessThanOrEqual(1e-4);
    disposeAll([value, ...Object.values(grads)]);
    attached.detach();
    model.dispose();
  });

  it('freezes the entries that grew past ε at T_p and trains the rest', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 2, 8, 5);
    const targets = resolveTargets(model, ['q_proj', 'v_proj']);
    const epsilon = 0.01;
    // Entries below ε train; at lr 3e-3 about half of them pass ε within the first 3 steps (measured).
    const attached = getMethod('sara').attach(model, { threshold: epsilon, nuclear_lambda: 0, progressive_at: 0.3 }, { targets, seed: 1 }) as SaraAttached;
    const loop = trainer(model, attached, ids, 3e-3, 10);
    for (let step = 0; step < 3; step++) loop.step();
    const atSelection = new Map(targets.map((p) => [p, attached.trainable.get(`${p}.sara_values`)!.dataSync().slice()]));
    for (let step = 3; step < 10; step++) loop.step();
    loop.dispose();
    let frozen = 0;
    for (const path of targets) {
      const at = atSelection.get(path)!;
      const now = attached.trainable.get(`${path}.sara_values`)!.dataSync();
      let moved = 0;
      for (let k = 0; k < at.length; k++) {
        if (Math.abs(at[k]) >= epsilon) {
          frozen++;
          expect(now[k]).toBe(at[k]); // grown past ε at T_p = step 3: frozen since
        } else if (now[k] !== at[k]) moved++;
      }
      expect(moved).toBeGreaterThan(0);
      expect(attached.activeCount().get(path)).toBe(at.filter((v) => Math.abs(v) < epsilon).length);
    }
    expect(frozen).toBeGreaterThan(0);
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('keeps tf.memory().numTensors flat across training steps, the rank term on', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 2, 6, 4);
    const attached = getMethod('sara').attach(model, { selection: 'fraction', nuclear_min_dim: 0, progressive_at: 0.2 }, { targets: resolveTargets(model, 'all-linear'), seed: 1 });
    const loop = trainer(model, attached, ids, 0.05, 5);
    loop.step();
    loop.step();
    const count = tf.memory().numTensors;
    loop.step();
    loop.step();
    expect(tf.memory().numTensors).toBe(count);
    loop.dispose();
    attached.detach();
    ids.dispose();
    model.dispose();
  });
});
