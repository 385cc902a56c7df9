/**
 * RandLoRA (Albert et al., arXiv:2502.00987; peft tuners/randlora) on tiny Llama (GQA, tied) and
 * GPT-2 (Conv1D) checkpoints: the shared bases regenerate bit for bit from the key; ΔW = 0 at init
 * (output and merged weights unchanged); only λ, γ are variables and get gradients, N·(r + d) per
 * module; after training, ΔW rebuilt in float64 from the exported RANDLORA tensors by peft's index
 * formula equals the merged update and the adapter's forward, its numerical rank exceeds r (full
 * rank min(in, out)); re-attaching the export continues from the same outputs; no tensor leaks.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import { SafetensorsFile } from '../io/safetensors.ts';
import { writePeftAdapter } from '../export/peft.ts';
import { getMethod } from './index.ts';
import { numBases, randloraBases, toBfloat16 } from './randlora.ts';
import { resolveTargets } from './targets.ts';
import type { AttachedMethod } from './method.ts';
import { disposeAll, logits, modelWithWeights, randomize, relativeError, tinyModel, tokenIds, train, trainer, type TinyModel } from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const r = 4;
const PARAMS = { rank: r, alpha: 2 * r }; // s = 2 (the official α = 2r), so the scaling is visible

/**
 * peft's get_delta_weight in float64 from the exported RANDLORA tensors, by the index formula:
 * core[p, j] = Σ_{i < r·N} B[p, i // r, i % r] · λ[i // N, i % N] · A₀[i // N, 0, j] · γ[i % N, j],
 * ΔW = s·core [out, in] when in = d, else s·coreᵀ. Returns ΔW [out, in] per module path.
 */
function referenceDelta(config: Record<string, unknown>, tensors: Map<string, tf.Tensor>, model: TinyModel['model']): Map<string, { delta: Float64Array; out: number; inn: number }> {
  const rank = config.r as number;
  const s = (config.randlora_alpha as number) / rank;
  const A = tensors.get('base_model.randlora_A')!;
  const B = tensors.get('base_model.randlora_B')!;
  const [a, b] = [A.dataSync(), B.dataSync()];
  const dBuf = A.shape[2]!;
  const [, nMax] = B.shape as number[];
  const result = new Map<string, { delta: Float64Array; out: number; inn: number }>();
  for (const [key, t] of tensors) {
    if (!key.endsWith('.randlora_lambda')) continue;
    const modulePath = key.slice('base_model.model.'.length, -'.randlora_lambda'.length);
    const lambda = t.dataSync();
    const gamma = tensors.get(`base_model.model.${modulePath}.randlora_gamma`)!.dataSync();
    const [rows, cols] = model.weight(`${modulePath}.weight`).shape;
    const [out, inn] = model.isTransposedLinear(modulePath) ? [cols, rows] : [rows, cols];
    const d = Math.min(out, inn);
    const D = Math.max(out, inn);
    const N = t.shape[1]!;
    const delta = new Float64Array(out * inn);
    for (let p = 0; p < D; p++) {
      for (let j = 0; j < d; j++) {
        let core = 0;
        for (let i = 0; i < rank * N; i++) {
          const [bb, kb] = [Math.floor(i / rank), i % rank]; // B_flat column i
          const [ka, ba] = [Math.floor(i / N), i % N]; // Ã_flat row i
          core += b[(p * nMax + bb) * rank + kb] * lambda[ka * N + ba] * a[ka * dBuf + j] * gamma[ba * d + j];
        }
        if (inn === d) delta[p * inn + j] = s * core;
        else delta[j * inn + p] = s * core; // coreᵀ
      }
    }
    result.set(modulePath, { delta, out, inn });
  }
  return result;
}

/**
 * numpy.linalg.matrix_rank's rule on the float64 ΔW: singular values (one-sided Jacobi, accurate to
 * working precision) above σ₁·max(m, n)·ε₆₄. A structural zero would sit at ~1e-16·σ₁.
 */
