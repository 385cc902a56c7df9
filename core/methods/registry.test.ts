/**
 * The registry (unique ids, prefix clashes, variants), parameter resolution against schemas, and
 * target resolution (short names, suffixes, full paths, all-linear without lm_head, errors that
 * name the bad target and list the valid ones).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../backend/index.ts';
import { LowrankError } from '../errors.ts';
import { getMethod, listMethods, MethodRegistry, resolveParams } from './index.ts';
import type { Method } from './method.ts';
import { peftTargetModules, resolveTargets } from './targets.ts';
import { tinyModel } from './method-test-helpers.ts';
import { METHOD_DESCRIPTIONS, PARAMETER_LABELS, methodDisplayName } from './descriptions.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

function fakeMethod(id: string, parameterPrefix: string, variantOf?: string): Method {
  return {
    id,
    variantOf,
    family: 'adapter',
    paper: { title: 't', year: 2024 },
    summary: 's',
    parameterPrefix,
    schema: [],
    mergeable: false,
    exportFormats: [],
    attach: () => {
      throw new Error('not used');
    },
  };
}

function errorOf(action: () => unknown): LowrankError {
  try {
    action();
  } catch (e) {
    expect(e).toBeInstanceOf(LowrankError);
    return e as LowrankError;
  }
  throw new Error('expected an error');
}

/** The LowrankError `action` throws, or null when it succeeds. */
function refusalOf(action: () => unknown): LowrankError | null {
  try {
    action();
    return null;
  } catch (e) {
    expect(e).toBeInstanceOf(LowrankError);
    return e as LowrankError;
  }
}

describe('registry', () => {
  it('lists every method once, with a schema and paper, and looks them up by id', () => {
    const ids = listMethods().map((m) => m.id);
    expect(ids).toEqual(expect.arrayContaining(['full', 'lora', 'rslora', 'loraplus', 'dora', 'pissa']));
    expect(new Set(ids).size).toBe(ids.length);
    for (const m of listMethods()) {
      expect(m.paper.year).toBeGreaterThan(2000);
      expect(resolveParams(m.id, m.schema, {})).toEqual(Object.fromEntries(m.schema.map((f) => [f.name, f.default])));
    }
    expect(getMethod('dora').variantOf).toBe('lora');
    expect(getMethod('lora').schema.map((f) => [f.name, f.default])).toEqual([
      ['rank', 8],
      ['alpha', 16],
      ['dropout', 0.05],
      ['use_rslora', false],
    ]);
    const e = errorOf(() => getMethod('qlora'));
    expect(e.code).toBe('BAD_ARGUMENT');
    expect(e.message).toContain('unknown method "qlora"');
    expect(e.message).toContain('lora, rslora');
  });

  it('rejects duplicate ids and clashing prefixes; variants share their base prefix', () => {
    const registry = new MethodRegistry();
    registry.register(fakeMethod('vera', 'vera_'));
    expect(errorOf(() => registry.register(fakeMethod('vera', 'other_'))).message).toMatch(/already registered/);
    expect(errorOf(() => registry.register(fakeMethod('verax', 'vera_'))).message).toMatch(/clashes with "vera_" of method vera/);
    expect(errorOf(() => registry.register(fakeMethod('ve', 've'))).message).toMatch(/clashes/); // "vera_" starts with "ve"
    registry.register(fakeMethod('vera-shared', 'vera_', 'vera'));
    expect(errorOf(() => registry.register(fakeMethod('odd', 'odd_', 'missing'))).message).toMatch(/not registered/);
    expect(errorOf(() => registry.register(fakeMethod('odd', 'odd_', 'vera'))).message).toMatch(/differs/);
    registry.register(fakeMethod('galore', ''));
    registry.register(fakeMethod('fira', '')); // empty prefix: trains base weights, owns no names
    expect(errorOf(() => registry.register(fakeMethod('Bad_Id', 'b_'))).message).toMatch(/lower-case/);
    expect(registry.list().map((m) => m.id)).toEqual(['vera', 'vera-shared', 'galore', 'fira']);
  });

  it('resolves parameters against the schema', () => {
    const schema = getMethod('pissa').schema;
    expect(resolveParams('pissa', schema, { rank: 4, svd: 'exact' })).toMatchObject({ rank: 4, alpha: 8, dropout: 0, svd: 'exact' });
    expect(errorOf(() => resolveParams('pissa', schema, { svd: 'qr' })).message).toMatch(/svd must be one of auto, exact, randomized/);
    expect(errorOf(() => resolveParams('pissa', schema, { use_rslora: 1 })).message).toMatch(/true or false/);
    expect(errorOf(() => resolveParams('pissa', schema, { dropout: 1 })).message).toMatch(/dropout must be in \[0, 0.95\]/);
  });
});

