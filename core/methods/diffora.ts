/**
 * DiffoRA: module-wise LoRA chosen by a differentiable adaptation matrix (Jiang, Wang & Yuan,
 * arXiv:2502.08905, "…via Differential Module Selection"). No code is published and the method's body
 * text could not be read (ALGORITHMS.md batch 2 §3 marks every rule UNCLEAR); what follows is the
 * DARTS-style reading the abstract describes ("continuous relaxation and discretization with
 * weight-sharing"), each choice named:
 *   candidates: every wrapped module m gets a LoRA pair (A ~ kaiming-uniform(a=√5), B = 0, s = α/r)
 *     and a DAM entry γ_m = 0 (one trainable scalar per module, `lora_dam`).
 *   search (the first `search_fraction` of the run, an even number of steps, at least 2):
 *     h = W₀x + sigmoid(γ_m)·s·B·A·dropout(x)
 *     sigmoid, not a softmax over modules: each module's adoption is its own yes/no choice.
 *     First-order DARTS (Liu et al., arXiv:1806.09055, §2.3 with ξ = 0): even steps train A, B on the
 *     first half of the training set, odd steps train γ on the held-out second half (DARTS' 50/50
 *     split of the training data), each group with its own optimizer: A, B the run's AdamW and
 *     schedule; γ Adam at DARTS' architecture settings (lr 3e-4 constant, β = (0.5, 0.999),
 *     weight decay 1e-3, decoupled here). Only the stepped group is differentiated.
 *   discretise after the search: the global top ⌈ρ·N⌉ modules by γ (ties by module order), or the top
 *     ⌈ρ·M_l⌉ within each layer; the mask is 0/1 (sigmoid(γ) is not kept as a scale).
 *   fine-tune (the rest of the run, whole training set): the selected modules keep their search-phase
 *     A and B (weight sharing) and train on as plain LoRA; the others carry no adapter at all.
 * The mask is a function of the saved γ (which no longer changes after the search), so a resumed run,
 * an export and the playground all rebuild the same selection. A run that ends inside the search
 * exports the selection its γ gives at that point.
 * Defaults: ρ = 0.5, r = 8 (ALGORITHMS.md placeholders); search_fraction 0.25 is this app's choice (no
 * source pins one). No learning rate is pinned by a source: the run's --lr.
 * The trainable count is what the search trains (every module's A, B and γ); after it only the
 * selected A, B train.
 * Export: plain LoRA on the selected modules only (PEFT and merged, both exact).
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import { AdamW } from '../optim/adamw.ts';
import type { Optimizer, OptimizerState } from '../optim/registry.ts';
import { layerOf } from '../models/recompute.ts';
import type { AttachedMethod, DataShards, Method, TrainingStep } from './method.ts';
import { PEFT_KEY_PREFIX } from './initial-values.ts';
import { linearTargets, type LinearTarget } from './factored-adapter.ts';
import { fromOutIn, loraSchema, peftLoraConfig, sortedKeys, toOutIn, variableFrom } from './lora.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

/** DARTS' architecture optimizer (train_search.py: arch_learning_rate, betas, arch_weight_decay). */
const DAM_ADAM = { lr: 3e-4, beta1: 0.5, beta2: 0.999, weightDecay: 1e-3 };

/** Search steps of a run: the fraction of it, rounded to an even count (pairs of A/B and γ steps), at least 2, at most the run. */
export function searchSteps(fraction: number, totalSteps: number): number {
  return Math.min(totalSteps, Math.max(2, 2 * Math.round((fraction * totalSteps) / 2)));
}

/**
 * The selected modules: the ⌈ρ·N⌉ largest γ (ties to the earlier module), over all modules
 * (`global`) or within each decoder layer (`per-layer`). Returns one flag per module, in order.
 */
export function selectModules(gamma: number[], paths: string[], ratio: number, scope: 'global' | 'per-layer'): boolean[] {
  const groups = new Map<string, number[]>();
  paths.forEach((path, i) => {
    const key = scope === 'global' ? '' : String(layerOf(path) ?? path);
    groups.set(key, [...(groups.get(key) ?? []), i]);
  });
  const chosen = new Array<boolean>(paths.length).fill(false);
  for (const members of groups.values()) {
    const keep = Math.ceil(ratio * members.length);
    const ranked = [...members].sort((a, b) => gamma[b] - gamma[a] || a - b);
    for (const i of ranked.slice(0, keep)) chosen[i] = true;
  }
  return chosen;
}

interface DifforaLayer {
  readonly target: LinearTarget;
  readonly A: tf.Variable<tf.Rank.R2>; // [r, in]
  readonly B: tf.Variable<tf.Rank.R2>; // [out, r]
  readonly gamma: tf.Variable<tf.Rank.R1>; // [1]
}

/** An attached DiffoRA; `selection` is the current 0/1 mask by module path. */
export interface DifforaAttached extends AttachedMethod {
  selection(): Map<string, boolean>;
}

