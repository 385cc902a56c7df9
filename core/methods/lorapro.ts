/**
 * LoRA-Pro: Are Low-Rank Adapters Properly Optimized? (Wang et al., arXiv:2407.18242), "lora-pro-full"
 * as the official code runs it (mrflogs/LoRA-Pro: DeepSpeed-0.15.1/deepspeed/runtime/zero/
 * stage_1_and_2.py `lorapro_full_adjustment`, `solve_sylvester`; ALGORITHMS.md "LoRA-Pro").
 * Forward: plain LoRA, h = W₀x + s·B·A·dropout(x), A ~ kaiming-uniform, B = 0, s = α/r. Each optimizer
 * step, per (A, B) pair with autograd's G_A = s·BᵀG and G_B = s·G·Aᵀ (G = ∂L/∂W, never formed):
 *   1. (AAᵀ)⁻¹ := pinv(AAᵀ + 1e-8·I), (BᵀB)⁻¹ := pinv(BᵀB + 1e-8·I)        (torch.linalg.pinv, float32 rtol)
 *   2. g_A = s⁻²(BᵀB)⁻¹G_A,  g_B = s⁻²(I − P_B)·G_B·(AAᵀ)⁻¹,  P_B = B(BᵀB)⁻¹Bᵀ        (Thm 2.1)
 *      equivalent gradient g̃ = s(B·g_A + g_B·A) = P_B·G + (I − P_B)·G·P_A, the closest to G of all
 *      s(B·g_A + g_B·A) (Frobenius norm), where plain LoRA's is s²(BBᵀG + GAᵀA)
 *   3. Adam on the full [out, in] g̃ (β = 0.9/0.999, ε = 1e-8): ĝ = m̂ / (√v̂ + ε)
 *   4. G'_A = s·Bᵀĝ, G'_B = s·ĝ·Aᵀ; X solves (BᵀB)X + X(AAᵀ) = −s⁻²(BᵀB)⁻¹G'_A·Aᵀ (Thm 2.2,
 *      eigendecompositions of the two symmetric r×r matrices)
 *      grad_A = s⁻²(BᵀB)⁻¹G'_A + X·A,  grad_B = s⁻²(I − P_B)·G'_B·(AAᵀ)⁻¹ − B·X
 *   5. plain SGD (the official single-GPU run's optim="sgd"): A −= lr·grad_A, B −= lr·grad_B, with
 *      torch SGD's coupled weight decay (grad += λ·p) where the run sets one.
 * The official `global_step == 0` branch is dead code (the counter is incremented first), so every step,
 * the first included (B = 0: g_A = 0, X = 0), takes the general formulas, as here. Clipping happens
 * before, on the raw gradients, as the official clip coefficient does. The official code hard-codes
 * s = 16/8; here s = α/r, the same at the defaults, so training and the export agree for any α, r.
 *
 * Optimizer state: the two full-size Adam moments per module, 8·out·in bytes (not r·(out + in)).
 * The update is exactly low-rank: PEFT export as a plain LoRA (lora_alpha = α), merged W₀ + s·B·A.
 */
import * as tf from '../tf.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import type { AdamWOptions } from '../optim/adamw.ts';
import type { Optimizer, OptimizerState } from '../optim/registry.ts';
import type { Method } from './method.ts';
import { defineLoraMethod, loraSchema, plainLora } from './lora.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

const JITTER = 1e-8;
/** torch.linalg.pinv's default rtol for float32: eps·max(rows, cols). */
const FLOAT32_EPS = 2 ** -23;

/** Symmetric r×r M (float64, row-major) = V·diag(λ)·Vᵀ; for the PSD Gram matrices the SVD is the eigendecomposition. */
function symmetricEig(M: Float64Array, r: number): { values: Float64Array; vectors: Float64Array } {
  const { S, Vt } = jacobiSvd(M, r, r);
  const vectors = new Float64Array(r * r); // columns are eigenvectors: V[i, k] = Vt[k, i]
  for (let i = 0; i < r; i++) for (let k = 0; k < r; k++) vectors[i * r + k] = Vt[k * r + i];
  return { values: Float64Array.from(S), vectors };
}

