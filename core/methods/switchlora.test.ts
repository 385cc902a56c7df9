/**
 * SwitchLoRA (switchlora.ts). The defining property (METHODS.md): the output is continuous across a
 * switch (W + s·B·A, hence the logits, unchanged to float32 rounding) and the update learns rank > r
 * (the singular values of W + s·B·A − W₀ after training with switches exceed even the 2r that
 * s·(B·A − B₀·A₀) could reach without them). Also: the
 * model starts as the base, the switched vectors' counterparts are frozen with their Adam state reset,
 * the candidate bounds and switch rate against the official formulas, merged export, clean detach,
 * flat tensor count.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { Random } from '../random.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import { causalLmLoss, type CausalLM } from '../models/causal-lm.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import { candidateBounds, switchModule, switchRate, SwitchLoraOptimizer, type SwitchLoraAttached } from './switchlora.ts';
import type { Optimizer } from '../optim/registry.ts';
import { disposeAll, logits, modelWithWeights, relativeError, tinyModel, tokenIds } from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const KINDS: TinyCheckpointKind[] = ['llama-gqa-tied', 'gpt2'];

/** One training step with the method's own optimizer (its non-trainable weights get no gradient). */
function trainStep(model: CausalLM, attached: SwitchLoraAttached, optimizer: Optimizer, ids: tf.Tensor2D, step: number, totalSteps: number, lr: number): void {
  const names = [...attached.trainable.keys()].filter((n) => attached.trainable.get(n)!.trainable);
  const vars = names.map((n) => attached.trainable.get(n)!);
  attached.beforeStep!({ step, totalSteps, lr });
  model.training = true;
  const { value, grads } = tf.variableGrads(() => tf.tidy(() => causalLmLoss(model.forward(ids).logits, ids).loss), vars);
  model.training = false;
  optimizer.step(new Map(names.map((n, i) => [n, grads[vars[i].name]])), lr);
  value.dispose();
  disposeAll(Object.values(grads));
}

describe('SwitchLoRA formulas', () => {
  it('candidate bounds and switch rate as get_init_lora_bound and _get_switch_rate', () => {
    const gain = Math.sqrt(1 / 3);
    const { boundA, boundB } = candidateBounds(1024, 4096, 256); // in, out, r
    expect(boundA).toBeCloseTo(Math.sqrt(3) * ((Math.sqrt(4096) * 256) / 1024 ** 1.5) ** 0.25 * Math.sqrt(gain), 12);
    expect(boundB).toBeCloseTo(Math.sqrt(3) * (256 / Math.sqrt(4096 * 1024)) ** 0.25 * Math.sqrt(gain), 12);
    expect(switchRate(99, 100)).toBeCloseTo(0.3, 12); // 0.3 when t + 1 reaches D
    expect(switchRate(0, 100)).toBeCloseTo(0.3 ** 0.01, 12);
    expect(switchRate(1e7, 10)).toBe(1e-8);
  });
});

describe.each(KINDS)('%s', (kind) => {
  it('starts as the base model, and detach restores it with no tensor left behind', () => {
    const { model } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 7, 1);
    const before = logits(model, ids);
    const tensorsBefore = tf.memory().numTensors;
    const attached = getMethod('switchlora').attach(model, { rank: 4 }, { targets: resolveTargets(model, 'all-linear'), seed: 3 });
    // W = W₀ − s·B₀·A₀ with B₀·A₀ ≠ 0: equal to float32 rounding.
    expect(relativeError(logits(model, ids), before)).toBeLessThanOrEqual(1e-5);
    attached.detach();
    expect(model.adapters.size).toBe(0);
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    expect(logits(model, ids)).toEqual(before);
    ids.dispose();
    model.dispose();
  });

  it('a switch leaves W + s·B·A and the output unchanged, moving the old vectors into the pool', () => {
    const { model } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 7, 1);
    const attached = getMethod('switchlora').attach(model, { rank: 4 }, { targets: resolveTargets(model, 'all-linear'), seed: 3 }) as SwitchLoraAttached;
    const before = logits(model, ids);
    const random = new Random(1);
    let switched = 0;
    for (const layer of attached.layers) {
      const merged = () => tf.tidy(() => tf.add(layer.target.transposed ? tf.transpose(layer.weight) : layer.weight, tf.mul(tf.matMul(layer.B, layer.A), layer.s)).dataSync().slice());
      const effective = merged();
      const a = layer.A.dataSync().slice();
      const selected = [...layer.selectedA];
      // interval 2: r / interval ≈ 2 switches, within the 2 free slots (p_B − p_A = r/2).
      const { columnsB, rowsA } = switchModule(layer, 0, 10, { interval: 2, descent: 1, warmSteps: 5 }, random);
      expect(columnsB.length).toBeGreaterThan(0);
      expect(rowsA).toHaveLength(columnsB.length);
      switched += columnsB.length;
      expect(relativeError(merged(), effective)).toBeLessThanOrEqual(1e-5);
      const n = layer.target.inFeatures;
      const first = selected[(columnsB[0] - 1 + 4) % 4] + 1; // after the candidate of the slot before
      for (const [k, slot] of columnsB.entries()) {
        expect(layer.selectedA[slot]).toBe((first + k) % layer.K); // the next candidates, in order
        expect(layer.frozenB[slot]).toBe(5);
        const pool = layer.candidatesA.dataSync().slice(selected[slot] * n, (selected[slot] + 1) * n);
        expect([...pool]).toEqual([...a.slice(slot * n, (slot + 1) * n)]); // the old row went back
      }
    }
    expect(switched).toBeGreaterThan(0);
    expect(relativeError(logits(model, ids), before)).toBeLessThanOrEqual(1e-5);
    attached.detach();
    ids.dispose();
    model.dispose();
  });
});

