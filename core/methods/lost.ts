/**
 * LOST: low-rank and sparse pre-training (Li et al., arXiv:2508.02668; ALGORITHMS.md §7). The
 * official LOST repository is not available here; the rule is pinned from the first author's earlier
 * code (JiaxiLi1/Lora-init@ec6ce9b run_c4.py `HybridSparseLinear.initialize_mask/forward`). Each
 * targeted linear W [out, in] (peft's Linear view) is replaced, not adapted:
 *   W = U·Σ·Vᵀ (float64)
 *   A [r, in] = √Σ_r·V_rᵀ,  B [out, r] = U_r·√Σ_r         the dominant part, split evenly (the code's W_in, W_out)
 *   W_comp = Σ_{i=r}^{r+k−1} σ_i·u_i·v_iᵀ,  k = min(svd_rank_extra, min(out, in) − r)
 *   I = the top max(1, ⌊ρ·in⌋) columns of W_comp by L2 norm (ties: lower index), sorted  ("SVD^rem_l2")
 *   y = γ·f_LR(x) + (1 − γ)·x[:, I]·W_sᵀ + b,  f_LR(x) = x·Aᵀ·Bᵀ, or SiLU(x·Aᵀ)·Bᵀ     (γ a fixed constant)
 * A, B, W_s [out, |I|] and the bias (if the module has one) train; W is not used again. Per module that
 * is r(in + out) + |I|·out values (+ out for a bias), logged when the method attaches.
 *
 * Choices, and why:
 * - f_LR linear by default (`activation: none`). The author's docstring calls LoST SiLU plus the
 *   sparse term, but that code's `lost_adamw` path passes cola_silu=False. The catalogue asks for
 *   W reconstructed at init, which only a linear branch gives, and only a linear branch has a merged
 *   form: W_eff = γ·B·A + (1 − γ)·colscatter(W_s, I). `silu` is the option; it has no merged form,
 *   so its run's own checkpoint is what is kept (merged, GGUF and PEFT are refused with the reason).
 * - `sparse_init: residual` (default): A and B are divided by √γ and W_s = W_comp[:, I]/(1 − γ), so at
 *   init γ·B·A = W_r (the best rank-r approximation) and (1 − γ)·W_s = W_comp[:, I]: W_eff equals W up
 *   to the residual columns left out (exactly W when ρ = 1 and r + k = min(out, in)). `weight` is the
 *   author's code as written (W_s = W[:, I], factors not rescaled), which does not reconstruct W.
 * - Columns: max(1, ⌊ρ·in⌋) as the code's `max(1, int(sparsity·in_features))`.
 * - Rank: 0 (default) is a quarter of each module's smaller side, as sltrain.ts: SLTrain's published
 *   ranks are d/4 and the author's logged 130M run used 256 of 768; LOST ranks per model size are
 *   not pinned. svd_rank_extra 256, ρ = 0.05, γ = 0.5 are run_c4.py's defaults (--lost_sparse_svd_rank,
 *   --lost_sparsity, --lost_gamma).
 * - AdamW with β = (0.9, 0.95), run_c4.py's optimizer for the CoLA/LoST path (L1620). Learning rate
 *   1e-3 with weight decay 0: the author's logged run of that path (error1.md, `cola_adamw`, 130M);
 *   no `lost_adamw` run is logged in that repository.
 * - I is recomputed from W on resume and export (the SVD is deterministic for the run's seed), as
 *   sltrain regenerates its support; it is never stored.
 * Export: merged only, and only with the linear branch, exactly W_eff even on a quantized base
 * (`replacesWeights`: W_eff is the whole weight, so nothing is moved onto the base's original values). W_eff − W is not low-rank (the column-sparse
 * part has up to |I| independent columns on top of the change of the rank-r part), so no PEFT LoRA
 * reproduces it.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { truncatedSvd } from '../linalg/svd.ts';
import { AdamW } from '../optim/adamw.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import type { AttachedMethod, ExportFormat, Method, MethodParams } from './method.ts';
import { checkSvdRank, linearTargets, svdSchemaFields, weightOutIn64, type LinearTarget } from './factored-adapter.ts';
import { fromOutIn, variableFrom } from './lora.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

type Shape = Pick<LinearTarget, 'inFeatures' | 'outFeatures'>;

/** r for a module: the `rank` parameter, or with 0 a quarter of its smaller side (at least 1). */
export function lostRank(rank: number, target: Shape): number {
  return rank > 0 ? rank : Math.max(1, Math.floor(Math.min(target.inFeatures, target.outFeatures) / 4));
}

