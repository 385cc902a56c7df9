/**
 * FedSVD specifics: the schedule of rounds, sampled clients and local steps; clients train B only,
 * each from the server's B_t; after each round the server's B̄ = B_t + mean(B_k − B_t) is
 * re-factorised so that A has orthonormal rows and B'·A' = B̄·A (checked in float64 against the
 * clients' recorded B); and the PEFT export is the exact plain LoRA of the server model.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { causalLmLoss } from '../models/causal-lm.ts';
import { Random } from '../random.ts';
import { optimizerFor } from '../optim/registry.ts';
import { dataShard } from '../train/finetune.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import { clientsPerRound, FederatedSchedule, refactorise, type FedsvdAttached } from './fedsvd.ts';
import { disposeAll, expectNeutralAttachAndCleanDetach, logits, modelWithWeights, referenceMerge, relativeError, tinyModel, tokenIds } from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const product = (b: ArrayLike<number>, a: ArrayLike<number>, m: number, n: number, r: number) => {
  const p = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) for (let t = 0; t < r; t++) p[i * n + j] += b[i * r + t] * a[t * n + j];
  return p;
};

/** max |A·Aᵀ − I|. */
const orthonormalError = (a: ArrayLike<number>, r: number, n: number) => {
  let worst = 0;
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      let dot = 0;
      for (let c = 0; c < n; c++) dot += a[i * n + c] * a[j * n + c];
      worst = Math.max(worst, Math.abs(dot - (i === j ? 1 : 0)));
    }
  }
  return worst;
};

