/**
 * LoRAM, "Train Small, Infer Large: Memory-Efficient LoRA Training for Large Language Models"
 * (Zhang et al., ICLR 2025, arXiv:2502.13533; junzhang-zj/LoRAM @7769d34, loram/*.py). LoRA is
 * trained on a structurally pruned copy of the base and the trained factors are recovered to the
 * full model for inference (§3, Eqs. 2–5):
 *   training    y = W^P·x^P + s·B^P·A^P·x^P      (x^P, y^P: the kept input columns / output rows)
 *   recovery    B^R = B^P on kept rows, 0 on pruned rows; A^R = A^P on kept columns, 0 elsewhere
 *               (`zeroA`, 3_recovered_low_rank_matrix_generation.py's default)
 *   inference   y = W₀·x + s·B^R·A^R·x,  s = α/r
 * Structure (modeling_llama3_70b_structured_pruning.py `prune`): in each pruned decoder layer whole
 * key/value heads go, with the query heads of their groups (rows of q, k, v; columns of o), and
 * MLP intermediate channels (rows of gate and up; columns of down). A pruned query head reads zero
 * values and a pruned channel gives SwiGLU(0, 0) = 0, so the pruned layer is computed here as the
 * full-width layer with those rows left out of every product and zeros scattered in their place:
 * the same function as the smaller model, checked against a genuinely smaller model in the tests.
 *
 * What the tests pin and the choices made where the code leaves a rule open:
 *  - Which units go: `stru` (the repo's `prune_param_first` files: LLM-Pruner's first-order Taylor
 *    importance, Σ|w·∂L/∂w| over every weight of a head group or channel, on `calibration_samples`
 *    examples, LLM-Pruner's --num_examples 10) or `rand` (the paper's LoRAM-Rand). The repo ships
 *    precomputed indices only; the group sums over all of the group's weights are our reading of
 *    LLM-Pruner's `param_first` with element-wise sum reduction.
 *  - Pruned units per layer: round(ratio × count), at least one unit kept.
 *  - Pruned layers: [prune_first_kept, L − prune_last_kept), the repo's 4..78 of 80 and LLM-Pruner's
 *    4..30 of 32. A model too shallow for that range (L ≤ 6) is pruned over [⌊L/8⌋, L − ⌊L/16⌋),
 *    the same proportions of a 32-layer model, so the default flags work on any Llama.
 *  - The alignment stage (continual pre-training of the pruned model on FineWeb/OpenWebMath, step 1
 *    of run_loram.md) is not run: it is a separate full-parameter pre-training job; this is the
 *    paper's LoRAM without alignment.
 *  - Evaluation, generation, merge and export use the recovered adapter on the full model (the
 *    paper's inference); only training forward passes see the pruned model.
 * The engine keeps the full base loaded (evaluation reads it), so the saving here is in the pruned
 * layers' matmuls and LoRA factors, not the paper's smaller base in GPU memory.
 *
 * Export: the recovered adapter is exactly a plain LoRA of the full model (`peft`, lora_alpha = α),
 * or merged W₀ + s·B^R·A^R. Paper defaults (2_pruned_low_rank_matrix_training.py): r = 8, α = 16,
 * dropout 0.05, every attention and MLP projection, learning rate 1e-5 (paperLearningRate).
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import type { AttachedMethod, BaseGradientSource, Method, MethodParams } from './method.ts';
import { InitialValues, PEFT_KEY_PREFIX } from './initial-values.ts';
import { peftLoraConfig, sortedKeys, variableFrom } from './lora.ts';
import { dropoutField, resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';


const ATTENTION = ['q_proj', 'k_proj', 'v_proj', 'o_proj'];
const MLP = ['gate_proj', 'up_proj', 'down_proj'];

/** What the pruned model keeps of decoder layer `layer`. */
export interface LayerPruning {
  layer: number;
  /** Kept key/value heads, ascending; the query heads of their groups stay with them. */
  kvHeads: number[];
  /** Kept MLP intermediate channels, ascending. */
  channels: number[];
}

