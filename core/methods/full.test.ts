/**
 * Full fine-tuning: every weight is a trainable variable and gets a gradient; the merged weights
 * are the trained weights (a model built from them gives the trained logits); detach restores the
 * base model and frees the variables.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { getMethod } from './index.ts';
import { logits, modelWithWeights, relativeError, tinyModel, tokenIds, train } from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

describe('full', () => {
  it('trains every weight; merged weights reproduce the trained model; detach restores the base', () => {
    const { model } = tinyModel('gpt2');
    const ids = tokenIds(model.config.vocabSize, 2, 6, 1);
    const before = logits(model, ids);
    const tensorsBefore = tf.memory().numTensors;
    const attached = getMethod('full').attach(model, {}, { targets: [], seed: 0 });
    expect([...attached.trainable.keys()].sort()).toEqual([...model.weights.keys()].sort());
    expect(attached.trainableParameterCount()).toBe([...model.weights.values()].reduce((n, w) => n + w.size, 0));
    for (const [name, w] of model.weights) expect(w).toBe(attached.trainable.get(name));
    expect(relativeError(logits(model, ids), before)).toBe(0);

    const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.sum(tf.square(model.forward(ids).logits)) as tf.Scalar));
    expect(Object.keys(grads).length).toBe(attached.trainable.size);
    value.dispose();
    for (const g of Object.values(grads)) g.dispose();
    attached.detach();
    expect(tf.memory().numTensors).toBe(tensorsBefore);

    // (Not counted for leaks: AdamW's constructor keeps two tensors per parameter, core/optim.)
    const training = getMethod('full').attach(model, {}, { targets: [], seed: 0 });
    train(model, training, ids, 2, 0.01);
    const trained = logits(model, ids);
    expect(relativeError(trained, before)).toBeGreaterThan(1e-3);
    const merged = training.mergedWeights();
    const mergedModel = modelWithWeights(model, merged);
    expect(relativeError(logits(mergedModel, ids), trained)).toBe(0);
    for (const t of merged.values()) t.dispose();

    training.detach();
    expect(logits(model, ids)).toEqual(before);
    ids.dispose();
    model.dispose();
  });
});
