/**
 * The optimizer-family methods (GaLore, Fira, FRUGAL, the DCT SVD-free low-rank AdamW): registered
 * with the official defaults, training the base weights through `full`'s variables with their own
 * optimizer (the targets' weights projected, AdamW for the rest), the exact optimizer-state bytes
 * the memory estimate uses (equal to what the optimizer holds, by each paper's formula), merged
 * weights that reproduce the trained model, and no PEFT form.
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
import { Frugal } from '../optim/frugal.ts';
import { DctAdamW } from '../optim/galore-dct.ts';
import { estimateMethods } from '../service/estimates.ts';
import { finetuneConfigFromFlags } from '../cli/train-commands.ts';
import { writeTinyCheckpoint } from '../../test/fixtures/tiny-checkpoints.ts';
import { logits, modelWithWeights, relativeError, tinyModel, tokenIds, train } from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

type Params = Record<string, unknown>;

/** GaLore's state for one projected [m, n] matrix at rank r: P (r·min) and two moments (r·max each). */
const galoreFloats = (r: number, m: number, n: number) => r * Math.min(m, n) + 2 * r * Math.max(m, n);
/** r of one [m, n] matrix: a fixed `rank` (clamped), else round(rank_ratio·min(m, n)), at least 1 (halves to even, as Python). */
const rankOf = (m: number, n: number, p: Params) => {
  if ((p.rank as number) > 0) return Math.min(p.rank as number, m, n);
  const x = (p.rank_ratio as number) * Math.min(m, n);
  const r = x - Math.floor(x) === 0.5 ? 2 * Math.round(x / 2) : Math.round(x);
  return Math.max(1, r);
};

const METHODS = [
  {
    id: 'galore',
    optimizer: GaLore,
    defaults: { rank_ratio: 0.25, rank: 0, update_proj_gap: 200, scale: 0.25, proj_type: 'std' },
    trainParams: { rank: 4, update_proj_gap: 2 },
    perMatrix: (m: number, n: number, p: Params) => galoreFloats(rankOf(m, n, p), m, n),
  },
  {
    id: 'fira',
    optimizer: Fira,
    defaults: { rank_ratio: 0.25, rank: 0, update_proj_gap: 200, scale: 0.25, proj_type: 'std', gamma: 1.01 },
    trainParams: { rank: 4, update_proj_gap: 2 },
    // + the limiter's scalar.
    perMatrix: (m: number, n: number, p: Params) => galoreFloats(rankOf(m, n, p), m, n) + 1,
  },
  {
    id: 'frugal',
    optimizer: Frugal,
    defaults: { density: 0.25, update_proj_gap: 200, rule: 'sign_sgd', reset_statistics: true, proj_params_lr_scale: 1, inactive_lr_scale: 0.1, proj_type: 'std' },
    trainParams: { update_proj_gap: 2 },
    // GaLore's with r = round(ρ·min(m, n)).
    perMatrix: (m: number, n: number, p: Params) => galoreFloats(Math.max(1, Math.round((p.density as number) * Math.min(m, n))), m, n),
  },
  {
    id: 'galore-dct',
    optimizer: DctAdamW,
    defaults: { rank_ratio: 0.25, rank: 0, update_proj_gap: 1 },
    trainParams: { rank: 4, update_proj_gap: 2 },
    // r column indices and two moments; the d×d DCT bases are counted once per size (basisFloats).
    perMatrix: (m: number, n: number, p: Params) => {
      const r = rankOf(m, n, p);
      return r + 2 * r * Math.max(m, n);
    },
  },
] as const;

