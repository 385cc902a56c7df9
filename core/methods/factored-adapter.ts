/**
 * The shared machinery of adapters whose update is a product of frozen factors and a few small
 * trainable tensors: VeRA (vera.ts), LoRA-XS (loraxs.ts), SVFit (svfit.ts) and NOLA (nola.ts).
 * Each gives, per wrapped module, its trainable and frozen tensors, the update ΔW·x̃ computed in
 * factored form (never materialising ΔW in the forward pass), and exact LoRA factors with
 * ΔW = B·A. Everything else is the same for all of them and lives here:
 *   h = W₀x + ΔW·dropout(x)            (dropout on the adapter input only, as peft)
 *   merged W' = W₀ + B·A               (in the stored layout; GPT-2's Conv1D is [in, out])
 *   PEFT export: a plain LoRA with lora_A = A, lora_B = B, lora_alpha = r (s = 1)
 * and detach, which frees every tensor the method created.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import type { AttachContext, AttachedMethod, Method, MethodInfo, MethodParams, SchemaField } from './method.ts';
import { InitialValues, PEFT_KEY_PREFIX } from './initial-values.ts';
import { fromOutIn, peftLoraConfig, sortedKeys, toOutIn } from './lora.ts';
import { peftTargetModules } from './targets.ts';
import { resolveParams } from './params.ts';

/** One module to wrap, in peft's Linear view: W [out, in]. */
export interface LinearTarget {
  readonly path: string;
  /** Stored [in, out] (GPT-2 Conv1D, peft's fan_in_fan_out). */
  readonly transposed: boolean;
  readonly inFeatures: number;
  readonly outFeatures: number;
}

/** What a method builds for one wrapped module. */
export interface FactoredLayer {
  readonly target: LinearTarget;
  /** Trainable tensors by name suffix (`vera_lambda_b`): the name is `<path>.<suffix>`. */
  readonly trainable: Array<[string, tf.Variable]>;
  /** Frozen tensors the layer owns; disposed on detach. */
  readonly frozen: tf.Tensor[];
  /** x̃ [N, in] -> ΔW·x̃ as rows, [N, out]. */
  update(x: tf.Tensor2D): tf.Tensor2D;
  /** New tensors B [out, r], A [r, in] with ΔW = B·A exactly (any scaling folded into B). */
  factors(): { B: tf.Tensor2D; A: tf.Tensor2D };
}

/** The wrapped modules, checked: at least one, none already carrying an adapter. */
export function linearTargets(model: CausalLM, methodId: string, paths: string[]): LinearTarget[] {
  if (paths.length === 0) throw new LowrankError('BAD_ARGUMENT', `method ${methodId} needs at least one target module`);
  return paths.map((path) => {
    if (model.adapters.has(path)) throw new LowrankError('BAD_ARGUMENT', `module ${path} already has an adapter; detach it first`);
    const [rows, cols] = model.weightShape(`${path}.weight`);
    const transposed = model.isTransposedLinear(path);
    return { path, transposed, inFeatures: transposed ? rows : cols, outFeatures: transposed ? cols : rows };
  });
}

/** The frozen weight W [out, in] in float64, row-major (for the SVD-based methods). */
export function weightOutIn64(model: CausalLM, target: LinearTarget): Float64Array {
  const stored = tf.tidy(() => model.weight(`${target.path}.weight`).dataSync());
  const { outFeatures: m, inFeatures: n, transposed } = target;
  const w = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) w[i * n + j] = transposed ? stored[j * m + i] : stored[i * n + j];
  return w;
}

/** Refuses a rank the top-r SVD of some target cannot give. */
export function checkSvdRank(methodId: string, targets: LinearTarget[], r: number): void {
  for (const t of targets) {
    const most = Math.min(t.inFeatures, t.outFeatures);
    if (r > most) throw new LowrankError('BAD_ARGUMENT', `method ${methodId}: rank ${r} exceeds min(out, in) = ${most} of ${t.path}; choose rank ≤ ${most}`);
  }
}

/**
 * Method.countTrainable for an SVD-initialised factored adapter: `perModule(r)` values per target,
 * with the rank checked as attach checks it, and no SVD. `schema` is a thunk because a method's
 * object literal cannot name itself while it is being built.
 */
export function countWithoutSvd(methodId: string, schema: () => SchemaField[], perModule: (r: number) => number): NonNullable<Method['countTrainable']> {
  return (model, given, paths) => {
    const r = resolveParams(methodId, schema(), given).rank as number;
    const targets = linearTargets(model, methodId, paths);
    checkSvdRank(methodId, targets, r);
    return targets.length * perModule(r);
  };
}

/** The SVD choice of the SVD-initialised methods (as pissa's). */
export function svdSchemaFields(niter: number, niterSource: string): SchemaField[] {
  return [
    {
      name: 'svd',
      type: 'enum',
      default: 'auto',
      choices: ['auto', 'exact', 'randomized'],
      description: 'exact: one-sided Jacobi; randomized: Halko et al. subspace iteration; auto picks by matrix size and rank',
    },
    { name: 'svd_niter', type: 'integer', default: niter, min: 0, max: 64, description: `subspace iterations of the randomized SVD (${niterSource})` },
  ];
}

export interface FactoredAttach {
  method: MethodInfo;
  model: CausalLM;
  params: MethodParams;
  ctx: AttachContext;
  targets: LinearTarget[];
  initial: InitialValues | undefined;
  /** Dropout rate on the adapter input while training (0 = none). */
  dropout: number;
  /** Tensors shared by every layer (VeRA's projections); disposed on detach. */
  shared?: tf.Tensor[];
  layer(target: LinearTarget, index: number): FactoredLayer;
  /** Replaces the plain-LoRA PEFT export (VeRA writes peft's VERA format). */
  peftAdapter?(layers: FactoredLayer[]): { config: Record<string, unknown>; tensors: Map<string, tf.Tensor> };
}

