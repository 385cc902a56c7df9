/**
 * LoRA (Hu et al., arXiv:2106.09685) and the methods that are LoRA with one thing changed. As in
 * peft's `LoraVariant`, the shared machinery (A, B, scaling, dropout, targets, export) lives here
 * and a variant is a small strategy object that overrides init / forward / merge / export:
 *   - `lora`:     h = W₀x + s·B·A·x, s = α/r (Eq. 3), A ~ kaiming-uniform(a=√5), B = 0 (§4.1)
 *   - `rslora`:   s = α/√r (Kalajdzievski, arXiv:2312.03732, Thm 3.2; peft `use_rslora`)
 *   - `loraplus`: plain LoRA whose B learns λ× faster than A (Hayou et al., arXiv:2402.12354, §4)
 *   - `dora` (dora.ts) and `pissa` (pissa.ts) are variants registered from their own files.
 * Every linear module is handled in peft's Linear layout, W [out, in]; GPT-2's Conv1D weights are
 * stored [in, out] and transposed on the way in and out (peft's `fan_in_fan_out`).
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import type { AttachContext, AttachedMethod, Method, MethodInfo, MethodParams, SchemaField } from './method.ts';
import { InitialValues, PEFT_KEY_PREFIX } from './initial-values.ts';
import { dropoutField, resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';
import { peftTargetModules } from './targets.ts';

/** One wrapped linear module (peft's `lora.Linear`); the frozen weight stays in model.weights. */
export interface LoraLayer {
  readonly path: string;
  /** The weight is stored [in, out] (GPT-2 Conv1D, peft's fan_in_fan_out). */
  readonly transposed: boolean;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly r: number;
  /** s in h = W₀x + s·B·A·x. */
  readonly scaling: number;
  readonly A: tf.Variable<tf.Rank.R2>; // [r, in]
  readonly B: tf.Variable<tf.Rank.R2>; // [out, r]
  /** Tensors a variant owns, by name (DoRA's magnitude, PiSSA's A₀, B₀); disposed on detach. */
  readonly extra: Map<string, tf.Tensor>;
  /** The frozen weight a variant replaced in model.weights (PiSSA's residual); restored on detach. */
  replacedWeight?: tf.Tensor;
  /** The variant put a weight in model.weights over a base held in native memory; removed on detach. */
  replacedFrozen?: boolean;
}

/** x -> dropout(x) while training with dropout > 0; null otherwise. */
export type Dropout = ((x: tf.Tensor2D) => tf.Tensor2D) | null;

/** How a LoRA variant differs from plain LoRA (peft's `LoraVariant`). */
export interface LoraVariant {
  /** adapter_config.json fields the variant sets, e.g. `{ use_dora: true }`. */
  readonly configFields: Record<string, unknown>;
  /** After A ~ kaiming-uniform and B = 0 exist: load saved values or re-initialise. */
  init(layer: LoraLayer, model: CausalLM, params: MethodParams, initial: InitialValues | undefined, seed: number): void;
  /** Trainable tensors besides A and B, by name suffix (`lora_magnitude_vector`). */
  trainable(layer: LoraLayer): Array<[string, tf.Variable]>;
  /** x [N, in] -> [N, out]; `weight()` is the frozen weight as stored (materialised on demand: see LinearAdapter). */
  forward(layer: LoraLayer, x: tf.Tensor2D, base: (x: tf.Tensor2D) => tf.Tensor2D, weight: () => tf.Tensor2D, dropout: Dropout): tf.Tensor2D;
  /** The merged weight W' [out, in] from the frozen W [out, in]. */
  mergedWeight(layer: LoraLayer, weight: tf.Tensor2D): tf.Tensor2D;
  /** Tensors peft saves for the layer, by suffix after `<path>.`; new tensors. */
  peftTensors(layer: LoraLayer): Array<[string, tf.Tensor]>;
  /** Last edits to the exported config (PiSSA's rank doubling). */
  peftConfig?(config: Record<string, unknown>): void;
}

/** A variable holding `initial`'s values; `initial` is disposed. */
export function variableFrom<R extends tf.Rank>(initial: tf.Tensor<R>): tf.Variable<R> {
  const v = tf.variable(initial);
  initial.dispose();
  return v;
}