describe('fedsvd', () => {
  it('re-factorises B·A into orthonormal A′ rows and B′ with B′·A′ = B·A, also when B is rank-deficient', () => {
    const random = new Random(1);
    const [m, n, r] = [12, 9, 4];
    const a = Float64Array.from({ length: r * n }, () => random.normal());
    const b = Float64Array.from({ length: m * r }, () => random.normal());
    for (let i = 0; i < m; i++) b[i * r + 2] = 2 * b[i * r + 0]; // column 2 = 2 × column 0: rank 3
    const next = refactorise(b, a, m, n, r);
    expect(orthonormalError(next.A, r, n)).toBeLessThan(1e-12);
    expect(relativeError(product(next.B, next.A, m, n, r), product(b, a, m, n, r))).toBeLessThan(1e-12);
    const zero = refactorise(new Float64Array(m * r), a, m, n, r); // round 0 of an untrained B
    expect(orthonormalError(zero.A, r, n)).toBeLessThan(1e-12);
    expect(Math.max(...zero.B.map(Math.abs))).toBe(0);
  });

  it('schedules round(N·fraction) seeded clients per round, local steps in a row, and each client’s own cursor', () => {
    expect(clientsPerRound(6, 0.5)).toBe(3);
    expect(clientsPerRound(5, 0.01)).toBe(1);
    const schedule = new FederatedSchedule(5, 2, 3, 42);
    const counted = new Map<number, number>();
    for (let step = 0; step < 60; step++) {
      const at = schedule.at(step);
      expect(at.round).toBe(Math.floor(step / 6));
      expect(at.slot).toBe(Math.floor((step % 6) / 3));
      expect(at.localStep).toBe(step % 3);
      expect(at.client).toBe(schedule.selected(at.round)[at.slot]);
      expect(at.cursor).toBe(counted.get(at.client) ?? 0); // steps this client ran before
      counted.set(at.client, (counted.get(at.client) ?? 0) + 1);
    }
    for (let round = 0; round < 10; round++) expect(new Set(schedule.selected(round)).size).toBe(2);
    expect(new Set(Array.from({ length: 10 }, (_, t) => schedule.selected(t).join())).size).toBeGreaterThan(1); // rounds differ
    expect(new FederatedSchedule(5, 2, 3, 42).selected(7)).toEqual(schedule.selected(7)); // a pure function of the seed
    // Client k owns the k-th contiguous block of the training set, sizes within one of each other.
    const examples = Array.from({ length: 10 }, (_, i) => i);
    expect([0, 1, 2].map((k) => dataShard(examples, 3, k))).toEqual([[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]);
  });

  it('keeps the base model at step 0 and detaches cleanly', () => {
    expectNeutralAttachAndCleanDetach('llama-gqa-tied', 'fedsvd', { rank: 4 });
  });

  it('trains B only from the server’s B each round; after each round A is orthonormal and B′·A′ = B̄·A', () => {
    const { model, original } = tinyModel('llama-untied');
    const targets = resolveTargets(model, ['q_proj', 'v_proj']);
    const r = 4;
    const params = { rank: r, dropout: 0, clients: 4, client_fraction: 0.5, local_steps: 2 };
    const method = getMethod('fedsvd');
    const counted = method.countTrainable!(model, params, targets);
    const attached = method.attach(model, params, { targets, seed: 9 }) as FedsvdAttached;
    expect(attached.trainableParameterCount()).toBe(counted);
    expect(attached.trainableParameterCount()).toBe(2 * 2 * 48 * r); // 2 layers × (q, v) × out 48 × r
    const path = 'model.layers.1.self_attn.v_proj';
    const [m, n] = model.weightShape(`${path}.weight`);
    const A = attached.trainable.get(`${path}.lora_A.weight`)!;
    const B = attached.trainable.get(`${path}.lora_B.weight`)!;
    expect(A.trainable).toBe(false);
    const optimizer = optimizerFor(attached, { weightDecay: 0 });
    const vars = [...attached.trainable.values()];
    // Each client's own data: ids drawn from its number.
    const data = Array.from({ length: 4 }, (_, client) => tokenIds(model.config.vocabSize, 2, 8, 5 + client));
    const stepsPerRound = 2 * 2;
    for (let round = 0; round < 2; round++) {
      const aBefore = [...A.dataSync()];
      const serverB = [...B.dataSync()];
      const clientB: number[][] = [];
      for (let k = 0; k < stepsPerRound; k++) {
        const step = round * stepsPerRound + k;
        const at = { step, totalSteps: 100, lr: 0.05 };
        attached.beforeStep!(at);
        if (k % 2 === 0) expect([...B.dataSync()]).toEqual(serverB); // every client starts from B_t
        model.training = true;
        const ids = data[attached.schedule.at(step).client];
        const { value, grads } = tf.variableGrads(() => tf.tidy(() => causalLmLoss(model.forward(ids).logits, ids).loss), vars);
        model.training = false;
        expect(grads[A.name]).toBeNull(); // A gets no gradient on clients
        optimizer.step(new Map([...attached.trainable].filter(([, v]) => grads[v.name]).map(([name, v]) => [name, grads[v.name]!])), 0.05);
        if (k % 2 === 1) clientB.push([...B.dataSync()]);
        attached.afterOptimizerStep!(at);
        if (k < stepsPerRound - 1) expect([...A.dataSync()]).toEqual(aBefore); // A only changes at the server
        disposeAll([value, ...Object.values(grads).filter((g): g is tf.Tensor => g !== null)]);
      }
      // B̄ = B_t + Σ_k (1/2)·(B_k − B_t) (no shard sizes given: equal weights), then re-factorised.
      const averaged = serverB.map((v, i) => v + clientB.reduce((sum, bk) => sum + (bk[i] - v) / clientB.length, 0));
      expect(Math.max(...clientB[0].map((v, i) => Math.abs(v - clientB[1][i])))).toBeGreaterThan(0); // clients trained on different data
      const a = A.dataSync();
      expect(orthonormalError(a, r, n)).toBeLessThan(2e-6);
      const got = product(B.dataSync(), a, m, n, r);
      expect(relativeError(got, product(averaged, aBefore, m, n, r))).toBeLessThan(1e-5);
      expect([...attached.trainable.get(`${path}.lora_server_B.weight`)!.dataSync()]).toEqual([...B.dataSync()]);
      expect(Math.max(...attached.trainable.get(`${path}.lora_round_update.weight`)!.dataSync().map(Math.abs))).toBe(0);
    }

    // The export is the exact plain LoRA of the server model.
    const { config, tensors } = attached.peftAdapter!();
    expect(config).toMatchObject({ peft_type: 'LORA', r, lora_alpha: 8, lora_dropout: 0, target_modules: ['q_proj', 'v_proj'] });
    const reference = referenceMerge(config, tensors, original);
    const merged = attached.mergedWeights();
    for (const [name, want] of reference) expect(relativeError(merged.get(name)!.dataSync(), want)).toBeLessThan(1e-6);
    const probe = tokenIds(model.config.vocabSize, 1, 7, 2);
    expect(relativeError(logits(modelWithWeights(model, merged), probe), logits(model, probe))).toBeLessThan(1e-5);
    disposeAll([...tensors.values(), ...merged.values(), ...data, probe]);
    optimizer.dispose();
    attached.detach();
    model.dispose();
  });

  it('without re-factorisation (svd_period 0) keeps A as initialised and only averages B', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const path = 'model.layers.0.self_attn.q_proj';
    const attached = getMethod('fedsvd').attach(model, { rank: 2, dropout: 0, clients: 2, client_fraction: 1, local_steps: 1, svd_period: 0 }, { targets: [path], seed: 1 });
    const A = attached.trainable.get(`${path}.lora_A.weight`)!;
    const B = attached.trainable.get(`${path}.lora_B.weight`)!;
    const a0 = [...A.dataSync()];
    attached.dataShards!.setSizes([1, 3], 10); // client 1 holds three times the examples
    const first = attached.dataShards!.shardAt(0)!.shard;
    const clientUpdates = [[...B.dataSync()].map(() => 1), [...B.dataSync()].map(() => 5)];
    for (let step = 0; step < 2; step++) {
      const at = { step, totalSteps: 10, lr: 0 };
      attached.beforeStep!(at);
      tf.tidy(() => B.assign(tf.fill(B.shape, clientUpdates[step][0])));
      attached.afterOptimizerStep!(at);
    }
    const weights = first === 0 ? [1, 3] : [3, 1];
    const want = (clientUpdates[0][0] * weights[0] + clientUpdates[1][0] * weights[1]) / 4;
    expect([...A.dataSync()]).toEqual(a0);
    for (const v of B.dataSync()) expect(v).toBeCloseTo(want, 6);
    attached.detach();
    model.dispose();
  });

  it('refuses a rank A cannot hold orthonormally and a client without data, saying what to change', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const targets = resolveTargets(model, ['k_proj']); // [16, 32]
    expect(() => getMethod('fedsvd').attach(model, { rank: 17 }, { targets, seed: 0 })).toThrow(/rank 17 exceeds min\(out, in\) = 16 of model\.layers\.0\.self_attn\.k_proj.*choose rank ≤ 16/);
    const attached = getMethod('fedsvd').attach(model, { rank: 2, clients: 3 }, { targets, seed: 0 });
    expect(() => attached.dataShards!.setSizes([4, 0, 4], 10)).toThrow(/client 1 of 3 gets no training example.*fewer clients or more data/);
    attached.detach();
    model.dispose();
  });
});
