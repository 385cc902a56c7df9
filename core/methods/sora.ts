/**
 * SoRA: sparse low-rank adaptation (Ding et al., arXiv:2311.11696), as the official code runs it
 * (TsinghuaC3I/SoRA: src/lora.py `LowRankLinear`, src/sparse_optimizer.py `SparseAdamW`,
 * src/trainer.py; ALGORITHMS.md §6):
 *   A [r, in] ~ kaiming-uniform(a=√5), B [out, r] = 0, gate g [r] ~ N(0, 1), all trainable, s = α/r:
 *     h = W₀x + s·B·diag(g)·A·dropout(x)
 *   loss = L + λ·Σ|g| / N_g   (N_g: every gate entry of every layer; `--sparse_lambda`)
 *   A and B: the run's AdamW; gates: AdamW without weight decay at lr·gate_lr_ratio (`--sparse_lr`,
 *   default the run's lr, same schedule), then after each optimizer step a threshold ξ on g
 *   (`--sparse_lambda_2`), one of
 *     as-run:     p>ξ: p −= ξ; then p<−ξ: p += ξ; then |p|<ξ: p = 0  (sparse_optimizer.py, in that
 *                 order: it zeroes every |p| < 2ξ and shrinks the rest by ξ; ξ not times lr)
 *     as-run-lr:  the same with ξ·lr                                   (sparse_optimizer_multiply_lr.py)
 *     prox:       sign(p)·max(|p| − lr·ξ, 0), the paper's proximal step T_{ηξ}(g)
 *   ξ schedule: `_build_lambda_list` gives K values from ξ to ξ_max (linear, log_linear, exp_linear);
 *   the official script trains extra stages after the first run, here the run's steps are split
 *   into K equal stages, stage k using the k-th value.
 *   The official SparseAdamW puts ε outside the bias correction (step_size·m/(√v + ε)); the gates
 *   use torch's AdamW form here like every other tensor, which differs only through ε.
 * Export: with S = {i : g_i ≠ 0}, lora_B = s·B[:, S]·diag(g_S), lora_A = A[S, :], a PEFT LoRA of rank
 * |S| per module (rank_pattern / alpha_pattern where modules differ; lora_alpha = rank, so peft's
 * scaling is 1); modules whose gates are all zero carry no update and are left out.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import { AdamW } from '../optim/adamw.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import type { AttachedMethod, Method, TrainingStep } from './method.ts';
import { InitialValues, PEFT_KEY_PREFIX } from './initial-values.ts';
import { linearTargets, type LinearTarget } from './factored-adapter.ts';
import { assignValues, fromOutIn, peftLoraConfig, sortedKeys, toOutIn, variableFrom } from './lora.ts';
import { dropoutField, resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

export type ThresholdMode = 'as-run' | 'as-run-lr' | 'prox';
export type ThresholdSchedule = 'none' | 'linear' | 'log_linear' | 'exp_linear';

const GATE = 'lora_gate';

/** The gate thresholding after an optimizer step (see the header), new tensor. */
export function thresholdGate(g: tf.Tensor, xi: number, lr: number, mode: ThresholdMode): tf.Tensor {
  return tf.tidy(() => {
    if (mode === 'prox') {
      const t = lr * xi;
      return tf.mul(tf.sign(g), tf.relu(tf.sub(tf.abs(g), t)));
    }
    const t = mode === 'as-run-lr' ? xi * lr : xi;
    if (!(t > 0)) return tf.clone(g); // `if self.sparse_lambda > 0`
    const p1 = tf.where(tf.greater(g, t), tf.sub(g, t), g);
    const p2 = tf.where(tf.less(p1, -t), tf.add(p1, t), p1);
    return tf.where(tf.less(tf.abs(p2), t), tf.zerosLike(p2), p2);
  });
}

/** `_build_lambda_list`: the K threshold values of a schedule (one value without a schedule). */
export function thresholdValues(schedule: ThresholdSchedule, xi: number, xiMax: number, stages: number): number[] {
  if (schedule === 'none') return [xi];
  const linspace = (a: number, b: number) => Array.from({ length: stages }, (_, k) => (stages === 1 ? a : a + ((b - a) * k) / (stages - 1)));
  if (schedule === 'linear') return linspace(xi, xiMax);
  if (schedule === 'log_linear') return linspace(Math.exp(xi), Math.exp(xiMax)).map(Math.log);
  if (!(xi > 0) || !(xiMax > 0)) throw new LowrankError('BAD_ARGUMENT', 'method sora: the exp_linear schedule needs threshold > 0 and threshold_max > 0');
  return linspace(Math.log(xi), Math.log(xiMax)).map(Math.exp);
}