describe.each(METHODS)('$id', ({ id, optimizer: OptimizerClass, defaults, trainParams, perMatrix }) => {
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
    for (const field of method.schema) expect(field.description.length).toBeGreaterThan(20);
    // `lowrank train --method <id>` without --target projects every attention/MLP linear; --target narrows it.
    const flags = { method: id, model: 'm', data: 'd.jsonl' };
    expect(finetuneConfigFromFlags(flags).targets).toBe('all-linear');
    expect(finetuneConfigFromFlags({ ...flags, target: 'q_proj,v_proj' }).targets).toEqual(['q_proj', 'v_proj']);
    expect(finetuneConfigFromFlags({ ...flags, method: 'lora' }).targets).toEqual(['q_proj', 'v_proj']);
  });

  it('projects the targets\' weights, holds exactly the state it reports, trains and merges', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 2, 8, 3);
    const before = logits(model, ids);
    const method = getMethod(id);
    const targets = resolveTargets(model, 'all-linear');
    const params = resolveParams(id, method.schema, trainParams);
    const attached = method.attach(model, params, { targets, seed: 0 });
    expect(attached.peftAdapter).toBeUndefined();
    expect([...attached.trainable.keys()].sort()).toEqual([...model.weights.keys()].sort());
    expect(attached.trainableParameterCount()).toBe([...model.weights.values()].reduce((n, w) => n + w.size, 0));

    const optimizer = attached.createOptimizer!({ weightDecay: 0 });
    expect(optimizer).toBeInstanceOf(OptimizerClass);
    const projections = (optimizer as GaLore).projections;
    expect(projections.map((p) => p.name)).toEqual(targets.map((t) => `${t}.weight`));
    // The method's formula per projected matrix, 2·numel (AdamW) for every other weight.
    let floats = 0;
    const projectedShapes: number[][] = [];
    for (const [name, w] of model.weights) {
      const [m, n] = w.shape;
      const projected = projections.some((p) => p.name === name);
      if (projected) projectedShapes.push([m, n]);
      floats += projected ? perMatrix(m, n, params) : 2 * w.size;
    }
    floats += basisFloats(projectedShapes);
    expect(attached.optimizerStateBytes!()).toBe(4 * floats);
    expect(optimizer.stateBytes()).toBe(4 * floats);
    // Less than AdamW's 8 bytes per weight.
    expect(4 * floats).toBeLessThan(8 * attached.trainableParameterCount());
    optimizer.dispose();

    // Three steps through the method's own optimizer (the helper uses createOptimizer), a subspace change at t = 2.
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
      // At the defaults (r = 1/4 of each matrix's smaller side).
      const params = resolveParams(id, getMethod(id).schema, {});
      let floats = 0;
      const projectedShapes: number[][] = [];
      for (const t of checkpoint.tensors) {
        const linear = /\.(self_attn|mlp)\.\w+_proj\.weight$/.test(t.name);
        const [m, n] = t.shape;
        if (linear) projectedShapes.push([m, n]);
        floats += linear ? perMatrix(m, n, params) : 2 * t.data.length;
      }
      floats += basisFloats(projectedShapes);
      expect(own.estimate.optimizerBytes).toBe(4 * floats);
      expect(full.estimate.optimizerBytes).toBe(8 * full.trainableParams);
      // Like full fine-tuning, no separate trainable copy; full-size gradients.
      expect(own.estimate.trainableBytes).toBe(0);
      expect(own.estimate.gradientBytes).toBe(full.estimate.gradientBytes);
      expect(own.estimate.processBytes - full.estimate.processBytes).toBe(own.estimate.optimizerBytes - full.estimate.optimizerBytes);
      // At 1/4 of the width every method holds less than AdamW, even on this 32-wide model (the
      // published fixed rank 128 clamped to full rank here, where the projected state was larger).
      expect(own.estimate.optimizerBytes).toBeLessThan(full.estimate.optimizerBytes);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.each(['galore', 'fira'] as const)('%s', (id) => {
  it('passes --param values through and by default projects each matrix at 1/4 of its smaller side', () => {
    expect(finetuneConfigFromFlags({ method: id, model: 'm', data: 'd.jsonl', param: 'rank=16,update_proj_gap=50' }).params).toEqual({ rank: 16, update_proj_gap: 50 });
    const { model } = tinyModel('llama-gqa-tied');
    const method = getMethod(id);
    const attached = method.attach(model, resolveParams(id, method.schema, {}), { targets: resolveTargets(model, ['q_proj', 'down_proj']), seed: 0 });
    const optimizer = attached.createOptimizer!({});
    // q_proj [32, 32] and down_proj [32, 64] of the tiny Llama: r = 32 / 4 = 8.
    expect((optimizer as GaLore).projections.map((p) => [p.name.split('.').slice(-2)[0], p.r, p.side])).toEqual([
      ['q_proj', 8, 'right'],
      ['down_proj', 8, 'left'],
      ['q_proj', 8, 'right'],
      ['down_proj', 8, 'left'],
    ]);
    expect(optimizer.stateBytes()).toBe(attached.optimizerStateBytes!());
    optimizer.dispose();
    attached.detach();
    // A fixed rank overrides the ratio, clamped to the smaller side (the published 128 on a 32-wide matrix).
    const fixed = method.attach(model, resolveParams(id, method.schema, { rank: 128 }), { targets: resolveTargets(model, ['q_proj']), seed: 0 });
    const fixedOptimizer = fixed.createOptimizer!({});
    expect((fixedOptimizer as GaLore).projections.map((p) => p.r)).toEqual([32, 32]);
    fixedOptimizer.dispose();
    fixed.detach();
    model.dispose();
  });
});
