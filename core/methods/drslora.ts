/**
 * Dynamic Rank-Selective LoRA, CoDyRA (Lu et al., arXiv:2412.01004), as the official code runs it
 * (Artificer-AI-Lab/CoDyRA: loralib/codyra.py `codyra_Linear.forward`, models/codyra.py
 * `train_model`; ALGORITHMS.md "CoDyRA"):
 *   A [r, in] ~ kaiming-uniform(a=√5), B [out, r] = 0, gate g [r] ~ N(0, 1), all trainable:
 *     h = W₀x + B·diag(g)·A·x            scale 1, no dropout
 *   AdamW with β = (0.9, 0.9999) on A, B and g (the run's weight decay; the runs use 0).
 * A module's rank is the number of nonzero gate entries, and the gates are driven to zero where the
 * data does not need them, so the rank each module keeps follows its relevance to the current data;
 * the budget is r per module (no module can exceed it, so the total stays ≤ r × modules).
 * Rank selection (train_model): after the optimizer step of every iteration t > dense·T, the gates are
 * thresholded by κ with the official operator (g>κ: g −= κ; then g<−κ: g += κ; then |g|<κ: g = 0, in
 * that order, so every |g| < 2κ ends at 0: sora.ts `thresholdGate` 'as-run'). κ steps through
 * linspace(0, κ_max, K): it starts at 0 and, before iteration t's forward, moves to the next value
 * when t ≥ dense·T and t is a multiple of ⌊(T − dense·T) / K⌋ (never when that is 0: short runs stay
 * dense). κ is a function of the step, so a resumed run continues on the same schedule.
 * The official runs keep the task's gates and, at the end of a continual-learning task, fold
 * B·diag(g)·A into W₀ (`increment_task`); here one run is one task, and its export is:
 *   PEFT: a plain LoRA of rank |{i : g_i ≠ 0}| per module, lora_B = B[:, S]·diag(g_S), lora_A = A[S, :]
 *   (rank_pattern where modules differ; fully pruned modules left out) — exactly the trained update;
 *   merged: W₀ + B·diag(g)·A.
 */
import * as tf from '../tf.ts';
import { Random } from '../random.ts';
import { AdamW } from '../optim/adamw.ts';
import type { AttachedMethod, Method, TrainingStep } from './method.ts';
import { InitialValues } from './initial-values.ts';
import { linearTargets } from './factored-adapter.ts';
import { fromOutIn, toOutIn } from './lora.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';
import { createGatedLayer, detachGatedLayers, gatedPeftAdapter, thresholdGate, type GatedLayer } from './sora.ts';

/**
 * κ in force during 0-based iteration `step` of `totalSteps` (train_model's threshold_id walk):
 * lambdas = linspace(0, κ_max, K); the index rises by one at every iteration t ≤ step with
 * t ≥ dense·T and t mod ⌊(T − dense·T) / K⌋ = 0, capped at K − 1.
 */
export function kappaAt(step: number, totalSteps: number, denseFraction: number, maxKappa: number, stages: number): number {
  const dense = denseFraction * totalSteps;
  const every = Math.floor((totalSteps - dense) / stages);
  if (every <= 0) return 0;
  const first = Math.ceil(dense);
  // Multiples of `every` in [first, step].
  const index = step < first ? 0 : Math.floor(step / every) - Math.floor((first - 1) / every);
  const clamped = Math.min(stages - 1, index);
  return stages === 1 ? 0 : (maxKappa * clamped) / (stages - 1);
}

type DrsLayer = GatedLayer;

/** An attached CoDyRA; `ranks` is the number of nonzero gates of each module (its exported rank). */
export interface DrsloraAttached extends AttachedMethod {
  ranks(): Map<string, number>;
}