/** One module of a gated LoRA (SoRA, CoDyRA): A [r, in], the gated and scaled B·diag(g) [out, r], the gate g [r]. */
export interface GatedModule {
  readonly target: LinearTarget;
  readonly A: tf.Tensor2D;
  gatedB(): tf.Tensor2D;
  readonly gate: tf.Tensor1D;
}

/**
 * The PEFT form of a gated LoRA: with S = {i : g_i ≠ 0}, lora_A = A[S, :], lora_B = (s·B·diag(g))[:, S],
 * a plain LoRA of rank |S| per module (rank_pattern / alpha_pattern where modules differ; lora_alpha =
 * rank, so peft's scaling is 1); modules whose gates are all zero carry no update and are left out.
 */
export function gatedPeftAdapter(methodId: string, model: CausalLM, modules: GatedModule[], dropout: number): { config: Record<string, unknown>; tensors: Map<string, tf.Tensor> } {
  const tensors = new Map<string, tf.Tensor>();
  const ranks = new Map<string, number>();
  for (const module of modules) {
    const kept = [...module.gate.dataSync()].flatMap((v, i) => (v !== 0 ? [i] : []));
    if (kept.length === 0) continue; // a fully pruned module has no update
    const { A, B } = tf.tidy(() => {
      const index = tf.tensor1d(kept, 'int32');
      return { A: tf.gather(module.A, index, 0) as tf.Tensor2D, B: tf.gather(module.gatedB(), index, 1) as tf.Tensor2D };
    });
    tensors.set(`${PEFT_KEY_PREFIX}${module.target.path}.lora_A.weight`, A);
    tensors.set(`${PEFT_KEY_PREFIX}${module.target.path}.lora_B.weight`, B);
    ranks.set(module.target.path, kept.length);
  }
  if (ranks.size === 0) throw new LowrankError('BAD_ARGUMENT', `method ${methodId}: every gate is zero, so the adapter is empty; nothing to export as PEFT (use the base model)`);
  // The most common rank is r; the other modules are listed by full path (dots escaped: peft reads regexes).
  const counts = new Map<number, number>();
  for (const k of ranks.values()) counts.set(k, (counts.get(k) ?? 0) + 1);
  const common = [...counts].sort((x, y) => y[1] - x[1] || y[0] - x[0])[0][0];
  const pattern: Record<string, number> = {};
  for (const [path, k] of ranks) if (k !== common) pattern[path.replace(/\./g, '\\.')] = k;
  const kept = modules.filter((m) => ranks.has(m.target.path)).map((m) => m.target);
  const config = peftLoraConfig(model, kept, { r: common, alpha: common, dropout, useRslora: false });
  config.rank_pattern = { ...pattern };
  config.alpha_pattern = { ...pattern }; // lora_alpha = rank: peft's scaling is 1 (s·diag(g) is in lora_B)
  return { config: sortedKeys(config), tensors };
}

/** A LoRA pair with a gate between B and A (SoRA, CoDyRA). */
export interface GatedLayer {
  readonly target: LinearTarget;
  readonly A: tf.Variable<tf.Rank.R2>; // [r, in]
  readonly B: tf.Variable<tf.Rank.R2>; // [out, r]
  readonly gate: tf.Variable<tf.Rank.R1>; // [r]
}
type SoraLayer = GatedLayer;

/**
 * One gated layer as the official code starts it: A by kaiming_uniform_(a=√5), B zero, the gate
 * torch.randn(1, r), drawn from `initRandom` in that order; or, when continuing, the unpruned factors
 * and gate of a training checkpoint (not the reduced export). Registered in `trainable` under PEFT names.
 */