/** Overwrites a variable with row-major values of its own shape. */
export function assignValues(v: tf.Variable, values: Float32Array): void {
  tf.tidy(() => v.assign(tf.tensor(values, v.shape)));
}

/** ΔW = s·B·A [out, in] (Eq. 3). */
export function deltaWeight(layer: LoraLayer): tf.Tensor2D {
  return tf.mul(tf.matMul(layer.B, layer.A), layer.scaling);
}

/** The stored weight in [out, in] layout, or an [out, in] weight back in the stored layout. */
export function toOutIn(layer: { readonly transposed: boolean }, weight: tf.Tensor2D): tf.Tensor2D {
  return layer.transposed ? tf.transpose(weight) : weight;
}
export const fromOutIn = toOutIn;

/** adapter_config.json fields of a peft LoraConfig for the wrapped `layers` (unsorted; see sortedKeys). */
export function peftLoraConfig(
  model: CausalLM,
  layers: ReadonlyArray<{ readonly path: string; readonly transposed: boolean }>,
  fields: { r: number; alpha: number; dropout: number; useRslora: boolean },
): Record<string, unknown> {
  return {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: null,
    bias: 'none',
    exclude_modules: null,
    fan_in_fan_out: layers.some((l) => l.transposed),
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    lora_alpha: fields.alpha,
    lora_bias: false,
    lora_dropout: fields.dropout,
    modules_to_save: null,
    peft_type: 'LORA',
    r: fields.r,
    rank_pattern: {},
    revision: null,
    target_modules: peftTargetModules(model, layers.map((l) => l.path)),
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: fields.useRslora,
  };
}

/** peft writes adapter_config.json with sort_keys=True. */
export function sortedKeys(config: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.keys(config).sort().map((k) => [k, config[k]]));
}

/** Plain LoRA; the other variants start from this object and override what differs. */
export const plainLora: LoraVariant = {
  configFields: {},

  init(layer, _model, _params, initial) {
    if (!initial) return;
    assignValues(layer.A, initial.take(`${layer.path}.lora_A.weight`, layer.A.shape));
    assignValues(layer.B, initial.take(`${layer.path}.lora_B.weight`, layer.B.shape));
  },

  trainable: () => [],

  forward(layer, x, base, _weight, dropout) {
    // h = W₀x + s·B·A·dropout(x): peft applies dropout to the adapter's input only.
    const input = dropout ? dropout(x) : x;
    // s is applied to B [out, r], not to the [N, out] product: the same update for a pass over r·out
    // values instead of N·out, forward and backward.
    const update = tf.matMul(tf.matMul(input, layer.A, false, true), tf.mul(layer.B, layer.scaling), false, true); // [N, out]
    return tf.add(base(x), update);
  },

  mergedWeight(layer, weight) {
    return tf.add(weight, deltaWeight(layer));
  },

  peftTensors(layer) {
    return [
      ['lora_A.weight', tf.clone(layer.A)],
      ['lora_B.weight', tf.clone(layer.B)],
    ];
  },
};

/** The schema fields every LoRA-family method shares; `overrides` changes defaults. */
export function loraSchema(overrides: { alpha?: number; dropout?: number; useRslora?: boolean } = {}): SchemaField[] {
  return [
    { name: 'rank', type: 'integer', default: 8, min: 1, max: 4096, description: 'r, the rank of B·A' },
    { name: 'alpha', type: 'number', default: overrides.alpha ?? 16, min: 0, description: 'α; the update is scaled by α/r (α/√r with rsLoRA)' },
    dropoutField(overrides.dropout ?? 0.05),
    { name: 'use_rslora', type: 'boolean', default: overrides.useRslora ?? false, description: 'rank-stabilised scaling α/√r (rsLoRA)' },
  ];
}

export interface LoraMethodSpec extends Omit<MethodInfo, 'parameterPrefix' | 'mergeable' | 'exportFormats'> {
  variant: LoraVariant;
  /** Learning-rate multiplier per trainable name, from the resolved params (LoRA+). */
  lrScale?: (name: string, params: MethodParams, trainable: Map<string, tf.Variable>) => number;
  /** Method.countTrainable, for variants whose attach is slow (PiSSA's SVD). */
  countTrainable?: Method['countTrainable'];
}

