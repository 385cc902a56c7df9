/**
 * SVFit specifics (Sun et al., arXiv:2409.05926): the trainable s starts at the top-r singular
 * values of each weight, r numbers train per module, and the export is the exact LoRA
 * ΔW = U_r·diag(s − σ)·V_rᵀ, whose row and column spaces stay inside the frozen singular vectors.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import { getMethod } from './index.ts';
import { energyRank } from './svfit.ts';
import { resolveTargets } from './targets.ts';
import { disposeAll, tinyModel } from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

describe('svfit', () => {
  it('starts s at the top-r singular values, trains r per module, and exports ΔW = U_r·diag(s − σ)·V_rᵀ', () => {
    const { model, original } = tinyModel('gpt2');
    const r = 3;
    const targets = resolveTargets(model, ['c_attn', 'c_fc']);
    const attached = getMethod('svfit').attach(model, { rank_rule: 'fixed', rank: r, svd: 'exact' }, { targets, seed: 0 });
    expect(attached.trainableParameterCount()).toBe(targets.length * r); // 4 modules × 3
    expect(attached.trainableParameterCount()).toBe(12);

    const path = 'transformer.h.1.mlp.c_fc'; // Conv1D [in 32, out 128]
    const stored = original.get(`${path}.weight`)!;
    const [n, m] = stored.shape;
    const w = new Float64Array(m * n);
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) w[i * n + j] = stored.data[j * m + i];
    const exact = jacobiSvd(w, m, n);
    const values = attached.trainable.get(`${path}.svfit_s`)!;
    const start = values.dataSync();
    for (let k = 0; k < r; k++) expect(Math.abs(start[k] - exact.S[k]) / exact.S[0]).toBeLessThan(1e-6);

    const delta = [0.5, -0.25, 0.125];
    tf.tidy(() => values.assign(tf.add(values, tf.tensor1d(delta))));
    const { config, tensors } = attached.peftAdapter!();
    expect(config).toMatchObject({ peft_type: 'LORA', r, lora_alpha: r, fan_in_fan_out: true });
    const b = tensors.get(`base_model.model.${path}.lora_B.weight`)!.dataSync();
    const a = tensors.get(`base_model.model.${path}.lora_A.weight`)!.dataSync();
    // B·A against Σ_k δ_k·u_k·v_kᵀ from the exact SVD (sign-free: u_k·v_kᵀ does not depend on the sign).
    let worst = 0;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let got = 0;
        let want = 0;
        for (let k = 0; k < r; k++) {
          got += b[i * r + k] * a[k * n + j];
          want += delta[k] * exact.U[i * exact.k + k] * exact.Vt[k * n + j];
        }
        worst = Math.max(worst, Math.abs(got - want));
      }
    }
    expect(worst).toBeLessThan(1e-5);
    disposeAll(tensors.values());
    attached.detach();
    model.dispose();
  });

  it('energy rule on a hand example: the fewest leading σ whose squares hold the share', () => {
    // σ² = 9, 4, 1 (total 14): 90 % needs 12.6 (9 + 4 = 13), 99 % needs 13.86 (all three).
    expect(energyRank([3, 2, 1], 0.9)).toBe(2);
    expect(energyRank([3, 2, 1], 0.99)).toBe(3);
    expect(energyRank([3, 2, 1], 9 / 14)).toBe(1);
    expect(energyRank([5, 0, 0], 1)).toBe(1);
  });

  it('by default trains, per matrix, the top singular values holding 99 % of Σσ² (ranks differ), and exports them in rank_pattern', () => {
    const { model, original } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, ['q_proj', 'k_proj', 'v_proj', 'o_proj']);
    const method = getMethod('svfit');
    const counted = method.countTrainable!(model, {}, targets);
    const attached = method.attach(model, {}, { targets, seed: 0 });
    const ranks = new Map<string, number>();
    for (const path of targets) {
      // The rank from the exact spectrum, cumulated here on its own: the smallest k with ≥ 99 %.
      const [m, n] = original.get(`${path}.weight`)!.shape; // Llama Linear [out, in]
      const { S } = jacobiSvd(Float64Array.from(original.get(`${path}.weight`)!.data), m, n);
      const total = S.reduce((a, v) => a + v * v, 0);
      let k = 0;
      for (let kept = 0; kept < 0.99 * total; k++) kept += S[k] ** 2;
      const values = attached.trainable.get(`${path}.svfit_s`)!;
      expect(values.size).toBe(k);
      expect(k).toBeLessThan(Math.min(m, n)); // random weights still leave a tail under 1 %
      ranks.set(path, k);
    }
    expect(new Set(ranks.values()).size).toBeGreaterThan(1); // q/o and k/v differ in shape, so in rank
    expect(attached.trainableParameterCount()).toBe([...ranks.values()].reduce((a, b) => a + b, 0));
    expect(counted).toBe(attached.trainableParameterCount());

    const { config, tensors } = attached.peftAdapter!();
    const pattern = config.rank_pattern as Record<string, number>;
    for (const [path, k] of ranks) {
      expect(tensors.get(`base_model.model.${path}.lora_A.weight`)!.shape).toEqual([k, original.get(`${path}.weight`)!.shape[1]]);
      expect(pattern[path.replace(/\./g, '\\.')] ?? config.r).toBe(k);
    }
    expect(config.alpha_pattern).toEqual(config.rank_pattern); // lora_alpha = r per module: s = 1
    disposeAll(tensors.values());
    attached.detach();
    model.dispose();
  });
});
