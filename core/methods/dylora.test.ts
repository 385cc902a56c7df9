/**
 * DyLoRA (dylora.ts) on tiny Llama (GQA, tied) and GPT-2 (Conv1D, fan_in_fan_out) checkpoints.
 * The defining property (METHODS.md): one training yields working adapters at every rank ≤ r — a
 * tiny model is trained through the method's hooks and its loss is reported at every truncated
 * rank, each below the untrained loss. Also: the frozen-mode gradient reaches only row b of A and
 * column b of B; the PEFT export at a chosen rank ρ, merged by an independent float64 loop on the
 * original base, equals the merged weights and the adapter's own output at rank ρ; only A and B
 * get gradients; no tensor leaks.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { causalLmLoss, type CausalLM } from '../models/causal-lm.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import type { DyLoraAttached } from './dylora.ts';
import { disposeAll, expectNeutralAttachAndCleanDetach, logits, modelWithWeights, randomize, referenceMerge, relativeError, tinyModel, tokenIds, trainer } from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const KINDS: TinyCheckpointKind[] = ['llama-gqa-tied', 'gpt2'];
const RANK = 4;

function evalLoss(model: CausalLM, ids: tf.Tensor2D): number {
  model.training = false;
  return tf.tidy(() => causalLmLoss(model.forward(ids).logits, ids).loss.dataSync()[0]);
}

describe.each(KINDS)('%s', (kind) => {
  it('leaves the output unchanged at step 0 (B = 0), and detach restores the model with no tensor left behind', () => {
    expectNeutralAttachAndCleanDetach(kind, 'dylora', { rank: RANK, export_rank: RANK });
  });

  it('one training gives an adapter at every rank ≤ r whose loss is below the untrained loss', () => {
    const { model } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 8, 5);
    const untrained = evalLoss(model, ids);
    // α = r: the truncation to rank ρ is scaled by α/ρ = r/ρ, which keeps rank 1's steps moderate at this lr.
    const attached = getMethod('dylora').attach(model, { rank: RANK, alpha: RANK }, { targets: resolveTargets(model, 'all-linear'), seed: 7 }) as DyLoraAttached;
    const loop = trainer(model, attached, ids, 0.01);
    const sampled = new Set<number>();
    for (let step = 0; step < 40; step++) {
      loop.step();
      sampled.add(attached.trainingRank);
    }
    loop.dispose();
    expect([...sampled].sort()).toEqual([1, 2, 3, 4]); // every truncation was trained
    const perRank: number[] = [];
    for (let rank = 1; rank <= RANK; rank++) {
      attached.useRank(rank);
      perRank.push(evalLoss(model, ids));
    }
    console.log(`dylora ${kind}: untrained loss ${untrained.toFixed(4)}; loss at rank 1..${RANK}: ${perRank.map((l) => l.toFixed(4)).join(', ')}`);
    for (const loss of perRank) expect(loss).toBeLessThan(untrained - 0.05);
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('in a training step only row b of A and column b of B get gradients, scaled by α/(b+1)', () => {
    const { model } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 1, 6, 3);
    const targets = resolveTargets(model, ['q_proj', 'c_attn'].filter((t) => model.linearModules().some((p) => p.endsWith(t))));
    const attached = getMethod('dylora').attach(model, { rank: RANK }, { targets, seed: 9 }) as DyLoraAttached;
    randomize(attached, 4); // B ≠ 0, so A gets a gradient
    const seen = new Set<number>();
    model.training = true;
    for (let step = 0; step < 12; step++) {
      attached.beforeStep!({ step, totalSteps: 12, lr: 0 });
      const b = attached.trainingRank - 1;
      seen.add(b);
      const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.sum(tf.square(model.forward(ids).logits)) as tf.Scalar));
      for (const [name, v] of attached.trainable) {
        const g = grads[v.name];
        const data = g.dataSync();
        const isA = name.endsWith('lora_A.weight');
        const [rows, cols] = g.shape as [number, number];
        for (let i = 0; i < rows; i++) {
          for (let j = 0; j < cols; j++) {
            const live = isA ? i === b : j === b;
            const x = Math.abs(data[i * cols + j]);
            if (!live) expect(x).toBe(0);
          }
        }
        const liveMax = tf.tidy(() => tf.max(tf.abs(isA ? tf.slice(g, [b, 0], [1, cols]) : tf.slice(g, [0, b], [rows, 1]))).dataSync()[0]);
        expect(liveMax).toBeGreaterThan(0);
      }
      value.dispose();
      disposeAll(Object.values(grads));
    }
    model.training = false;
    expect(seen.size).toBeGreaterThan(1);

    // The training forward at b equals the truncated adapter of rank b+1 (same numbers, gradients aside).
    attached.beforeStep!({ step: 0, totalSteps: 1, lr: 0 });
    const trainingRank = attached.trainingRank;
    const trainingLogits = logits(model, ids, true); // dropout 0: training and eval differ only in the rank used
    attached.useRank(trainingRank);
    expect(relativeError(trainingLogits, logits(model, ids))).toBeLessThanOrEqual(1e-6);
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('exports an exact PEFT LoRA of the chosen rank: B[:, :ρ], A[:ρ], lora_alpha = α', () => {
    const { model, original } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 7, 2);
    const targets = resolveTargets(model, 'all-linear');
    const attached = getMethod('dylora').attach(model, { rank: RANK, alpha: 12, export_rank: 2 }, { targets, seed: 5 }) as DyLoraAttached;
    randomize(attached, 11, 0.05);
    for (const rank of [2, 3]) {
      attached.useRank(rank);
      const adapterLogits = logits(model, ids);
      const merged = attached.mergedWeights();
      expect(relativeError(logits(modelWithWeights(model, merged), ids), adapterLogits)).toBeLessThanOrEqual(1e-5);
      const { config, tensors } = attached.peftAdapter!();
      expect(config).toMatchObject({ peft_type: 'LORA', r: rank, lora_alpha: 12, use_rslora: false, use_dora: false, fan_in_fan_out: kind === 'gpt2' });
      const full = attached.trainable.get(`${targets[0]}.lora_A.weight`)!;
      const exportedA = tensors.get(`base_model.model.${targets[0]}.lora_A.weight`)!;
      expect(exportedA.shape).toEqual([rank, full.shape[1]]);
      expect(exportedA.dataSync()).toEqual(full.dataSync().slice(0, rank * full.shape[1]!));
      const reference = referenceMerge(config, tensors, original); // s = α/ρ, independent float64 loop
      expect([...reference.keys()].sort()).toEqual([...merged.keys()].sort());
      for (const [name, want] of reference) expect(relativeError(merged.get(name)!.dataSync(), want)).toBeLessThanOrEqual(1e-5);
      disposeAll([...merged.values(), ...tensors.values()]);
    }
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('only A and B are variables and get gradients; the count is r·(in + out) per module; tensors flat across steps', () => {
    const { model } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 6, 4);
    const targets = resolveTargets(model, 'all-linear');
    const weightsBefore = new Map([...model.weights].map(([n, w]) => [n, w.dataSync().slice()]));
    const attached = getMethod('dylora').attach(model, { rank: RANK, dropout: 0.1 }, { targets, seed: 1 });
    randomize(attached, 4);
    for (const w of model.weights.values()) expect(w).not.toBeInstanceOf(tf.Variable);
    model.training = true;
    const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.sum(tf.square(model.forward(ids).logits)) as tf.Scalar));
    model.training = false;
    expect(Object.keys(grads).sort()).toEqual([...attached.trainable.values()].map((v) => v.name).sort());
    value.dispose();
    disposeAll(Object.values(grads));
    let expected = 0;
    for (const path of targets) {
      const [rows, cols] = model.weight(`${path}.weight`).shape;
      expected += RANK * (rows + cols);
    }
    expect(attached.trainableParameterCount()).toBe(expected);

    const loop = trainer(model, attached, ids);
    loop.step();
    const count = tf.memory().numTensors;
    loop.step();
    loop.step();
    expect(tf.memory().numTensors).toBe(count);
    loop.dispose();
    attached.detach();
    for (const [name, w] of model.weights) expect(w.dataSync()).toEqual(weightsBefore.get(name));
    expect(() => getMethod('dylora').attach(model, { rank: 2, export_rank: 3 }, { targets, seed: 1 })).toThrow(/export_rank 3 exceeds rank 2/);
    expect(model.adapters.size).toBe(0);
    ids.dispose();
    model.dispose();
  });
});