/** V·diag(f(λ))·Vᵀ. */
function fromEig(eig: { values: Float64Array; vectors: Float64Array }, r: number, f: (value: number) => number): Float64Array {
  const out = new Float64Array(r * r);
  const scaled = eig.values.map(f);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      let sum = 0;
      for (let k = 0; k < r; k++) sum += eig.vectors[i * r + k] * scaled[k] * eig.vectors[j * r + k];
      out[i * r + j] = sum;
    }
  }
  return out;
}

/** The Gram matrix M plus jitter, its eigendecomposition and pinv(M + 1e-8·I) as torch computes it. */
export interface GramInverse {
  /** Eigendecomposition of M + 1e-8·I (M's eigenvalues are these minus 1e-8). */
  eig: { values: Float64Array; vectors: Float64Array };
  inverse: Float64Array;
}

export function gramInverse(M: Float64Array, r: number): GramInverse {
  const jittered = Float64Array.from(M, (v, k) => (k % (r + 1) === 0 ? v + JITTER : v));
  const eig = symmetricEig(jittered, r);
  const cutoff = FLOAT32_EPS * r * Math.max(...eig.values);
  return { eig, inverse: fromEig(eig, r, (v) => (v > cutoff ? 1 / v : 0)) };
}

/**
 * X with P·X + X·Q = C for symmetric PSD P = BᵀB and Q = AAᵀ, from the eigendecompositions of
 * P + 1e-8·I and Q + 1e-8·I: with P = U·Λ·Uᵀ, Q = V·Γ·Vᵀ, X = U·[(UᵀCV)_ij / (λ_i + γ_j)]·Vᵀ.
 */
export function solveSylvester(p: GramInverse, q: GramInverse, C: Float64Array, r: number): Float64Array {
  const U = p.eig.vectors;
  const V = q.eig.vectors;
  const lambda = p.eig.values.map((v) => v - JITTER);
  const gamma = q.eig.values.map((v) => v - JITTER);
  const mul = (a: Float64Array, aT: boolean, b: Float64Array, bT: boolean) => {
    const out = new Float64Array(r * r);
    for (let i = 0; i < r; i++) {
      for (let j = 0; j < r; j++) {
        let sum = 0;
        for (let k = 0; k < r; k++) sum += (aT ? a[k * r + i] : a[i * r + k]) * (bT ? b[j * r + k] : b[k * r + j]);
        out[i * r + j] = sum;
      }
    }
    return out;
  };
  const F = mul(mul(U, true, C, false), false, V, false); // Uᵀ·C·V
  for (let i = 0; i < r; i++) for (let j = 0; j < r; j++) F[i * r + j] /= lambda[i] + gamma[j];
  return mul(mul(U, false, F, false), false, V, true); // U·Y·Vᵀ
}

const toTensor = (values: Float64Array, r: number) => tf.tensor2d(Float32Array.from(values), [r, r]);
function gram(t: tf.Tensor2D, transposeFirst: boolean): Float64Array {
  const product = tf.matMul(t, t, transposeFirst, !transposeFirst); // AAᵀ or BᵀB [r, r]
  const values = Float64Array.from(product.dataSync());
  product.dispose();
  return values;
}

/** Factors and the r×r inverses one LoRA-Pro adjustment needs. */
export interface Pair {
  A: tf.Tensor2D; // [r, in]
  B: tf.Tensor2D; // [out, r]
  s: number;
  invAA: tf.Tensor2D; // (AAᵀ)⁻¹
  invBB: tf.Tensor2D; // (BᵀB)⁻¹
}

/** (I − P_B)·Y for Y [out, k], without forming the [out, out] projector. */
function complementOfB(pair: Pair, Y: tf.Tensor2D): tf.Tensor2D {
  return tf.sub(Y, tf.matMul(pair.B, tf.matMul(pair.invBB, tf.matMul(pair.B, Y, true, false))));
}

/** Step 2: g_A = s⁻²(BᵀB)⁻¹G_A, g_B = s⁻²(I − P_B)·G_B·(AAᵀ)⁻¹. */
export function adjustedGradients(pair: Pair, gA: tf.Tensor2D, gB: tf.Tensor2D): { gA: tf.Tensor2D; gB: tf.Tensor2D } {
  const inv = 1 / (pair.s * pair.s);
  return {
    gA: tf.mul(tf.matMul(pair.invBB, gA), inv),
    gB: tf.mul(complementOfB(pair, tf.matMul(gB, pair.invAA)), inv),
  };
}