function numericalRank(delta: Float64Array, out: number, inn: number): { rank: number; smallest: number } {
  const { S } = jacobiSvd(delta, out, inn);
  const rank = S.filter((v) => v > S[0] * Math.max(out, inn) * 2.220446049250313e-16).length;
  return { rank, smallest: S[rank - 1] / S[0] };
}

function assignTrainable(attached: AttachedMethod, name: string, values: Float32Array): void {
  const v = attached.trainable.get(name)!;
  tf.tidy(() => v.assign(tf.tensor(values, v.shape)));
}

function savedState(attached: AttachedMethod): Map<string, Float32Array> {
  const { tensors } = attached.peftAdapter!();
  const saved = new Map([...tensors].map(([k, t]) => [k, (t.dataSync() as Float32Array).slice()]));
  disposeAll(tensors.values());
  return saved;
}

describe('randlora', () => {
  it('regenerates the shared bases bit for bit from the key: bf16 values with unit std, ternary when sparse', () => {
    const first = randloraBases(7, r, 24, 40);
    expect(first.numBases).toBe(6); // ⌈24 / 4⌉
    expect(first.a).toHaveLength(r * 24);
    expect(first.b).toHaveLength(40 * 6 * r);
    expect(randloraBases(7, r, 24, 40)).toEqual(first);
    expect(randloraBases(8, r, 24, 40).a).not.toEqual(first.a);
    for (const values of [first.a, first.b]) {
      expect(values.every((v) => toBfloat16(v) === v)).toBe(true);
      const mean = values.reduce((acc, x) => acc + x, 0) / values.length;
      const std = Math.sqrt(values.reduce((acc, x) => acc + (x - mean) ** 2, 0) / (values.length - 1));
      expect(Math.abs(std - 1)).toBeLessThan(0.01); // divided by its std (bf16 rounding moves it < 0.4 %)
      expect(Math.max(...values.map(Math.abs))).toBeLessThan(Math.sqrt(3) * 1.1); // U(−√3, √3) after normalising
    }
    const sparse = randloraBases(7, r, 24, 40, 'sparse');
    const levels = new Set(sparse.b);
    expect(levels.size).toBe(3); // −c, 0, +c
    const zeros = sparse.b.filter((v) => v === 0).length / sparse.b.length;
    expect(Math.abs(zeros - 2 / 3)).toBeLessThan(0.05); // P(0) = 1 − 2·1/6
    expect(toBfloat16(1 + 2 ** -9)).toBe(1); // ties to even
    expect(toBfloat16(1 + 3 * 2 ** -9)).toBe(1 + 2 ** -7);
  });

  describe.each(['llama-gqa-tied', 'gpt2'] as TinyCheckpointKind[])('%s', (kind) => {
    it('ΔW = 0 at init; only λ, γ are variables and get gradients, N·(r + d) per module; detach frees everything', () => {
      const { model, original } = tinyModel(kind);
      const ids = tokenIds(model.config.vocabSize, 2, 6, 1);
      const before = logits(model, ids);
      const tensorsBefore = tf.memory().numTensors;
      const targets = resolveTargets(model, 'all-linear');
      const attached = getMethod('randlora').attach(model, PARAMS, { targets, seed: 3 });
      expect(logits(model, ids)).toEqual(before); // λ = 0
      const merged = attached.mergedWeights();
      for (const [name, w] of merged) expect(w.dataSync()).toEqual(original.get(name)!.data);
      disposeAll(merged.values());

      let expected = 0;
      for (const p of targets) {
        const [rows, cols] = model.weight(`${p}.weight`).shape;
        const d = Math.min(rows, cols);
        expected += numBases(d, r) * (r + d);
        const gamma = attached.trainable.get(`${p}.randlora_gamma`)!;
        expect(gamma.shape).toEqual([numBases(d, r), d]);
        expect([...gamma.dataSync()].every((v) => v === Math.fround(1 / Math.max(numBases(d, r), d)))).toBe(true);
      }
      expect(attached.trainableParameterCount()).toBe(expected);
      // By hand for Llama: per layer q, o [32, 32]: 8·(4 + 32) = 288 each; k, v [16, 32]: 4·20 = 80 each;
      // gate, up, down (32 ↔ 64): 288 each: 2 layers × (2·288 + 2·80 + 3·288) = 3200.
      if (kind === 'llama-gqa-tied') expect(expected).toBe(3200);
      expect([...attached.trainable.keys()]).toEqual(targets.flatMap((p) => [`${p}.randlora_lambda`, `${p}.randlora_gamma`]));

      randomize(attached, 4); // λ ≠ 0, so γ has a gradient too
      for (const w of model.weights.values()) expect(w).not.toBeInstanceOf(tf.Variable);
      const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.sum(tf.square(model.forward(ids).logits)) as tf.Scalar));
      const byVariable = new Map([...attached.trainable].map(([n, v]) => [v.name, n]));
      expect(Object.keys(grads).sort()).toEqual([...byVariable.keys()].sort());
      for (const [varName, g] of Object.entries(grads)) {
        expect(g.shape).toEqual(attached.trainable.get(byVariable.get(varName)!)!.shape);
        expect(tf.tidy(() => tf.max(tf.abs(g)).dataSync()[0])).toBeGreaterThan(0);
      }
      value.dispose();
      disposeAll(Object.values(grads));

      attached.detach();
      expect(model.adapters.size).toBe(0);
      expect(tf.memory().numTensors).toBe(tensorsBefore);
      expect(logits(model, ids)).toEqual(before);
      ids.dispose();
      model.dispose();
    });

    it('after training: rank(ΔW) > r; peft\'s index formula on the export == merged update == forward; re-attaching the export continues', () => {
      const { model, original } = tinyModel(kind);
      const ids = tokenIds(model.config.vocabSize, 2, 7, 2);
      const targets = resolveTargets(model, 'all-linear');
      const attached = getMethod('randlora').attach(model, PARAMS, { targets, seed: 5 });
      train(model, attached, ids, 3, 0.02);
      const adapterLogits = logits(model, ids);
      const saved0 = new Map([...attached.trainable].map(([n, v]) => [n, (v.dataSync() as Float32Array).slice()]));

      const { config, tensors } = attached.peftAdapter!();
      expect(config).toMatchObject({ peft_type: 'RANDLORA', r, randlora_alpha: 2 * r, save_projection: true, fan_in_fan_out: kind === 'gpt2' });
      const reference = referenceDelta(config, tensors, model);
      expect([...reference.keys()].sort()).toEqual([...targets].sort());
      const merged = attached.mergedWeights();
      const ranks: string[] = [];
      for (const [modulePath, { delta, out, inn }] of reference) {
        // merged − W₀ == ΔW (in the stored layout).
        const name = `${modulePath}.weight`;
        const w0 = original.get(name)!.data;
        const got = merged.get(name)!.dataSync();
        const transposed = model.isTransposedLinear(modulePath);
        const want = Float64Array.from(got, (_, k) => {
          const [i, j] = transposed ? [k % out, Math.floor(k / out)] : [Math.floor(k / inn), k % inn];
          return w0[k] + delta[i * inn + j];
        });
        expect(relativeError(got, want)).toBeLessThanOrEqual(1e-5);
        const { rank, smallest } = numericalRank(delta, out, inn);
        ranks.push(`${rank}/${Math.min(out, inn)} (σ_min/σ₁ ${smallest.toExponential(1)})`);
        expect(rank).toBeGreaterThan(r);
      }
      console.log(`randlora ${kind}: numerical rank of the trained ΔW per module (r = ${r}): ${ranks.join(', ')}`);
      const mergedModel = modelWithWeights(model, merged);
      expect(relativeError(logits(mergedModel, ids), adapterLogits)).toBeLessThanOrEqual(1e-5);
      disposeAll([...merged.values(), ...tensors.values()]);

      // With λ, γ in general position (ALGORITHMS.md §4 (f)), every module reaches full rank min(in, out).
      randomize(attached, 7, 0.5);
      const random = attached.peftAdapter!();
      for (const { delta, out, inn } of referenceDelta(random.config, random.tensors, model).values()) expect(numericalRank(delta, out, inn).rank).toBe(Math.min(out, inn));
      disposeAll(random.tensors.values());
      for (const [name, t] of saved0) assignTrainable(attached, name, t);

      const saved = savedState(attached);
      attached.detach();
      const again = getMethod('randlora').attach(model, { ...PARAMS, projection_prng_key: 99 }, { targets, seed: 99, initial: saved });
      expect(logits(model, ids)).toEqual(adapterLogits); // the saved bases win over the key
      again.detach();
      ids.dispose();
      model.dispose();
    });
  });

  it('keeps tf.memory().numTensors flat across training steps (dropout on)', () => {
    const { model } = tinyModel('gpt2');
    const ids = tokenIds(model.config.vocabSize, 2, 6, 4);
    const attached = getMethod('randlora').attach(model, { ...PARAMS, dropout: 0.1 }, { targets: resolveTargets(model, 'all-linear'), seed: 1 });
    const loop = trainer(model, attached, ids);
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

  it('writes peft\'s RANDLORA adapter: RandLoraConfig fields, shared bases, λ and γ per module', async () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, ['q_proj', 'k_proj']);
    const attached = getMethod('randlora').attach(model, { rank: 8 }, { targets, seed: 0 });
    const adapter = attached.peftAdapter!();
    expect(adapter.config).toEqual({
      auto_mapping: null,
      base_model_name_or_path: null,
      bias: 'none',
      fan_in_fan_out: false,
      inference_mode: true,
      init_weights: true,
      layers_pattern: null,
      layers_to_transform: null,
      modules_to_save: null,
      peft_type: 'RANDLORA',
      projection_prng_key: 0,
      r: 8,
      randlora_alpha: 640,
      randlora_dropout: 0,
      revision: null,
      save_projection: true,
      sparse: false,
      target_modules: ['k_proj', 'q_proj'],
      task_type: 'CAUSAL_LM',
      very_sparse: false,
    });
    // q [32, 32], k [16, 32]: d_buf = min(32, 32) = 32, D_buf = 32, N_max = 4; k has d = 16, N = 2.
    expect(adapter.tensors.get('base_model.randlora_A')!.shape).toEqual([8, 1, 32]);
    expect(adapter.tensors.get('base_model.randlora_B')!.shape).toEqual([32, 4, 8]);
    expect(adapter.tensors.get('base_model.model.model.layers.0.self_attn.k_proj.randlora_lambda')!.shape).toEqual([8, 2]);
    expect(adapter.tensors.get('base_model.model.model.layers.0.self_attn.k_proj.randlora_gamma')!.shape).toEqual([2, 16]);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-randlora-'));
    try {
      await writePeftAdapter(path.join(dir, 'out'), adapter, '/models/base');
      const config = JSON.parse(fs.readFileSync(path.join(dir, 'out', 'adapter_config.json'), 'utf8'));
      expect(config).toMatchObject({ peft_type: 'RANDLORA', r: 8, save_projection: true, base_model_name_or_path: '/models/base' });
      const file = SafetensorsFile.open(path.join(dir, 'out', 'adapter_model.safetensors'));
      const keys = [...file.tensors.keys()].sort();
      file.close();
      expect(keys).toHaveLength(2 + 2 * 2 * model.config.numLayers);
      expect(keys).toContain('base_model.randlora_B');
      expect(keys).toContain('base_model.model.model.layers.1.self_attn.q_proj.randlora_gamma');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    disposeAll(adapter.tensors.values());
    attached.detach();
    model.dispose();
  });
});