/** Kept output rows and input columns of one linear module (null = all of them). */
export interface KeptIndices {
  rows: number[] | null;
  cols: number[] | null;
}

/** The decoder layers LoRAM prunes, [start, end). */
export function prunedLayerRange(numLayers: number, firstKept: number, lastKept: number): [number, number] {
  if (firstKept + lastKept < numLayers) return [firstKept, numLayers - lastKept];
  return [Math.floor(numLayers / 8), numLayers - Math.floor(numLayers / 16)];
}

/** How many of `count` units survive pruning `ratio` of them: round(ratio·count) go, at least one stays. */
export function keptCount(count: number, ratio: number): number {
  return count - Math.min(count - 1, Math.round(ratio * count));
}

/** Layer index and module name of `model.layers.<i>.<block>.<name>`, or null for other paths (lm_head). */
function moduleOf(path: string): { layer: number; name: string } | null {
  const m = /^model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$/.exec(path);
  return m ? { layer: Number(m[1]), name: m[2] } : null;
}

/** The rows and columns `name` (q_proj, …, down_proj) keeps under `pruning`. */
export function keptIndices(model: CausalLM, pruning: LayerPruning, name: string): KeptIndices {
  const { headDim: D, numHeads: H, numKvHeads: KV } = model.config;
  const groups = H / KV;
  // Query head h reads key/value head ⌊h / groups⌋ (repeat_kv), so kv head g keeps q heads g·groups … (g+1)·groups − 1.
  const kvDims = pruning.kvHeads.flatMap((g) => Array.from({ length: D }, (_, d) => g * D + d));
  const qDims = pruning.kvHeads.flatMap((g) => Array.from({ length: groups * D }, (_, d) => g * groups * D + d));
  switch (name) {
    case 'q_proj':
      return { rows: qDims, cols: null };
    case 'k_proj':
    case 'v_proj':
      return { rows: kvDims, cols: null };
    case 'o_proj':
      return { rows: null, cols: qDims };
    case 'gate_proj':
    case 'up_proj':
      return { rows: pruning.channels, cols: null };
    case 'down_proj':
      return { rows: null, cols: pruning.channels };
    default:
      throw new LowrankError('BAD_ARGUMENT', `method loram: unknown module ${name}`);
  }
}

/** The `keep` indices of largest score (ties to the lower index), ascending. */
function topIndices(scores: Float64Array, keep: number): number[] {
  return Array.from(scores.keys())
    .sort((a, b) => scores[b] - scores[a] || a - b)
    .slice(0, keep)
    .sort((a, b) => a - b);
}

/**
 * LLM-Pruner's first-order Taylor importance of each kv-head group and each MLP channel of layer
 * `layer`: Σ |W ⊙ G| over every weight the unit owns (its rows of q, k, v, gate, up; its columns of
 * o and down). `w` and `g` give the stored weight [out, in] and its gradient, row-major.
 */