describe('resolveTargets', () => {
  it('Llama: short names, full paths and all-linear (no lm_head)', () => {
    const { model } = tinyModel('llama-gqa-tied');
    expect(resolveTargets(model, ['q_proj'])).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj']);
    expect(resolveTargets(model, ['v_proj', 'model.layers.0.self_attn.q_proj', 'q_proj'])).toEqual([
      'model.layers.0.self_attn.q_proj',
      'model.layers.0.self_attn.v_proj',
      'model.layers.1.self_attn.q_proj',
      'model.layers.1.self_attn.v_proj',
    ]);
    const all = resolveTargets(model, 'all-linear');
    expect(all).toHaveLength(7 * model.config.numLayers);
    expect(all).toEqual(model.linearModules());
    expect(resolveTargets(model, ['all-linear'])).toEqual(all);
    const e = errorOf(() => resolveTargets(model, ['q_proj', 'qkv']));
    expect(e.code).toBe('BAD_ARGUMENT');
    expect(e.message).toContain('"qkv"');
    expect(e.message).toContain('down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj');
    expect(errorOf(() => resolveTargets(model, [])).message).toMatch(/no target modules/);
    // A tied model has no lm_head to target.
    expect(errorOf(() => resolveTargets(model, ['lm_head'])).message).toContain('"lm_head"');
    expect(peftTargetModules(model, all)).toEqual(['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']);
    model.dispose();
  });

  it('GPT-2: suffixes tell attn.c_proj from mlp.c_proj; an untied Llama can target lm_head explicitly', () => {
    const { model } = tinyModel('gpt2');
    expect(resolveTargets(model, ['c_proj'])).toHaveLength(2 * model.config.numLayers);
    expect(resolveTargets(model, ['attn.c_proj'])).toEqual(['transformer.h.0.attn.c_proj', 'transformer.h.1.attn.c_proj']);
    expect(resolveTargets(model, 'all-linear')).toHaveLength(4 * model.config.numLayers);
    const attnOnly = resolveTargets(model, ['attn.c_proj']);
    expect(peftTargetModules(model, attnOnly)).toEqual(attnOnly); // "c_proj" would also wrap mlp.c_proj
    model.dispose();

    const untied = tinyModel('llama-untied').model;
    expect(resolveTargets(untied, 'all-linear')).not.toContain('lm_head');
    expect(resolveTargets(untied, ['lm_head'])).toEqual(['lm_head']);
    untied.dispose();
  });
});

describe('countTrainable (the wizard counts without attaching where attach is slow)', () => {
  const counted = listMethods().filter((m) => m.countTrainable != null);
  it('is offered by the SVD-initialised and random-basis adapters', () => {
    expect(counted.map((m) => m.id)).toEqual(expect.arrayContaining(['pissa', 'loraxs', 'lorasb', 'svfit', 'nola']));
  });
  for (const kind of ['llama-gqa-tied', 'gpt2'] as const) {
    for (const method of counted) {
      it(`${method.id} on ${kind}: equals what attach trains, at two ranks`, () => {
        const { model } = tinyModel(kind);
        const targets = resolveTargets(model, 'all-linear');
        // LoRA-SB takes its start from gradients a run provides: random ones stand in here.
        const baseGradients = {
          schedule: { lr: 1e-3, warmupRatio: 0.1, trainExamples: 10, epochs: 1 },
          gradients: (names: string[]) => new Map(names.map((n, i) => [n, Float32Array.from({ length: model.weight(n).size }, (_, j) => Math.sin(i * 31 + j))])),
        };
        for (const rank of [1, 2]) {
          const params = resolveParams(method.id, method.schema, method.schema.some((f) => f.name === 'num_basis') ? { rank, num_basis: 3 + rank } : { rank });
          const refusal = refusalOf(() => method.attach(model, params, { targets, seed: 1, baseGradients }).detach());
          if (refusal) {
            // A method written for other architectures (LoRAM: Llama only) refuses to count with the same line.
            expect(errorOf(() => method.countTrainable!(model, params, targets)).message).toBe(refusal.message);
            continue;
          }
          const count = method.countTrainable!(model, params, targets);
          const attached = method.attach(model, params, { targets, seed: 1, baseGradients });
          expect(count).toBe(attached.trainableParameterCount());
          attached.detach();
        }
        model.dispose();
      });
    }
  }
});

describe('method presentation (descriptions.ts)', () => {
  it('gives every registered method a display name, help and formula, and every parameter a human label', () => {
    const names = new Set<string>();
    for (const m of listMethods()) {
      const d = METHOD_DESCRIPTIONS[m.id];
      expect(d, m.id).toBeDefined();
      expect(d.displayName.length).toBeGreaterThan(0);
      expect(names.has(d.displayName), d.displayName).toBe(false);
      names.add(d.displayName);
      expect(d.help.length).toBeGreaterThan(20);
      expect(d.formula.length).toBeGreaterThan(5);
      for (const f of m.schema) expect(PARAMETER_LABELS[f.name], `${m.id}.${f.name}`).toBeDefined();
    }
    expect(Object.keys(METHOD_DESCRIPTIONS).sort()).toEqual(listMethods().map((m) => m.id).sort());
    expect(methodDisplayName('loraplus')).toBe('LoRA+');
    expect(methodDisplayName('galore-dct')).toBe('GaLore (DCT)');
    expect(PARAMETER_LABELS.update_proj_gap).toBe('Projection refresh every … steps');
  });
});
