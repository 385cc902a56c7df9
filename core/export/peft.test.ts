/**
 * PEFT adapters: write -> read gives back the config peft writes and the exact tensors; attaching
 * the read adapter to a freshly loaded base gives the logits of a model whose weights were merged
 * by plain loops here (W + s·B·A; DoRA's row rescaling), for Llama ([out, in] weights, rsLoRA,
 * lm_head) and GPT-2 (Conv1D [in, out] weights: peft's fan_in_fan_out, with DoRA).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { buildModel, canonicalWeightName, loadModel } from '../models/load.ts';
import { parseModelConfig } from '../models/config.ts';
import { mulberry32, writeTinyCheckpoint, type TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';
import { applyPeftAdapter, readPeftAdapter, writePeftAdapter } from './peft.ts';
import { scratch } from './test-models.ts';
import type { HostTensor } from './weights.ts';

const root = scratch('peft');
beforeAll(async () => {
  await tf.setBackend('cpu');
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

interface Case {
  kind: TinyCheckpointKind;
  targets: string[]; // module paths
  r: number;
  alpha: number;
  rslora: boolean;
  dora: boolean;
}

function randomMatrix(rows: number, cols: number, std: number, next: () => number): HostTensor {
  const data = new Float32Array(rows * cols);
  for (let i = 0; i < data.length; i++) data[i] = (next() * 2 - 1) * std;
  return { shape: [rows, cols], data };
}

/** Plain-loop merge: the reference the adapter's logits must match. Returns weights in the stored layout. */
function mergeByLoops(
  base: HostTensor,
  transposed: boolean,
  A: HostTensor,
  B: HostTensor,
  s: number,
  magnitude?: Float32Array,
): Float32Array {
  const [r, inF] = A.shape as [number, number];
  const out = B.shape[0]!;
  const merged = new Float64Array(out * inF); // [out, in]
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) {
      let delta = 0;
      for (let k = 0; k < r; k++) delta += B.data[o * r + k]! * A.data[k * inF + i]!;
      const w = transposed ? base.data[i * out + o]! : base.data[o * inF + i]!;
      merged[o * inF + i] = w + s * delta;
    }
    if (magnitude) {
      let norm = 0;
      for (let i = 0; i < inF; i++) norm += merged[o * inF + i]! ** 2;
      const scale = magnitude[o]! / Math.sqrt(norm);
      for (let i = 0; i < inF; i++) merged[o * inF + i]! *= scale;
    }
  }
  const stored = new Float32Array(out * inF);
  for (let o = 0; o < out; o++) for (let i = 0; i < inF; i++) stored[transposed ? i * out + o : o * inF + i] = merged[o * inF + i]!;
  return stored;
}

function logitsOf(model: ReturnType<typeof loadModel>, ids: number[]): Float32Array {
  return tf.tidy(() => model.forward(tf.tensor2d(ids, [1, ids.length], 'int32')).logits.dataSync() as Float32Array);
}

const CASES: Case[] = [
  {
    kind: 'llama-untied',
    targets: ['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.v_proj', 'model.layers.0.mlp.down_proj', 'lm_head'],
    r: 4,
    alpha: 8,
    rslora: true,
    dora: false,
  },
  {
    kind: 'llama-gqa-tied',
    targets: ['model.layers.0.self_attn.k_proj', 'model.layers.1.mlp.gate_proj'],
    r: 2,
    alpha: 16,
    rslora: false,
    dora: true,
  },
  {
    kind: 'gpt2',
    targets: ['transformer.h.0.attn.c_attn', 'transformer.h.1.mlp.c_proj'],
    r: 4,
    alpha: 4,
    rslora: false,
    dora: true,
  },
];