export function createGatedLayer(target: LinearTarget, r: number, initRandom: Random, initial: InitialValues | null, trainable: Map<string, tf.Variable>): GatedLayer {
  const { path, inFeatures: n, outFeatures: m } = target;
  const bound = 1 / Math.sqrt(n); // kaiming_uniform_(a=√5) on [r, in]
  const a = Float32Array.from({ length: r * n }, () => (2 * initRandom.next() - 1) * bound);
  const g = Float32Array.from({ length: r }, () => initRandom.normal()); // torch.randn(1, r)
  const layer: GatedLayer = {
    target,
    A: variableFrom(tf.tensor2d(a, [r, n])),
    B: variableFrom(tf.zeros([m, r])),
    gate: variableFrom(tf.tensor1d(g)),
  };
  if (initial) {
    assignValues(layer.A, initial.take(`${path}.lora_A.weight`, [r, n]));
    assignValues(layer.B, initial.take(`${path}.lora_B.weight`, [m, r]));
    assignValues(layer.gate, initial.take(`${path}.${GATE}`, [r]));
  }
  trainable.set(`${path}.lora_A.weight`, layer.A);
  trainable.set(`${path}.lora_B.weight`, layer.B);
  trainable.set(`${path}.${GATE}`, layer.gate);
  return layer;
}

/** Removes the gated layers from the model and frees their variables. */
export function detachGatedLayers(model: CausalLM, layers: GatedLayer[], trainable: Map<string, tf.Variable>): void {
  for (const layer of layers) {
    model.adapters.delete(layer.target.path);
    layer.A.dispose();
    layer.B.dispose();
    layer.gate.dispose();
  }
  layers.length = 0;
  trainable.clear();
}

/** An attached SoRA; `nonzeroGates` is the rank each module would export with. */
export interface SoraAttached extends AttachedMethod {
  nonzeroGates(): Map<string, number>;
}