export function taylorImportance(
  model: CausalLM,
  layer: number,
  w: (name: string) => Float32Array,
  g: (name: string) => Float32Array,
): { kvHeads: Float64Array; channels: Float64Array } {
  const { headDim: D, numHeads: H, numKvHeads: KV, hiddenSize: C, intermediateSize: I } = model.config;
  const groups = H / KV;
  const p = `model.layers.${layer}`;
  const saliency = (name: string) => {
    const [wv, gv] = [w(name), g(name)];
    return Float64Array.from(wv, (v, k) => Math.abs(v * gv[k]));
  };
  const rowSums = (s: Float64Array, cols: number) => Float64Array.from({ length: s.length / cols }, (_, r) => s.subarray(r * cols, (r + 1) * cols).reduce((a, b) => a + b, 0));
  const colSums = (s: Float64Array, cols: number) => {
    const out = new Float64Array(cols);
    for (let k = 0; k < s.length; k++) out[k % cols] += s[k];
    return out;
  };
  const q = rowSums(saliency(`${p}.self_attn.q_proj.weight`), C); // [H·D]
  const k = rowSums(saliency(`${p}.self_attn.k_proj.weight`), C); // [KV·D]
  const v = rowSums(saliency(`${p}.self_attn.v_proj.weight`), C);
  const o = colSums(saliency(`${p}.self_attn.o_proj.weight`), H * D); // [H·D]
  const kvHeads = new Float64Array(KV);
  for (let head = 0; head < KV; head++) {
    for (let d = 0; d < D; d++) kvHeads[head] += k[head * D + d] + v[head * D + d];
    for (let d = 0; d < groups * D; d++) kvHeads[head] += q[head * groups * D + d] + o[head * groups * D + d];
  }
  const gate = rowSums(saliency(`${p}.mlp.gate_proj.weight`), C); // [I]
  const up = rowSums(saliency(`${p}.mlp.up_proj.weight`), C);
  const down = colSums(saliency(`${p}.mlp.down_proj.weight`), I);
  return { kvHeads, channels: Float64Array.from(gate, (x, j) => x + up[j] + down[j]) };
}

/** Which heads and channels each pruned layer keeps, by `params.pruning`. */
export function choosePruning(model: CausalLM, params: MethodParams, seed: number, gradients?: BaseGradientSource): LayerPruning[] {
  const { numLayers, numKvHeads: KV, intermediateSize: I } = model.config;
  const [start, end] = prunedLayerRange(numLayers, params.prune_first_kept as number, params.prune_last_kept as number);
  const keepHeads = keptCount(KV, params.prune_ratio_attn as number);
  const keepChannels = keptCount(I, params.prune_ratio_mlp as number);
  const layers = Array.from({ length: end - start }, (_, i) => start + i);
  if (params.pruning === 'rand') {
    const random = new Random((seed ^ 0x1f123bb5) >>> 0);
    const pick = (count: number, keep: number) => random.shuffle(Array.from({ length: count }, (_, i) => i)).slice(0, keep).sort((a, b) => a - b);
    return layers.map((layer) => ({ layer, kvHeads: pick(KV, keepHeads), channels: pick(I, keepChannels) }));
  }
  if (!gradients) {
    throw new LowrankError(
      'BAD_ARGUMENT',
      'method loram with pruning=stru ranks heads and channels by gradients of the first training samples, which only a fine-tuning run provides (lowrank train); use --param pruning=rand elsewhere',
    );
  }
  const names = layers.flatMap((layer) => [...ATTENTION.map((m) => `model.layers.${layer}.self_attn.${m}.weight`), ...MLP.map((m) => `model.layers.${layer}.mlp.${m}.weight`)]);
  const samples = params.calibration_samples as number;
  // Taken before any module is wrapped: the gradients of the unpruned base.
  const grads = gradients.gradients(names, samples, samples);
  return layers.map((layer) => {
    const scores = taylorImportance(model, layer, (name) => tf.tidy(() => model.weight(name).dataSync() as Float32Array), (name) => grads.get(name)!);
    return { layer, kvHeads: topIndices(scores.kvHeads, keepHeads), channels: topIndices(scores.channels, keepChannels) };
  });
}

