/**
 * SLTrain: sparse plus low-rank weights (Han et al., arXiv:2406.02214), as the official code builds
 * its layer (andyjm3/SLTrain: splora/splora_linear.py `SpLoRaLinear`, sparse-lora/sparse_linear.cpp;
 * ALGORITHMS.md batch 2 §6). Per wrapped module, in peft's Linear view W [out, in]:
 *   B [out, r] = 0, A [r, in] ~ kaiming-uniform(a=√5), s = α/r
 *   I = sort(randperm(out·in)[:⌊δ·out·in⌋])   flat row-major positions, drawn once, never changed
 *   V [|I|] the sparse values (the only entries of S that exist), S = scatter(V at I) [out, in]
 *   W = s·B·A + S;  y = x·Wᵀ + b
 * Only A, B and V train; I is a function of the run's seed (regenerated identically on resume and
 * export, so it is never stored). The gradient of V is the dense weight gradient read at I
 * (sparse_linear.cpp's `dv = grad_w.flatten()[di]`).
 *
 * The official layer pre-trains from scratch and says it "cannot be wrapped to linear layer and thus
 * cannot be used for fine-tune": it has no frozen W₀, and V starts at U(±1/√in). This app trains
 * from a checkpoint, so `base` chooses:
 *   keep     (default) W = W₀ + s·B·A + S with V = 0 at the start: the same sparse + low-rank
 *            parameterisation as an update of the frozen W₀, so step 0 equals the base model.
 *   replace  W = s·B·A + S with V ~ U(±1/√in) and W₀ dropped: the official layer exactly (the
 *            module's bias, if any, is kept frozen as loaded); for training a module anew.
 * Defaults from scripts/llm_pretrain: δ = 0.03 and α = 32 (the 60M run); r is d/4 there at 60M,
 * 350M, 1B and 7B (128 of 512, 256 of 1024, 512 of 2048, 1024 of 4096), so rank 0 means a quarter
 * of each module's smaller dimension. Every attention and MLP linear is replaced (`all-linear`).
 * Learning rate 3e-3 with AdamW, no weight decay (the scripts' --lr 0.003), which the scripts warm up
 * over 10 % of the steps and decay by cosine to 0.1 of it (`--warmup`, `--schedule cosine` here).
 * Export: merged only. S is sparse but not low-rank, so no PEFT LoRA is exact; the merged weights
 * are, and a merged folder is what every tool loads.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import type { AttachedMethod, Method, MethodParams } from './method.ts';
import { linearTargets, type LinearTarget } from './factored-adapter.ts';
import { fromOutIn, toOutIn, variableFrom } from './lora.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

/** r for a module: the `rank` parameter, or with 0 a quarter of its smaller dimension (at least 1). */
export function sltrainRank(rank: number, target: Pick<LinearTarget, 'inFeatures' | 'outFeatures'>): number {
  return rank > 0 ? rank : Math.max(1, Math.floor(Math.min(target.inFeatures, target.outFeatures) / 4));
}

/** |I| = int(δ·out·in), as `_init_sparse_parameters`. */
export function sparseCount(density: number, target: Pick<LinearTarget, 'inFeatures' | 'outFeatures'>): number {
  return Math.floor(density * target.outFeatures * target.inFeatures);
}

/**
 * `count` distinct positions of [0, total), uniformly at random (Floyd's algorithm: the same
 * distribution as randperm(total)[:count] without a permutation of every position), sorted.
 */
export function sparseSupport(total: number, count: number, random: Random): Int32Array {
  const chosen = new Set<number>();
  for (let j = total - count; j < total; j++) {
    const t = random.int(j + 1);
    chosen.add(chosen.has(t) ? j : t);
  }
  return Int32Array.from(chosen).sort();
}