/** Two optimizers, one per group, stepping the group the current step trains. */
class AlternatingOptimizer implements Optimizer {
  /** The γ optimizer's own step count (its bias correction), checkpointed beside the moments. */
  private readonly damStepCount = tf.variable(tf.scalar(0), false);
  constructor(
    private readonly weights: AdamW,
    private readonly dam: AdamW,
    private readonly damStep: () => boolean,
  ) {}
  get stepCount(): number {
    return this.weights.stepCount + this.dam.stepCount;
  }
  step(grads: Map<string, tf.Tensor>, lr: number): void {
    if (this.damStep()) this.dam.step(grads, DAM_ADAM.lr);
    else this.weights.step(grads, lr);
  }
  stateBytes(): number {
    return this.weights.stateBytes() + this.dam.stateBytes();
  }
  getWeights(): OptimizerState {
    const weights = this.weights.getWeights();
    const dam = this.dam.getWeights();
    this.damStepCount.assign(tf.scalar(dam.step));
    const tensors = new Map([...weights.tensors, ...dam.tensors, ['lora_dam.optimizer_step', this.damStepCount as tf.Tensor]]);
    return { step: weights.step, tensors };
  }
  setWeights(state: OptimizerState): void {
    const damStep = state.tensors.get('lora_dam.optimizer_step');
    this.weights.setWeights(state);
    this.dam.setWeights({ step: damStep ? damStep.dataSync()[0] : 0, tensors: state.tensors });
  }
  dispose(): void {
    this.weights.dispose();
    this.dam.dispose();
    this.damStepCount.dispose();
  }
}