/** One linear module LoRAM touches: pruned (in a pruned layer), adapted (a LoRA target), or both. */
interface LoramModule {
  readonly path: string;
  readonly outFeatures: number;
  readonly inFeatures: number;
  readonly kept: KeptIndices;
  /** Kept rows / columns as int32 indices; null = all. */
  readonly rows: tf.Tensor1D | null;
  readonly cols: tf.Tensor1D | null;
  /** For each full row / column: its position among the kept ones, or their count (a zero) where pruned. */
  readonly rowScatter: tf.Tensor1D | null;
  readonly colScatter: tf.Tensor1D | null;
  /** The pruned base W^P [rows, cols] and bias, in a pruned layer; null elsewhere. */
  readonly weight: tf.Tensor2D | null;
  readonly bias: tf.Tensor1D | null;
  /** LoRA on the pruned shapes, A^P [r, cols] and B^P [rows, r]; null on a module that is not a target. */
  readonly A: tf.Variable<tf.Rank.R2> | null;
  readonly B: tf.Variable<tf.Rank.R2> | null;
}

function int32(values: number[] | null): tf.Tensor1D | null {
  return values ? tf.tensor1d(values, 'int32') : null;
}

function scatterIndex(kept: number[] | null, size: number): tf.Tensor1D | null {
  if (!kept) return null;
  const at = new Int32Array(size).fill(kept.length);
  kept.forEach((full, i) => (at[full] = i));
  return tf.tensor1d(at, 'int32');
}

/** y [N, k] on the kept columns -> [N, size] with zeros elsewhere (index from scatterIndex). */
function scatterColumns(y: tf.Tensor2D, index: tf.Tensor1D | null): tf.Tensor2D {
  if (!index) return y;
  return tf.gather(tf.concat([y, tf.zeros([y.shape[0], 1])], 1), index, 1);
}

/** B^R [out, r] and A^R [r, in] of a module's LoRA: zeros where the pruned model had no row or column. */
function recovered(m: LoramModule): { A: tf.Tensor2D; B: tf.Tensor2D } {
  return tf.tidy(() => {
    const A = m.A!;
    const B = m.B!;
    return {
      A: m.colScatter ? scatterColumns(A, m.colScatter) : tf.clone(A),
      B: m.rowScatter ? tf.gather(tf.concat([B, tf.zeros([1, B.shape[1]])], 0), m.rowScatter, 0) : tf.clone(B),
    };
  });
}

/** Row-major [rows, cols] values restricted to `keep` rows and `keepCols` columns; pruned entries must be zero. */
function keptValues(path: string, values: Float32Array, rows: number, cols: number, keptRows: number[] | null, keptCols: number[] | null): Float32Array {
  const rowSet = keptRows ? new Set(keptRows) : null;
  const colSet = keptCols ? new Set(keptCols) : null;
  const out: number[] = [];
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const v = values[i * cols + j];
      if ((!rowSet || rowSet.has(i)) && (!colSet || colSet.has(j))) out.push(v);
      else if (v !== 0) {
        throw new LowrankError('BAD_ARGUMENT', `saved adapter's ${path} is nonzero where loram prunes (row ${i}, column ${j}); it was not trained by loram with these pruning settings`);
      }
    }
  }
  return Float32Array.from(out);
}

