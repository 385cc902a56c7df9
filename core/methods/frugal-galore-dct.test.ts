/**
 * FRUGAL and the DCT (SVD-free) low-rank AdamW as methods: registered in the `optimizer` family with
 * the official defaults, training the base weights through `full`'s variables with their own
 * optimizer (the targets' weights projected, AdamW for the rest), the exact optimizer-state bytes
 * the memory estimate uses (equal to what the optimizer holds, by formula), merged weights that
 * reproduce the trained model, and no PEFT form.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { getMethod, resolveParams, resolveTargets } from './index.ts';
import type { GaLore } from '../optim/galore.ts';
import { Frugal } from '../optim/frugal.ts';
import { DctAdamW } from '../optim/galore-dct.ts';
import { estimateMethods } from '../service/estimates.ts';
import { finetuneConfigFromFlags } from '../cli/train-commands.ts';
import { writeTinyCheckpoint } from '../../test/fixtures/tiny-checkpoints.ts';
import { logits, modelWithWeights, relativeError, tinyModel, tokenIds, train } from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

/** Exact state floats of one projected [m, n] matrix: FRUGAL's are GaLore's with r = round(ρ·min); DCT's r indices + moments. */
const perMatrix = {
  frugal: (m: number, n: number, params: Record<string, unknown>) => {
    const r = Math.max(1, Math.round((params.density as number) * Math.min(m, n)));
    return r * Math.min(m, n) + 2 * r * Math.max(m, n);
  },
  'galore-dct': (m: number, n: number, params: Record<string, unknown>) => {
    const r = Math.min(params.rank as number, m, n);
    return r + 2 * r * Math.max(m, n);
  },
};

describe.each([
  ['frugal', Frugal, { density: 0.25, update_proj_gap: 200, rule: 'sign_sgd', reset_statistics: true, proj_params_lr_scale: 1, inactive_lr_scale: 0.1, proj_type: 'std' }],
  ['galore-dct', DctAdamW, { rank: 128, update_proj_gap: 1 }],
] as const)('%s', (id, OptimizerClass, defaults) => {
  /** DCT bases: one d×d per distinct smaller side among the projected matrices. */
  const basisFloats = (shapes: number[][]) => (id === 'galore-dct' ? [...new Set(shapes.map(([m, n]) => Math.min(m, n)))].reduce((s, d) => s + d * d, 0) : 0);

  it('is an optimizer-family method with the official defaults, exported merged only', () => {
    const method = getMethod(id);
    expect(method.family).toBe('optimizer');
    expect(method.parameterPrefix).toBe('');
    expect(method.defaultTargets).toBe('all-linear');
    expect(method.mergeable).toBe(true);
    expect(method.exportFormats).toEqual(['merged']);
    expect(resolveParams(id, method.schema, {})).toMatchObject(defaults);
    for (const field of method.schema) expect(field.description.length).toBeGreaterThan(40);
    const flags = { method: id, model: 'm', data: 'd.jsonl' };
    expect(finetuneConfigFromFlags(flags).targets).toBe('all-linear');
  });

  it('projects the targets\' weights, holds exactly the state it reports, trains and merges', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 2, 8, 3);
    const before = logits(model, ids);
    const method = getMethod(id);
    const targets = resolveTargets(model, 'all-linear');
    const params = resolveParams(id, method.schema, id === 'frugal' ? { update_proj_gap: 2 } : { rank: 4, update_proj_gap: 2 });
    const attached = method.attach(model, params, { targets, seed: 0 });
    expect(attached.peftAdapter).toBeUndefined();
    expect([...attached.trainable.keys()].sort()).toEqual([...model.weights.keys()].sort());

    const optimizer = attached.createOptimizer!({ weightDecay: 0 });
    expect(optimizer).toBeInstanceOf(OptimizerClass);
    const projections = (optimizer as GaLore).projections;
    expect(projections.map((p) => p.name)).toEqual(targets.map((t) => `${t}.weight`));
    let floats = 0;
    const projectedShapes: number[][] = [];
    for (const [name, w] of model.weights) {
      const [m, n] = w.shape;
      const projected = projections.some((p) => p.name === name);
      if (projected) projectedShapes.push([m, n]);
      floats += projected ? perMatrix[id](m, n, params) : 2 * w.size;
    }
    floats += basisFloats(projectedShapes);
    expect(attached.optimizerStateBytes!()).toBe(4 * floats);
    expect(optimizer.stateBytes()).toBe(4 * floats);
    expect(4 * floats).toBeLessThan(8 * attached.trainableParameterCount());
    optimizer.dispose();

    // Three steps through the method's own optimizer (a subspace change at t = 2).
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
      const params = resolveParams(id, getMethod(id).schema, {});
      let floats = 0;
      const projectedShapes: number[][] = [];
      for (const t of checkpoint.tensors) {
        const linear = /\.(self_attn|mlp)\.\w+_proj\.weight$/.test(t.name);
        const [m, n] = t.shape;
        if (linear) projectedShapes.push([m, n]);
        floats += linear ? perMatrix[id](m, n, params) : 2 * t.data.length;
      }
      floats += basisFloats(projectedShapes);
      expect(own.estimate.optimizerBytes).toBe(4 * floats);
      // FRUGAL at ρ = 0.25 holds less than AdamW; the DCT optimizer's default rank 128 clamps to full
      // rank on this tiny model, where its moments plus bases exceed AdamW's 2·m·n.
      if (id === 'frugal') expect(own.estimate.optimizerBytes).toBeLessThan(full.estimate.optimizerBytes);
      expect(full.estimate.optimizerBytes).toBe(8 * full.trainableParams);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
