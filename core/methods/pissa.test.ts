/**
 * PiSSA specifics (Meng et al., arXiv:2404.02948; peft pissa_init): A₀, B₀ are the principal
 * singular triplets scaled by √(S/s), the frozen weight is the residual W − s·B₀·A₀ while attached,
 * the PEFT export is the rank-2r LoRA [A; A₀], [B | −B₀] for the ORIGINAL base with α scaled to
 * keep s, and re-attaching that export continues exactly where training stopped.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import { logits, relativeError, tinyModel, tokenIds, train } from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

/** W [out, in] in float64 from the fixture (GPT-2 Conv1D stored [in, out]). */
function weightOutIn(w: { shape: number[]; data: Float32Array }, transposed: boolean): { out: number; inn: number; data: Float64Array } {
  const [rows, cols] = w.shape;
  const [out, inn] = transposed ? [cols, rows] : [rows, cols];
  const data = new Float64Array(out * inn);
  for (let o = 0; o < out; o++) for (let i = 0; i < inn; i++) data[o * inn + i] = w.data[transposed ? i * out + o : o * inn + i];
  return { out, inn, data };
}

const CASES: Array<[TinyCheckpointKind, string]> = [
  ['llama-gqa-tied', 'model.layers.0.mlp.up_proj'],
  ['gpt2', 'transformer.h.0.mlp.c_fc'],
];

describe.each(CASES)('pissa on %s (%s)', (kind, path) => {
  it.each(['exact', 'randomized'])('%s SVD: A₀ = √(S/s)·Vᵀ, B₀ = U·√(S/s), residual = W − s·B₀·A₀ holds the tail of the spectrum', (svd) => {
    const { model, original } = tinyModel(kind);
    const r = 4;
    const alpha = 6; // s = 1.5 ≠ 1, so the √(S/s) split is visible
    const s = alpha / r;
    const attached = getMethod('pissa').attach(model, { rank: r, alpha, svd, svd_niter: 8 }, { targets: [path], seed: 1 });
    const a0 = attached.trainable.get(`${path}.lora_A.weight`)!.dataSync();
    const b0 = attached.trainable.get(`${path}.lora_B.weight`)!.dataSync();
    const { out, inn, data: w } = weightOutIn(original.get(`${path}.weight`)!, kind === 'gpt2');
    const sigma = jacobiSvd(w, out, inn).S;
    const tol = svd === 'exact' ? 1e-5 : 1e-3;
    // A₀·A₀ᵀ = diag(S_r/s) (rows of Vᵀ are orthonormal) and B₀ᵀ·B₀ = diag(S_r/s).
    for (let p = 0; p < r; p++) {
      for (let q = 0; q < r; q++) {
        let aa = 0;
        for (let i = 0; i < inn; i++) aa += a0[p * inn + i] * a0[q * inn + i];
        let bb = 0;
        for (let o = 0; o < out; o++) bb += b0[o * r + p] * b0[o * r + q];
        const want = p === q ? sigma[p] / s : 0;
        expect(Math.abs(aa - want)).toBeLessThan(tol * sigma[0]);
        expect(Math.abs(bb - want)).toBeLessThan(tol * sigma[0]);
      }
    }
    // The frozen weight is now W_res, whose energy is the spectrum's tail (Eckart–Young).
    const residual = weightOutIn({ shape: model.weight(`${path}.weight`).shape, data: model.weight(`${path}.weight`).dataSync() as Float32Array }, kind === 'gpt2');
    let energy = 0;
    for (let k = 0; k < residual.data.length; k++) {
      let sum = 0;
      const o = Math.floor(k / inn);
      const i = k % inn;
      for (let t = 0; t < r; t++) sum += b0[o * r + t] * a0[t * inn + i];
      expect(Math.abs(residual.data[k] + s * sum - w[k])).toBeLessThan(1e-5);
      energy += residual.data[k] ** 2;
    }
    const tail = Array.from(sigma.slice(r)).reduce((acc, x) => acc + x * x, 0);
    expect(Math.abs(energy - tail) / tail).toBeLessThan(svd === 'exact' ? 1e-5 : 1e-2);
    attached.detach();
    expect(model.weight(`${path}.weight`).dataSync()).toEqual(original.get(`${path}.weight`)!.data);
    model.dispose();
  });
});

describe('pissa export', () => {
  it('exports a rank-2r LoRA for the original base (α doubled; α·√2 under rsLoRA) and re-attaches from it exactly', () => {
    const { model } = tinyModel('gpt2');
    const ids = tokenIds(model.config.vocabSize, 2, 6, 3);
    const targets = resolveTargets(model, 'all-linear');
    const attached = getMethod('pissa').attach(model, { rank: 3 }, { targets, seed: 2 });
    train(model, attached, ids, 3);
    const want = logits(model, ids);
    const { config, tensors } = attached.peftAdapter!();
    expect(config).toMatchObject({ r: 6, lora_alpha: 16, use_rslora: false, init_lora_weights: true, fan_in_fan_out: true, use_dora: false });
    const C = model.config.hiddenSize;
    expect(tensors.get('base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight')!.shape).toEqual([6, C]);
    expect(tensors.get('base_model.model.transformer.h.0.mlp.c_fc.lora_B.weight')!.shape).toEqual([model.config.intermediateSize, 6]);
    const trained = new Map([...attached.trainable].map(([n, v]) => [n, v.dataSync().slice()]));
    attached.detach();

    // A fresh attach from the export, on the original weights: same A, B, same outputs, no SVD needed.
    const saved = new Map([...tensors].map(([k, t]) => [k, t.dataSync() as Float32Array]));
    for (const t of tensors.values()) t.dispose();
    const again = getMethod('pissa').attach(model, { rank: 3 }, { targets, seed: 77, initial: saved });
    for (const [name, v] of again.trainable) expect(v.dataSync()).toEqual(trained.get(name));
    expect(relativeError(logits(model, ids), want)).toBeLessThanOrEqual(1e-5);
    again.detach();

    const rs = getMethod('pissa').attach(model, { rank: 2, alpha: 3, use_rslora: true }, { targets: targets.slice(0, 1), seed: 2 });
    const rsExport = rs.peftAdapter!();
    expect(rsExport.config.r).toBe(4);
    expect(rsExport.config.lora_alpha as number).toBeCloseTo(3 * Math.SQRT2, 12);
    // Same scaling: α'/√r' = (3√2)/√4 = 3/√2 = α/√r.
    expect((rsExport.config.lora_alpha as number) / Math.sqrt(4)).toBeCloseTo(3 / Math.sqrt(2), 12);
    for (const t of rsExport.tensors.values()) t.dispose();
    rs.detach();
    ids.dispose();
    model.dispose();
  });

  it('refuses a rank above min(out, in)', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const path = 'model.layers.0.self_attn.k_proj'; // [kvHeads·headDim = 16, 32]
    expect(() => getMethod('pissa').attach(model, { rank: 17 }, { targets: [path], seed: 0 })).toThrow(/rank 17 exceeds min\(out, in\) = 16/);
    expect(model.adapters.size).toBe(0);
    expect(model.weights.get(`${path}.weight`)).not.toBeInstanceOf(tf.Variable);
    model.dispose();
  });
});