export const loram: Method = {
  id: 'loram',
  family: 'adapter',
  paper: { title: 'Train Small, Infer Large: Memory-Efficient LoRA Training for Large Language Models', year: 2025, url: 'https://arxiv.org/abs/2502.13533' },
  paperLearningRate: { value: 1e-5, source: 'junzhang-zj/LoRAM loram/2_pruned_low_rank_matrix_training.py --learning_rate default (the LLaMA-3.1-70B run)' },
  summary: 'Train LoRA on a structurally pruned copy of the model (85 % of heads and MLP channels gone), then zero-fill the factors back to full size for inference.',
  parameterPrefix: 'loram_',
  schema: [
    { name: 'rank', type: 'integer', default: 8, min: 1, max: 4096, description: 'r, the rank of B·A (the code\'s lora_r)' },
    { name: 'alpha', type: 'number', default: 16, min: 0, description: 'α; the update is scaled by α/r' },
    dropoutField(0.05),
    { name: 'pruning', type: 'enum', default: 'stru', choices: ['stru', 'rand'], description: 'stru: drop the least important units by first-order Taylor importance (LLM-Pruner); rand: at random (LoRAM-Rand)' },
    { name: 'prune_ratio_attn', type: 'number', default: 0.85, min: 0, max: 1, description: 'share of key/value heads (with their query heads) pruned in each pruned layer' },
    { name: 'prune_ratio_mlp', type: 'number', default: 0.85, min: 0, max: 1, description: 'share of MLP intermediate channels pruned in each pruned layer' },
    { name: 'prune_first_kept', type: 'integer', default: 4, min: 0, description: 'leading decoder layers left unpruned (the code prunes layers 4–77 of 80)' },
    { name: 'prune_last_kept', type: 'integer', default: 2, min: 0, description: 'trailing decoder layers left unpruned' },
    { name: 'calibration_samples', type: 'integer', default: 10, min: 1, max: 4096, description: 'training examples whose gradients rank units under pruning=stru (LLM-Pruner\'s --num_examples)' },
  ],
  defaultTargets: 'all-linear',
  mergeable: true,
  exportFormats: ['peft', 'merged'],

  countTrainable(model, given, targets) {
    const params = resolveParams('loram', loram.schema, given);
    refuseOtherArchitectures(model);
    const r = params.rank as number;
    const pruning = prunedLayerShapes(model, params);
    let count = 0;
    for (const path of targets) {
      const [out, inn] = model.weightShape(`${path}.weight`);
      const at = moduleOf(path);
      const kept = at && pruning.has(at.layer) ? keptIndices(model, pruning.get(at.layer)!, at.name) : { rows: null, cols: null };
      count += r * ((kept.rows?.length ?? out) + (kept.cols?.length ?? inn));
    }
    return count;
  },

  attach(model, given, ctx): AttachedMethod {
    const params = resolveParams('loram', loram.schema, given);
    refuseOtherArchitectures(model);
    if (ctx.targets.length === 0) throw new LowrankError('BAD_ARGUMENT', 'method loram needs at least one target module');
    for (const path of ctx.targets) {
      if (model.adapters.has(path)) throw new LowrankError('BAD_ARGUMENT', `module ${path} already has an adapter; detach it first`);
    }
    const r = params.rank as number;
    const alpha = params.alpha as number;
    const s = alpha / r;
    const dropoutRate = params.dropout as number;
    const initial = InitialValues.from(ctx.initial);
    const pruning = new Map(choosePruning(model, params, ctx.seed, ctx.baseGradients).map((p) => [p.layer, p]));
    const initRandom = new Random(ctx.seed);
    const dropoutRandom = new Random((ctx.seed ^ 0x5bd1e995) >>> 0);
    const targets = new Set(ctx.targets);
    const prunedPaths = [...pruning.keys()].flatMap((layer) => [...ATTENTION.map((m) => `model.layers.${layer}.self_attn.${m}`), ...MLP.map((m) => `model.layers.${layer}.mlp.${m}`)]);
    const paths = model.linearModules().filter((p) => targets.has(p) || prunedPaths.includes(p));
    if (targets.has('lm_head')) paths.push('lm_head');
    const modules: LoramModule[] = [];
    const trainable = new Map<string, tf.Variable>();

    const detach = () => {
      for (const m of modules) {
        model.adapters.delete(m.path);
        for (const t of [m.rows, m.cols, m.rowScatter, m.colScatter, m.weight, m.bias, m.A, m.B]) t?.dispose();
      }
      modules.length = 0;
      trainable.clear();
    };

    try {
      for (const path of paths) {
        const [outFeatures, inFeatures] = model.weightShape(`${path}.weight`);
        const at = moduleOf(path);
        const layerPruning = at ? pruning.get(at.layer) : undefined;
        const kept = layerPruning ? keptIndices(model, layerPruning, at!.name) : { rows: null, cols: null };
        const rows = int32(kept.rows);
        const cols = int32(kept.cols);
        const hasBias = model.hasWeight(`${path}.bias`);
        const m: LoramModule = {
          path,
          outFeatures,
          inFeatures,
          kept,
          rows,
          cols,
          rowScatter: scatterIndex(kept.rows, outFeatures),
          colScatter: scatterIndex(kept.cols, inFeatures),
          weight: layerPruning
            ? tf.tidy(() => {
                let w = model.weight(`${path}.weight`) as tf.Tensor2D;
                if (rows) w = tf.gather(w, rows, 0);
                if (cols) w = tf.gather(w, cols, 1);
                return tf.clone(w);
              })
            : null,
          bias: layerPruning && hasBias ? tf.tidy(() => (rows ? tf.gather(model.weight(`${path}.bias`), rows) : tf.clone(model.weight(`${path}.bias`))) as tf.Tensor1D) : null,
          ...(targets.has(path) ? loraFactors(path, kept, outFeatures, inFeatures, r, initial, initRandom) : { A: null, B: null }),
        };
        modules.push(m);
        if (m.A && m.B) {
          trainable.set(`${path}.loram_A`, m.A);
          trainable.set(`${path}.loram_B`, m.B);
        }
        const dropout = (x: tf.Tensor2D) => (dropoutRate > 0 ? (tf.dropout(x, dropoutRate, undefined, dropoutRandom.int(2 ** 31)) as tf.Tensor2D) : x);
        // B^P·A^P·x^P for x^P [N, cols] -> [N, rows]; s on B (r·rows values) rather than on the product.
        const update = (xKept: tf.Tensor2D): tf.Tensor2D => tf.matMul(tf.matMul(xKept, m.A!, false, true), tf.mul(m.B!, s) as tf.Tensor2D, false, true);
        model.adapters.set(path, {
          apply(x, base, _weight, training): tf.Tensor2D {
            const xKept: tf.Tensor2D = m.cols ? tf.gather(x, m.cols, 1) : x;
            if (!training) {
              // Inference on the full model with the recovered adapter: W₀x + s·B^R·A^R·x.
              return m.A ? tf.add(base(x), scatterColumns(update(xKept), m.rowScatter)) : base(x);
            }
            let y: tf.Tensor2D = m.weight ? tf.matMul(xKept, m.weight, false, true) : base(x);
            if (m.bias) y = tf.add(y, m.bias);
            if (m.A) y = tf.add(y, update(dropout(xKept)));
            return m.weight ? scatterColumns(y, m.rowScatter) : y;
          },
        });
      }
      initial?.assertAllUsed();
    } catch (e) {
      detach();
      throw e;
    }

    const adapted = () => modules.filter((m) => m.A && m.B);
    const logLines = [pruningSummary(model, params, [...pruning.values()])];
    return {
      method: loram,
      params,
      trainable,
      lrScale: () => 1,
      takeLogLines: () => logLines.splice(0),
      getRandomState: () => dropoutRandom.getState(),
      setRandomState: (state) => dropoutRandom.setState(state),
      trainableParameterCount: () => [...trainable.values()].reduce((n, v) => n + v.size, 0),
      mergedWeights() {
        const merged = new Map<string, tf.Tensor>();
        for (const m of adapted()) {
          const name = `${m.path}.weight`;
          const { A, B } = recovered(m);
          merged.set(name, tf.tidy(() => tf.add(model.weight(name), tf.mul(tf.matMul(B, A), s))));
          A.dispose();
          B.dispose();
        }
        return merged;
      },
      peftAdapter() {
        const tensors = new Map<string, tf.Tensor>();
        for (const m of adapted()) {
          const { A, B } = recovered(m);
          tensors.set(`${PEFT_KEY_PREFIX}${m.path}.lora_A.weight`, A);
          tensors.set(`${PEFT_KEY_PREFIX}${m.path}.lora_B.weight`, B);
        }
        const config = peftLoraConfig(model, adapted().map((m) => ({ path: m.path, transposed: false })), { r, alpha, dropout: dropoutRate, useRslora: false });
        return { config: sortedKeys(config), tensors };
      },
      detach,
    };
  },
};