/** s·(B·g_A + g_B·A) [out, in]: the full-weight gradient a pair of factor gradients amounts to. */
export function equivalentGradient(pair: Pair, gA: tf.Tensor2D, gB: tf.Tensor2D): tf.Tensor2D {
  return tf.mul(tf.add(tf.matMul(pair.B, gA), tf.matMul(gB, pair.A)), pair.s);
}

/** A pair's inverses, computed on the CPU in float64 from the current A and B. */
export function pairFor(A: tf.Tensor2D, B: tf.Tensor2D, s: number): Pair & { aa: GramInverse; bb: GramInverse } {
  const r = A.shape[0];
  const aa = gramInverse(gram(A, false), r);
  const bb = gramInverse(gram(B, true), r);
  return { A, B, s, aa, bb, invAA: toTensor(aa.inverse, r), invBB: toTensor(bb.inverse, r) };
}

/**
 * Step 4: the factor gradients whose equivalent gradient is P_B·ĝ + (I − P_B)·ĝ·P_A, with the
 * Sylvester solution X. Returns X too (for the tests).
 */
export function finalGradients(pair: Pair & { aa: GramInverse; bb: GramInverse }, gHat: tf.Tensor2D): { gA: tf.Tensor2D; gB: tf.Tensor2D; X: tf.Tensor2D } {
  const r = pair.A.shape[0];
  const inv = 1 / (pair.s * pair.s);
  const gAPrime = tf.mul(tf.matMul(pair.B, gHat, true, false), pair.s); // s·Bᵀĝ [r, in]
  const gBPrime = tf.mul(tf.matMul(gHat, pair.A, false, true), pair.s); // s·ĝ·Aᵀ [out, r]
  const scaledA = tf.mul(tf.matMul(pair.invBB, gAPrime), inv); // s⁻²(BᵀB)⁻¹G'_A
  const C = Float64Array.from(tf.neg(tf.matMul(scaledA, pair.A, false, true)).dataSync()); // −s⁻²(BᵀB)⁻¹G'_A·Aᵀ
  const X = toTensor(solveSylvester(pair.bb, pair.aa, C, r), r);
  return {
    gA: tf.add(scaledA, tf.matMul(X, pair.A)),
    gB: tf.sub(tf.mul(complementOfB(pair, tf.matMul(gBPrime, pair.invAA)), inv), tf.matMul(pair.B, X)),
    X,
  };
}

interface LoraProModule {
  path: string;
  A: tf.Variable<tf.Rank.R2>;
  B: tf.Variable<tf.Rank.R2>;
  m: tf.Variable; // [out, in]
  v: tf.Variable; // [out, in]
}

/** Steps 1–5 over every (A, B) pair; state: the full-size Adam moments of g̃. */
export class LoraProOptimizer implements Optimizer {
  private t = 0;
  private readonly modules: LoraProModule[];

  constructor(
    pairs: Array<{ path: string; A: tf.Variable<tf.Rank.R2>; B: tf.Variable<tf.Rank.R2> }>,
    private readonly s: number,
    private readonly options: AdamWOptions,
  ) {
    this.modules = pairs.map(({ path, A, B }) => {
      const shape = [B.shape[0], A.shape[1]];
      return { path, A, B, m: tf.tidy(() => tf.variable(tf.zeros(shape), false)), v: tf.tidy(() => tf.variable(tf.zeros(shape), false)) };
    });
  }

  get stepCount(): number {
    return this.t;
  }

  stateBytes(): number {
    return this.modules.reduce((n, mod) => n + 2 * 4 * mod.m.size, 0);
  }

