/**
 * DiffoRA specifics: the top-⌈ρN⌉ selection by γ on a hand example; the search alternates A/B steps
 * and γ steps (only the stepped group gets a gradient); after it the mask is 0/1 and used (unselected
 * modules carry no update, their tensors stop changing, the forward equals the merged selected
 * modules); the PEFT export holds the selected modules only.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { causalLmLoss } from '../models/causal-lm.ts';
import { optimizerFor } from '../optim/registry.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import { searchSteps, selectModules, type DifforaAttached } from './diffora.ts';
import { disposeAll, expectNeutralAttachAndCleanDetach, logits, modelWithWeights, referenceMerge, relativeError, tinyModel, tokenIds } from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

describe('diffora', () => {
  it('selects the top ⌈ρ·N⌉ modules by γ, globally or per layer, ties to the earlier module', () => {
    const paths = ['model.layers.0.q', 'model.layers.0.v', 'model.layers.1.q', 'model.layers.1.v', 'model.layers.1.o'];
    const gamma = [0.3, -0.1, 0.2, 0.2, 0.5];
    // ⌈0.5·5⌉ = 3 over all: 0.5, 0.3, then the first of the two 0.2.
    expect(selectModules(gamma, paths, 0.5, 'global')).toEqual([true, false, true, false, true]);
    // ⌈0.4·2⌉ = 1 of layer 0, ⌈0.4·3⌉ = 2 of layer 1.
    expect(selectModules(gamma, paths, 0.4, 'per-layer')).toEqual([true, false, true, false, true]);
    expect(selectModules(gamma, paths, 0.2, 'global')).toEqual([false, false, false, false, true]);
    expect(selectModules(gamma, paths, 0.2, 'per-layer')).toEqual([true, false, false, false, true]);
    expect(searchSteps(0.25, 100)).toBe(26);
    expect(searchSteps(0.25, 2)).toBe(2);
    expect(searchSteps(0, 10)).toBe(2);
    expect(searchSteps(1, 7)).toBe(7);
  });

  it('keeps the base model at step 0 and detaches cleanly', () => {
    expectNeutralAttachAndCleanDetach('llama-gqa-tied', 'diffora', {});
  });

  it('alternates A/B and γ steps while searching, then trains only the selected modules and exports them', () => {
    const { model, original } = tinyModel('llama-untied');
    const targets = resolveTargets(model, 'all-linear'); // 2 layers × 7 modules
    const params = { rank: 2, dropout: 0, selection_ratio: 0.25, search_fraction: 0.5 };
    const method = getMethod('diffora');
    const counted = method.countTrainable!(model, params, targets);
    const attached = method.attach(model, params, { targets, seed: 4 }) as DifforaAttached;
    expect(attached.trainableParameterCount()).toBe(counted);
    const totalSteps = 8; // 4 search steps
    attached.dataShards!.setSizes([10, 10], totalSteps);
    expect([0, 1, 2, 3, 4].map((s) => attached.dataShards!.shardAt(s))).toEqual([
      { shard: 0, cursor: 0 }, { shard: 1, cursor: 0 }, { shard: 0, cursor: 1 }, { shard: 1, cursor: 1 }, null,
    ]);
    const optimizer = optimizerFor(attached, { weightDecay: 0 });
    const names = [...attached.trainable.keys()];
    const vars = names.map((n) => attached.trainable.get(n)!);
    const ids = tokenIds(model.config.vocabSize, 2, 8, 3);
    const gammaOf = () => targets.map((p) => attached.trainable.get(`${p}.lora_dam`)!.dataSync()[0]);
    let afterSearch: Map<string, number[]> | null = null;
    for (let step = 0; step < totalSteps; step++) {
      const at = { step, totalSteps, lr: 0.05 };
      attached.beforeStep!(at);
      model.training = true;
      const { value, grads } = tf.variableGrads(() => tf.tidy(() => causalLmLoss(model.forward(ids).logits, ids).loss), vars);
      model.training = false;
      const present = names.filter((_, i) => grads[vars[i].name]);
      if (step < 4 && step % 2 === 1) expect(present.every((n) => n.endsWith('.lora_dam'))).toBe(true); // γ steps
      if (step < 4 && step % 2 === 1) expect(present).toHaveLength(targets.length);
      if (step < 4 && step % 2 === 0) expect(present).toHaveLength(2 * targets.length); // A/B steps: every module's pair
      if (step >= 4) expect(present).toHaveLength(2 * Math.ceil(0.25 * targets.length)); // the selected pairs only
      optimizer.step(new Map(present.map((n) => [n, grads[attached.trainable.get(n)!.name]!])), 0.05);
      attached.afterOptimizerStep!(at);
      disposeAll([value, ...Object.values(grads).filter((g): g is tf.Tensor => g !== null)]);
      if (step === 3) afterSearch = new Map(names.map((n) => [n, [...attached.trainable.get(n)!.dataSync()]]));
    }
    const gamma = gammaOf();
    expect(new Set(gamma).size).toBeGreaterThan(1); // γ learnt something that ranks the modules
    const selection = attached.selection();
    const want = selectModules(gamma, targets, 0.25, 'global');
    expect([...selection.values()]).toEqual(want);
    expect(want.filter(Boolean)).toHaveLength(4); // ⌈0.25 · 14⌉
    // After the search: γ and the unselected pairs no longer change; the selected pairs do.
    for (const n of names) {
      const path = n.slice(0, n.lastIndexOf('.lora_'));
      const same = JSON.stringify([...attached.trainable.get(n)!.dataSync()]) === JSON.stringify(afterSearch!.get(n));
      if (n.endsWith('.lora_dam') || !selection.get(path)) expect(same, n).toBe(true);
      else if (n.endsWith('.lora_B.weight')) expect(same, n).toBe(false);
    }
    // The mask is used: the forward equals the base with only the selected modules merged.
    const merged = attached.mergedWeights();
    expect([...merged.keys()].sort()).toEqual(targets.filter((_, i) => want[i]).map((p) => `${p}.weight`).sort());
    const probe = tokenIds(model.config.vocabSize, 1, 7, 8);
    expect(relativeError(logits(modelWithWeights(model, merged), probe), logits(model, probe))).toBeLessThan(1e-5);
    const { config, tensors } = attached.peftAdapter!();
    expect(config).toMatchObject({ peft_type: 'LORA', r: 2, lora_alpha: 16 });
    expect(tensors.size).toBe(2 * 4);
    const reference = referenceMerge(config, tensors, original);
    for (const [name, w] of reference) expect(relativeError(merged.get(name)!.dataSync(), w)).toBeLessThan(1e-6);
    disposeAll([...merged.values(), ...tensors.values(), ids, probe]);
    optimizer.dispose();
    attached.detach();
    model.dispose();
  });
});
