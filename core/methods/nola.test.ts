/**
 * NOLA specifics (Koohpayegani et al., arXiv:2310.02556): the trainable count is 2k per module
 * whatever r, the coefficient gradient is the inner product with the basis (∂L/∂βⱼ = ⟨∂L/∂B, Bⱼ⟩),
 * and the compact adapter (seeds + coefficients) written to disk and read back reattaches bit for bit.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { readNolaAdapter, writeNolaAdapter, NOLA_WEIGHTS_FILE } from '../export/nola-adapter.ts';
import { getMethod } from './index.ts';
import { nolaBases, nolaCompactAdapter } from './nola.ts';
import { resolveTargets } from './targets.ts';
import { disposeAll, logits, tinyModel, tokenIds, train } from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

describe('nola', () => {
  it('trains 2k numbers per module whatever the rank', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, ['q_proj', 'v_proj', 'down_proj']); // 6 modules
    for (const rank of [1, 4, 16]) {
      const attached = getMethod('nola').attach(model, { rank, num_basis: 24 }, { targets, seed: 0 });
      expect(attached.trainableParameterCount()).toBe(6 * 2 * 24);
      attached.detach();
    }
    model.dispose();
  });

  it('∂L/∂βⱼ = ⟨∂L/∂B, Bⱼ⟩_F with B = Σ βⱼ·Bⱼ (the basis regenerated from the seed)', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const target = 'model.layers.0.self_attn.v_proj'; // [out 16, in 32]
    const [r, k, alpha] = [4, 6, 8];
    const attached = getMethod('nola').attach(model, { rank: r, num_basis: k, alpha }, { targets: [target], seed: 2 });
    const seed = nolaCompactAdapter(attached).tensors.get(`${target}.nola_seed`)![0];
    const { a0, basisB } = nolaBases(seed, k, r, 32, 16);
    const weight = model.weight(`${target}.weight`) as tf.Tensor2D;
    const x = tf.randomNormal([3, 32], 0, 1, 'float32', 1) as tf.Tensor2D;
    const c = tf.randomNormal([3, 16], 0, 1, 'float32', 2) as tf.Tensor2D;
    const beta = attached.trainable.get(`${target}.nola_beta`)!;
    const adapter = model.adapters.get(target)!;
    const { value, grads } = tf.variableGrads(
      () => tf.sum(tf.mul(adapter.apply(x, (v) => tf.matMul(v, weight, false, true), () => weight, false), c)) as tf.Scalar,
      [beta],
    );
    // At α = 0: A = A₀, and ∂L/∂B = s·Cᵀ·X·A₀ᵀ [out, r].
    const [xs, cs] = [x.dataSync(), c.dataSync()];
    const got = grads[beta.name].dataSync();
    for (let j = 0; j < k; j++) {
      let want = 0;
      for (let o = 0; o < 16; o++) {
        for (let t = 0; t < r; t++) {
          let dB = 0;
          for (let row = 0; row < 3; row++) {
            let ax = 0;
            for (let i = 0; i < 32; i++) ax += a0[t * 32 + i] * xs[row * 32 + i];
            dB += cs[row * 16 + o] * ax;
          }
          want += (alpha / r) * dB * basisB[j * 16 * r + o * r + t];
        }
      }
      expect(Math.abs(got[j] - want)).toBeLessThan(1e-4 * Math.max(1, Math.abs(want)));
    }
    expect(Math.max(...got.map(Math.abs))).toBeGreaterThan(0); // β learns although B starts at 0
    disposeAll([value, x, c, ...Object.values(grads)]);
    attached.detach();
    model.dispose();
  });

  it('saves seeds + coefficients in a few bytes and reattaches from the file bit for bit (GPT-2)', async () => {
    const { model } = tinyModel('gpt2');
    const ids = tokenIds(model.config.vocabSize, 2, 6, 5);
    const targets = resolveTargets(model, 'all-linear');
    const params = { rank: 4, num_basis: 32, alpha: 8 };
    const attached = getMethod('nola').attach(model, params, { targets, seed: 11 });
    train(model, attached, ids, 3);
    const want = logits(model, ids);
    const trained = new Map([...attached.trainable].map(([name, v]) => [name, v.dataSync().slice()]));
    const lora = attached.peftAdapter!();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-nola-'));
    try {
      await writeNolaAdapter(path.join(dir, 'nola'), nolaCompactAdapter(attached), '/models/gpt2');
      attached.detach();
      // 8 modules × (1 seed + 2·32 coefficients) float32, plus the header.
      expect(fs.statSync(path.join(dir, 'nola', NOLA_WEIGHTS_FILE)).size).toBeLessThan(8 * 65 * 4 + 4096);
      const saved = readNolaAdapter(path.join(dir, 'nola'));
      expect(saved.targets).toEqual(targets);
      const again = getMethod('nola').attach(model, saved.params, { targets: saved.targets, seed: 0, initial: saved.tensors });
      for (const [name, v] of again.trainable) expect(v.dataSync()).toEqual(trained.get(name));
      expect(logits(model, ids)).toEqual(want);
      const relora = again.peftAdapter!();
      for (const [key, t] of lora.tensors) expect(relora.tensors.get(key)!.dataSync()).toEqual(t.dataSync());
      disposeAll([...lora.tensors.values(), ...relora.tensors.values()]);
      again.detach();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    ids.dispose();
    model.dispose();
  });
});