/** A and B of every target: r·(in + out) each (what plain LoRA and PiSSA train). */
export function loraTrainableCount(model: CausalLM, params: MethodParams, targets: string[]): number {
  const r = params.rank as number;
  let count = 0;
  for (const path of targets) {
    const [rows, cols] = model.weightShape(`${path}.weight`) as [number, number];
    count += r * (rows + cols);
  }
  return count;
}

/** A registry entry for a LoRA-family method: shared attach, one variant. */
export function defineLoraMethod(spec: LoraMethodSpec): Method {
  const { variant, lrScale, ...info } = spec;
  const method: Method = {
    ...info,
    parameterPrefix: 'lora_',
    mergeable: true,
    exportFormats: ['peft', 'merged'],
    attach: (model, params, ctx) => attachLora(method, variant, model, resolveParams(info.id, info.schema, params), ctx, lrScale),
  };
  return method;
}

function attachLora(
  method: MethodInfo,
  variant: LoraVariant,
  model: CausalLM,
  params: MethodParams,
  ctx: AttachContext,
  lrScale: LoraMethodSpec['lrScale'],
): AttachedMethod {
  const r = params.rank as number;
  const alpha = params.alpha as number;
  const dropoutRate = params.dropout as number;
  const useRslora = params.use_rslora as boolean;
  const scaling = useRslora ? alpha / Math.sqrt(r) : alpha / r;
  if (ctx.targets.length === 0) throw new LowrankError('BAD_ARGUMENT', `method ${method.id} needs at least one target module`);
  for (const path of ctx.targets) {
    if (model.adapters.has(path)) throw new LowrankError('BAD_ARGUMENT', `module ${path} already has an adapter; detach it first`);
  }
  const initial = InitialValues.from(ctx.initial);
  const initRandom = new Random(ctx.seed);
  const dropoutRandom = new Random((ctx.seed ^ 0x5bd1e995) >>> 0);
  const layers: LoraLayer[] = [];
  const trainable = new Map<string, tf.Variable>();

  const detach = () => {
    for (const layer of layers) {
      model.adapters.delete(layer.path);
      if (layer.replacedWeight || layer.replacedFrozen) {
        model.weights.get(`${layer.path}.weight`)?.dispose();
        if (layer.replacedWeight) model.weights.set(`${layer.path}.weight`, layer.replacedWeight);
        else model.weights.delete(`${layer.path}.weight`);
      }
      layer.A.dispose();
      layer.B.dispose();
      for (const t of layer.extra.values()) t.dispose();
    }
    layers.length = 0;
    trainable.clear();
  };

  try {
    for (const path of ctx.targets) {
      const transposed = model.isTransposedLinear(path);
      const [rows, cols] = model.weightShape(`${path}.weight`);
      const [outFeatures, inFeatures] = transposed ? [cols, rows] : [rows, cols];
      // A ~ U(-1/√in, 1/√in): kaiming_uniform_(a=√5) on [r, in], i.e. nn.Linear's default, as peft.
      const bound = 1 / Math.sqrt(inFeatures);
      const a = Float32Array.from({ length: r * inFeatures }, () => (2 * initRandom.next() - 1) * bound);
      const layer: LoraLayer = {
        path,
        transposed,
        inFeatures,
        outFeatures,
        r,
        scaling,
        A: variableFrom(tf.tensor2d(a, [r, inFeatures])),
        B: variableFrom(tf.zeros([outFeatures, r])),
        extra: new Map(),
      };
      layers.push(layer);
      variant.init(layer, model, params, initial, ctx.seed);
      trainable.set(`${path}.lora_A.weight`, layer.A);
      trainable.set(`${path}.lora_B.weight`, layer.B);
      for (const [suffix, v] of variant.trainable(layer)) trainable.set(`${path}.${suffix}`, v);
      const dropout = (x: tf.Tensor2D) => tf.dropout(x, dropoutRate, undefined, dropoutRandom.int(2 ** 31)) as tf.Tensor2D;
      model.adapters.set(path, {
        apply: (x, base, w, training) => variant.forward(layer, x, base, w, training && dropoutRate > 0 ? dropout : null),
      });
    }
    initial?.assertAllUsed();
  } catch (e) {
    detach();
    throw e;
  }

  return {
    method,
    params,
    trainable,
    lrScale: (name) => (lrScale ? lrScale(name, params, trainable) : 1),
    // The dropout masks' generator, saved in checkpoints so a resumed run draws the same masks.
    getRandomState: () => dropoutRandom.getState(),
    setRandomState: (state) => dropoutRandom.setState(state),
    trainableParameterCount: () => [...trainable.values()].reduce((n, v) => n + v.size, 0),
    mergedWeights() {
      const merged = new Map<string, tf.Tensor>();
      for (const layer of layers) {
        const name = `${layer.path}.weight`;
        merged.set(name, tf.tidy(() => fromOutIn(layer, variant.mergedWeight(layer, toOutIn(layer, model.weight(name) as tf.Tensor2D)))));
      }
      return merged;
    },
    peftAdapter() {
      const tensors = new Map<string, tf.Tensor>();
      for (const layer of layers) {
        for (const [suffix, t] of tf.tidy(() => variant.peftTensors(layer))) tensors.set(`${PEFT_KEY_PREFIX}${layer.path}.${suffix}`, t);
      }
      const config = peftLoraConfig(model, layers, { r, alpha, dropout: dropoutRate, useRslora });
      Object.assign(config, variant.configFields);
      variant.peftConfig?.(config);
      return { config: sortedKeys(config), tensors };
    },
    detach,
  };
}