export const sora: Method = {
  id: 'sora',
  variantOf: 'lora',
  family: 'adapter',
  paper: { title: 'Sparse Low-rank Adaptation of Pre-trained Language Models', year: 2023, url: 'https://arxiv.org/abs/2311.11696' },
  paperLearningRate: { value: 8e-4, source: 'TsinghuaC3I/SoRA scripts/run_glue_sora_*.sh, STS-B without schedule (DeBERTaV3-base; ALGORITHMS.md SoRA (d))' },
  summary: 'LoRA with a gate between B and A whose entries a proximal (soft-threshold) step drives to exactly zero, pruning ranks; exports the reduced rank.',
  parameterPrefix: 'lora_',
  // The official STS-B run without a schedule: r_max = 8, lora_alpha = 16, λ = 10, ξ = 3e-4; the RTE
  // schedule: ξ from 0 to 7e-4 in K = 7 values.
  schema: [
    { name: 'rank', type: 'integer', default: 8, min: 1, max: 4096, description: 'r_max, the rank before pruning (gate entries per module)' },
    { name: 'alpha', type: 'number', default: 16, min: 0, description: 'α; the update is scaled by α/r_max' },
    dropoutField(),
    { name: 'sparse_lambda', type: 'number', default: 10, min: 0, description: 'λ, weight of the sparsity term λ·Σ|g|/N added to the training loss (N = number of gate entries; trained on, left out of the reported loss)' },
    {
      name: 'threshold',
      type: 'number',
      default: 3e-4,
      min: 0,
      description: 'ξ, the gate threshold applied after every optimizer step (official --sparse_lambda_2); the first value of a schedule',
    },
    {
      name: 'threshold_mode',
      type: 'enum',
      default: 'as-run',
      choices: ['as-run', 'as-run-lr', 'prox'],
      description: 'as-run: the official optimizer (zeroes |g| < 2ξ, shrinks the rest by ξ); as-run-lr: the same with ξ·lr; prox: exact soft threshold by lr·ξ (the paper)',
    },
    {
      name: 'threshold_schedule',
      type: 'enum',
      default: 'none',
      choices: ['none', 'linear', 'log_linear', 'exp_linear'],
      description: 'sparsifying schedule: ξ steps through threshold_stages values up to threshold_max, the run split into equal stages',
    },
    { name: 'threshold_max', type: 'number', default: 7e-4, min: 0, description: 'ξ_max, the last threshold of a schedule' },
    { name: 'threshold_stages', type: 'integer', default: 7, min: 1, max: 1000, description: 'K, the number of threshold values in a schedule' },
    { name: 'gate_lr_ratio', type: 'number', default: 1, min: 0, description: 'learning rate of the gates over the run’s (official --sparse_lr, default equal)' },
  ],
  mergeable: true,
  exportFormats: ['peft', 'merged'],

  attach(model, given, ctx): SoraAttached {
    const params = resolveParams('sora', sora.schema, given);
    const r = params.rank as number;
    const alpha = params.alpha as number;
    const rate = params.dropout as number;
    const lambda = params.sparse_lambda as number;
    const mode = params.threshold_mode as ThresholdMode;
    const gateLrRatio = params.gate_lr_ratio as number;
    const xis = thresholdValues(params.threshold_schedule as ThresholdSchedule, params.threshold as number, params.threshold_max as number, params.threshold_stages as number);
    const scaling = alpha / r;
    const targets = linearTargets(model, 'sora', ctx.targets);
    const initial = InitialValues.from(ctx.initial);
    const initRandom = new Random(ctx.seed);
    const dropoutRandom = new Random((ctx.seed ^ 0x5bd1e995) >>> 0);
    const layers: SoraLayer[] = [];
    const trainable = new Map<string, tf.Variable>();
    const isGate = (name: string) => name.endsWith(`.${GATE}`);

    const detach = () => detachGatedLayers(model, layers, trainable);

    try {
      for (const target of targets) {
        const { path } = target;
        const layer: SoraLayer = createGatedLayer(target, r, initRandom, initial ?? null, trainable);
        layers.push(layer);
        const dropout = (x: tf.Tensor2D) => tf.dropout(x, rate, undefined, dropoutRandom.int(2 ** 31)) as tf.Tensor2D;
        model.adapters.set(path, {
          apply(x, base, _weight, training) {
            const input = training && rate > 0 ? dropout(x) : x;
            const gated = tf.mul(tf.matMul(input, layer.A, false, true), layer.gate); // (A·x) ⊙ g   [N, r]
            return tf.add(base(x), tf.mul(tf.matMul(gated, layer.B, false, true), scaling)); // [N, out]
          },
        });
      }
      initial?.assertAllUsed();
    } catch (e) {
      detach();
      throw e;
    }

    /** s·B·diag(g) [out, r]. */
    const gatedB = (layer: SoraLayer) => tf.mul(layer.B, tf.mul(tf.reshape(layer.gate, [1, r]), scaling)) as tf.Tensor2D;
    const gateValues = (layer: SoraLayer) => layer.gate.dataSync() as Float32Array;

    return {
      method: sora,
      params,
      trainable,
      lrScale: (name) => (isGate(name) ? gateLrRatio : 1),
      // The gates get no weight decay (their own optimizer group); A and B the run's.
      createOptimizer: (options) =>
        new AdamW(trainable, { ...options, noDecay: (name) => isGate(name) || (options.noDecay?.(name) ?? false) }),
      getRandomState: () => dropoutRandom.getState(),
      setRandomState: (state) => dropoutRandom.setState(state),
      trainableParameterCount: () => [...trainable.values()].reduce((n, v) => n + v.size, 0),
      trainingPenalty() {
        if (lambda === 0) return tf.scalar(0);
        const total = tf.addN(layers.map((l) => tf.sum(tf.abs(l.gate))));
        return tf.mul(total, lambda / (layers.length * r)) as tf.Scalar;
      },
      afterOptimizerStep({ step, totalSteps, lr }: TrainingStep) {
        const stage = Math.min(xis.length - 1, Math.floor((step * xis.length) / Math.max(totalSteps, 1)));
        for (const layer of layers) {
          const next = thresholdGate(layer.gate, xis[stage], lr * gateLrRatio, mode);
          layer.gate.assign(next as tf.Tensor1D);
          next.dispose();
        }
      },
      nonzeroGates: () => new Map(layers.map((l) => [l.target.path, gateValues(l).reduce((n, v) => n + (v !== 0 ? 1 : 0), 0)])),
      mergedWeights() {
        const merged = new Map<string, tf.Tensor>();
        for (const layer of layers) {
          const name = `${layer.target.path}.weight`;
          merged.set(name, tf.tidy(() => fromOutIn(layer.target, tf.add(toOutIn(layer.target, model.weight(name) as tf.Tensor2D), tf.matMul(gatedB(layer), layer.A)))));
        }
        return merged;
      },
      peftAdapter: () => gatedPeftAdapter('sora', model, layers.map((l) => ({ target: l.target, A: l.A, gatedB: () => gatedB(l), gate: l.gate })), rate),
      detach,
    };
  },
};

registerMethod(sora);