interface SltrainLayer {
  readonly target: LinearTarget;
  readonly r: number;
  readonly scaling: number;
  readonly A: tf.Variable<tf.Rank.R2>; // [r, in]
  readonly B: tf.Variable<tf.Rank.R2>; // [out, r]
  readonly values: tf.Variable<tf.Rank.R1>; // [|I|]
  /** I as [|I|, 1] scatter indices and as [|I|] gather indices (the same positions). */
  readonly scatterIndex: tf.Tensor2D;
  readonly gatherIndex: tf.Tensor1D;
}

/** An attached SLTrain; `support` is I of a module (for the fixed-support test). */
export interface SltrainAttached extends AttachedMethod {
  support(path: string): Int32Array;
}

/** S [out, in] = V scattered at I, whose gradient with respect to V is dS read at I. */
function sparseMatrix(layer: SltrainLayer): tf.Tensor2D {
  const { outFeatures: m, inFeatures: n } = layer.target;
  const scatter = tf.customGrad(((...args: Array<tf.Tensor | tf.GradSaveFunc>) => ({
    value: tf.reshape(tf.scatterND(layer.scatterIndex, args[0] as tf.Tensor, [m * n]), [m, n]),
    gradFunc: (dy: tf.Tensor) => tf.gather(tf.reshape(dy, [m * n]), layer.gatherIndex),
  })) as Parameters<typeof tf.customGrad>[0]);
  return scatter(layer.values) as tf.Tensor2D;
}

/** s·B·A + S [out, in]: the whole weight under `replace`, the update of W₀ under `keep`. */
function sparsePlusLowRank(layer: SltrainLayer): tf.Tensor2D {
  return tf.add(tf.matMul(tf.mul(layer.B, layer.scaling), layer.A), sparseMatrix(layer));
}

function countTrainable(model: CausalLM, given: MethodParams, paths: string[]): number {
  const params = resolveParams('sltrain', sltrain.schema, given);
  return linearTargets(model, 'sltrain', paths).reduce((total, t) => {
    const r = sltrainRank(params.rank as number, t);
    return total + r * (t.inFeatures + t.outFeatures) + sparseCount(params.density as number, t);
  }, 0);
}

