/**
 * SoRA (sora.ts) on tiny Llama (GQA, tied) and GPT-2 (Conv1D, fan_in_fan_out) checkpoints. The
 * defining property (METHODS.md): ranks are pruned to zero — training drives gate entries that
 * started well above the threshold to exactly 0 — and the exported adapter has the reduced rank: a
 * PEFT LoRA with r = number of nonzero gates per module (rank_pattern where modules differ), which,
 * merged by an independent float64 loop on the original base, equals the merged weights within 1e-5,
 * whose logits equal the adapter's. Also: the three thresholding operators on hand values in
 * (ξ, 2ξ), the threshold schedules, the sparsity term, gates without weight decay, only the
 * method's tensors get gradients, no tensor leaks.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { optimizerFor } from '../optim/registry.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import { thresholdGate, thresholdValues, type SoraAttached } from './sora.ts';
import { disposeAll, logits, modelWithWeights, randomize, relativeError, tinyModel, tokenIds, trainer, type TinyModel } from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const KINDS: TinyCheckpointKind[] = ['llama-gqa-tied', 'gpt2'];
const RANK = 4;
/** Gate entries exactly 0 after the pruning test's 30 seeded steps (of targets × RANK: 14·4 and 8·4). */
const EXPECTED_PRUNED = new Map<TinyCheckpointKind, number>([['llama-gqa-tied', 40], ['gpt2', 19]]);

/** peft's get_pattern_key over rank_pattern / alpha_pattern (keys are regexes matched at the path's end). */
function patternValue(patterns: Record<string, number>, modulePath: string): number | undefined {
  for (const [key, value] of Object.entries(patterns)) if (new RegExp(`^(.*\\.)?(${key})$`).test(modulePath)) return value;
  return undefined;
}

/** peft's LoRA merge, float64, per module r and α from rank_pattern / alpha_pattern: W' = W + (α/r)·B·A. */
function referenceMerge(config: Record<string, unknown>, tensors: Map<string, tf.Tensor>, original: TinyModel['original']): Map<string, Float64Array> {
  const merged = new Map<string, Float64Array>();
  for (const [key, aTensor] of tensors) {
    if (!key.endsWith('.lora_A.weight')) continue;
    const modulePath = key.slice('base_model.model.'.length, -'.lora_A.weight'.length);
    const r = patternValue(config.rank_pattern as Record<string, number>, modulePath) ?? (config.r as number);
    const alpha = patternValue(config.alpha_pattern as Record<string, number>, modulePath) ?? (config.lora_alpha as number);
    expect(aTensor.shape[0]).toBe(r);
    const a = aTensor.dataSync();
    const b = tensors.get(`base_model.model.${modulePath}.lora_B.weight`)!.dataSync();
    const w = original.get(`${modulePath}.weight`)!;
    const transposed = config.fan_in_fan_out === true;
    const [out, inn] = transposed ? [w.shape[1], w.shape[0]] : [w.shape[0], w.shape[1]];
    const at = (o: number, i: number) => (transposed ? i * out + o : o * inn + i);
    const result = new Float64Array(out * inn);
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inn; i++) {
        let delta = 0;
        for (let t = 0; t < r; t++) delta += b[o * r + t] * a[t * inn + i];
        result[at(o, i)] = w.data[at(o, i)] + (alpha / r) * delta;
      }
    }
    merged.set(`${modulePath}.weight`, result);
  }
  return merged;
}

describe('SoRA thresholding', () => {
  it('applies the official operator, its lr variant and the exact proximal step on hand values', () => {
    const xi = 0.1;
    const g = tf.tensor1d([0.25, 0.15, 0.05, -0.15, -0.25, 0, 0.12]);
    const values = (mode: 'as-run' | 'as-run-lr' | 'prox', lr: number) => {
      const t = thresholdGate(g, xi, lr, mode);
      const out = [...t.dataSync()];
      t.dispose();
      return out;
    };
    // as-run: p>ξ → p−ξ, then p<−ξ → p+ξ, then |p|<ξ → 0; 0.15 and 0.12 lie in (ξ, 2ξ) and end at 0.
    expect(values('as-run', 123)).toEqual([0.15, 0, 0, 0, -0.15, 0, 0].map(Math.fround));
    // as-run-lr with lr 0.5: ξ·lr = 0.05; 0.05 is not > 0.05 nor < 0.05, so it stays.
    const lrVariant = values('as-run-lr', 0.5);
    [0.2, 0.1, 0.05, -0.1, -0.2, 0, 0.07].forEach((want, i) => expect(lrVariant[i]).toBeCloseTo(want, 6));
    // prox with lr 1: sign(p)·max(|p| − ξ, 0): values in (ξ, 2ξ) shrink but survive.
    const prox = values('prox', 1);
    [0.15, 0.05, 0, -0.05, -0.15, 0, 0.02].forEach((want, i) => expect(prox[i]).toBeCloseTo(want, 6));
    g.dispose();
  });

  it('builds the threshold schedules as _build_lambda_list', () => {
    expect(thresholdValues('none', 3e-4, 7e-4, 7)).toEqual([3e-4]);
    const linear = thresholdValues('linear', 0, 7e-4, 7);
    expect(linear).toHaveLength(7);
    linear.forEach((v, k) => expect(v).toBeCloseTo((k * 7e-4) / 6, 15)); // np.linspace(0, 7e-4, 7)
    const exp = thresholdValues('exp_linear', 1e-4, 1e-2, 3);
    [1e-4, 1e-3, 1e-2].forEach((want, i) => expect(exp[i]).toBeCloseTo(want, 12));
    const log = thresholdValues('log_linear', 0, 1, 2);
    expect(log[0]).toBeCloseTo(0, 12);
    expect(log[1]).toBeCloseTo(1, 12);
    expect(() => thresholdValues('exp_linear', 0, 1, 3)).toThrow(/exp_linear/);
  });
});