describe('switchlora on llama', () => {
  it('takes a quarter of min(out, in) per module by default, counts its exact state, and refuses a rank above min(out, in)', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, ['q_proj', 'v_proj']); // q [32, 32], v [16, 32]
    const attached = getMethod('switchlora').attach(model, {}, { targets, seed: 1 }) as SwitchLoraAttached;
    expect(attached.layers.map((l) => l.r)).toEqual([8, 4, 8, 4]);
    expect(attached.trainableParameterCount()).toBe(2 * (8 * 64 + 4 * 48));
    // Adam's moments (2 per trainable value), per-row steps (2r), candidate pools K·(out + in) and
    // 4r + 2 control values, float32; the optimizer's own count agrees.
    const want = 4 * 2 * (2 * (8 * 64) + 2 * 8 + 32 * 64 + 4 * 8 + 2 + 2 * (4 * 48) + 2 * 4 + 16 * 48 + 4 * 4 + 2);
    expect(attached.optimizerStateBytes!()).toBe(want);
    const optimizer = attached.createOptimizer!({});
    expect(optimizer.stateBytes()).toBe(want);
    optimizer.dispose();
    attached.detach();
    expect(() => getMethod('switchlora').attach(model, { rank: 17 }, { targets, seed: 1 })).toThrow(/rank 17 exceeds min\(out, in\) = 16 of model\.layers\.0\.self_attn\.v_proj; choose rank ≤ 16/);
    expect(model.adapters.size).toBe(0);
    model.dispose();
  });

  it('freezes the switched vectors’ counterparts for N_w steps with their Adam state reset', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 2, 8, 2);
    const attached = getMethod('switchlora').attach(model, { rank: 4 }, { targets: resolveTargets(model, ['q_proj']), seed: 5 }) as SwitchLoraAttached;
    const [layer] = attached.layers;
    const optimizer = new SwitchLoraOptimizer(attached.layers, { interval: 2, descent: 1, warmSteps: 5 }, new Random(2), () => 20, { weightDecay: 0 });
    const column = (i: number) => {
      const b = layer.B.dataSync();
      return Array.from({ length: layer.target.outFeatures }, (_, o) => b[o * layer.r + i]);
    };
    const selectedBefore = [...layer.selectedA];
    const bBefore = Array.from({ length: layer.r }, (_, i) => column(i));
    trainStep(model, attached, optimizer, ids, 0, 20, 0.01);
    const switchedSlots = selectedBefore.flatMap((c, i) => (layer.selectedA[i] !== c ? [i] : []));
    expect(switchedSlots.length).toBeGreaterThan(0);
    const state = optimizer.getWeights().tensors;
    const expAvg = state.get(`${layer.target.path}.lora_B.weight.exp_avg`)!.dataSync();
    const steps = state.get(`${layer.target.path}.lora_B.weight.step`)!.dataSync();
    for (const i of switchedSlots) {
      expect(column(i)).toEqual(bBefore[i]); // no update this step
      expect(layer.frozenB[i]).toBe(4); // frozen for the next 4 steps too
      expect(steps[i]).toBe(1); // reset to 0, then this step
      for (let o = 0; o < layer.target.outFeatures; o++) expect(expAvg[o * layer.r + i]).toBe(0);
    }
    const others = [...Array(layer.r).keys()].filter((i) => !switchedSlots.includes(i));
    expect(others.every((i) => column(i).some((v, o) => v !== bBefore[i][o]))).toBe(true); // the other columns moved
    optimizer.dispose();
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('learns an update of rank > 2r (LoRA started from W₀ − s·B₀·A₀ without switches: ≤ 2r), merged export equal to the adapter', () => {
    const { model, original } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 2, 8, 2);
    const r = 2;
    const attached = getMethod('switchlora').attach(model, { rank: r }, { targets: resolveTargets(model, ['q_proj']), seed: 5 }) as SwitchLoraAttached;
    const optimizer = new SwitchLoraOptimizer(attached.layers, { interval: 10, descent: 1, warmSteps: 5 }, new Random(3), () => 40, { weightDecay: 0 });
    const before = tf.memory().numTensors;
    for (let step = 0; step < 40; step++) trainStep(model, attached, optimizer, ids, step, 40, 0.01);
    expect(tf.memory().numTensors).toBe(before); // switches and steps leave no tensor behind
    const adapterLogits = logits(model, ids);
    const merged = attached.mergedWeights();
    expect(relativeError(logits(modelWithWeights(model, merged), ids), adapterLogits)).toBeLessThanOrEqual(1e-5);
    for (const layer of attached.layers) {
      const name = `${layer.target.path}.weight`;
      const w0 = original.get(name)!.data;
      const w = merged.get(name)!.dataSync();
      const [m, n] = [layer.target.outFeatures, layer.target.inFeatures];
      const delta = Float64Array.from(w, (v, i) => v - w0[i]);
      const { S } = jacobiSvd(delta, m, n);
      const rank = S.filter((s) => s > 1e-3 * S[0]).length;
      console.log(`switchlora: rank of W + sBA − W₀ after 40 steps at r = ${r}: ${rank} (σ ${[...S.slice(0, 6)].map((s) => s.toExponential(1)).join(', ')}…)`);
      expect(rank).toBeGreaterThan(2 * r);
    }
    disposeAll(merged.values());
    optimizer.dispose();
    attached.detach();
    ids.dispose();
    model.dispose();
  });
});
