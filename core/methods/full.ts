/**
 * Full fine-tuning, the baseline every method is compared with: every weight of the model is a
 * trainable variable. The variables replace the model's weight tensors while attached (they share
 * storage until the first update); detach puts the original tensors back, so take
 * `mergedWeights()` (the trained weights) before detaching.
 */
import * as tf from '../tf.ts';
import type { AttachedMethod, Method } from './method.ts';
import { InitialValues } from './initial-values.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

export const full: Method = {
  id: 'full',
  family: 'full',
  paper: { title: 'BERT: Pre-training of Deep Bidirectional Transformers (fine-tuning all parameters)', year: 2019, url: 'https://arxiv.org/abs/1810.04805' },
  paperLearningRate: { value: 2e-5, source: "the full fine-tuning baseline of GraphPKU/PiSSA scripts/run_full_finetune.sh (Llama-3-8B, MetaMathQA); BERT's own grid is {2,3,5}e-5" },
  summary: 'Train every weight of the model (the baseline; needs the most memory).',
  parameterPrefix: '',
  schema: [],
  mergeable: true,
  exportFormats: ['merged'],

  attach(model, given, ctx): AttachedMethod {
    const params = resolveParams('full', [], given);
    const initial = InitialValues.from(ctx.initial);
    const originals = new Map(model.weights);
    const trainable = new Map<string, tf.Variable>();
    for (const [name, weight] of originals) {
      const start = initial ? tf.tensor(initial.take(name, weight.shape), weight.shape) : weight;
      const v = tf.variable(start);
      if (start !== weight) start.dispose();
      trainable.set(name, v);
      model.weights.set(name, v);
    }
    const detach = () => {
      for (const [name, weight] of originals) model.weights.set(name, weight);
      for (const v of trainable.values()) v.dispose();
      trainable.clear();
    };
    try {
      initial?.assertAllUsed();
    } catch (e) {
      detach();
      throw e;
    }
    return {
      method: full,
      params,
      trainable,
      lrScale: () => 1,
      trainableParameterCount: () => [...trainable.values()].reduce((n, v) => n + v.size, 0),
      mergedWeights: () => new Map([...trainable].map(([name, v]) => [name, tf.clone(v)])),
      detach,
    };
  },
};

registerMethod(full);
