/**
 * NOLA: Compressing LoRA using Linear Combination of Random Basis (Koohpayegani et al.,
 * arXiv:2310.02556), LLM variant (UCDvision/NOLA llama/peft/tuners/lora.py, gpt/src/model_nola.py):
 *   A = A₀ + Σᵢ αᵢ·Aᵢ [r, in],  B = Σⱼ βⱼ·Bⱼ [out, r]  (B₀ = 0),  h = W₀x + s·B·A·dropout(x), s = α/r
 * A₀ ~ kaiming-uniform(a=√5) = U(±1/√in) is frozen (NOLALinear's lora_A.weight); the k bases Aᵢ,
 * Bⱼ ~ U(−1, 1)/√k are frozen and drawn from one seed per module, A₀ first, then the A bases, then
 * the B bases. Only α, β ∈ Rᵏ train, both from 0: ΔW = 0 at step 0, yet ∂L/∂β ≠ 0 because A₀ ≠ 0.
 * Trainable count: 2k per module, whatever r.
 *
 * Per-module seeds are drawn from the run's seed below 2²⁴, so a float32 holds them exactly: the
 * compact adapter (`nolaCompactAdapter`, core/export/nola-adapter.ts) is the seeds plus α and β,
 * and attaching it (AttachContext.initial) regenerates the same bases bit for bit. The PEFT export
 * is the exact plain LoRA lora_B = s·B, lora_A = A (peft's own NOLA merge ignores the generated
 * part, ALGORITHMS.md; a LoRA is what other tools load).
 */