/**
 * The PEFT form of an adapter with frozen projections shared by every layer (VeRA, RandLoRA), as
 * peft's save_pretrained writes it with save_projection: the projections under their own keys
 * (`base_model.vera_A`, …), each layer's trainable tensors under `base_model.model.<path>.<name>`,
 * and a config with every field of the method's peft config (sort_keys=True): the fields these
 * adapters share plus the method's own `fields`.
 */
export function sharedProjectionPeftAdapter(model: CausalLM, layers: FactoredLayer[], projections: Array<[string, tf.Tensor]>,
  fields: Record<string, unknown>): { config: Record<string, unknown>; tensors: Map<string, tf.Tensor> } {
  const tensors = new Map<string, tf.Tensor>(projections.map(([key, t]) => [key, tf.clone(t)]));
  for (const l of layers) {
    for (const [suffix, v] of l.trainable) tensors.set(`${PEFT_KEY_PREFIX}${l.target.path}.${suffix}`, tf.clone(v));
  }
  const config = sortedKeys({
    auto_mapping: null,
    base_model_name_or_path: null,
    bias: 'none',
    fan_in_fan_out: layers.some((l) => l.target.transposed),
    inference_mode: true,
    init_weights: true,
    layers_pattern: null,
    layers_to_transform: null,
    modules_to_save: null,
    revision: null,
    save_projection: true,
    target_modules: peftTargetModules(model, layers.map((l) => l.target.path)),
    task_type: 'CAUSAL_LM',
    ...fields,
  });
  return { config, tensors };
}

/**
 * Per-module LoRA ranks as peft's config writes them: the most common rank as `r` (the larger on a
 * tie) and every other module under its full path in `rank_pattern` (dots escaped: peft matches the
 * keys as regexes at the end of the module name). Empty pattern when all ranks agree.
 */
export function rankPattern(ranks: Map<string, number>): { common: number; pattern: Record<string, number> } {
  const counts = new Map<number, number>();
  for (const k of ranks.values()) counts.set(k, (counts.get(k) ?? 0) + 1);
  const common = [...counts].sort((x, y) => y[1] - x[1] || y[0] - x[0])[0][0];
  const pattern: Record<string, number> = {};
  for (const [path, k] of ranks) if (k !== common) pattern[path.replace(/\./g, '\\.')] = k;
  return { common, pattern };
}

/** Attaches a factored adapter; on any error nothing is left attached or allocated. */
export function attachFactored(spec: FactoredAttach): AttachedMethod {
  const { method, model, params, ctx, targets, initial, dropout: rate } = spec;
  const dropoutRandom = new Random((ctx.seed ^ 0x5bd1e995) >>> 0);
  const layers: FactoredLayer[] = [];
  const trainable = new Map<string, tf.Variable>();
  const shared = spec.shared ?? [];

  const detach = () => {
    for (const layer of layers) {
      model.adapters.delete(layer.target.path);
      for (const [, v] of layer.trainable) v.dispose();
      for (const t of layer.frozen) t.dispose();
    }
    for (const t of shared) t.dispose();
    shared.length = 0;
    layers.length = 0;
    trainable.clear();
  };

  try {
    targets.forEach((target, index) => {
      const layer = spec.layer(target, index);
      layers.push(layer);
      for (const [suffix, v] of layer.trainable) trainable.set(`${target.path}.${suffix}`, v);
      const dropout = (x: tf.Tensor2D) => tf.dropout(x, rate, undefined, dropoutRandom.int(2 ** 31)) as tf.Tensor2D;
      model.adapters.set(target.path, {
        apply: (x, base, _weight, training) => tf.add(base(x), layer.update(training && rate > 0 ? dropout(x) : x)),
      });
    });
    initial?.assertAllUsed();
  } catch (e) {
    detach();
    throw e;
  }

  return {
    method,
    params,
    trainable,
    lrScale: () => 1,
    getRandomState: () => dropoutRandom.getState(),
    setRandomState: (state) => dropoutRandom.setState(state),
    trainableParameterCount: () => [...trainable.values()].reduce((n, v) => n + v.size, 0),
    mergedWeights() {
      const merged = new Map<string, tf.Tensor>();
      for (const layer of layers) {
        const name = `${layer.target.path}.weight`;
        merged.set(
          name,
          tf.tidy(() => {
            const stored = model.weight(name) as tf.Tensor2D;
            const { B, A } = layer.factors();
            return fromOutIn(layer.target, tf.add(toOutIn(layer.target, stored), tf.matMul(B, A)));
          }),
        );
      }
      return merged;
    },
    peftAdapter() {
      if (spec.peftAdapter) return spec.peftAdapter(layers);
      const tensors = new Map<string, tf.Tensor>();
      const ranks = new Map<string, number>();
      for (const layer of layers) {
        const { B, A } = tf.tidy(() => layer.factors());
        ranks.set(layer.target.path, A.shape[0]);
        tensors.set(`${PEFT_KEY_PREFIX}${layer.target.path}.lora_A.weight`, A);
        tensors.set(`${PEFT_KEY_PREFIX}${layer.target.path}.lora_B.weight`, B);
      }
      // B already carries any scaling, so lora_alpha = r gives peft's s = 1, module by module.
      const { common, pattern } = rankPattern(ranks);
      const config = peftLoraConfig(model, layers.map((l) => l.target), { r: common, alpha: common, dropout: rate, useRslora: false });
      config.rank_pattern = { ...pattern };
      config.alpha_pattern = { ...pattern };
      return { config: sortedKeys(config), tensors };
    },
    detach,
  };
}