export const drslora: Method = {
  id: 'drslora',
  variantOf: 'lora',
  family: 'adapter',
  paper: {
    title: 'Adaptive Rank, Reduced Forgetting: Knowledge Retention in Continual Learning Vision-Language Models with Dynamic Rank-Selective LoRA',
    year: 2024,
    url: 'https://arxiv.org/abs/2412.01004',
  },
  summary: 'CoDyRA: LoRA with a gate per rank whose entries a growing threshold zeroes after a dense phase, so each module keeps the ranks its data needs (at most r).',
  paperLearningRate: { value: 5e-4, source: 'Artificer-AI-Lab/CoDyRA runner_codyra.sh (--lr 5e-4, AdamW β = (0.9, 0.9999), cosine; ALGORITHMS.md CoDyRA (d))' },
  parameterPrefix: 'lora_',
  // runner_codyra.sh: r = 16, lr 5e-4, max_kappa 5e-3, dense_iters 0.5; main.py: lambda_num 50.
  schema: [
    { name: 'rank', type: 'integer', default: 16, min: 1, max: 4096, description: 'r, the rank budget of each module before selection (gate entries per module)' },
    { name: 'max_kappa', type: 'number', default: 5e-3, min: 0, description: 'κ_max, the last gate threshold (gates with |g| < 2κ are zeroed)' },
    { name: 'dense_fraction', type: 'number', default: 0.5, min: 0, max: 1, description: 'share of the steps trained dense before gates are thresholded (dense_iters)' },
    { name: 'kappa_stages', type: 'integer', default: 50, min: 1, max: 100000, description: 'K, the number of threshold values from 0 to κ_max (lambda_num)' },
  ],
  mergeable: true,
  exportFormats: ['peft', 'merged'],

  attach(model, given, ctx): DrsloraAttached {
    const params = resolveParams('drslora', drslora.schema, given);
    const r = params.rank as number;
    const maxKappa = params.max_kappa as number;
    const denseFraction = params.dense_fraction as number;
    const stages = params.kappa_stages as number;
    const targets = linearTargets(model, 'drslora', ctx.targets);
    const initial = InitialValues.from(ctx.initial);
    const initRandom = new Random(ctx.seed);
    const layers: DrsLayer[] = [];
    const trainable = new Map<string, tf.Variable>();

    const detach = () => detachGatedLayers(model, layers, trainable);

    try {
      for (const target of targets) {
        const { path } = target;
        const layer: DrsLayer = createGatedLayer(target, r, initRandom, initial ?? null, trainable);
        layers.push(layer);
        model.adapters.set(path, {
          apply(x, base) {
            const gated = tf.mul(tf.matMul(x, layer.A, false, true), layer.gate); // (A·x) ⊙ g   [N, r]
            return tf.add(base(x), tf.matMul(gated, layer.B, false, true)); // [N, out]
          },
        });
      }
      initial?.assertAllUsed();
    } catch (e) {
      detach();
      throw e;
    }

    /** B·diag(g) [out, r]. */
    const gatedB = (layer: DrsLayer) => tf.mul(layer.B, tf.reshape(layer.gate, [1, r])) as tf.Tensor2D;

    return {
      method: drslora,
      params,
      trainable,
      lrScale: () => 1,
      createOptimizer: (options) => new AdamW(trainable, { ...options, beta2: 0.9999 }),
      trainableParameterCount: () => [...trainable.values()].reduce((n, v) => n + v.size, 0),
      afterOptimizerStep({ step, totalSteps }: TrainingStep) {
        if (!(step > denseFraction * totalSteps)) return; // `if iteration > dense_iters`
        const kappa = kappaAt(step, totalSteps, denseFraction, maxKappa, stages);
        for (const layer of layers) {
          const next = thresholdGate(layer.gate, kappa, 0, 'as-run');
          layer.gate.assign(next as tf.Tensor1D);
          next.dispose();
        }
      },
      ranks: () => new Map(layers.map((l) => [l.target.path, (l.gate.dataSync() as Float32Array).reduce((n, v) => n + (v !== 0 ? 1 : 0), 0)])),
      mergedWeights() {
        const merged = new Map<string, tf.Tensor>();
        for (const layer of layers) {
          const name = `${layer.target.path}.weight`;
          merged.set(name, tf.tidy(() => fromOutIn(layer.target, tf.add(toOutIn(layer.target, model.weight(name) as tf.Tensor2D), tf.matMul(gatedB(layer), layer.A)))));
        }
        return merged;
      },
      peftAdapter: () => gatedPeftAdapter('drslora', model, layers.map((l) => ({ target: l.target, A: l.A, gatedB: () => gatedB(l), gate: l.gate })), 0),
      detach,
    };
  },
};

registerMethod(drslora);
