/**
 * GaLore and Fira as methods: registered in the `optimizer` family with the official defaults,
 * training the base weights through `full`'s variables with their own optimizer (projecting the
 * targets' weights, AdamW for the rest), the exact optimizer-state bytes the memory estimate uses
 * (equal to what the optimizer holds), merged weights that reproduce the trained model, and no
 * PEFT form.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { getMethod, resolveParams, resolveTargets } from './index.ts';
import { GaLore } from '../optim/galore.ts';
import { Fira } from '../optim/fira.ts';
import { estimateMethods } from '../service/estimates.ts';
import { finetuneConfigFromFlags } from '../cli/train-commands.ts';
import { writeTinyCheckpoint } from '../../test/fixtures/tiny-checkpoints.ts';
import { logits, modelWithWeights, relativeError, tinyModel, tokenIds, train } from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

describe.each([
  ['galore', GaLore, 0],
  ['fira', Fira, 1],
] as const)('%s', (id, OptimizerClass, extraFloats) => {
  it('is an optimizer-family method with the official defaults, exported merged only', () => {
    const method = getMethod(id);
    expect(method.family).toBe('optimizer');
    expect(method.parameterPrefix).toBe('');
    expect(method.defaultTargets).toBe('all-linear');
    expect(method.exportFormats).toEqual(['merged']);
    const defaults = resolveParams(id, method.schema, {});
    expect(defaults).toMatchObject({ rank: 128, update_proj_gap: 200, scale: 0.25, proj_type: 'std' });
    if (id === 'fira') expect(defaults.gamma).toBe(1.01);
    for (const field of method.schema) expect(field.description.length).toBeGreaterThan(20);
    // `lowrank train --method <id>` without --target projects every attention/MLP linear; --target narrows it.
    const flags = { method: id, model: 'm', data: 'd.jsonl' };
    expect(finetuneConfigFromFlags(flags).targets).toBe('all-linear');
    expect(finetuneConfigFromFlags({ ...flags, target: 'q_proj,v_proj' }).targets).toEqual(['q_proj', 'v_proj']);
    expect(finetuneConfigFromFlags({ ...flags, method: 'lora' }).targets).toEqual(['q_proj', 'v_proj']);
    expect(finetuneConfigFromFlags({ ...flags, param: 'rank=16,update_proj_gap=50' }).params).toEqual({ rank: 16, update_proj_gap: 50 });
  });

  it('projects the targets\' weights, holds exactly the state it reports, trains and merges', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 2, 8, 3);
    const before = logits(model, ids);
    const method = getMethod(id);
    const targets = resolveTargets(model, 'all-linear');
    const attached = method.attach(model, resolveParams(id, method.schema, { rank: 4, update_proj_gap: 2 }), { targets, seed: 0 });
    expect(attached.peftAdapter).toBeUndefined();
    expect([...attached.trainable.keys()].sort()).toEqual([...model.weights.keys()].sort());
    expect(attached.trainableParameterCount()).toBe([...model.weights.values()].reduce((n, w) => n + w.size, 0));

    const optimizer = attached.createOptimizer!({ weightDecay: 0 });
    expect(optimizer).toBeInstanceOf(OptimizerClass);
    const projections = (optimizer as GaLore).projections;
    expect(projections.map((p) => p.name)).toEqual(targets.map((t) => `${t}.weight`));
    // r·min(m,n) + 2·r·max(m,n) (+ Fira's scalar) per projected matrix, 2·numel for every other weight.
    let floats = 0;
    for (const [name, w] of model.weights) {
      const [m, n] = w.shape;
      floats += projections.some((p) => p.name === name) ? 4 * Math.min(m, n) + 2 * 4 * Math.max(m, n) + extraFloats : 2 * w.size;
    }
    expect(attached.optimizerStateBytes!()).toBe(4 * floats);
    expect(optimizer.stateBytes()).toBe(4 * floats);
    // Less than AdamW's 8 bytes per weight.
    expect(4 * floats).toBeLessThan(8 * attached.trainableParameterCount());
    optimizer.dispose();

    // Three steps through the method's own optimizer (the helper uses createOptimizer), a refresh at t = 2.
    train(model, attached, ids, 3, 0.01);
    const trained = logits(model, ids);
    expect(relativeError(trained, before)).toBeGreaterThan(1e-3);
    const merged = attached.mergedWeights();
    expect(relativeError(logits(modelWithWeights(model, merged), ids), trained)).toBe(0);
    tf.dispose([...merged.values()]);
    attached.detach();
    expect(logits(model, ids)).toEqual(before);
    ids.dispose();
    model.dispose();
  });

  it('gives the wizard\'s memory estimate its optimizer state, not AdamW\'s', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `lowrank-${id}-estimate-`));
    try {
      const checkpoint = writeTinyCheckpoint(dir, 'llama-gqa-tied', 7);
      const estimates = new Map((await estimateMethods(dir, 2, 16, 'all-linear')).map((e) => [e.id, e]));
      const own = estimates.get(id)!;
      const full = estimates.get('full')!;
      expect(own.error).toBeNull();
      expect(own.trainableParams).toBe(full.trainableParams);
      // Default rank 128 is clamped to min(m, n) of every attention/MLP weight: min² + 2·min·max floats each.
      let floats = 0;
      for (const t of checkpoint.tensors) {
        const linear = /\.(self_attn|mlp)\.\w+_proj\.weight$/.test(t.name);
        const [m, n] = t.shape;
        floats += linear ? Math.min(m, n) ** 2 + 2 * Math.min(m, n) * Math.max(m, n) + extraFloats : 2 * t.data.length;
      }
      expect(own.estimate.optimizerBytes).toBe(4 * floats);
      expect(full.estimate.optimizerBytes).toBe(8 * full.trainableParams);
      // Like full fine-tuning, no separate trainable copy; full-size gradients.
      expect(own.estimate.trainableBytes).toBe(0);
      expect(own.estimate.gradientBytes).toBe(full.estimate.gradientBytes);
      expect(own.estimate.processBytes - full.estimate.processBytes).toBe(own.estimate.optimizerBytes - full.estimate.optimizerBytes);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('clamps the default rank 128 to each matrix\'s smaller side on a small model', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const method = getMethod(id);
    const attached = method.attach(model, resolveParams(id, method.schema, {}), { targets: resolveTargets(model, ['q_proj', 'down_proj']), seed: 0 });
    const optimizer = attached.createOptimizer!({});
    // q_proj [32, 32] and down_proj [32, 64] of the tiny Llama: r = 32.
    expect((optimizer as GaLore).projections.map((p) => [p.name.split('.').slice(-2)[0], p.r, p.side])).toEqual([
      ['q_proj', 32, 'right'],
      ['down_proj', 32, 'left'],
      ['q_proj', 32, 'right'],
      ['down_proj', 32, 'left'],
    ]);
    expect(optimizer.stateBytes()).toBe(attached.optimizerStateBytes!());
    optimizer.dispose();
    attached.detach();
    model.dispose();
  });
});