/** |I| = max(1, ⌊ρ·in⌋), as `initialize_mask`'s num_cols_to_keep. */
export function lostColumnCount(ratio: number, target: Shape): number {
  return Math.max(1, Math.floor(ratio * target.inFeatures));
}

/**
 * The `count` columns of the row-major [m, n] matrix with the largest L2 norms, ties to the lower
 * index, returned sorted (the code's topk then sort).
 */
export function topColumns(matrix: Float64Array, m: number, n: number, count: number): Int32Array {
  const norms = new Float64Array(n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) norms[j] += matrix[i * n + j] ** 2;
  const order = Array.from({ length: n }, (_, j) => j).sort((p, q) => norms[q] - norms[p] || p - q);
  return Int32Array.from(order.slice(0, count)).sort();
}

/** Why a format cannot be written for these parameters (null: it can). */
function exportRefusal(format: ExportFormat, params: MethodParams): string | null {
  const silu = params.activation === 'silu';
  if (format === 'peft') {
    return `lost replaces each weight by γ·B·A plus a column-sparse part, so W_eff − W is not low-rank and no PEFT LoRA reproduces it; ${
      silu ? 'with activation silu there is no merged form either: the run itself (its checkpoint) is what is kept' : 'export the merged model or GGUF instead'}`;
  }
  if (silu) {
    return 'lost with activation silu puts SiLU between its two factors, so its layers are not linear maps and no merged weight reproduces them; the run itself (its checkpoint) is what is kept (train with activation none for a merged export)';
  }
  return null;
}

interface LostLayer {
  readonly target: LinearTarget;
  readonly A: tf.Variable<tf.Rank.R2>; // [r, in]
  readonly B: tf.Variable<tf.Rank.R2>; // [out, r]
  readonly values: tf.Variable<tf.Rank.R2>; // W_s [out, |I|]
  readonly bias: tf.Variable<tf.Rank.R1> | null; // [out]
  readonly columns: Int32Array; // I
  readonly gatherIndex: tf.Tensor1D;
}

/** An attached LOST; `columns` is I of a module. */
export interface LostAttached extends AttachedMethod {
  columns(path: string): Int32Array;
}

/** The starting values of one module (row-major float64) and ‖W − W_eff(init)‖²_F. */
function initialValues(w: Float64Array, target: LinearTarget, params: MethodParams, seed: number) {
  const { outFeatures: m, inFeatures: n } = target;
  const gamma = params.blend_gamma as number;
  const r = lostRank(params.rank as number, target);
  const k = Math.min(params.svd_rank_extra as number, Math.min(m, n) - r);
  const svd = truncatedSvd(w, m, n, r + k, { method: params.svd as 'auto' | 'exact' | 'randomized', niter: params.svd_niter as number, seed });
  const residual = params.sparse_init === 'residual';
  // residual: γ·B·A = W_r, so each factor carries √(σ/γ).
  const root = Array.from(svd.S.subarray(0, r), (sigma) => Math.sqrt(residual ? sigma / gamma : sigma));
  const a = new Float64Array(r * n);
  for (let t = 0; t < r; t++) for (let j = 0; j < n; j++) a[t * n + j] = root[t] * svd.Vt[t * n + j];
  const b = new Float64Array(m * r);
  for (let i = 0; i < m; i++) for (let t = 0; t < r; t++) b[i * r + t] = svd.U[i * (r + k) + t] * root[t];
  const comp = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let t = r; t < r + k; t++) {
      const us = svd.U[i * (r + k) + t] * svd.S[t];
      for (let j = 0; j < n; j++) comp[i * n + j] += us * svd.Vt[t * n + j];
    }
  }
  const columns = topColumns(comp, m, n, lostColumnCount(params.channel_ratio as number, target));
  const c = columns.length;
  const values = new Float64Array(m * c);
  for (let i = 0; i < m; i++) {
    for (let q = 0; q < c; q++) values[i * c + q] = residual ? comp[i * n + columns[q]] / (1 - gamma) : w[i * n + columns[q]];
  }
  // W_eff(init) = γ·B·A + (1 − γ)·colscatter(W_s, I), against W.
  const sparse = new Map(Array.from(columns, (j, q) => [j, q]));
  let error = 0;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let low = 0;
      for (let t = 0; t < r; t++) low += b[i * r + t] * a[t * n + j];
      const q = sparse.get(j);
      error += (w[i * n + j] - gamma * low - (q === undefined ? 0 : (1 - gamma) * values[i * c + q])) ** 2;
    }
  }
  return { r, a, b, values, columns, error };
}

