/**
 * RandLoRA: Full-rank parameter-efficient fine-tuning of large models (Albert et al.,
 * arXiv:2502.00987), as peft implements it (tuners/randlora: model.py `_init_randlora_A_randlora_B`,
 * layer.py `get_scaled_bases`, `get_delta_weight`, `forward`; ALGORITHMS.md §4).
 *
 * One pair of frozen random bases is shared by every wrapped module, sized by the largest in/out
 * dimensions over the targets (d_buf = min(out_max, in_max), D_buf = max(out_max, in_max)):
 *   A₀ [r, 1, d_buf]   B [D_buf, N_max, r],   N = ⌈d / r⌉ bases per module (d = min(in, out))
 * Each module with d = min(in, out), D = max(in, out) trains λ [r, N] (init 0) and γ [N, d]
 * (init 1/max(N, d)) and builds
 *   Ã[k, b, j] = λ[k, b]·A₀[k, 0, j]·γ[b, j]                              (peft `UniqueBaseGrad`)
 *   Ã_flat [r·N, d]: row k·N + b;   B_flat [D, N·r]: column b·r + k        (torch flatten, as peft)
 *   core = B_flat·Ã_flat [D, d];    ΔW = s·core if in = d (square too), else s·coreᵀ;   s = α/r
 * so ΔW = 0 at init (λ = 0) and, once λ, γ move, ΔW is a sum of r·N rank-one terms: full rank
 * min(in, out), not r. The official code scales by α/(r·√N) instead, with α = 2r; peft's α/r
 * with α = 20r is what is implemented here (and what a RANDLORA adapter file means to peft).
 *
 * The bases come from our seeded generator (not torch's), U(−1, 1) — or peft's ternary `sparse` /
 * `very_sparse` draws — each divided by its empirical (unbiased) std as peft does, then rounded to
 * bfloat16 as peft creates them (so a float32 file loads bit-exactly into peft's bf16/fp16 buffers).
 * Same key, same bits. The trainable count is Σ N·(r + d) per module: a smaller r trains more.
 *
 * Export: merged W₀ + ΔW (ΔW is full rank, so no rank-r LoRA reproduces it), or peft's RANDLORA
 * adapter: `base_model.randlora_A`, `base_model.randlora_B` (save_projection = true: peft could
 * not regenerate our bases) and `<path>.randlora_lambda` / `.randlora_gamma` per module
 * (utils/save_and_load.py: the generic `randlora_` prefix filter; tests/test_randlora.py).
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import type { Method } from './method.ts';
import { InitialValues } from './initial-values.ts';
import { attachFactored, linearTargets, sharedProjectionPeftAdapter, type FactoredLayer, type LinearTarget } from './factored-adapter.ts';
import { dropoutField, projectionKeyField, resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';
import { variableFrom } from './lora.ts';

export const RANDLORA_A_KEY = 'base_model.randlora_A';
export const RANDLORA_B_KEY = 'base_model.randlora_B';

export type RandloraBasis = 'dense' | 'sparse' | 'very_sparse';

/** N = ⌈d / r⌉: enough rank-r bases to reach rank d (peft's `num_bases`). */
export function numBases(d: number, r: number): number {
  return Math.ceil(d / r);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** x rounded to the nearest bfloat16 (ties to even), as a float32. */
export function toBfloat16(x: number): number {
  f32[0] = x;
  const u = u32[0];
  u32[0] = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 0) & 0xffff0000;
  return f32[0];
}

/** Divides by the unbiased std (torch's `.std()`) and rounds to bfloat16, in place. */
function normalise(values: Float32Array, what: string): Float32Array {
  let mean = 0;
  for (const v of values) mean += v;
  mean /= values.length;
  let ss = 0;
  for (const v of values) ss += (v - mean) ** 2;
  const std = Math.sqrt(ss / Math.max(1, values.length - 1));
  if (!(std > 0)) throw new LowrankError('BAD_ARGUMENT', `randlora: the random ${what} basis came out constant (too few entries for this sparsity); use dense bases or a smaller rank`);
  for (let i = 0; i < values.length; i++) values[i] = toBfloat16(values[i] / std);
  return values;
}