import * as tf from '../tf.ts';
import { Random } from '../random.ts';
import type { AttachedMethod, Method, MethodParams } from './method.ts';
import { InitialValues } from './initial-values.ts';
import { attachFactored, linearTargets } from './factored-adapter.ts';
import { dropoutField, resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';
import { variableFrom } from './lora.ts';

const SEED_LIMIT = 2 ** 24;

/** The frozen tensors of one module from its seed: A₀ [r, in], bases of A [k, r·in] and of B [k, out·r]. */
export function nolaBases(seed: number, k: number, r: number, inFeatures: number, outFeatures: number): { a0: Float32Array; basisA: Float32Array; basisB: Float32Array } {
  const random = new Random(seed);
  const uniform = (n: number, bound: number) => Float32Array.from({ length: n }, () => (2 * random.next() - 1) * bound);
  const a0 = uniform(r * inFeatures, 1 / Math.sqrt(inFeatures));
  const basisA = uniform(k * r * inFeatures, 1 / Math.sqrt(k));
  const basisB = uniform(k * outFeatures * r, 1 / Math.sqrt(k));
  return { a0, basisA, basisB };
}

/** The seed of each attached module, for the compact adapter. */
const seedsOf = new WeakMap<AttachedMethod, Map<string, number>>();

export const nola: Method = {
  id: 'nola',
  family: 'adapter',
  paper: { title: 'NOLA: Compressing LoRA using Linear Combination of Random Basis', year: 2024, url: 'https://arxiv.org/abs/2310.02556' },
  paperLearningRate: { value: 1e-3, source: 'UCDvision/NOLA llama/scripts (LLaMA-2 7B/13B, k = 512, r = 16; ALGORITHMS.md NOLA (d))' },
  summary: 'LoRA whose A and B are mixtures of k seeded random bases; only the 2k mixing coefficients per layer train.',
  parameterPrefix: 'nola_',
  // The LLaMA-2 runs (llama/scripts/*nola.sh): k = 512, r = 16, α = 4.
  schema: [
    { name: 'rank', type: 'integer', default: 16, min: 1, max: 4096, description: 'r of the generated A [r, in] and B [out, r]; does not change the trainable count' },
    { name: 'alpha', type: 'number', default: 4, min: 0, description: 'α; the update is scaled by α/r' },
    { name: 'num_basis', type: 'integer', default: 512, min: 1, max: 65536, description: 'k, random bases per factor; each module trains 2k coefficients' },
    dropoutField(),
  ],
  mergeable: true,
  exportFormats: ['peft', 'merged'],

  countTrainable(model, given, paths) {
    const k = resolveParams('nola', nola.schema, given).num_basis as number;
    return linearTargets(model, 'nola', paths).length * 2 * k;
  },

  attach(model, given, ctx) {
    const params = resolveParams('nola', nola.schema, given);
    const r = params.rank as number;
    const k = params.num_basis as number;
    const s = (params.alpha as number) / r;
    const targets = linearTargets(model, 'nola', ctx.targets);
    const initial = InitialValues.from(ctx.initial);
    const seedRandom = new Random((ctx.seed ^ 0x4e4f4c41) >>> 0);
    const seeds = new Map<string, number>();
    const attached = attachFactored({
      method: nola,
      model,
      params,
      ctx,
      targets,
      initial,
      dropout: params.dropout as number,
      layer(target) {
        const { path, inFeatures: n, outFeatures: m } = target;
        const drawn = seedRandom.int(SEED_LIMIT); // drawn either way, so later modules keep their seeds
        const seed = initial ? initial.take(`${path}.nola_seed`, [1])[0] : drawn;
        const savedAlpha = initial?.take(`${path}.nola_alpha`, [k]);
        const savedBeta = initial?.take(`${path}.nola_beta`, [k]);
        seeds.set(path, seed);
        const { a0, basisA, basisB } = nolaBases(seed, k, r, n, m);
        const A0 = tf.tensor2d(a0, [r, n]);
        const basesA = tf.tensor2d(basisA, [k, r * n]);
        const basesB = tf.tensor2d(basisB, [k, m * r]);
        const alpha = variableFrom(savedAlpha ? tf.tensor1d(savedAlpha) : tf.zeros([k]));
        const beta = variableFrom(savedBeta ? tf.tensor1d(savedBeta) : tf.zeros([k]));
        // A = A₀ + Σ αᵢAᵢ and B = Σ βⱼBⱼ as one [1, k]·[k, rows·cols] product each.
        const factorA = () => tf.add(A0, tf.reshape(tf.matMul(tf.reshape(alpha, [1, k]), basesA), [r, n])) as tf.Tensor2D;
        const factorB = () => tf.reshape(tf.matMul(tf.reshape(beta, [1, k]), basesB), [m, r]) as tf.Tensor2D;
        return {
          target,
          trainable: [
            ['nola_alpha', alpha],
            ['nola_beta', beta],
          ],
          frozen: [A0, basesA, basesB],
          update: (x) => tf.mul(tf.matMul(tf.matMul(x, factorA(), false, true), factorB(), false, true), s),
          factors: () => ({ B: tf.mul(factorB(), s) as tf.Tensor2D, A: factorA() }),
        };
      },
    });
    const result: AttachedMethod = {
      ...attached,
      detach() {
        seedsOf.delete(result);
        attached.detach();
      },
    };
    seedsOf.set(result, seeds);
    return result;
  },
};

/**
 * NOLA's own adapter: the method's parameters, the wrapped modules, and per module its seed and
 * coefficients, keyed as AttachContext.initial takes them (`<path>.nola_seed` [1],
 * `<path>.nola_alpha` [k], `<path>.nola_beta` [k]). A few kilobytes for any model size.
 */
export function nolaCompactAdapter(attached: AttachedMethod): { params: MethodParams; targets: string[]; tensors: Map<string, Float32Array> } {
  const seeds = seedsOf.get(attached);
  if (!seeds) throw new Error('nolaCompactAdapter: not an attached nola method (or already detached)');
  const tensors = new Map<string, Float32Array>();
  for (const [path, seed] of seeds) {
    tensors.set(`${path}.nola_seed`, Float32Array.of(seed));
    tensors.set(`${path}.nola_alpha`, (attached.trainable.get(`${path}.nola_alpha`)!.dataSync() as Float32Array).slice());
    tensors.set(`${path}.nola_beta`, (attached.trainable.get(`${path}.nola_beta`)!.dataSync() as Float32Array).slice());
  }
  return { params: { ...attached.params }, targets: [...seeds.keys()], tensors };
}

registerMethod(nola);
