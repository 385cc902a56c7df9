/**
 * Dynamic Rank-Selective LoRA, CoDyRA (drslora.ts). The defining property (METHODS.md): ranks are
 * assigned per module by relevance to the data under a budget — after training with the official
 * threshold schedule the modules keep different numbers of nonzero gates, none more than its budget
 * r, and the PEFT export has exactly those ranks and, merged by an independent float64 loop, equals
 * the merged weights. Also: κ's schedule against a transcription of train_model's loop, AdamW's
 * β2 = 0.9999, output unchanged at step 0, flat tensor count.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import { kappaAt, type DrsloraAttached } from './drslora.ts';
import { disposeAll, expectNeutralAttachAndCleanDetach, logits, modelWithWeights, relativeError, tinyModel, tokenIds, trainer } from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const KINDS: TinyCheckpointKind[] = ['llama-gqa-tied', 'gpt2'];
const RANK = 4;
/** Nonzero gates kept after the seeded 40-step run below (of targets × RANK: 14·4 and 8·4), measured. */
const EXPECTED_KEPT = new Map<TinyCheckpointKind, number>([['llama-gqa-tied', 47], ['gpt2', 30]]);

/** train_model's loop, transcribed: the threshold in force at each iteration. */
function officialThresholds(total: number, dense: number, maxKappa: number, num: number): number[] {
  const lambdas = Array.from({ length: num }, (_, k) => (num === 1 ? 0 : (maxKappa * k) / (num - 1)));
  const denseIters = dense * total;
  const every = Math.floor((total - denseIters) / num);
  let id = 0;
  let threshold = lambdas[0];
  const out: number[] = [];
  for (let iteration = 0; iteration < total; iteration++) {
    if (every > 0 && iteration >= denseIters && iteration % every === 0) {
      id += 1;
      threshold = lambdas[Math.min(lambdas.length - 1, id)];
    }
    out.push(threshold);
  }
  return out;
}

describe('CoDyRA threshold schedule', () => {
  it.each([
    [500, 0.5, 5e-3, 50],
    [37, 0.3, 1e-2, 4],
    [2, 0.5, 5e-3, 50],
    [100, 0, 1e-3, 1],
  ])('T = %d, dense %d, κ_max %d, K = %d: κ at every step is train_model’s', (total, dense, maxKappa, num) => {
    const want = officialThresholds(total, dense, maxKappa, num);
    const got = want.map((_, step) => kappaAt(step, total, dense, maxKappa, num));
    got.forEach((v, i) => expect(v).toBeCloseTo(want[i], 15));
    if (total === 500) expect(got[499]).toBeCloseTo(maxKappa, 15); // reaches κ_max
  });
});

/** peft's per-module r and α from rank_pattern / alpha_pattern (keys are regexes matched at the end). */
function patternValue(patterns: Record<string, number>, modulePath: string): number | undefined {
  for (const [key, value] of Object.entries(patterns)) if (new RegExp(`^(.*\\.)?(${key})$`).test(modulePath)) return value;
  return undefined;
}

describe.each(KINDS)('%s', (kind) => {
  it('leaves the output unchanged at step 0, and detach restores the model with no tensor left behind', () => {
    expectNeutralAttachAndCleanDetach(kind, 'drslora', { rank: RANK });
  });

  it('keeps a different rank per module within the budget r, and exports exactly those ranks', () => {
    const { model, original } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 8, 5);
    const targets = resolveTargets(model, 'all-linear');
    // 40 steps, thresholds from step 8 (dense 0.2) rising to κ_max = 0.02 over K = 8 values: each
    // step after the dense phase shrinks every gate by κ, zeroing those within 2κ of 0.
    const params = { rank: RANK, max_kappa: 0.02, dense_fraction: 0.2, kappa_stages: 8 };
    const attached = getMethod('drslora').attach(model, params, { targets, seed: 7 }) as DrsloraAttached;
    const loop = trainer(model, attached, ids, 0.02, 40);
    for (let step = 0; step < 40; step++) loop.step();
    loop.dispose();
    const ranks = attached.ranks();
    const values = [...ranks.values()];
    console.log(`drslora ${kind}: ranks per module ${values.join(',')} (budget ${RANK} each, ${targets.length} modules)`);
    expect(values.every((r) => r >= 0 && r <= RANK)).toBe(true);
    expect(new Set(values).size).toBeGreaterThan(1); // ranks differ by module
    expect(values.reduce((a, b) => a + b, 0)).toBe(EXPECTED_KEPT.get(kind)); // the cpu backend is deterministic
    for (const path of targets) {
      const gate = attached.trainable.get(`${path}.lora_gate`)!.dataSync();
      expect(gate.filter((g) => g !== 0).length).toBe(ranks.get(path));
    }

    const adapterLogits = logits(model, ids);
    const merged = attached.mergedWeights();
    expect(relativeError(logits(modelWithWeights(model, merged), ids), adapterLogits)).toBeLessThanOrEqual(1e-5);
    const { config, tensors } = attached.peftAdapter!();
    expect(config).toMatchObject({ peft_type: 'LORA', lora_dropout: 0, use_rslora: false, fan_in_fan_out: kind === 'gpt2' });
    for (const path of targets) {
      const A = tensors.get(`base_model.model.${path}.lora_A.weight`);
      const r = ranks.get(path)!;
      if (r === 0) {
        expect(A).toBeUndefined();
        continue;
      }
      expect(A!.shape[0]).toBe(r);
      expect(patternValue(config.rank_pattern as Record<string, number>, path) ?? config.r).toBe(r);
      expect(patternValue(config.alpha_pattern as Record<string, number>, path) ?? config.lora_alpha).toBe(r); // scale 1
      // An independent float64 merge of the exported module: W + B·A.
      const a = A!.dataSync();
      const b = tensors.get(`base_model.model.${path}.lora_B.weight`)!.dataSync();
      const w = original.get(`${path}.weight`)!;
      const transposed = kind === 'gpt2';
      const [out, inn] = transposed ? [w.shape[1], w.shape[0]] : [w.shape[0], w.shape[1]];
      const want = new Float64Array(out * inn);
      for (let o = 0; o < out; o++) {
        for (let i = 0; i < inn; i++) {
          let delta = 0;
          for (let t = 0; t < r; t++) delta += b[o * r + t] * a[t * inn + i];
          const at = transposed ? i * out + o : o * inn + i;
          want[at] = w.data[at] + delta;
        }
      }
      expect(relativeError(merged.get(`${path}.weight`)!.dataSync(), want)).toBeLessThanOrEqual(1e-5);
    }
    disposeAll([...merged.values(), ...tensors.values()]);
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('trains A, B and g with AdamW at β2 = 0.9999, and keeps tf.memory().numTensors flat', () => {
    const { model } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 6, 4);
    const attached = getMethod('drslora').attach(model, { rank: RANK, dense_fraction: 0 }, { targets: resolveTargets(model, 'all-linear'), seed: 1 });
    const optimizer = attached.createOptimizer!({ weightDecay: 0 }) as unknown as { beta1: number; beta2: number };
    expect([optimizer.beta1, optimizer.beta2]).toEqual([0.9, 0.9999]);
    (optimizer as unknown as { dispose(): void }).dispose();
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
