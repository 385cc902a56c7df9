/**
 * VeRA specifics (Kopiczko et al., arXiv:2310.11454; peft tuners/vera): the shared projections
 * regenerate bit for bit from projection_prng_key with peft's kaiming-uniform bounds, each module
 * slices them, λ_d starts at d_initial and λ_b at 0 (ΔW = 0), the trainable count is Σ (r + out),
 * and the export is peft's VERA adapter with the projections saved.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../backend/index.ts';
import { SafetensorsFile } from '../io/safetensors.ts';
import { writePeftAdapter } from '../export/peft.ts';
import { getMethod } from './index.ts';
import { veraProjections } from './vera.ts';
import { resolveTargets } from './targets.ts';
import { disposeAll, tinyModel } from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

describe('vera', () => {
  it('regenerates the shared projections bit for bit from the key, kaiming-uniform with gain √2', () => {
    const r = 16;
    const first = veraProjections(7, r, 48, 96);
    expect(veraProjections(7, r, 48, 96)).toEqual(first);
    expect(veraProjections(8, r, 48, 96).a).not.toEqual(first.a);
    for (const [values, fanIn] of [
      [first.a, 48],
      [first.b, r],
    ] as const) {
      const bound = Math.sqrt(6 / fanIn); // gain √2: √3·√2/√fan_in
      expect(Math.max(...values.map(Math.abs))).toBeLessThanOrEqual(bound);
      const variance = values.reduce((acc, x) => acc + x * x, 0) / values.length;
      expect(variance / ((bound * bound) / 3)).toBeGreaterThan(0.85); // U(−b, b) has variance b²/3
      expect(variance / ((bound * bound) / 3)).toBeLessThan(1.15);
    }
  });

  it('shares one A [r, in_max] and B [out_max, r] across modules; λ_d = d_initial, λ_b = 0 so ΔW = 0; count = Σ (r + out)', () => {
    const { model, original } = tinyModel('gpt2'); // c_attn [32 → 96], c_fc [32 → 128], mlp.c_proj [128 → 32]
    const r = 8;
    const targets = resolveTargets(model, ['c_attn', 'c_fc', 'mlp.c_proj']);
    const attached = getMethod('vera').attach(model, { rank: r, projection_prng_key: 3, d_initial: 0.25 }, { targets, seed: 0 });
    // 2 layers × ((8 + 96) + (8 + 128) + (8 + 32)) = 560, by hand.
    expect(attached.trainableParameterCount()).toBe(560);
    for (const [name, v] of attached.trainable) {
      const want = name.endsWith('vera_lambda_d') ? 0.25 : 0;
      expect([...v.dataSync()].every((x) => x === want)).toBe(true);
    }
    const { tensors } = attached.peftAdapter!();
    const want = veraProjections(3, r, 128, 128); // in_max = 128 (mlp.c_proj), out_max = 128 (c_fc)
    expect(tensors.get('base_model.vera_A')!.shape).toEqual([r, 128]);
    expect(tensors.get('base_model.vera_B')!.shape).toEqual([128, r]);
    expect(tensors.get('base_model.vera_A')!.dataSync()).toEqual(want.a);
    expect(tensors.get('base_model.vera_B')!.dataSync()).toEqual(want.b);
    disposeAll(tensors.values());
    const merged = attached.mergedWeights();
    for (const [name, w] of merged) expect(w.dataSync()).toEqual(original.get(name)!.data); // ΔW = 0 at init
    disposeAll(merged.values());
    attached.detach();
    model.dispose();
  });

  it('exports peft\'s VERA adapter: VeraConfig fields, vera_lambda_b/d per module, base_model.vera_A/B', async () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, ['q_proj', 'v_proj']);
    const attached = getMethod('vera').attach(model, { rank: 4 }, { targets, seed: 0 });
    const adapter = attached.peftAdapter!();
    expect(adapter.config).toEqual({
      auto_mapping: null,
      base_model_name_or_path: null,
      bias: 'none',
      d_initial: 0.1,
      fan_in_fan_out: false,
      inference_mode: true,
      init_weights: true,
      layers_pattern: null,
      layers_to_transform: null,
      modules_to_save: null,
      peft_type: 'VERA',
      projection_prng_key: 0,
      r: 4,
      revision: null,
      save_projection: true,
      target_modules: ['q_proj', 'v_proj'],
      task_type: 'CAUSAL_LM',
      vera_dropout: 0,
    });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-vera-'));
    try {
      await writePeftAdapter(path.join(dir, 'out'), adapter, '/models/base');
      const config = JSON.parse(fs.readFileSync(path.join(dir, 'out', 'adapter_config.json'), 'utf8'));
      expect(config).toMatchObject({ peft_type: 'VERA', r: 4, save_projection: true, base_model_name_or_path: '/models/base' });
      const file = SafetensorsFile.open(path.join(dir, 'out', 'adapter_model.safetensors'));
      const keys = [...file.tensors.keys()].sort();
      file.close();
      const c = model.config;
      expect(keys).toHaveLength(2 + 2 * 2 * c.numLayers);
      expect(keys).toContain('base_model.vera_A');
      expect(keys).toContain('base_model.model.model.layers.1.self_attn.v_proj.vera_lambda_b');
      expect(keys).toContain('base_model.model.model.layers.0.self_attn.q_proj.vera_lambda_d');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    disposeAll(adapter.tensors.values());
    attached.detach();
    model.dispose();
  });
});