const LORA_PAPER = { title: 'LoRA: Low-Rank Adaptation of Large Language Models', year: 2021, url: 'https://arxiv.org/abs/2106.09685' };

export const lora = defineLoraMethod({
  id: 'lora',
  family: 'adapter',
  paper: LORA_PAPER,
  paperLearningRate: { value: 2e-4, source: 'LoRA paper Table 11 (GPT-2 M/L on E2E); also microsoft/LoRA examples/NLG' },
  summary: 'Train a low-rank update s·B·A beside each frozen weight (B starts at zero, so training starts from the base model).',
  schema: loraSchema(),
  variant: plainLora,
});

export const rslora = defineLoraMethod({
  id: 'rslora',
  variantOf: 'lora',
  family: 'adapter',
  paper: { title: 'A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA', year: 2023, url: 'https://arxiv.org/abs/2312.03732' },
  paperLearningRate: { value: 2e-4, source: "no rate of its own in what we read: rsLoRA changes only the scaling and peft's use_rslora keeps LoRA's rate (LoRA paper Table 11, GPT-2 M on E2E)" },
  summary: 'LoRA scaled by α/√r instead of α/r, so higher ranks keep learning (rank-stabilised).',
  schema: loraSchema({ useRslora: true }),
  variant: plainLora,
});

export const loraplus = defineLoraMethod({
  id: 'loraplus',
  variantOf: 'lora',
  family: 'adapter',
  paper: { title: 'LoRA+: Efficient Low Rank Adaptation of Large Models', year: 2024, url: 'https://arxiv.org/abs/2402.12354' },
  paperLearningRate: { value: 1e-4, source: 'rate of A (B takes ratio × it): nikhil-ghosh-berkeley/loraplus glue/scripts/run_llama-7b_lora.sh (Llama-7B, MNLI)' },
  summary: 'LoRA whose B matrices learn λ times faster than A (λ = 16 by default).',
  schema: [
    ...loraSchema(),
    { name: 'loraplus_lr_ratio', type: 'number', default: 16, min: 1, description: 'λ = lr(B) / lr(A)' },
  ],
  variant: plainLora,
  // peft's create_loraplus_optimizer: lora_B and every 1-D trainable go in the λ·lr group.
  lrScale: (name, params, trainable) =>
    name.includes('lora_B') || trainable.get(name)?.rank === 1 ? (params.loraplus_lr_ratio as number) : 1,
});

registerMethod(lora);
registerMethod(rslora);
registerMethod(loraplus);
