/**
 * The defining properties of the LoRA family (METHODS.md §A) on tiny Llama (GQA, tied) and GPT-2
 * (Conv1D, fan_in_fan_out) checkpoints, for lora, rslora, dora, pissa and loraplus:
 * output unchanged at step 0; merged == unmerged logits after training; the exported PEFT adapter,
 * merged by an independent loop implementation on the ORIGINAL base, gives the method's merged
 * weights; only the adapter's tensors are variables and get gradients; exact trainable counts;
 * detach restores the model and frees every tensor.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import { expectNeutralAttachAndCleanDetach, logits, modelWithWeights, randomize, referenceMerge, relativeError, tinyModel, tokenIds, train, trainer } from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const KINDS: TinyCheckpointKind[] = ['llama-gqa-tied', 'gpt2'];
const METHODS = ['lora', 'rslora', 'dora', 'pissa', 'loraplus'];
const RANK = 4;

describe.each(KINDS)('%s', (kind) => {
  describe.each(METHODS)('%s', (id) => {
    it('leaves the output unchanged at step 0, and detach restores the model with no tensor left behind', () => {
      expectNeutralAttachAndCleanDetach(kind, id, { rank: RANK }, 1e-5);
    });

    it('after training, merged weights give the adapter logits, and the PEFT export merged on the original base gives the merged weights', () => {
      const { model, original } = tinyModel(kind);
      const ids = tokenIds(model.config.vocabSize, 2, 7, 2);
      const baseLogits = logits(model, ids);
      const attached = getMethod(id).attach(model, { rank: RANK }, { targets: resolveTargets(model, 'all-linear'), seed: 5 });
      train(model, attached, ids, 3);
      randomize(attached, 11, 0.05); // move well away from the start
      const adapterLogits = logits(model, ids);
      expect(relativeError(adapterLogits, baseLogits)).toBeGreaterThan(1e-2); // the adapter does something
      const merged = attached.mergedWeights();
      expect([...merged.keys()].sort()).toEqual(resolveTargets(model, 'all-linear').map((p) => `${p}.weight`).sort());
      // Build from the ORIGINAL weights (PiSSA holds residuals in model.weights while attached).
      const base = new Map([...original].map(([name, w]) => [name, tf.tensor(w.data, w.shape)]));
      const mergedModel = modelWithWeights(model, merged, base);
      expect(mergedModel.adapters.size).toBe(0);
      const mergedLogits = logits(mergedModel, ids);
      expect(relativeError(mergedLogits, adapterLogits)).toBeLessThanOrEqual(1e-5);

      const { config, tensors } = attached.peftAdapter!();
      const reference = referenceMerge(config, tensors, original);
      expect([...reference.keys()].sort()).toEqual([...merged.keys()].sort());
      for (const [name, want] of reference) expect(relativeError(merged.get(name)!.dataSync(), want)).toBeLessThanOrEqual(1e-5);

      for (const t of [...merged.values(), ...tensors.values(), ...base.values()]) t.dispose();
      attached.detach();
      ids.dispose();
      model.dispose();
    });

    it('only the adapter tensors are variables and receive gradients; trainable count is exact', () => {
      const { model } = tinyModel(kind);
      const ids = tokenIds(model.config.vocabSize, 1, 6, 3);
      const targets = resolveTargets(model, ['q_proj', 'c_attn', 'down_proj', 'c_fc'].filter((t) => model.linearModules().some((p) => p.endsWith(t))));
      const weightsBefore = new Map([...model.weights].map(([n, w]) => [n, w.dataSync().slice()]));
      const attached = getMethod(id).attach(model, { rank: RANK }, { targets, seed: 9 });
      randomize(attached, 4); // B ≠ 0, so every adapter tensor has a non-zero gradient
      for (const w of model.weights.values()) expect(w).not.toBeInstanceOf(tf.Variable);

      // With no variable list, tf.variableGrads differentiates every trainable variable in the engine.
      const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.sum(tf.square(model.forward(ids).logits)) as tf.Scalar));
      const names = new Map([...attached.trainable].map(([n, v]) => [v.name, n]));
      expect(Object.keys(grads).sort()).toEqual([...names.keys()].sort());
      for (const [varName, g] of Object.entries(grads)) {
        expect(g.shape).toEqual(attached.trainable.get(names.get(varName)!)!.shape);
        expect(tf.tidy(() => tf.max(tf.abs(g)).dataSync()[0])).toBeGreaterThan(0);
      }
      value.dispose();
      for (const g of Object.values(grads)) g.dispose();

      let expected = 0;
      for (const path of targets) {
        const [rows, cols] = model.weight(`${path}.weight`).shape;
        expected += RANK * (rows + cols) + (id === 'dora' ? (model.isTransposedLinear(path) ? cols : rows) : 0);
      }
      expect(attached.trainableParameterCount()).toBe(expected);
      const expectedNames = targets.flatMap((p) => [`${p}.lora_A.weight`, `${p}.lora_B.weight`, ...(id === 'dora' ? [`${p}.lora_magnitude_vector`] : [])]);
      expect([...attached.trainable.keys()]).toEqual(expectedNames);

      train(model, attached, ids, 2);
      attached.detach();
      for (const [name, w] of model.weights) expect(w.dataSync()).toEqual(weightsBefore.get(name));
      ids.dispose();
      model.dispose();
    });

    it('keeps tf.memory().numTensors flat across training steps (dropout on)', () => {
      const { model } = tinyModel(kind);
      const ids = tokenIds(model.config.vocabSize, 2, 6, 4);
      const attached = getMethod(id).attach(model, { rank: RANK, dropout: 0.1 }, { targets: resolveTargets(model, 'all-linear'), seed: 1 });
      const loop = trainer(model, attached, ids);
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
});