  step(grads: Map<string, tf.Tensor>, lr: number): void {
    this.t += 1;
    const beta1 = this.options.beta1 ?? 0.9;
    const beta2 = this.options.beta2 ?? 0.999;
    const eps = this.options.epsilon ?? 1e-8;
    const decay = this.options.weightDecay ?? 0;
    const bias1 = 1 - beta1 ** this.t;
    const bias2 = 1 - beta2 ** this.t;
    for (const mod of this.modules) {
      const nameA = `${mod.path}.lora_A.weight`;
      const nameB = `${mod.path}.lora_B.weight`;
      const rawA = grads.get(nameA) as tf.Tensor2D | undefined;
      const rawB = grads.get(nameB) as tf.Tensor2D | undefined;
      if (!rawA || !rawB) continue;
      tf.tidy(() => {
        const pair = pairFor(mod.A, mod.B, this.s);
        const adjusted = adjustedGradients(pair, rawA, rawB);
        const equivalent = equivalentGradient(pair, adjusted.gA, adjusted.gB);
        const m1 = tf.add(tf.mul(mod.m, beta1), tf.mul(equivalent, 1 - beta1));
        const v1 = tf.add(tf.mul(mod.v, beta2), tf.mul(tf.square(equivalent), 1 - beta2));
        mod.m.assign(m1);
        mod.v.assign(v1);
        const gHat = tf.div(tf.div(m1, bias1), tf.add(tf.div(tf.sqrt(v1), Math.sqrt(bias2)), eps)) as tf.Tensor2D;
        const final = finalGradients(pair, gHat);
        const rateA = lr * (this.options.lrScale?.(nameA) ?? 1);
        const rateB = lr * (this.options.lrScale?.(nameB) ?? 1);
        const withDecay = (g: tf.Tensor, p: tf.Tensor, name: string) => (decay > 0 && !this.options.noDecay?.(name) ? tf.add(g, tf.mul(p, decay)) : g);
        const nextA = tf.sub(mod.A, tf.mul(withDecay(final.gA, mod.A, nameA), rateA));
        const nextB = tf.sub(mod.B, tf.mul(withDecay(final.gB, mod.B, nameB), rateB));
        mod.A.assign(nextA as tf.Tensor2D);
        mod.B.assign(nextB as tf.Tensor2D);
      });
    }
  }

  getWeights(): OptimizerState {
    const tensors = new Map<string, tf.Tensor>();
    for (const mod of this.modules) {
      tensors.set(`${mod.path}.lorapro_exp_avg`, mod.m);
      tensors.set(`${mod.path}.lorapro_exp_avg_sq`, mod.v);
    }
    return { step: this.t, tensors };
  }

  setWeights(state: OptimizerState): void {
    this.t = state.step;
    for (const mod of this.modules) {
      const m = state.tensors.get(`${mod.path}.lorapro_exp_avg`);
      const v = state.tensors.get(`${mod.path}.lorapro_exp_avg_sq`);
      if (m) mod.m.assign(m);
      if (v) mod.v.assign(v);
    }
  }

  dispose(): void {
    for (const mod of this.modules) {
      mod.m.dispose();
      mod.v.dispose();
    }
  }
}

// minimal_lora_llama2_math_transformers.py / scripts/llama-2-7b_transformers.sh: r = 8, α = 16, dropout 0.
const schema = loraSchema({ alpha: 16, dropout: 0 });

/** The plain LoRA the method trains; its attach does the forward, merge and export. */
const plain = defineLoraMethod({
  id: 'lorapro',
  variantOf: 'lora',
  family: 'adapter',
  paper: { title: 'LoRA-Pro: Are Low-Rank Adapters Properly Optimized?', year: 2024, url: 'https://arxiv.org/abs/2407.18242' },
  summary: 'LoRA whose A, B gradients are adjusted in closed form so the update they make best approximates full fine-tuning’s gradient step (Adam on that equivalent gradient).',
  paperLearningRate: { value: 2e-5, source: 'mrflogs/LoRA-Pro scripts/llama-2-7b_transformers.sh (lr 2e-5, cosine, warmup 3 %, SGD after the adjustment; ALGORITHMS.md LoRA-Pro (d))' },
  schema,
  variant: plainLora,
});

export const lorapro: Method = {
  ...plain,
  attach(model, given, ctx) {
    const params = resolveParams('lorapro', schema, given);
    const attached = plain.attach(model, params, ctx);
    // The scaling the forward uses (the official "rslora-pro" keeps 16/8; here s follows the setting).
    const s = (params.alpha as number) / (params.use_rslora ? Math.sqrt(params.rank as number) : (params.rank as number));
    const pairs = ctx.targets.map((path) => ({
      path,
      A: attached.trainable.get(`${path}.lora_A.weight`) as tf.Variable<tf.Rank.R2>,
      B: attached.trainable.get(`${path}.lora_B.weight`) as tf.Variable<tf.Rank.R2>,
    }));
    const fullMoments = pairs.reduce((n, p) => n + 2 * 4 * p.B.shape[0] * p.A.shape[1], 0);
    return {
      ...attached,
      method: lorapro,
      params,
      createOptimizer: (options) => new LoraProOptimizer(pairs, s, options),
      optimizerStateBytes: () => fullMoments,
    };
  },
};

registerMethod(lorapro);