describe.each(KINDS)('%s', (kind) => {
  it('leaves the output unchanged at step 0, and detach restores the model with no tensor left behind', () => {
    const { model } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 7, 1);
    const before = logits(model, ids);
    const tensorsBefore = tf.memory().numTensors;
    const attached = getMethod('sora').attach(model, { rank: RANK }, { targets: resolveTargets(model, 'all-linear'), seed: 3 });
    expect(logits(model, ids)).toEqual(before); // B = 0
    attached.detach();
    expect(model.adapters.size).toBe(0);
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    ids.dispose();
    model.dispose();
  });

  it('training prunes gate entries to exactly 0, and the export is a PEFT LoRA of the reduced rank equal to the merge', () => {
    const { model, original } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 8, 5);
    const targets = resolveTargets(model, 'all-linear');
    // A sparsity term (λ = 5): Adam moves each gate ~lr = 0.05 per step towards 0, and the official
    // operator (|g| < 2ξ → 0) catches it there instead of letting it oscillate around 0.
    const params = { rank: RANK, sparse_lambda: 5, threshold: 0.03 };
    const attached = getMethod('sora').attach(model, params, { targets, seed: 7 }) as SoraAttached;
    const gateOf = (path: string) => attached.trainable.get(`${path}.lora_gate`)!.dataSync().slice();
    const start = new Map(targets.map((p) => [p, gateOf(p)]));
    const loop = trainer(model, attached, ids, 0.05);
    for (let step = 0; step < 30; step++) loop.step();
    loop.dispose();

    let pruned = 0;
    let prunedFromLarge = 0;
    for (const path of targets) {
      const before = start.get(path)!;
      gateOf(path).forEach((v, i) => {
        if (v !== 0) return;
        pruned++;
        if (Math.abs(before[i]) > 0.3) prunedFromLarge++; // far beyond what one threshold step removes (2ξ = 0.06)
      });
    }
    const nonzero = attached.nonzeroGates();
    const kept = [...nonzero.values()].reduce((a, b) => a + b, 0);
    console.log(`sora ${kind}: ${pruned} of ${targets.length * RANK} gate entries exactly 0 after 30 steps (${prunedFromLarge} started with |g| > 0.3); ranks ${[...nonzero.values()].join(',')}`);
    expect(prunedFromLarge).toBeGreaterThan(0);
    expect(kept).toBe(targets.length * RANK - pruned);

    // Move B well away from 0 (the gates, pruned entries included, stay as trained).
    targets.forEach((path, k) => {
      const B = attached.trainable.get(`${path}.lora_B.weight`)!;
      tf.tidy(() => B.assign(tf.add(B, tf.randomNormal(B.shape, 0, 0.05, 'float32', 11 + k))));
    });
    const ranks = attached.nonzeroGates();
    expect(ranks).toEqual(nonzero);
    const adapterLogits = logits(model, ids);
    const merged = attached.mergedWeights();
    expect(relativeError(logits(modelWithWeights(model, merged), ids), adapterLogits)).toBeLessThanOrEqual(1e-5);
    const { config, tensors } = attached.peftAdapter!();
    expect(config).toMatchObject({ peft_type: 'LORA', use_rslora: false, use_dora: false, fan_in_fan_out: kind === 'gpt2' });
    for (const path of targets) {
      const A = tensors.get(`base_model.model.${path}.lora_A.weight`);
      if (ranks.get(path) === 0) expect(A).toBeUndefined();
      else expect(A!.shape[0]).toBe(ranks.get(path)); // r = number of nonzero gates
    }
    // The setup is seeded and the cpu backend deterministic: these runs prune exactly this many of the
    // targets.length·RANK gate entries (measured; a weaker sparsity term or threshold prunes fewer), and
    // the ranks come out mixed: some modules pruned to rank 0 (left out), some to a rank in (0, RANK).
    const expectedPruned = EXPECTED_PRUNED.get(kind)!;
    expect(pruned).toBe(expectedPruned);
    expect([...ranks.values()].reduce((a, b) => a + b, 0)).toBe(targets.length * RANK - expectedPruned);
    expect([...ranks.values()].filter((r) => r === 0).length).toBeGreaterThan(0);
    expect([...ranks.values()].filter((r) => r > 0 && r < RANK).length).toBeGreaterThan(0);
    let exportedRank = 0;
    for (const [key, t] of tensors) if (key.endsWith('.lora_A.weight')) exportedRank += t.shape[0]!;
    expect(exportedRank).toBe(targets.length * RANK - expectedPruned);
    const reference = referenceMerge(config, tensors, original);
    for (const [name, want] of reference) expect(relativeError(merged.get(name)!.dataSync(), want)).toBeLessThanOrEqual(1e-5);
    // Fully pruned modules are left out of the export and are unchanged in the merge.
    for (const path of targets) {
      if (ranks.get(path) !== 0) continue;
      expect(reference.has(`${path}.weight`)).toBe(false);
      expect(merged.get(`${path}.weight`)!.dataSync()).toEqual(model.weight(`${path}.weight`).dataSync());
    }
    disposeAll([...merged.values(), ...tensors.values()]);
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('adds λ·Σ|g|/N to the loss, exempts the gates from weight decay, and only its tensors get gradients', () => {
    const { model } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 1, 6, 3);
    const targets = resolveTargets(model, ['q_proj', 'c_attn', 'down_proj', 'c_fc'].filter((t) => model.linearModules().some((p) => p.endsWith(t))));
    const attached = getMethod('sora').attach(model, { rank: RANK, sparse_lambda: 2.5 }, { targets, seed: 9 });
    randomize(attached, 4);
    for (const w of model.weights.values()) expect(w).not.toBeInstanceOf(tf.Variable);
    let sumAbs = 0;
    for (const path of targets) for (const v of attached.trainable.get(`${path}.lora_gate`)!.dataSync()) sumAbs += Math.abs(v);
    const penalty = attached.trainingPenalty!();
    expect(penalty.dataSync()[0]).toBeCloseTo((2.5 * sumAbs) / (targets.length * RANK), 5);
    penalty.dispose();

    model.training = true;
    const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.sum(tf.square(model.forward(ids).logits)) as tf.Scalar));
    model.training = false;
    expect(Object.keys(grads).sort()).toEqual([...attached.trainable.values()].map((v) => v.name).sort());
    for (const g of Object.values(grads)) expect(tf.tidy(() => tf.max(tf.abs(g)).dataSync()[0])).toBeGreaterThan(0);
    value.dispose();
    disposeAll(Object.values(grads));
    let expected = 0;
    for (const path of targets) {
      const [rows, cols] = model.weight(`${path}.weight`).shape;
      expected += RANK * (rows + cols) + RANK;
    }
    expect(attached.trainableParameterCount()).toBe(expected);

    // Zero gradients: AdamW's update is 0, so only weight decay moves a tensor; the gates have none.
    const optimizer = optimizerFor(attached, { weightDecay: 0.1, lrScale: (n) => attached.lrScale(n) });
    const before = new Map([...attached.trainable].map(([n, v]) => [n, v.dataSync().slice()]));
    const zeros = new Map([...attached.trainable].map(([n, v]) => [n, tf.zerosLike(v)]));
    optimizer.step(zeros, 0.5);
    disposeAll(zeros.values());
    for (const [name, v] of attached.trainable) {
      const want = name.endsWith('lora_gate') ? before.get(name)! : before.get(name)!.map((x) => Math.fround(x * (1 - 0.5 * 0.1)));
      expect(relativeError(v.dataSync(), want)).toBeLessThanOrEqual(1e-6);
    }
    optimizer.dispose();
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('keeps tf.memory().numTensors flat across training steps (dropout on)', () => {
    const { model } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 6, 4);
    const attached = getMethod('sora').attach(model, { rank: RANK, dropout: 0.1, threshold_schedule: 'linear', threshold: 0 }, { targets: resolveTargets(model, 'all-linear'), seed: 1 });
    const loop = trainer(model, attached, ids, 0.05, 4);
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
});
