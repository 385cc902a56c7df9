/**
 * The properties vera, loraxs, svfit and nola share (factored-adapter.ts), on tiny Llama (GQA,
 * tied) and GPT-2 (Conv1D, fan_in_fan_out) checkpoints: output unchanged at step 0 (bit for bit,
 * except LoRA-XS whose R starts at N(0, 1e-5²)); after
 * training, merged logits == adapter logits and the export, merged by an independent float64 loop
 * on the ORIGINAL base, gives the merged weights; only the method's tensors are variables and get
 * gradients, in the exact count each paper states; no tensor leaks across steps or after detach;
 * re-attaching the saved adapter (AttachContext.initial) continues from the same outputs.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { getMethod } from './index.ts';
import { nolaCompactAdapter } from './nola.ts';
import { resolveTargets } from './targets.ts';
import type { AttachedMethod, MethodParams } from './method.ts';
import { disposeAll, expectNeutralAttachAndCleanDetach, logits, modelWithWeights, randomize, referenceMerge, relativeError, tinyModel, tokenIds, train, trainer, type TinyModel } from './method-test-helpers.ts';
import type { TinyCheckpointKind } from '../../test/fixtures/tiny-checkpoints.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const KINDS: TinyCheckpointKind[] = ['llama-gqa-tied', 'gpt2'];

interface Case {
  params: MethodParams;
  /** The paper's trainable count for one module [out, in]. */
  count(out: number, inn: number): number;
  /** Trainable name suffixes per module. */
  names: string[];
}

const CASES: Record<string, Case> = {
  vera: { params: { rank: 8 }, count: (out) => 8 + out, names: ['vera_lambda_d', 'vera_lambda_b'] },
  loraxs: { params: { rank: 4 }, count: () => 4 * 4, names: ['loraxs_R'] },
  svfit: { params: { rank_rule: 'fixed', rank: 4 }, count: () => 4, names: ['svfit_s'] },
  nola: { params: { rank: 4, num_basis: 16 }, count: () => 2 * 16, names: ['nola_alpha', 'nola_beta'] },
};

/**
 * peft's VeRA merge, float64, from the exported VERA adapter: W' = W + diag(λ_b)·B[:out]·diag(λ_d)·A[:, :in]
 * (layer.py get_delta_weight), transposed under fan_in_fan_out.
 */
function referenceVeraMerge(config: Record<string, unknown>, tensors: Map<string, tf.Tensor>, original: TinyModel['original']): Map<string, Float64Array> {
  const r = config.r as number;
  const A = tensors.get('base_model.vera_A')!;
  const B = tensors.get('base_model.vera_B')!;
  const [a, b] = [A.dataSync(), B.dataSync()];
  const inMax = A.shape[1]!;
  const merged = new Map<string, Float64Array>();
  for (const [key, t] of tensors) {
    if (!key.endsWith('.vera_lambda_b')) continue;
    const modulePath = key.slice('base_model.model.'.length, -'.vera_lambda_b'.length);
    const lb = t.dataSync();
    const ld = tensors.get(`base_model.model.${modulePath}.vera_lambda_d`)!.dataSync();
    const w = original.get(`${modulePath}.weight`)!;
    const transposed = config.fan_in_fan_out === true;
    const [out, inn] = transposed ? [w.shape[1], w.shape[0]] : [w.shape[0], w.shape[1]];
    const at = (o: number, i: number) => (transposed ? i * out + o : o * inn + i);
    const result = new Float64Array(out * inn);
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inn; i++) {
        let delta = 0;
        for (let k = 0; k < r; k++) delta += b[o * r + k] * ld[k] * a[k * inMax + i];
        result[at(o, i)] = w.data[at(o, i)] + lb[o] * delta;
      }
    }
    merged.set(`${modulePath}.weight`, result);
  }
  return merged;
}

/** What AttachContext.initial takes to continue: the PEFT export, or NOLA's seeds + coefficients. */
function savedState(id: string, attached: AttachedMethod): Map<string, Float32Array> {
  if (id === 'nola') return nolaCompactAdapter(attached).tensors;
  const { tensors } = attached.peftAdapter!();
  const saved = new Map([...tensors].map(([k, t]) => [k, (t.dataSync() as Float32Array).slice()]));
  disposeAll(tensors.values());
  return saved;
}