/**
 * The shared bases from the key, row-major: A₀ [r, 1, dMin] first, then B [dMax, N, r] with
 * N = ⌈dMin / r⌉. Dense: B drawn one [dMax, 1, r] slice per basis, as peft's `torch.cat` of
 * per-basis kaiming draws (the kaiming bound cancels in the std division). Sparse: one draw of each
 * whole buffer, −1 below 1/(2s), +1 above 1 − 1/(2s), else 0, with s = 3, or √dMin for very sparse.
 */
export function randloraBases(key: number, r: number, dMin: number, dMax: number, basis: RandloraBasis = 'dense'): { a: Float32Array; b: Float32Array; numBases: number } {
  const n = numBases(dMin, r);
  const random = new Random(key);
  const a = new Float32Array(r * dMin);
  const b = new Float32Array(dMax * n * r);
  if (basis === 'dense') {
    for (let i = 0; i < a.length; i++) a[i] = 2 * random.next() - 1;
    for (let base = 0; base < n; base++) {
      for (let i = 0; i < dMax; i++) for (let k = 0; k < r; k++) b[(i * n + base) * r + k] = 2 * random.next() - 1;
    }
  } else {
    const s = basis === 'sparse' ? 3 : Math.sqrt(dMin);
    const ternary = (u: number) => (u < 1 / (2 * s) ? -1 : u > 1 - 1 / (2 * s) ? 1 : 0);
    for (let i = 0; i < a.length; i++) a[i] = ternary(random.next());
    for (let i = 0; i < b.length; i++) b[i] = ternary(random.next());
  }
  return { a: normalise(a, 'A'), b: normalise(b, 'B'), numBases: n };
}