export const diffora: Method = {
  id: 'diffora',
  variantOf: 'lora',
  family: 'adapter',
  paper: { title: 'DiffoRA: Enabling Parameter-Efficient Fine-Tuning via Differential Module Selection', year: 2025, url: 'https://arxiv.org/abs/2502.08905' },
  summary: 'LoRA on every module first, each gated by a learnt sigmoid(γ) trained on held-out data; then only the top ρ of modules keep LoRA and fine-tune on.',
  parameterPrefix: 'lora_',
  schema: [
    ...loraSchema(),
    { name: 'selection_ratio', type: 'number', default: 0.5, min: 0.001, max: 1, description: 'ρ, the share of modules that keep LoRA after the search' },
    { name: 'search_fraction', type: 'number', default: 0.25, min: 0, max: 1, description: 'share of the run spent searching (an even number of steps, at least 2), alternating A/B and γ steps' },
    { name: 'selection_scope', type: 'enum', default: 'global', choices: ['global', 'per-layer'], description: 'top ρ over all modules, or within each decoder layer' },
  ],
  mergeable: true,
  exportFormats: ['peft', 'merged'],
  countTrainable(model, given, paths) {
    const r = resolveParams('diffora', diffora.schema, given).rank as number;
    return linearTargets(model, 'diffora', paths).reduce((n, t) => n + r * (t.inFeatures + t.outFeatures) + 1, 0);
  },

  attach(model, given, ctx): DifforaAttached {
    const params = resolveParams('diffora', diffora.schema, given);
    const r = params.rank as number;
    const alpha = params.alpha as number;
    const rate = params.dropout as number;
    const ratio = params.selection_ratio as number;
    const scope = params.selection_scope as 'global' | 'per-layer';
    const scaling = params.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
    if (ctx.initial) {
      throw new LowrankError('BAD_ARGUMENT', 'method diffora cannot continue from a PEFT adapter (--adapter): the adapter holds the selected modules only, not the search state; train it further with --method lora');
    }
    const targets = linearTargets(model, 'diffora', ctx.targets);
    const initRandom = new Random(ctx.seed);
    const dropoutRandom = new Random((ctx.seed ^ 0x5bd1e995) >>> 0);
    const layers: DifforaLayer[] = [];
    const trainable = new Map<string, tf.Variable>();
    let searching = false;
    let damStep = false;
    let mask: boolean[] | null = null;
    const logLines: string[] = [];

    const detach = () => {
      for (const layer of layers) {
        model.adapters.delete(layer.target.path);
        for (const v of [layer.A, layer.B, layer.gamma]) v.dispose();
      }
      layers.length = 0;
      trainable.clear();
    };

    /** The 0/1 selection from the current γ (computed once after the search, when γ stops changing). */
    const selected = (): boolean[] => {
      mask ??= selectModules(
        layers.map((l) => l.gamma.dataSync()[0]),
        layers.map((l) => l.target.path),
        ratio,
        scope,
      );
      return mask;
    };

    try {
      for (const target of targets) {
        const { path, inFeatures: n, outFeatures: m } = target;
        const bound = 1 / Math.sqrt(n);
        const a = Float32Array.from({ length: r * n }, () => (2 * initRandom.next() - 1) * bound);
        const layer: DifforaLayer = {
          target,
          A: variableFrom(tf.tensor2d(a, [r, n])),
          B: variableFrom(tf.zeros([m, r])),
          gamma: variableFrom(tf.zeros([1])),
        };
        const index = layers.length;
        layers.push(layer);
        trainable.set(`${path}.lora_A.weight`, layer.A);
        trainable.set(`${path}.lora_B.weight`, layer.B);
        trainable.set(`${path}.lora_dam`, layer.gamma);
        const dropout = (x: tf.Tensor2D) => tf.dropout(x, rate, undefined, dropoutRandom.int(2 ** 31)) as tf.Tensor2D;
        model.adapters.set(path, {
          apply(x, base, _weight, training) {
            if (!searching && !selected()[index]) return base(x);
            const input = training && rate > 0 ? dropout(x) : x;
            const gate = searching ? tf.mul(tf.sigmoid(layer.gamma), scaling) : scaling; // sigmoid(γ)·s while searching
            const update = tf.matMul(tf.matMul(input, layer.A, false, true), tf.mul(layer.B, gate), false, true); // [N, out]
            return tf.add(base(x), update);
          },
        });
      }
    } catch (e) {
      detach();
      throw e;
    }

    const fraction = params.search_fraction as number;
    let plannedSearch = 0;
    const dataShards: DataShards = {
      count: 2,
      setSizes(sizes, totalSteps) {
        if (sizes.some((s) => s < 1)) {
          throw new LowrankError('BAD_DATA', `method diffora: its search needs two halves of the training set (one held out for γ), but it has ${sizes.reduce((a, b) => a + b, 0)} example(s); add data`);
        }
        plannedSearch = searchSteps(fraction, totalSteps);
      },
      // Search: A/B steps on the first half, γ steps on the held-out second half; then the whole set.
      shardAt: (step) => (step < plannedSearch ? { shard: step % 2, cursor: Math.floor(step / 2) } : null),
    };

    const selectionMap = () => new Map(layers.map((l, i) => [l.target.path, selected()[i]] as const));
    /** The selection from γ as it is now (an export may follow a checkpoint load). */
    const selectedLayers = () => {
      mask = null;
      return layers.filter((_, i) => selected()[i]);
    };

    return {
      method: diffora,
      params,
      trainable,
      dataShards,
      lrScale: () => 1,
      getRandomState: () => dropoutRandom.getState(),
      setRandomState: (state) => dropoutRandom.setState(state),
      trainableParameterCount: () => [...trainable.values()].reduce((count, v) => count + v.size, 0),
      selection: selectionMap,
      createOptimizer(options) {
        const weights = new Map([...trainable].filter(([name]) => !name.endsWith('.lora_dam')));
        const gammas = new Map([...trainable].filter(([name]) => name.endsWith('.lora_dam')));
        return new AlternatingOptimizer(
          new AdamW(weights, options),
          new AdamW(gammas, { beta1: DAM_ADAM.beta1, beta2: DAM_ADAM.beta2, weightDecay: DAM_ADAM.weightDecay }),
          () => damStep,
        );
      },
      beforeStep({ step, totalSteps }: TrainingStep) {
        const search = searchSteps(fraction, totalSteps);
        searching = step < search;
        damStep = searching && step % 2 === 1;
        mask = null; // γ may have changed (a step, a restored checkpoint)
        const tuned = selected();
        // Only the stepped group is differentiated (and clipped): γ on γ steps, the selected A, B after the search.
        layers.forEach((layer, i) => {
          layer.gamma.trainable = damStep;
          layer.A.trainable = layer.B.trainable = searching ? !damStep : tuned[i];
        });
      },
      afterOptimizerStep({ step, totalSteps }: TrainingStep) {
        if (step === searchSteps(fraction, totalSteps) - 1) {
          searching = false;
          mask = null; // discretise from the final γ
          const kept = layers.filter((_, i) => selected()[i]).map((l) => l.target.path);
          logLines.push(`search done: LoRA kept on ${kept.length} of ${layers.length} modules (${kept.join(', ')})`);
        }
      },
      takeLogLines: () => logLines.splice(0),
      mergedWeights() {
        const merged = new Map<string, tf.Tensor>();
        for (const layer of selectedLayers()) {
          const name = `${layer.target.path}.weight`;
          merged.set(name, tf.tidy(() => fromOutIn(layer.target, tf.add(toOutIn(layer.target, model.weight(name) as tf.Tensor2D), tf.matMul(tf.mul(layer.B, scaling), layer.A)))));
        }
        return merged;
      },
      peftAdapter() {
        const kept = selectedLayers();
        const tensors = new Map<string, tf.Tensor>();
        for (const layer of kept) {
          tensors.set(`${PEFT_KEY_PREFIX}${layer.target.path}.lora_A.weight`, tf.clone(layer.A));
          tensors.set(`${PEFT_KEY_PREFIX}${layer.target.path}.lora_B.weight`, tf.clone(layer.B));
        }
        const config = peftLoraConfig(model, kept.map((l) => l.target), { r, alpha, dropout: rate, useRslora: params.use_rslora as boolean });
        return { config: sortedKeys(config), tensors };
      },
      detach,
    };
  },
};

registerMethod(diffora);
