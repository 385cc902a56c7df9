/**
 * LoRA-XS specifics (Bałazy et al., arXiv:2405.17604): B = U_r, A = Σ_r·V_rᵀ from the SVD of W₀
 * (BᵀB = I_r, B·A the best rank-r approximation), R starts at N(0, 1e-5²), the gradient reaching
 * R is s·Bᵀ·G·Aᵀ for the weight gradient G, the count is r² per module, and the plain-LoRA export
 * is lora_B = s·B·R, lora_A = A.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import { getMethod } from './index.ts';
import { loraxsFactors } from './loraxs.ts';
import { linearTargets, weightOutIn64 } from './factored-adapter.ts';
import { resolveTargets } from './targets.ts';
import { disposeAll, randomize, tinyModel } from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

describe('loraxs', () => {
  it('B = U_r has orthonormal columns and B·A is the best rank-r approximation of W (GPT-2 Conv1D)', () => {
    const { model } = tinyModel('gpt2');
    const [target] = linearTargets(model, 'loraxs', ['transformer.h.0.attn.c_attn']); // [out 96, in 32]
    const { outFeatures: m, inFeatures: n } = target;
    const r = 5;
    const w = weightOutIn64(model, target);
    const { b, a } = loraxsFactors(w, m, n, r, { method: 'randomized', niter: 10, seed: 0 });
    let worst = 0;
    for (let p = 0; p < r; p++) {
      for (let q = 0; q < r; q++) {
        let dot = 0;
        for (let i = 0; i < m; i++) dot += b[i * r + p] * b[i * r + q];
        worst = Math.max(worst, Math.abs(dot - (p === q ? 1 : 0)));
      }
    }
    expect(worst).toBeLessThan(1e-5); // BᵀB = I_r
    // ‖W − B·A‖²_F = Σ_{k>r} σ_k² (Eckart–Young), σ from an exact Jacobi SVD.
    const sigma = jacobiSvd(w, m, n).S;
    let residual = 0;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let ba = 0;
        for (let t = 0; t < r; t++) ba += b[i * r + t] * a[t * n + j];
        residual += (w[i * n + j] - ba) ** 2;
      }
    }
    const tail = Array.from(sigma.slice(r)).reduce((acc, x) => acc + x * x, 0);
    expect(Math.abs(residual - tail) / tail).toBeLessThan(1e-3);
    model.dispose();
  });

  it('starts R ~ N(0, 1e-5²), trains r² numbers per module, and its gradient is s·Bᵀ·G·Aᵀ', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const r = 4;
    const alpha = 8; // s = 2, so the scaling is visible
    const targets = resolveTargets(model, ['q_proj', 'down_proj']);
    const attached = getMethod('loraxs').attach(model, { rank: r, alpha, svd: 'exact' }, { targets, seed: 1 });
    expect(attached.trainableParameterCount()).toBe(targets.length * r * r); // 4 modules × 16 = 64
    expect(attached.trainableParameterCount()).toBe(64);
    const allR = [...attached.trainable.values()].flatMap((v) => [...v.dataSync()]);
    const std = Math.sqrt(allR.reduce((acc, x) => acc + x * x, 0) / allR.length);
    expect(std).toBeGreaterThan(0.7e-5);
    expect(std).toBeLessThan(1.3e-5);

    // One module on its own: L = Σ C ⊙ h for h = x·W'ᵀ, so G = ∂L/∂W' = Cᵀ·X [out, in].
    const path = targets[0];
    const [m, n] = model.weight(`${path}.weight`).shape; // Llama: [out, in]
    const target = { path, transposed: false, outFeatures: m, inFeatures: n };
    randomize(attached, 3, 0.5); // R away from 0
    const { b, a } = loraxsFactors(weightOutIn64(model, target), m, n, r, { method: 'exact' });
    const N = 5;
    const x = tf.randomNormal([N, n], 0, 1, 'float32', 7) as tf.Tensor2D;
    const c = tf.randomNormal([N, m], 0, 1, 'float32', 8) as tf.Tensor2D;
    const weight = model.weight(`${path}.weight`) as tf.Tensor2D;
    const adapter = model.adapters.get(path)!;
    const R = attached.trainable.get(`${path}.loraxs_R`)!;
    const { value, grads } = tf.variableGrads(
      () => tf.sum(tf.mul(adapter.apply(x, (v) => tf.matMul(v, weight, false, true), () => weight, false), c)) as tf.Scalar,
      [R],
    );
    const got = grads[R.name].dataSync();
    const [xs, cs] = [x.dataSync(), c.dataSync()];
    const s = alpha / r;
    let worst = 0;
    let scale = 0;
    for (let p = 0; p < r; p++) {
      for (let q = 0; q < r; q++) {
        // (s·Bᵀ·G·Aᵀ)[p, q] = s·Σ_{i,j} B[i,p]·G[i,j]·A[q,j],  G[i,j] = Σ_t C[t,i]·X[t,j]
        let sum = 0;
        for (let i = 0; i < m; i++) {
          for (let j = 0; j < n; j++) {
            let g = 0;
            for (let t = 0; t < N; t++) g += cs[t * m + i] * xs[t * n + j];
            sum += b[i * r + p] * g * a[q * n + j];
          }
        }
        worst = Math.max(worst, Math.abs(got[p * r + q] - s * sum));
        scale = Math.max(scale, Math.abs(s * sum));
      }
    }
    expect(worst / scale).toBeLessThan(1e-4);
    disposeAll([value, x, c, ...Object.values(grads)]);

    // Export: lora_B = s·B·R, lora_A = A.
    const { config, tensors } = attached.peftAdapter!();
    expect(config).toMatchObject({ peft_type: 'LORA', r, lora_alpha: r, use_rslora: false });
    expect(tensors.get(`base_model.model.${path}.lora_A.weight`)!.dataSync()).toEqual(a);
    const loraB = tensors.get(`base_model.model.${path}.lora_B.weight`)!.dataSync();
    const rv = R.dataSync();
    for (let i = 0; i < m; i++) {
      for (let q = 0; q < r; q++) {
        let br = 0;
        for (let t = 0; t < r; t++) br += b[i * r + t] * rv[t * r + q];
        expect(Math.abs(loraB[i * r + q] - s * br)).toBeLessThan(1e-5);
      }
    }
    disposeAll(tensors.values());
    attached.detach();
    model.dispose();
  });

  it('refuses a rank above min(out, in)', () => {
    const { model } = tinyModel('llama-gqa-tied');
    expect(() => getMethod('loraxs').attach(model, { rank: 17 }, { targets: ['model.layers.0.self_attn.k_proj'], seed: 0 })).toThrow(/rank 17 exceeds min\(out, in\) = 16/);
    expect(model.adapters.size).toBe(0);
    model.dispose();
  });
});