describe('PEFT adapter round trip', () => {
  for (const c of CASES) {
    it(`${c.kind}: ${c.dora ? 'DoRA' : c.rslora ? 'rsLoRA' : 'LoRA'} on ${c.targets.length} modules matches a plain-loop merge`, async () => {
      const baseDir = path.join(root, `${c.kind}-base`);
      const checkpoint = writeTinyCheckpoint(baseDir, c.kind, 11);
      const config = parseModelConfig(checkpoint.config);
      const baseByName = new Map(checkpoint.tensors.map((t) => [canonicalWeightName(config, t.name), t]));
      const probe = loadModel(baseDir);
      const next = mulberry32(5);
      const tensors = new Map<string, HostTensor>();
      const merged = new Map<string, tf.Tensor>();
      for (const [name, t] of baseByName) merged.set(name, tf.tensor(t.data, t.shape));
      const s = c.rslora ? c.alpha / Math.sqrt(c.r) : c.alpha / c.r;
      for (const target of c.targets) {
        const transposed = probe.isTransposedLinear(target);
        const w = baseByName.get(`${target}.weight`)!;
        const [out, inF] = transposed ? [w.shape[1]!, w.shape[0]!] : [w.shape[0]!, w.shape[1]!];
        const A = randomMatrix(c.r, inF, 0.3, next);
        const B = randomMatrix(out, c.r, 0.3, next); // non-zero, unlike a fresh init, so the test sees it
        tensors.set(`base_model.model.${target}.lora_A.weight`, A);
        tensors.set(`base_model.model.${target}.lora_B.weight`, B);
        let magnitude: Float32Array | undefined;
        if (c.dora) {
          magnitude = new Float32Array(out).map(() => 0.5 + next());
          tensors.set(`base_model.model.${target}.lora_magnitude_vector`, { shape: [out], data: magnitude });
        }
        merged.get(`${target}.weight`)!.dispose();
        merged.set(`${target}.weight`, tf.tensor(mergeByLoops(w, transposed, A, B, s, magnitude), w.shape));
      }
      probe.dispose();

      const adapterDir = path.join(root, `${c.kind}-adapter`);
      const shortNames = [...new Set(c.targets.map((t) => t.split('.').pop()!))];
      await writePeftAdapter(
        adapterDir,
        {
          config: { peft_type: 'LORA', r: c.r, lora_alpha: c.alpha, use_rslora: c.rslora, use_dora: c.dora, target_modules: shortNames, fan_in_fan_out: c.kind === 'gpt2' },
          tensors,
        },
        baseDir,
      );
      expect(fs.readdirSync(adapterDir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
      const written = JSON.parse(fs.readFileSync(path.join(adapterDir, 'adapter_config.json'), 'utf8'));
      expect(Object.keys(written)).toEqual(Object.keys(written).sort()); // peft writes sort_keys=True
      expect(written).toMatchObject({
        peft_type: 'LORA',
        task_type: 'CAUSAL_LM',
        base_model_name_or_path: baseDir,
        r: c.r,
        lora_alpha: c.alpha,
        lora_dropout: 0,
        target_modules: shortNames,
        use_rslora: c.rslora,
        use_dora: c.dora,
        fan_in_fan_out: c.kind === 'gpt2',
        bias: 'none',
        modules_to_save: null,
        inference_mode: true,
        revision: null,
        init_lora_weights: true,
        layers_to_transform: null,
        rank_pattern: {},
        alpha_pattern: {},
      });

      const adapter = readPeftAdapter(adapterDir);
      expect(adapter.tensors.size).toBe(tensors.size);
      for (const [key, t] of tensors) {
        expect(adapter.tensors.get(key)!.shape).toEqual(t.shape);
        expect(Buffer.from(adapter.tensors.get(key)!.data.buffer).equals(Buffer.from(t.data.buffer))).toBe(true);
      }
      expect([...adapter.modules.keys()].sort()).toEqual([...c.targets].sort());
      for (const m of adapter.modules.values()) expect(m.scaling).toBeCloseTo(s, 12);

      const ids = [3, 17, 5, 42, 8, 1, 29, 12, 7];
      const adapted = loadModel(baseDir);
      const before = logitsOf(adapted, ids);
      const applied = applyPeftAdapter(adapted, adapter);
      const withAdapter = logitsOf(adapted, ids);
      const reference = buildModel(config, merged);
      const expected = logitsOf(reference, ids);
      let maxDiff = 0;
      let moved = 0;
      for (let i = 0; i < expected.length; i++) {
        maxDiff = Math.max(maxDiff, Math.abs(withAdapter[i]! - expected[i]!));
        moved = Math.max(moved, Math.abs(before[i]! - expected[i]!));
      }
      expect(moved).toBeGreaterThan(0.05); // the adapter really changes the model
      expect(maxDiff).toBeLessThan(2e-4);

      const tensorsBefore = tf.memory().numTensors;
      applied.detach();
      expect(adapted.adapters.size).toBe(0);
      expect(tf.memory().numTensors).toBeLessThan(tensorsBefore);
      const after = logitsOf(adapted, ids);
      for (let i = 0; i < before.length; i++) expect(after[i]).toBe(before[i]);
      adapted.dispose();
      reference.dispose();
    });
  }
});

describe('PEFT adapter errors', () => {
  const A = { shape: [2, 32], data: new Float32Array(64).fill(0.1) };
  const B = { shape: [32, 2], data: new Float32Array(64).fill(0.1) };
  const tensors = () =>
    new Map([
      ['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', A],
      ['base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight', B],
    ]);

  async function rejects(action: () => unknown, code: string, text: string): Promise<void> {
    try {
      await action();
    } catch (e) {
      expect(e).toBeInstanceOf(LowrankError);
      expect((e as LowrankError).code).toBe(code);
      expect((e as Error).message).toContain(text);
      return;
    }
    throw new Error('expected an error');
  }

  it('refuses adapters it cannot read, naming the field', async () => {
    const dir = path.join(root, 'ia3');
    await writePeftAdapter(dir, { config: { r: 2, lora_alpha: 4 }, tensors: tensors() }, 'base');
    const configFile = path.join(dir, 'adapter_config.json');
    const good = JSON.parse(fs.readFileSync(configFile, 'utf8'));
    expect(good.target_modules).toEqual(['q_proj']); // derived from the tensors when not given
    fs.writeFileSync(configFile, JSON.stringify({ ...good, peft_type: 'IA3' }));
    await rejects(() => readPeftAdapter(dir), 'BAD_CONFIG', 'peft_type "IA3" is not supported');
    fs.writeFileSync(configFile, JSON.stringify({ ...good, r: 4 }));
    await rejects(() => readPeftAdapter(dir), 'SHAPE_MISMATCH', 'has rank 2 but the config says r = 4');
    fs.writeFileSync(configFile, JSON.stringify({ ...good, use_dora: true }));
    await rejects(() => readPeftAdapter(dir), 'MISSING_WEIGHT', 'no lora_magnitude_vector');
    fs.writeFileSync(configFile, JSON.stringify({ ...good, modules_to_save: ['lm_head'] }));
    await rejects(() => readPeftAdapter(dir), 'BAD_CONFIG', 'modules_to_save');
    fs.rmSync(path.join(dir, 'adapter_model.safetensors'));
    fs.writeFileSync(configFile, JSON.stringify(good));
    await rejects(() => readPeftAdapter(dir), 'FILE_NOT_FOUND', 'adapter_model.safetensors');
  });

  it('refuses to write tensors that are not LoRA tensors, and leaves nothing behind', async () => {
    const dir = path.join(root, 'bad-key');
    const bad = tensors();
    bad.set('base_model.model.model.embed_tokens.lora_embedding_A', A);
    await rejects(() => writePeftAdapter(dir, { config: { r: 2, lora_alpha: 4 }, tensors: bad }, 'base'), 'BAD_SAFETENSORS', 'lora_embedding_A');
    expect(fs.existsSync(dir)).toBe(false);
  });

  it('refuses an adapter trained on another model', async () => {
    const baseDir = path.join(root, 'other-base');
    writeTinyCheckpoint(baseDir, 'llama-untied', 3); // hidden 48: the adapter's in-features are 32
    const dir = path.join(root, 'for-32');
    await writePeftAdapter(dir, { config: { r: 2, lora_alpha: 4 }, tensors: tensors() }, 'base');
    const model = loadModel(baseDir);
    await rejects(() => applyPeftAdapter(model, readPeftAdapter(dir)), 'SHAPE_MISMATCH', 'belongs to another base model');
    expect(model.adapters.size).toBe(0);
    model.dispose();
  });
});