describe.each(KINDS)('%s', (kind) => {
  describe.each(Object.keys(CASES))('%s', (id) => {
    const { params, count, names } = CASES[id];

    it('leaves the output unchanged at step 0, and detach restores the model with no tensor left behind', () => {
      // ΔW = 0 exactly (λ_b = 0, s − σ = 0, β = 0); LoRA-XS starts R ~ N(0, 1e-5²), so only nearly.
      expectNeutralAttachAndCleanDetach(kind, id, params, id === 'loraxs' ? 1e-3 : 0);
    });

    it('after training: merged == adapter logits, the export merged on the original base == merged weights, and re-attaching the saved adapter continues', () => {
      const { model, original } = tinyModel(kind);
      const ids = tokenIds(model.config.vocabSize, 2, 7, 2);
      const baseLogits = logits(model, ids);
      const targets = resolveTargets(model, 'all-linear');
      const attached = getMethod(id).attach(model, params, { targets, seed: 5 });
      train(model, attached, ids, 3);
      randomize(attached, 11, 0.05); // move well away from the start
      const adapterLogits = logits(model, ids);
      expect(relativeError(adapterLogits, baseLogits)).toBeGreaterThan(1e-2); // the adapter does something

      const merged = attached.mergedWeights();
      expect([...merged.keys()].sort()).toEqual(targets.map((p) => `${p}.weight`).sort());
      const mergedModel = modelWithWeights(model, merged);
      expect(relativeError(logits(mergedModel, ids), adapterLogits)).toBeLessThanOrEqual(1e-5);

      const { config, tensors } = attached.peftAdapter!();
      expect(config.peft_type).toBe(id === 'vera' ? 'VERA' : 'LORA');
      expect(config.fan_in_fan_out).toBe(kind === 'gpt2');
      const reference = id === 'vera' ? referenceVeraMerge(config, tensors, original) : referenceMerge(config, tensors, original);
      expect([...reference.keys()].sort()).toEqual([...merged.keys()].sort());
      for (const [name, want] of reference) expect(relativeError(merged.get(name)!.dataSync(), want)).toBeLessThanOrEqual(1e-5);
      disposeAll([...merged.values(), ...tensors.values()]);

      const saved = savedState(id, attached);
      attached.detach();
      const again = getMethod(id).attach(model, params, { targets, seed: 99, initial: saved });
      const againLogits = logits(model, ids);
      if (id === 'vera' || id === 'nola') expect(againLogits).toEqual(adapterLogits); // the same numbers
      else expect(relativeError(againLogits, adapterLogits)).toBeLessThanOrEqual(1e-5); // recovered from B·R, U·diag(s − σ)
      again.detach();
      ids.dispose();
      model.dispose();
    });

    it('only the method tensors are variables and receive gradients; the trainable count is exact', () => {
      const { model } = tinyModel(kind);
      const ids = tokenIds(model.config.vocabSize, 1, 6, 3);
      const targets = resolveTargets(model, ['q_proj', 'c_attn', 'down_proj', 'c_fc'].filter((t) => model.linearModules().some((p) => p.endsWith(t))));
      const weightsBefore = new Map([...model.weights].map(([n, w]) => [n, w.dataSync().slice()]));
      const attached = getMethod(id).attach(model, params, { targets, seed: 9 });
      randomize(attached, 4); // λ_b, β ≠ 0, so every method tensor has a non-zero gradient
      for (const w of model.weights.values()) expect(w).not.toBeInstanceOf(tf.Variable);

      // With no variable list, tf.variableGrads differentiates every trainable variable in the engine.
      const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.sum(tf.square(model.forward(ids).logits)) as tf.Scalar));
      const byVariable = new Map([...attached.trainable].map(([n, v]) => [v.name, n]));
      expect(Object.keys(grads).sort()).toEqual([...byVariable.keys()].sort());
      for (const [varName, g] of Object.entries(grads)) {
        expect(g.shape).toEqual(attached.trainable.get(byVariable.get(varName)!)!.shape);
        expect(tf.tidy(() => tf.max(tf.abs(g)).dataSync()[0])).toBeGreaterThan(0);
      }
      value.dispose();
      disposeAll(Object.values(grads));

      let expected = 0;
      for (const path of targets) {
        const [rows, cols] = model.weight(`${path}.weight`).shape;
        expected += model.isTransposedLinear(path) ? count(cols, rows) : count(rows, cols);
      }
      expect(attached.trainableParameterCount()).toBe(expected);
      expect([...attached.trainable.keys()]).toEqual(targets.flatMap((p) => names.map((n) => `${p}.${n}`)));

      train(model, attached, ids, 2);
      attached.detach();
      for (const [name, w] of model.weights) expect(w.dataSync()).toEqual(weightsBefore.get(name));
      ids.dispose();
      model.dispose();
    });

    it('keeps tf.memory().numTensors flat across training steps', () => {
      const { model } = tinyModel(kind);
      const ids = tokenIds(model.config.vocabSize, 2, 6, 4);
      const withDropout = id === 'svfit' ? params : { ...params, dropout: 0.1 };
      const attached = getMethod(id).attach(model, withDropout, { targets: resolveTargets(model, 'all-linear'), seed: 1 });
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