function countTrainable(model: CausalLM, given: MethodParams, paths: string[]): number {
  const params = resolveParams('lost', lost.schema, given);
  const targets = linearTargets(model, 'lost', paths);
  return targets.reduce((total, t) => {
    const r = lostRank(params.rank as number, t);
    checkSvdRank('lost', [t], r);
    const bias = model.hasWeight(`${t.path}.bias`) ? t.outFeatures : 0;
    return total + r * (t.inFeatures + t.outFeatures) + lostColumnCount(params.channel_ratio as number, t) * t.outFeatures + bias;
  }, 0);
}

export const lost: Method = {
  id: 'lost',
  family: 'adapter',
  paper: { title: 'LOST: Low-rank and Sparse Pre-training for Large Language Models', year: 2025, url: 'https://arxiv.org/abs/2508.02668' },
  summary: 'Each weight is split by its SVD: the dominant singular directions become a trainable low-rank pair, the rest a trainable sparse set of whole input channels.',
  paperLearningRate: {
    value: 1e-3,
    source: 'JiaxiLi1/Lora-init error1.md, the logged arguments of the first author\'s run_c4.py run on the CoLA/LoST path (130M, lr 0.001, weight decay 0, AdamW β = (0.9, 0.95)); the LOST repository is not available',
  },
  parameterPrefix: 'lost_',
  defaultTargets: 'all-linear',
  schema: [
    { name: 'rank', type: 'integer', default: 0, min: 0, max: 65536, description: 'r of the low-rank part B·A; 0: a quarter of each module’s smaller side (as SLTrain’s d/4)' },
    { name: 'svd_rank_extra', type: 'integer', default: 256, min: 0, max: 65536, description: 'k: singular directions after the top r that the sparse channels are chosen from (run_c4.py --lost_sparse_svd_rank)' },
    { name: 'channel_ratio', type: 'number', default: 0.05, min: 1e-6, max: 1, description: 'ρ: share of input channels (columns) in the sparse part, max(1, ⌊ρ·in⌋) per module (--lost_sparsity)' },
    { name: 'blend_gamma', type: 'number', default: 0.5, min: 0.001, max: 0.999, description: 'γ: y = γ·low-rank + (1 − γ)·sparse, fixed (--lost_gamma)' },
    { name: 'activation', type: 'enum', default: 'none', choices: ['none', 'silu'], description: 'none: linear low-rank branch (reconstructs W at init, merged export); silu: SiLU between the factors, as the author’s docstring (no merged form)' },
    {
      name: 'sparse_init',
      type: 'enum',
      default: 'residual',
      choices: ['residual', 'weight'],
      description: 'residual: the selected residual columns, factors scaled so W_eff = W at init up to the unselected columns; weight: W[:, I] with unscaled factors, as the author’s code (does not reconstruct W)',
    },
    ...svdSchemaFields(10, 'LOST takes an exact SVD (torch.linalg.svd); auto picks it for all but large matrices'),
  ],
  mergeable: true,
  exportFormats: ['merged'],
  unavailableExports: (params) => {
    const refusals: Partial<Record<ExportFormat, string>> = {};
    for (const format of ['peft', 'merged', 'gguf'] as const) {
      const reason = exportRefusal(format, params);
      if (reason) refusals[format] = reason;
    }
    return refusals;
  },
  countTrainable,

  attach(model, given, ctx): LostAttached {
    const params = resolveParams('lost', lost.schema, given);
    const gamma = params.blend_gamma as number;
    const silu = params.activation === 'silu';
    if (ctx.initial) {
      throw new LowrankError('BAD_ARGUMENT', 'method lost cannot continue from a PEFT adapter (--adapter): it has no PEFT form; resume its run instead');
    }
    const targets = linearTargets(model, 'lost', ctx.targets);
    for (const t of targets) checkSvdRank('lost', [t], lostRank(params.rank as number, t));
    const layers: LostLayer[] = [];
    const trainable = new Map<string, tf.Variable>();
    let error = 0;
    let norm = 0;
    let replaced = 0;

    const detach = () => {
      for (const layer of layers) {
        model.adapters.delete(layer.target.path);
        for (const t of [layer.A, layer.B, layer.values, layer.bias, layer.gatherIndex]) t?.dispose();
      }
      layers.length = 0;
      trainable.clear();
    };

    try {
      for (const target of targets) {
        const { path, outFeatures: m, inFeatures: n } = target;
        const w = weightOutIn64(model, target);
        const init = initialValues(w, target, params, ctx.seed);
        error += init.error;
        norm += w.reduce((sum, v) => sum + v * v, 0);
        replaced += m * n;
        const c = init.columns.length;
        const biasName = `${path}.bias`;
        const layer: LostLayer = {
          target,
          A: variableFrom(tf.tensor2d(Float32Array.from(init.a), [init.r, n])),
          B: variableFrom(tf.tensor2d(Float32Array.from(init.b), [m, init.r])),
          values: variableFrom(tf.tensor2d(Float32Array.from(init.values), [m, c])),
          bias: model.hasWeight(biasName) ? tf.variable(model.weight(biasName) as tf.Tensor1D) : null,
          columns: init.columns,
          gatherIndex: tf.tensor1d(init.columns, 'int32'),
        };
        layers.push(layer);
        trainable.set(`${path}.lost_A`, layer.A);
        trainable.set(`${path}.lost_B`, layer.B);
        trainable.set(`${path}.lost_values`, layer.values);
        if (layer.bias) trainable.set(`${path}.lost_bias`, layer.bias);
        model.adapters.set(path, {
          apply(x): tf.Tensor2D {
            const h: tf.Tensor2D = tf.matMul(x, layer.A, false, true); // [N, r]
            const low = tf.matMul(silu ? tf.mul(h, tf.sigmoid(h)) : h, layer.B, false, true); // [N, out]
            const sparse = tf.matMul(tf.gather(x, layer.gatherIndex, 1), layer.values, false, true); // x[:, I]·W_sᵀ [N, out]
            const y = tf.add(tf.mul(low, gamma), tf.mul(sparse, 1 - gamma));
            return (layer.bias ? tf.add(y, layer.bias) : y) as tf.Tensor2D;
          },
        });
      }
    } catch (e) {
      detach();
      throw e;
    }

    const count = [...trainable.values()].reduce((total, v) => total + v.size, 0);
    const logLines = [
      `LOST on ${layers.length} linear layers: low-rank r(in + out) plus ${params.channel_ratio} of the input channels |I|·out (and biases) = ${count} trainable values in place of ${replaced} weights (${((100 * count) / replaced).toFixed(1)} %); at init ‖W − W_eff‖/‖W‖ = ${Math.sqrt(error / norm).toExponential(2)}`,
    ];

    return {
      method: lost,
      params,
      trainable,
      lrScale: () => 1,
      replacesWeights: true,
      createOptimizer: (options) => new AdamW(trainable, { ...options, beta1: 0.9, beta2: 0.95 }),
      trainableParameterCount: () => count,
      takeLogLines: () => logLines.splice(0),
      columns: (path) => {
        const layer = layers.find((l) => l.target.path === path);
        if (!layer) throw new LowrankError('BAD_ARGUMENT', `method lost is not attached to ${path}`);
        return layer.columns;
      },
      mergedWeights() {
        const reason = exportRefusal('merged', params);
        if (reason) throw new LowrankError('BAD_ARGUMENT', reason);
        const merged = new Map<string, tf.Tensor>();
        for (const layer of layers) {
          const { path, outFeatures: m, inFeatures: n } = layer.target;
          const c = layer.columns.length;
          merged.set(
            `${path}.weight`,
            tf.tidy(() => {
              // colscatter(W_s, I) [out, in]: W_sᵀ's rows scattered to the rows I of [in, out], transposed.
              const scattered = tf.transpose(tf.scatterND(tf.tensor2d(layer.columns, [c, 1], 'int32'), tf.transpose(layer.values), [n, m])) as tf.Tensor2D;
              return fromOutIn(layer.target, tf.add(tf.mul(tf.matMul(layer.B, layer.A), gamma), tf.mul(scattered, 1 - gamma)) as tf.Tensor2D);
            }),
          );
          if (layer.bias) merged.set(`${path}.bias`, tf.clone(layer.bias));
        }
        return merged;
      },
      detach,
    };
  },
};

registerMethod(lost);
