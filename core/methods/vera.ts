/**
 * VeRA: Vector-based Random Matrix Adaptation (Kopiczko et al., arXiv:2310.11454), as peft
 * implements it (tuners/vera: model.py `_init_vera_A_vera_B`, layer.py `Linear.forward`):
 *   one frozen random pair shared by every wrapped module, sized by the largest in/out dimension,
 *     A [r, in_max] ~ U(±√(6/in_max)),  B [out_max, r] ~ U(±√(6/r))     (kaiming-uniform, gain √2)
 *   drawn from a generator seeded with projection_prng_key, A first; each module slices
 *   A_s = A[:, :in], B_s = B[:out, :] and trains two vectors, λ_d [r] (= d_initial) and λ_b [out] (= 0):
 *   h = W₀x + λ_b ⊙ B_s·(λ_d ⊙ A_s·dropout(x))                                          (Eq. 1)
 * So ΔW = 0 at step 0 and the trainable count is Σ (r + out) over the wrapped modules.
 *
 * Export: peft's VERA adapter (peft_type "VERA"; `<path>.vera_lambda_b`, `<path>.vera_lambda_d`,
 * and the projections as `base_model.vera_A` / `base_model.vera_B`, save_projection = true, as
 * utils/save_and_load.py writes them). The projections are always saved: our generator is not
 * torch's, so peft could not regenerate them from the key. Merged: W₀ + diag(λ_b)·B_s·diag(λ_d)·A_s.
 */
import * as tf from '../tf.ts';
import { Random } from '../random.ts';
import type { Method } from './method.ts';
import { InitialValues } from './initial-values.ts';
import { attachFactored, linearTargets, sharedProjectionPeftAdapter, type FactoredLayer } from './factored-adapter.ts';
import { dropoutField, projectionKeyField, resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';
import { variableFrom } from './lora.ts';

export const VERA_A_KEY = 'base_model.vera_A';
export const VERA_B_KEY = 'base_model.vera_B';

/**
 * The shared projections from the key, row-major: A [r, inMax] first, then B [outMax, r], each
 * kaiming-uniform with gain √2 over fan_in = size(1) (peft's `_kaiming_init`). Same key, same bits.
 */
export function veraProjections(key: number, r: number, inMax: number, outMax: number): { a: Float32Array; b: Float32Array } {
  const random = new Random(key);
  const uniform = (n: number, bound: number) => Float32Array.from({ length: n }, () => (2 * random.next() - 1) * bound);
  const a = uniform(r * inMax, Math.sqrt(6 / inMax));
  const b = uniform(outMax * r, Math.sqrt(6 / r));
  return { a, b };
}

export const vera: Method = {
  id: 'vera',
  family: 'adapter',
  paper: { title: 'VeRA: Vector-based Random Matrix Adaptation', year: 2024, url: 'https://arxiv.org/abs/2310.11454' },
  paperLearningRate: { value: 4e-3, source: 'VeRA paper appendix, instruction tuning of Llama 2 on cleaned Alpaca (no official code was released; its GLUE/E2E rates are higher still)' },
  summary: 'One pair of frozen random matrices shared by all layers; each layer trains only two scaling vectors.',
  parameterPrefix: 'vera_lambda_',
  // peft VeraConfig defaults (r 256, d_initial 0.1, dropout 0, projection_prng_key 0).
  schema: [
    {
      name: 'rank',
      type: 'integer',
      default: 256,
      min: 1,
      max: 8192,
      description: 'r, the rows of the shared random A (and columns of B); VeRA uses far larger r than LoRA, as only r + out numbers per layer train',
    },
    { name: 'd_initial', type: 'number', default: 0.1, min: 0, description: 'starting value of every λ_d entry (the paper recommends ≤ 0.1, Table 6c)' },
    dropoutField(),
    projectionKeyField('projections (A and B)'),
  ],
  mergeable: true,
  exportFormats: ['peft', 'merged'],

  attach(model, given, ctx) {
    const params = resolveParams('vera', vera.schema, given);
    const r = params.rank as number;
    const key = params.projection_prng_key as number;
    const dInitial = params.d_initial as number;
    const targets = linearTargets(model, 'vera', ctx.targets);
    const initial = InitialValues.from(ctx.initial);
    const inMax = Math.max(...targets.map((t) => t.inFeatures));
    const outMax = Math.max(...targets.map((t) => t.outFeatures));
    // A saved adapter carries its projections (save_projection): use them, as peft does.
    const saved = initial?.peek(VERA_A_KEY)
      ? { a: initial.take(VERA_A_KEY, [r, inMax]), b: initial.take(VERA_B_KEY, [outMax, r]) }
      : veraProjections(key, r, inMax, outMax);
    const A = tf.tensor2d(saved.a, [r, inMax]);
    const B = tf.tensor2d(saved.b, [outMax, r]);

    const layer = (target: (typeof targets)[number]): FactoredLayer => {
      const { path, inFeatures, outFeatures } = target;
      // Read both saved vectors before allocating, so a bad file leaves nothing behind.
      const savedD = initial?.take(`${path}.vera_lambda_d`, [r]);
      const savedB = initial?.take(`${path}.vera_lambda_b`, [outFeatures]);
      const lambdaD = variableFrom(savedD ? tf.tensor1d(savedD) : tf.fill([r], dInitial));
      const lambdaB = variableFrom(savedB ? tf.tensor1d(savedB) : tf.zeros([outFeatures]));
      const sliceA = () => (inFeatures === inMax ? A : tf.slice(A, [0, 0], [r, inFeatures])); // A_s [r, in]
      const sliceB = () => (outFeatures === outMax ? B : tf.slice(B, [0, 0], [outFeatures, r])); // B_s [out, r]
      return {
        target,
        trainable: [
          ['vera_lambda_d', lambdaD],
          ['vera_lambda_b', lambdaB],
        ],
        frozen: [],
        update(x) {
          const projected = tf.mul(tf.matMul(x, sliceA(), false, true), lambdaD); // λ_d ⊙ A_s·x   [N, r]
          return tf.mul(tf.matMul(projected, sliceB(), false, true), lambdaB); // λ_b ⊙ B_s·(…)   [N, out]
        },
        factors: () => ({
          B: tf.mul(sliceB(), tf.reshape(lambdaB, [outFeatures, 1])) as tf.Tensor2D, // diag(λ_b)·B_s
          A: tf.mul(sliceA(), tf.reshape(lambdaD, [r, 1])) as tf.Tensor2D, // diag(λ_d)·A_s
        }),
      };
    };

    return attachFactored({
      method: vera,
      model,
      params,
      ctx,
      targets,
      initial,
      dropout: params.dropout as number,
      shared: [A, B],
      layer,
      peftAdapter: (layers) => sharedProjectionPeftAdapter(model, layers, [[VERA_A_KEY, A], [VERA_B_KEY, B]], {
        // VeraConfig's own fields.
        d_initial: dInitial,
        peft_type: 'VERA',
        projection_prng_key: key,
        r,
        vera_dropout: params.dropout,
      }),
    });
  },
};

registerMethod(vera);