export const sltrain: Method = {
  id: 'sltrain',
  family: 'adapter',
  paper: { title: 'SLTrain: a sparse plus low-rank approach for parameter and memory efficient pretraining', year: 2024, url: 'https://arxiv.org/abs/2406.02214' },
  summary: 'Each weight becomes a low-rank product B·A plus a sparse matrix on a fixed random support; A, B and the sparse values train.',
  paperLearningRate: { value: 3e-3, source: 'andyjm3/SLTrain scripts/llm_pretrain/sltrain60m.sh (--lr 0.003, AdamW, weight decay 0, with r = 128, δ = 0.03, α = 32)' },
  parameterPrefix: 'sltrain_',
  defaultTargets: 'all-linear',
  schema: [
    { name: 'rank', type: 'integer', default: 0, min: 0, max: 65536, description: 'r of B·A; 0: a quarter of each module’s smaller dimension (the paper’s r = d/4)' },
    { name: 'alpha', type: 'number', default: 32, min: 0, description: 'α; B·A is scaled by α/r' },
    { name: 'density', type: 'number', default: 0.03, min: 1e-6, max: 0.999, description: 'δ, the fraction of each weight’s entries on the sparse support' },
    {
      name: 'base',
      type: 'enum',
      default: 'keep',
      choices: ['keep', 'replace'],
      description: 'keep: W₀ + s·B·A + S, sparse values from 0 (fine-tuning); replace: s·B·A + S from scratch, values ~ U(±1/√in), as the paper pre-trains',
    },
  ],
  mergeable: true,
  exportFormats: ['merged'],
  countTrainable,

  attach(model, given, ctx): SltrainAttached {
    const params = resolveParams('sltrain', sltrain.schema, given);
    const alpha = params.alpha as number;
    const density = params.density as number;
    const replace = params.base === 'replace';
    if (ctx.initial) {
      throw new LowrankError('BAD_ARGUMENT', 'method sltrain cannot continue from a PEFT adapter (--adapter): its sparse part has no PEFT form; resume its run instead');
    }
    const targets = linearTargets(model, 'sltrain', ctx.targets);
    // One generator for every module, in target order: the same seed regenerates the same I.
    const random = new Random(ctx.seed);
    const layers: SltrainLayer[] = [];
    const supports = new Map<string, Int32Array>();
    const trainable = new Map<string, tf.Variable>();

    const detach = () => {
      for (const layer of layers) {
        model.adapters.delete(layer.target.path);
        for (const t of [layer.A, layer.B, layer.values, layer.scatterIndex, layer.gatherIndex]) t.dispose();
      }
      layers.length = 0;
      trainable.clear();
    };

    try {
      for (const target of targets) {
        const { path, inFeatures: n, outFeatures: m } = target;
        const r = sltrainRank(params.rank as number, target);
        const nnz = sparseCount(density, target);
        if (nnz < 1) throw new LowrankError('BAD_ARGUMENT', `method sltrain: density ${density} leaves no sparse entry in ${path} (${m}×${n}); raise density to at least ${1 / (m * n)}`);
        const bound = 1 / Math.sqrt(n); // kaiming_uniform_(a=√5) on [r, in], and the values' U(±1/√in)
        const a = Float32Array.from({ length: r * n }, () => (2 * random.next() - 1) * bound);
        const support = sparseSupport(m * n, nnz, random);
        const values = replace ? Float32Array.from({ length: nnz }, () => (2 * random.next() - 1) * bound) : new Float32Array(nnz);
        const layer: SltrainLayer = {
          target,
          r,
          scaling: alpha / r,
          A: variableFrom(tf.tensor2d(a, [r, n])),
          B: variableFrom(tf.zeros([m, r])),
          values: variableFrom(tf.tensor1d(values)),
          scatterIndex: tf.tensor2d(support, [nnz, 1], 'int32'),
          gatherIndex: tf.tensor1d(support, 'int32'),
        };
        layers.push(layer);
        supports.set(path, support);
        trainable.set(`${path}.sltrain_A`, layer.A);
        trainable.set(`${path}.sltrain_B`, layer.B);
        trainable.set(`${path}.sltrain_values`, layer.values);
        const bias = replace ? model.weights.get(`${path}.bias`) : undefined;
        model.adapters.set(path, {
          apply(x, base) {
            const update: tf.Tensor2D = tf.matMul(x, sparsePlusLowRank(layer), false, true); // [N, out]
            if (!replace) return tf.add(base(x), update) as tf.Tensor2D;
            return bias ? (tf.add(update, bias) as tf.Tensor2D) : update;
          },
        });
      }
    } catch (e) {
      detach();
      throw e;
    }

    return {
      method: sltrain,
      params,
      trainable,
      lrScale: () => 1,
      trainableParameterCount: () => [...trainable.values()].reduce((count, v) => count + v.size, 0),
      support: (path) => {
        const support = supports.get(path);
        if (!support) throw new LowrankError('BAD_ARGUMENT', `method sltrain is not attached to ${path}`);
        return support;
      },
      // Under `replace` the merged weight is the whole W = s·B·A + S: an export writes it as it is, not
      // moved onto a quantised base's original values (what `keep`'s update is added to).
      replacesWeights: replace,
      mergedWeights() {
        const merged = new Map<string, tf.Tensor>();
        for (const layer of layers) {
          const name = `${layer.target.path}.weight`;
          merged.set(
            name,
            tf.tidy(() => {
              const weight = sparsePlusLowRank(layer);
              return fromOutIn(layer.target, replace ? weight : tf.add(toOutIn(layer.target, model.weight(name) as tf.Tensor2D), weight));
            }),
          );
        }
        return merged;
      },
      detach,
    };
  },
};

registerMethod(sltrain);