/**
 * A^P [r, cols] and B^P [rows, r] of a target: peft's init on the pruned shapes (A ~ kaiming-uniform
 * with the pruned fan-in, B = 0), or saved values, pruned-shaped (`<path>.loram_A`) or a recovered
 * full-size LoRA (`<path>.lora_A.weight`, zero where LoRAM prunes).
 */
function loraFactors(
  path: string,
  kept: KeptIndices,
  out: number,
  inn: number,
  r: number,
  initial: InitialValues | undefined,
  random: Random,
): { A: tf.Variable<tf.Rank.R2>; B: tf.Variable<tf.Rank.R2> } {
  const rows = kept.rows?.length ?? out;
  const cols = kept.cols?.length ?? inn;
  let a: Float32Array;
  let b: Float32Array;
  if (initial?.peek(`${path}.loram_A`)) {
    a = initial.take(`${path}.loram_A`, [r, cols]);
    b = initial.take(`${path}.loram_B`, [rows, r]);
  } else if (initial) {
    a = keptValues(`${path}.lora_A.weight`, initial.take(`${path}.lora_A.weight`, [r, inn]), r, inn, null, kept.cols);
    b = keptValues(`${path}.lora_B.weight`, initial.take(`${path}.lora_B.weight`, [out, r]), out, r, kept.rows, null);
  } else {
    const bound = 1 / Math.sqrt(cols);
    a = Float32Array.from({ length: r * cols }, () => (2 * random.next() - 1) * bound);
    b = new Float32Array(rows * r);
  }
  return { A: variableFrom(tf.tensor2d(a, [r, cols])), B: variableFrom(tf.tensor2d(b, [rows, r])) };
}