export const randlora: Method = {
  id: 'randlora',
  family: 'adapter',
  paper: { title: 'RandLoRA: Full-rank parameter-efficient fine-tuning of large models', year: 2025, url: 'https://arxiv.org/abs/2502.00987' },
  paperLearningRate: { value: 1e-4, source: 'PaulAlbert31/RandLoRA commonsense_reasoning/base_randlora.sh (ALGORITHMS.md RandLoRA (d))' },
  summary: 'A full-rank update built from shared frozen random low-rank bases; each layer trains only diagonal scalings of them.',
  parameterPrefix: 'randlora_',
  // peft RandLoraConfig defaults: r 32, randlora_alpha 640 (= 20r), dropout 0, projection_prng_key 0.
  schema: [
    {
      name: 'rank',
      type: 'integer',
      default: 32,
      min: 1,
      max: 8192,
      description: 'r, the rank of each random basis; a module uses N = ⌈min(in, out)/r⌉ bases and trains N·(r + min(in, out)) numbers, so a SMALLER r trains more',
    },
    { name: 'alpha', type: 'number', default: 640, min: 0, description: 'α; ΔW is scaled by α/r (peft; typically 20·r). The official code scales by α/(r·√N) with α = 2r' },
    dropoutField(),
    projectionKeyField('bases (A₀ and B)'),
    { name: 'sparse', type: 'boolean', default: false, description: 'ternary bases: ±1 each with probability 1/6, else 0 (then divided by the std)' },
    { name: 'very_sparse', type: 'boolean', default: false, description: 'ternary bases with ±1 probability 1/(2√d) each; overrides sparse' },
  ],
  mergeable: true,
  exportFormats: ['peft', 'merged'],

  attach(model, given, ctx) {
    const params = resolveParams('randlora', randlora.schema, given);
    const r = params.rank as number;
    const alpha = params.alpha as number;
    const s = alpha / r;
    const key = params.projection_prng_key as number;
    const basis: RandloraBasis = params.very_sparse ? 'very_sparse' : params.sparse ? 'sparse' : 'dense';
    const targets = linearTargets(model, 'randlora', ctx.targets);
    const initial = InitialValues.from(ctx.initial);
    const outMax = Math.max(...targets.map((t) => t.outFeatures));
    const inMax = Math.max(...targets.map((t) => t.inFeatures));
    const dBuf = Math.min(outMax, inMax);
    const DBuf = Math.max(outMax, inMax);
    const nMax = numBases(dBuf, r);
    // A saved adapter carries its bases (save_projection): use them, as peft does.
    const bases = initial?.peek(RANDLORA_A_KEY)
      ? { a: initial.take(RANDLORA_A_KEY, [r, 1, dBuf]), b: initial.take(RANDLORA_B_KEY, [DBuf, nMax, r]) }
      : randloraBases(key, r, dBuf, DBuf, basis);
    const A0 = tf.tensor3d(bases.a, [r, 1, dBuf]);
    const B = tf.tensor3d(bases.b, [DBuf, nMax, r]);

    const layer = (target: LinearTarget): FactoredLayer => {
      const { path, inFeatures, outFeatures } = target;
      const d = Math.min(inFeatures, outFeatures);
      const D = Math.max(inFeatures, outFeatures);
      const n = numBases(d, r);
      const savedLambda = initial?.take(`${path}.randlora_lambda`, [r, n]);
      const savedGamma = initial?.take(`${path}.randlora_gamma`, [n, d]);
      const lambda = variableFrom(savedLambda ? tf.tensor2d(savedLambda, [r, n]) : tf.zeros([r, n]));
      const gamma = variableFrom(savedGamma ? tf.tensor2d(savedGamma, [n, d]) : tf.fill([n, d], 1 / Math.max(n, d)));
      // Ã_flat [r·N, d], row k·N + b = λ[k, b]·A₀[k, 0, :d]·γ[b, :].
      const scaledA = (): tf.Tensor2D => {
        const a0 = d === dBuf ? A0 : tf.slice(A0, [0, 0, 0], [r, 1, d]);
        const t = tf.mul(tf.mul(tf.reshape(lambda, [r, n, 1]), a0), tf.reshape(gamma, [1, n, d])); // [r, N, d]
        return tf.reshape(t, [r * n, d]);
      };
      // B_flat [D, N·r], column b·r + k = B[:D, b, k].
      const flatB = (): tf.Tensor2D => tf.reshape(D === DBuf && n === nMax ? B : tf.slice(B, [0, 0, 0], [D, n, r]), [D, n * r]);
      const inIsSmall = inFeatures === d;
      return {
        target,
        trainable: [
          ['randlora_lambda', lambda],
          ['randlora_gamma', gamma],
        ],
        frozen: [],
        update(x) {
          // in = d: ΔW·x = s·B_flat·(Ã_flat·x); in = D: ΔW·x = s·Ã_flatᵀ·(B_flatᵀ·x). Never the [out, in] ΔW.
          const y = inIsSmall
            ? tf.matMul(tf.matMul(x, scaledA(), false, true), flatB(), false, true)
            : tf.matMul(tf.matMul(x, flatB()), scaledA());
          return tf.mul(y, s);
        },
        factors: () =>
          inIsSmall
            ? { B: tf.mul(flatB(), s) as tf.Tensor2D, A: scaledA() }
            : { B: tf.mul(tf.transpose(scaledA()), s) as tf.Tensor2D, A: tf.transpose(flatB()) },
      };
    };

    return attachFactored({
      method: randlora,
      model,
      params,
      ctx,
      targets,
      initial,
      dropout: params.dropout as number,
      shared: [A0, B],
      layer,
      peftAdapter: (layers) => sharedProjectionPeftAdapter(model, layers, [[RANDLORA_A_KEY, A0], [RANDLORA_B_KEY, B]], {
        // RandLoraConfig's own fields.
        peft_type: 'RANDLORA',
        projection_prng_key: key,
        r,
        randlora_alpha: alpha,
        randlora_dropout: params.dropout,
        sparse: params.sparse,
        very_sparse: params.very_sparse,
      }),
    });
  },
};

registerMethod(randlora);
