/**
 * ALLoRA (allora.ts). The defining property (METHODS.md): the per-row rescaling of A's and B's
 * gradients matches the paper's formula on a hand example, c_i = 1/√(‖(BA)ᵢ‖₂ + 1/η²), while the input
 * gradient stays unscaled; on a model at B = 0 the first gradients are η times those of an unscaled
 * LoRA (s = 1, no dropout) with the same A. Also: exact PEFT export (merged by an independent float64
 * loop), unchanged output at step 0, clean detach, flat tensor count.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import { alloraProduct, rowScale } from './allora.ts';
import {
  disposeAll, expectNeutralAttachAndCleanDetach, logits, modelWithWeights, randomize, referenceMerge, relativeError, tinyModel, tokenIds, trainer,
} from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const KINDS: TinyCheckpointKind[] = ['llama-gqa-tied', 'gpt2'];

describe('ALLoRA gradient rescaling', () => {
  it('scales δ by c_i = 1/√(‖(BA)ᵢ‖ + 1/η²) for A and B only, on a hand example', () => {
    // B = I, so BA = A: rows [1, 2, 2] and [0, 3, 4] have norms 3 and 5; η = 2 ⇒ 1/η² = 1/4.
    const A = tf.tensor2d([[1, 2, 2], [0, 3, 4]]);
    const B = tf.tensor2d([[1, 0], [0, 1]]);
    const x = tf.tensor2d([[1, 0, -1]]);
    const dy = tf.tensor2d([[1, 1]]);
    const c1 = 1 / Math.sqrt(3 + 0.25);
    const c2 = 1 / Math.sqrt(5 + 0.25);
    const scale = rowScale(A, B, 0.25);
    expect(relativeError(scale.dataSync(), [c1, c2])).toBeLessThanOrEqual(1e-6);
    const [dx, dA, dB] = tf.grads((xi: tf.Tensor, a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(alloraProduct(xi as tf.Tensor2D, a as tf.Tensor2D, b as tf.Tensor2D, 0.25), dy)))([x, A, B]);
    // A·x = [−1, −4]; δ̃ = [c1, c2]: ∂B = δ̃·(Ax)ᵀ, ∂A = (Bᵀδ̃)·xᵀ, ∂x = (BA)ᵀ·δ = [1, 5, 6] (unscaled).
    expect(relativeError(dB.dataSync(), [-c1, -4 * c1, -c2, -4 * c2])).toBeLessThanOrEqual(1e-6);
    expect(relativeError(dA.dataSync(), [c1, 0, -c1, c2, 0, -c2])).toBeLessThanOrEqual(1e-6);
    expect([...dx.dataSync()]).toEqual([1, 5, 6]);
    disposeAll([A, B, x, dy, scale, dx, dA, dB]);
  });

  it('at B = 0 the first gradients are η times those of unscaled LoRA with the same A', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 2, 6, 2);
    const targets = resolveTargets(model, ['q_proj', 'v_proj']);
    const gradsOf = (id: string, params: Record<string, number>) => {
      const attached = getMethod(id).attach(model, params, { targets, seed: 5 });
      model.training = true;
      const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.sum(tf.square(model.forward(ids).logits)) as tf.Scalar));
      model.training = false;
      const out = new Map([...attached.trainable].map(([name, v]) => [name, grads[v.name]?.dataSync().slice() ?? null]));
      value.dispose();
      disposeAll(Object.values(grads));
      attached.detach();
      return out;
    };
    const eta = 3;
    const allora = gradsOf('allora', { rank: 4, eta });
    const lora = gradsOf('lora', { rank: 4, alpha: 4, dropout: 0 }); // s = α/r = 1
    expect([...allora.keys()]).toEqual([...lora.keys()]);
    for (const [name, g] of allora) {
      const want = lora.get(name)!;
      if (name.endsWith('lora_A.weight')) {
        expect(Math.max(...g!.map(Math.abs))).toBe(0); // B = 0: no gradient reaches A
        continue;
      }
      expect(Math.max(...want!.map(Math.abs))).toBeGreaterThan(0);
      expect(relativeError(g!, want!.map((v) => eta * v))).toBeLessThanOrEqual(1e-5);
    }
    ids.dispose();
    model.dispose();
  });
});

describe.each(KINDS)('%s', (kind) => {
  it('leaves the output unchanged at step 0, and detach restores the model with no tensor left behind', () => {
    expectNeutralAttachAndCleanDetach(kind, 'allora', { rank: 4 });
  });

  it('trains, and exports a plain LoRA (s = 1) whose merge equals the merged weights and the adapter logits', () => {
    const { model, original } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 8, 5);
    const targets = resolveTargets(model, 'all-linear');
    const attached = getMethod('allora').attach(model, { rank: 4 }, { targets, seed: 7 });
    const before = logits(model, ids);
    const loop = trainer(model, attached, ids, 0.02);
    for (let step = 0; step < 3; step++) loop.step();
    loop.dispose();
    randomize(attached, 9, 0.05);
    const adapterLogits = logits(model, ids);
    expect(relativeError(adapterLogits, before)).toBeGreaterThan(1e-3);
    const merged = attached.mergedWeights();
    expect(relativeError(logits(modelWithWeights(model, merged), ids), adapterLogits)).toBeLessThanOrEqual(1e-5);
    const { config, tensors } = attached.peftAdapter!();
    expect(config).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 4, lora_dropout: 0, use_rslora: false, fan_in_fan_out: kind === 'gpt2' });
    expect(tensors.size).toBe(2 * targets.length);
    const reference = referenceMerge(config, tensors, original);
    expect(reference.size).toBe(targets.length);
    for (const [name, want] of reference) expect(relativeError(merged.get(name)!.dataSync(), want)).toBeLessThanOrEqual(1e-5);
    disposeAll([...merged.values(), ...tensors.values()]);
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('keeps tf.memory().numTensors flat across training steps', () => {
    const { model } = tinyModel(kind);
    const ids = tokenIds(model.config.vocabSize, 2, 6, 4);
    const attached = getMethod('allora').attach(model, { rank: 4 }, { targets: resolveTargets(model, 'all-linear'), seed: 1 });
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