/** One line for the run's log: what the pruned model the adapter trains on keeps. */
function pruningSummary(model: CausalLM, params: MethodParams, pruning: LayerPruning[]): string {
  const { numHeads: H, numKvHeads: KV, intermediateSize: I } = model.config;
  if (pruning.length === 0) return 'no decoder layer pruned (the pruned range is empty): plain LoRA';
  const { kvHeads, channels } = pruning[0];
  return (
    `trains on a pruned model (${String(params.pruning)}): decoder layers ${pruning[0].layer}–${pruning[pruning.length - 1].layer} keep ` +
    `${kvHeads.length} of ${KV} key/value heads (${(kvHeads.length * H) / KV} of ${H} query heads) and ${channels.length} of ${I} MLP channels; ` +
    'evaluation and export use the full model with the recovered adapter'
  );
}

/** LoRAM's pruning is written for Llama-family blocks (its repo prunes LLaMA only). */
function refuseOtherArchitectures(model: CausalLM): void {
  if (model.config.family !== 'llama') {
    throw new LowrankError('BAD_ARGUMENT', `method loram prunes grouped-query attention heads and SwiGLU channels of Llama-family models; ${model.config.architecture} is not one`);
  }
}

/** Kept counts per pruned layer without choosing which units (for countTrainable: only the counts matter). */
function prunedLayerShapes(model: CausalLM, params: MethodParams): Map<number, LayerPruning> {
  const { numLayers, numKvHeads: KV, intermediateSize: I } = model.config;
  const [start, end] = prunedLayerRange(numLayers, params.prune_first_kept as number, params.prune_last_kept as number);
  const heads = Array.from({ length: keptCount(KV, params.prune_ratio_attn as number) }, (_, i) => i);
  const channels = Array.from({ length: keptCount(I, params.prune_ratio_mlp as number) }, (_, i) => i);
  const out = new Map<number, LayerPruning>();
  for (let layer = start; layer < end; layer++) out.set(layer, { layer, kvHeads: heads, channels });
  return out;
}

registerMethod(loram);
