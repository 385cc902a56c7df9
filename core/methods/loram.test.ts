/**
 * LoRAM (Zhang et al., arXiv:2502.13533; junzhang-zj/LoRAM) on a tiny GQA Llama (4 query heads over
 * 2 key/value heads, 64 MLP channels, 2 layers: both pruned under the shallow-model rule). The
 * defining properties: training runs on the structurally pruned model, checked against a genuinely
 * smaller Llama built here from the kept rows and columns with plain loops; the recovered adapter
 * equals the trained one on the kept indices and is zero elsewhere, and loads on the FULL model as a
 * plain LoRA (peft's merge, float64, and the `lora` method with the export as its initial values)
 * giving the in-engine logits. Also: stru keeps the units of largest Taylor importance, counts,
 * neutral start, clean detach, one-line refusals.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { buildModel } from '../models/load.ts';
import { getMethod } from './index.ts';
import { choosePruning, keptCount, prunedLayerRange, type LayerPruning } from './loram.ts';
import { resolveParams } from './params.ts';
import { resolveTargets } from './targets.ts';
import type { BaseGradientSource } from './method.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';
import {
  disposeAll,
  expectNeutralAttachAndCleanDetach,
  logits,
  modelWithWeights,
  randomize,
  referenceMerge,
  relativeError,
  tinyModel,
  tokenIds,
} from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const r = 4;
const alpha = 8;
const PARAMS = { rank: r, alpha, dropout: 0, pruning: 'rand' };

/** Row-major [rows, cols] restricted to the given rows and columns (null = all), float64. */
function submatrix(data: ArrayLike<number>, cols: number, keepRows: number[], keepCols: number[]): Float64Array {
  const out = new Float64Array(keepRows.length * keepCols.length);
  keepRows.forEach((i, a) => keepCols.forEach((j, b) => (out[a * keepCols.length + b] = data[i * cols + j])));
  return out;
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

describe('loram', () => {
  it('prunes over the paper\'s layer range, or the same proportions on a shallow model, and keeps at least one unit', () => {
    expect(prunedLayerRange(80, 4, 2)).toEqual([4, 78]); // the repo's 4..78 of LLaMA-3.1-70B
    expect(prunedLayerRange(32, 4, 2)).toEqual([4, 30]); // LLM-Pruner's 4..30 of a 32-layer Llama
    expect(prunedLayerRange(4, 4, 2)).toEqual([0, 4]);
    expect(prunedLayerRange(2, 4, 2)).toEqual([0, 2]);
    expect(keptCount(8, 0.85)).toBe(1); // round(6.8) = 7 of 8 kv heads go
    expect(keptCount(2, 0.85)).toBe(1); // never all
    expect(keptCount(28672, 0.85)).toBe(4301);
  });

  it.each<TinyCheckpointKind>(['llama-gqa-tied', 'qwen2'])('%s: trains on the structurally pruned model: its training forward equals a smaller model built from the kept heads and channels', (kind) => {
    const { model, original } = tinyModel(kind);
    const { headDim: D, numHeads: H, numKvHeads: KV, hiddenSize: C, intermediateSize: I } = model.config;
    const groups = H / KV;
    const targets = resolveTargets(model, 'all-linear');
    const attached = getMethod('loram').attach(model, PARAMS, { targets, seed: 5 });
    randomize(attached, 11, 0.2);
    const ids = tokenIds(model.config.vocabSize, 2, 7, 3);
    const got = logits(model, ids, true);

    // The smaller model: each kept kv head g keeps query heads g·groups … (g+1)·groups − 1.
    const pruning = choosePruning(model, resolveParams('loram', getMethod('loram').schema, PARAMS), 5);
    expect(pruning.map((p) => p.layer)).toEqual([0, 1]);
    const keptKv = pruning[0].kvHeads.length;
    const keptChannels = pruning[0].channels.length;
    expect([keptKv, keptChannels]).toEqual([1, 10]);
    const weights = new Map<string, tf.Tensor>();
    for (const [name, t] of original) if (!/layers\.\d+\.(self_attn|mlp)\./.test(name)) weights.set(name, tf.tensor(t.data, t.shape));
    const s = alpha / r;
    const kept = (p: LayerPruning) => ({
      q: p.kvHeads.flatMap((g) => range(groups * D).map((d) => g * groups * D + d)),
      kv: p.kvHeads.flatMap((g) => range(D).map((d) => g * D + d)),
      mlp: p.channels,
    });
    for (const p of pruning) {
      const k = kept(p);
      const modules: Array<[string, number[], number[]]> = [
        ['self_attn.q_proj', k.q, range(C)],
        ['self_attn.k_proj', k.kv, range(C)],
        ['self_attn.v_proj', k.kv, range(C)],
        ['self_attn.o_proj', range(C), k.q],
        ['mlp.gate_proj', k.mlp, range(C)],
        ['mlp.up_proj', k.mlp, range(C)],
        ['mlp.down_proj', range(C), k.mlp],
      ];
      for (const [module, rows, cols] of modules) {
        const path = `model.layers.${p.layer}.${module}`;
        const w = original.get(`${path}.weight`)!;
        const wp = submatrix(w.data, w.shape[1], rows, cols);
        // W^P + s·B^P·A^P with the trained pruned-shape factors.
        const a = attached.trainable.get(`${path}.loram_A`)!.dataSync();
        const b = attached.trainable.get(`${path}.loram_B`)!.dataSync();
        expect(a.length).toBe(r * cols.length);
        expect(b.length).toBe(rows.length * r);
        for (let i = 0; i < rows.length; i++) {
          for (let j = 0; j < cols.length; j++) {
            let ba = 0;
            for (let t = 0; t < r; t++) ba += b[i * r + t] * a[t * cols.length + j];
            wp[i * cols.length + j] += s * ba;
          }
        }
        weights.set(`${path}.weight`, tf.tensor2d(Float32Array.from(wp), [rows.length, cols.length]));
        const bias = original.get(`${path}.bias`); // Qwen2's q/k/v biases: the kept rows
        if (bias) weights.set(`${path}.bias`, tf.tensor1d(rows.map((i) => bias.data[i])));
      }
      for (const norm of ['input_layernorm', 'post_attention_layernorm']) {
        const n = original.get(`model.layers.${p.layer}.${norm}.weight`)!;
        weights.set(`model.layers.${p.layer}.${norm}.weight`, tf.tensor(n.data, n.shape));
      }
    }
    const small = buildModel({ ...model.config, numHeads: keptKv * groups, numKvHeads: keptKv, intermediateSize: keptChannels }, weights);
    const want = logits(small, ids);
    expect(relativeError(got, want)).toBeLessThan(2e-6); // measured 2.4e-7 (float32)
    // The full model is a different function: the pruning did something.
    expect(relativeError(logits(model, ids), want)).toBeGreaterThan(1e-2);
    small.dispose();
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('recovers the adapter to the full model: zero-filled factors, a plain LoRA that loads on the full base and gives the in-engine logits', () => {
    const { model, original } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, 'all-linear');
    const attached = getMethod('loram').attach(model, PARAMS, { targets, seed: 5 });
    randomize(attached, 11, 0.2);
    const ids = tokenIds(model.config.vocabSize, 2, 7, 3);
    const inEngine = logits(model, ids); // inference: W₀ + s·B^R·A^R on the full model
    const { config, tensors } = attached.peftAdapter!();
    expect(config).toMatchObject({ peft_type: 'LORA', r, lora_alpha: alpha, use_rslora: false });
    expect((config.target_modules as string[]).sort()).toEqual(['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']);

    // Full shapes; on kept indices the recovered ΔW^R equals the trained s·B^P·A^P, elsewhere it is 0.
    const [p] = choosePruning(model, resolveParams('loram', getMethod('loram').schema, PARAMS), 5);
    const { headDim: D, numHeads: H, numKvHeads: KV, hiddenSize: C } = model.config;
    const qRows = p.kvHeads.flatMap((g) => range((H / KV) * D).map((d) => (g * H) / KV * D + d));
    const check = (module: string, keptRows: number[] | null, keptCols: number[] | null) => {
      const path = `model.layers.0.${module}`;
      const A = tensors.get(`base_model.model.${path}.lora_A.weight`)!;
      const B = tensors.get(`base_model.model.${path}.lora_B.weight`)!;
      const [out, inn] = model.weightShape(`${path}.weight`);
      expect(A.shape).toEqual([r, inn]);
      expect(B.shape).toEqual([out, r]);
      const [a, b] = [A.dataSync(), B.dataSync()];
      const rows = keptRows ?? range(out);
      const cols = keptCols ?? range(inn);
      const ap = attached.trainable.get(`${path}.loram_A`)!.dataSync();
      const bp = attached.trainable.get(`${path}.loram_B`)!.dataSync();
      let zeros = 0;
      for (let i = 0; i < out; i++) {
        for (let j = 0; j < inn; j++) {
          let delta = 0;
          for (let t = 0; t < r; t++) delta += b[i * r + t] * a[t * inn + j];
          const [pi, pj] = [rows.indexOf(i), cols.indexOf(j)];
          if (pi < 0 || pj < 0) {
            expect(delta).toBe(0);
            zeros++;
            continue;
          }
          let trained = 0;
          for (let t = 0; t < r; t++) trained += bp[pi * r + t] * ap[t * cols.length + pj];
          expect(delta).toBe(trained);
        }
      }
      expect(zeros).toBe(out * inn - rows.length * cols.length);
    };
    check('self_attn.q_proj', qRows, null);
    check('self_attn.o_proj', null, qRows);
    check('mlp.down_proj', null, p.channels);
    expect(qRows.length).toBeLessThan(C);

    // peft's merge of the export on the ORIGINAL base, in float64, gives the in-engine logits.
    const merged = new Map([...referenceMerge(config, tensors, original)].map(([name, w]) => [name, tf.tensor(Float32Array.from(w), original.get(name)!.shape)]));
    const reference = modelWithWeights(model, merged);
    expect(relativeError(logits(reference, ids), inEngine)).toBeLessThan(2e-6); // measured 3.6e-7
    // So do the method's own merged weights.
    const own = attached.mergedWeights();
    const ownModel = modelWithWeights(model, own);
    expect(relativeError(logits(ownModel, ids), inEngine)).toBeLessThan(2e-6);

    // The export loads on the full model as a plain LoRA (the `lora` method, initial values).
    const initial = new Map([...tensors].map(([k, t]) => [k, t.dataSync() as Float32Array]));
    const fresh = tinyModel('llama-gqa-tied').model;
    const asLora = getMethod('lora').attach(fresh, { rank: r, alpha, dropout: 0 }, { targets, seed: 0, initial });
    expect(relativeError(logits(fresh, ids), inEngine)).toBeLessThan(2e-6);
    // And re-attaching loram from it continues the same training state.
    asLora.detach();
    const again = getMethod('loram').attach(fresh, PARAMS, { targets, seed: 5, initial });
    for (const [name, v] of attached.trainable) expect(again.trainable.get(name)!.dataSync()).toEqual(v.dataSync());
    again.detach();
    fresh.dispose();
    disposeAll([...tensors.values(), ...merged.values(), ...own.values()]);
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('stru keeps the heads and channels of largest first-order Taylor importance Σ|w·∂L/∂w|', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const { intermediateSize: I, hiddenSize: C, headDim: D } = model.config;
    // Gradients nonzero only on gate rows {3, 17, …} (10 channels, as many as are kept) and on kv head 1's k rows.
    const important = [3, 17, 20, 31, 40, 41, 50, 55, 60, 63];
    let asked: { names: string[]; samples: number; batchSize: number } | null = null;
    const source: BaseGradientSource = {
      schedule: { lr: 0.01, warmupRatio: 0.1, trainExamples: 10, epochs: 1 },
      gradients(names, samples, batchSize) {
        asked = { names, samples, batchSize };
        return new Map(
          names.map((name) => {
            const [out, inn] = model.weightShape(name);
            const g = new Float32Array(out * inn);
            if (name.endsWith('gate_proj.weight')) for (const j of important) g.fill(1, j * C, (j + 1) * C);
            if (name.endsWith('k_proj.weight')) g.fill(-1, D * C, 2 * D * C);
            return [name, g];
          }),
        );
      },
    };
    const targets = resolveTargets(model, ['q_proj', 'v_proj']);
    const attached = getMethod('loram').attach(model, { rank: r }, { targets, seed: 1, baseGradients: source });
    expect(asked!.samples).toBe(10);
    expect(asked!.batchSize).toBe(10);
    expect(asked!.names).toHaveLength(2 * 7);
    const pruning = choosePruning(model, resolveParams('loram', getMethod('loram').schema, {}), 1, source);
    for (const p of pruning) {
      expect(p.channels).toEqual(important);
      expect(p.kvHeads).toEqual([1]);
    }
    expect(important.length).toBe(keptCount(I, 0.85));
    // q_proj keeps kv head 1's two query heads: 16 rows of 32; v_proj 8 rows of 16.
    expect(attached.trainable.get('model.layers.0.self_attn.q_proj.loram_B')!.shape).toEqual([16, r]);
    expect(attached.trainable.get('model.layers.0.self_attn.v_proj.loram_B')!.shape).toEqual([8, r]);
    attached.detach();
    model.dispose();
  });

  it('counts r·(kept rows + kept columns) per target without attaching, as attach does', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, 'all-linear');
    const count = getMethod('loram').countTrainable!(model, PARAMS, targets);
    // Per layer: q 16×32, k 8×32, v 8×32, o 32×16, gate 10×32, up 10×32, down 32×10 (rows × cols kept).
    const perLayer = r * (16 + 32 + (8 + 32) * 2 + 32 + 16 + (10 + 32) * 2 + 32 + 10);
    expect(count).toBe(2 * perLayer);
    const attached = getMethod('loram').attach(model, PARAMS, { targets, seed: 2 });
    expect(attached.trainableParameterCount()).toBe(count);
    attached.detach();
    model.dispose();
  });

  it('starts from the base model at inference (B = 0) and detaches cleanly', () => {
    expectNeutralAttachAndCleanDetach('llama-gqa-tied', 'loram', PARAMS);
  });

  it('refuses GPT-2 and stru pruning without training gradients, in one line', () => {
    const gpt2 = tinyModel('gpt2').model;
    expect(() => getMethod('loram').attach(gpt2, PARAMS, { targets: ['transformer.h.0.attn.c_attn'], seed: 0 })).toThrow(/loram prunes .* GPT2LMHeadModel is not one/);
    gpt2.dispose();
    const { model } = tinyModel('llama-gqa-tied');
    expect(() => getMethod('loram').attach(model, { rank: r }, { targets: ['model.layers.0.self_attn.q_proj'], seed: 0 })).toThrow(/pruning=stru .* use --param pruning=rand/);
    expect(model.adapters.size).toBe(0);
    model.dispose();
  });
});
