/**
 * LoRA specifics: peft's initialisation and adapter_config/tensor names, rsLoRA's α/√r scaling,
 * LoRA+'s learning-rate groups through AdamW, dropout (training only, seeded), and re-attaching a
 * saved adapter for continued training.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { AdamW } from '../optim/adamw.ts';
import { LowrankError } from '../errors.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import { logits, randomize, relativeError, tinyModel, tokenIds, train } from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

describe('lora', () => {
  it('initialises A ~ U(±1/√in) (kaiming_uniform a=√5) and B = 0, deterministically from the seed', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, ['up_proj']);
    const first = getMethod('lora').attach(model, {}, { targets, seed: 1 });
    const a = first.trainable.get(`${targets[0]}.lora_A.weight`)!;
    const b = first.trainable.get(`${targets[0]}.lora_B.weight`)!;
    const inFeatures = model.config.hiddenSize;
    expect(a.shape).toEqual([8, inFeatures]);
    const values = Array.from(a.dataSync());
    const bound = 1 / Math.sqrt(inFeatures);
    expect(Math.max(...values.map(Math.abs))).toBeLessThanOrEqual(bound);
    const variance = values.reduce((acc, x) => acc + x * x, 0) / values.length;
    expect(variance / (bound * bound / 3)).toBeGreaterThan(0.8); // U(−b, b) has variance b²/3
    expect(variance / (bound * bound / 3)).toBeLessThan(1.2);
    expect([...b.dataSync()].every((x) => x === 0)).toBe(true);
    const saved = a.dataSync().slice();
    first.detach();
    const second = getMethod('lora').attach(model, {}, { targets, seed: 1 });
    expect(second.trainable.get(`${targets[0]}.lora_A.weight`)!.dataSync()).toEqual(saved);
    second.detach();
    model.dispose();
  });

  it('writes adapter_config.json fields and tensor names as peft does (Llama: [out, in]; GPT-2: fan_in_fan_out)', () => {
    const llama = tinyModel('llama-gqa-tied').model;
    const attached = getMethod('lora').attach(llama, { rank: 4 }, { targets: resolveTargets(llama, ['v_proj', 'q_proj']), seed: 0 });
    const { config, tensors } = attached.peftAdapter!();
    expect(config).toEqual({
      alpha_pattern: {},
      auto_mapping: null,
      base_model_name_or_path: null,
      bias: 'none',
      exclude_modules: null,
      fan_in_fan_out: false,
      inference_mode: true,
      init_lora_weights: true,
      layer_replication: null,
      layers_pattern: null,
      layers_to_transform: null,
      lora_alpha: 16,
      lora_bias: false,
      lora_dropout: 0.05,
      modules_to_save: null,
      peft_type: 'LORA',
      r: 4,
      rank_pattern: {},
      revision: null,
      target_modules: ['q_proj', 'v_proj'],
      task_type: 'CAUSAL_LM',
      use_dora: false,
      use_rslora: false,
    });
    expect(Object.keys(config)).toEqual(Object.keys(config).sort());
    const c = llama.config;
    expect(tensors.get('base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight')!.shape).toEqual([4, c.hiddenSize]);
    expect(tensors.get('base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight')!.shape).toEqual([c.numKvHeads * c.headDim, 4]);
    expect(tensors.size).toBe(2 * 2 * c.numLayers);
    for (const t of tensors.values()) t.dispose();
    attached.detach();
    llama.dispose();

    const gpt2 = tinyModel('gpt2').model;
    const one = getMethod('lora').attach(gpt2, { rank: 2 }, { targets: ['transformer.h.0.attn.c_attn'], seed: 0 });
    const exported = one.peftAdapter!();
    expect(exported.config.fan_in_fan_out).toBe(true);
    // One module of several named c_attn: full paths, so peft wraps exactly that one.
    expect(exported.config.target_modules).toEqual(['transformer.h.0.attn.c_attn']);
    const C = gpt2.config.hiddenSize;
    expect(exported.tensors.get('base_model.model.transformer.h.0.attn.c_attn.lora_A.weight')!.shape).toEqual([2, C]);
    expect(exported.tensors.get('base_model.model.transformer.h.0.attn.c_attn.lora_B.weight')!.shape).toEqual([3 * C, 2]);
    for (const t of exported.tensors.values()) t.dispose();
    one.detach();
    gpt2.dispose();
  });

  it('applies dropout to the adapter input only while training, with fresh seeded masks', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 1, 6, 4);
    const run = (seed: number) => {
      const attached = getMethod('lora').attach(model, { dropout: 0.5 }, { targets: resolveTargets(model, 'all-linear'), seed });
      randomize(attached, 2);
      const out = { eval1: logits(model, ids), eval2: logits(model, ids), train1: logits(model, ids, true), train2: logits(model, ids, true) };
      attached.detach();
      return out;
    };
    const a = run(1);
    expect(a.eval1).toEqual(a.eval2);
    expect(relativeError(a.train1, a.eval1)).toBeGreaterThan(1e-3);
    expect(relativeError(a.train2, a.train1)).toBeGreaterThan(1e-3); // a new mask each call
    const b = run(1);
    expect(b.train1).toEqual(a.train1); // same seed, same masks
    expect(b.train2).toEqual(a.train2);
    ids.dispose();
    model.dispose();
  });

  it('re-attaches a saved adapter (ctx.initial) with identical outputs, and refuses mismatched ones', () => {
    const { model } = tinyModel('gpt2');
    const ids = tokenIds(model.config.vocabSize, 1, 6, 5);
    const targets = resolveTargets(model, ['c_attn', 'c_fc']);
    const attached = getMethod('lora').attach(model, { rank: 3 }, { targets, seed: 1 });
    train(model, attached, ids, 2);
    const want = logits(model, ids);
    const { tensors } = attached.peftAdapter!();
    attached.detach();
    const saved = new Map([...tensors].map(([k, t]) => [k, t.dataSync() as Float32Array]));
    for (const t of tensors.values()) t.dispose();

    const again = getMethod('lora').attach(model, { rank: 3 }, { targets, seed: 99, initial: saved });
    expect(logits(model, ids)).toEqual(want);
    again.detach();

    const attachWith = (initial: Map<string, Float32Array>, rank = 3, t = targets) => () =>
      getMethod('lora').attach(model, { rank }, { targets: t, seed: 0, initial });
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(LowrankError);
        return (e as LowrankError).code;
      }
      return 'no error';
    };
    expect(code(attachWith(saved, 4))).toBe('SHAPE_MISMATCH');
    expect(code(attachWith(saved, 3, resolveTargets(model, ['c_attn'])))).toBe('BAD_ARGUMENT'); // c_fc tensors unused
    expect(code(attachWith(saved, 3, resolveTargets(model, ['c_attn', 'c_fc', 'c_proj'])))).toBe('MISSING_WEIGHT');
    expect(model.adapters.size).toBe(0); // a failed attach leaves nothing behind
    ids.dispose();
    model.dispose();
  });

  it('refuses bad parameters and a second adapter on the same module', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, ['q_proj']);
    expect(() => getMethod('lora').attach(model, { rank: 0 }, { targets, seed: 0 })).toThrow(/rank must be in \[1, 4096\], got 0/);
    expect(() => getMethod('lora').attach(model, { rank: 2.5 }, { targets, seed: 0 })).toThrow(/integer/);
    expect(() => getMethod('lora').attach(model, { r: 8 }, { targets, seed: 0 })).toThrow(/no parameter "r"/);
    const attached = getMethod('lora').attach(model, {}, { targets, seed: 0 });
    expect(() => getMethod('dora').attach(model, {}, { targets, seed: 0 })).toThrow(/already has an adapter/);
    attached.detach();
    model.dispose();
  });
});

describe('rslora', () => {
  it('scales the update by α/√r and records use_rslora in the PEFT config', () => {
    const { model, original } = tinyModel('llama-gqa-tied');
    const path = 'model.layers.0.mlp.gate_proj';
    const attached = getMethod('rslora').attach(model, { rank: 4, alpha: 6 }, { targets: [path], seed: 2 });
    randomize(attached, 7);
    const { config, tensors } = attached.peftAdapter!();
    expect(config.use_rslora).toBe(true);
    expect(config.r).toBe(4);
    expect(config.lora_alpha).toBe(6);
    const a = tensors.get(`base_model.model.${path}.lora_A.weight`)!.dataSync();
    const b = tensors.get(`base_model.model.${path}.lora_B.weight`)!.dataSync();
    const merged = attached.mergedWeights().get(`${path}.weight`)!;
    const w = original.get(`${path}.weight`)!;
    const [out, inn] = w.shape;
    const got = merged.dataSync();
    let worst = 0;
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inn; i++) {
        let ba = 0;
        for (let t = 0; t < 4; t++) ba += b[o * 4 + t] * a[t * inn + i];
        worst = Math.max(worst, Math.abs(got[o * inn + i] - w.data[o * inn + i] - (6 / Math.sqrt(4)) * ba));
      }
    }
    expect(worst).toBeLessThan(1e-6);
    merged.dispose();
    for (const t of tensors.values()) t.dispose();
    attached.detach();
    model.dispose();
  });
});

describe('loraplus', () => {
  it('gives B loraplus_lr_ratio × the learning rate of A, through AdamW', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 1, 6, 6);
    const targets = resolveTargets(model, ['q_proj', 'down_proj']);
    const attached = getMethod('loraplus').attach(model, {}, { targets, seed: 3 });
    for (const name of attached.trainable.keys()) expect(attached.lrScale(name)).toBe(name.endsWith('lora_B.weight') ? 16 : 1);
    randomize(attached, 5); // B ≠ 0 so A gets a gradient too
    const before = new Map([...attached.trainable].map(([n, v]) => [n, v.dataSync().slice()]));
    const lr = 1e-3;
    const optimizer = new AdamW(attached.trainable, { weightDecay: 0, lrScale: (n) => attached.lrScale(n) });
    const names = [...attached.trainable.keys()];
    const vars = names.map((n) => attached.trainable.get(n)!);
    const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.mean(tf.square(model.forward(ids).logits)) as tf.Scalar), vars);
    optimizer.step(new Map(names.map((n, i) => [n, grads[vars[i].name]])), lr);
    // Adam's first step moves each element by lr_group·|g|/(|g| + ε) ≈ lr_group.
    for (const [name, v] of attached.trainable) {
      const old = before.get(name)!;
      const step = Math.max(...v.dataSync().map((x, i) => Math.abs(x - old[i])));
      expect(step / lr).toBeCloseTo(name.endsWith('lora_B.weight') ? 16 : 1, 2);
    }
    value.dispose();
    for (const g of Object.values(grads)) g.dispose();
    optimizer.dispose();
    attached.detach();

    const custom = getMethod('loraplus').attach(model, { loraplus_lr_ratio: 4 }, { targets, seed: 3 });
    expect(custom.lrScale(`${targets[0]}.lora_B.weight`)).toBe(4);
    expect(custom.lrScale(`${targets[0]}.lora_A.weight`)).toBe(1);
    const exported = custom.peftAdapter!();
    expect(exported.config.use_rslora).toBe(false);
    for (const t of exported.tensors.values()) t.dispose();
    custom.detach();
    ids.dispose();
    model.dispose();
  });
});
