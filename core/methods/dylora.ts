/**
 * DyLoRA (Valipour et al., arXiv:2210.07558) as the official code trains it (huawei-noah/
 * Efficient-NLP/DyLoRA: loralib/DyLoRA.py `dynamic.forward` and `set_rank(b, frozen=True)`,
 * run_glue.py `callback_step`; ALGORITHMS.md §5):
 *   LoRA factors A [r, in] ~ kaiming-uniform(a=√5), B [out, r] = 0. Before every optimizer step one
 *   index b ~ U{0..r−1}, the same for all layers, selects the truncated adapter
 *     h = W₀x + (α/(b+1))·B[:, :b+1]·A[:b+1]·dropout(x)                 (scaling α/(active rank))
 *   in which components < b are detached ("frozen" mode): only row b of A and column b of B get
 *   gradients. AdamW's momentum and weight decay still move the other rows, as in the official run.
 * Outside training (evaluation, merge, export) the adapter runs at a chosen rank ρ ≤ r (`export_rank`,
 * or `useRank` to switch without retraining):
 *     h = W₀x + (α/ρ)·B[:, :ρ]·A[:ρ]·x
 * which is exactly a PEFT LoRA with r = ρ and lora_alpha = α. One training gives an adapter at
 * every rank ρ ≤ r. Not kohya's sd-scripts DyLoRA, which keeps all r components in the forward.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import type { AttachedMethod, Method, TrainingStep } from './method.ts';
import { InitialValues, PEFT_KEY_PREFIX } from './initial-values.ts';
import { linearTargets, type LinearTarget } from './factored-adapter.ts';
import { assignValues, fromOutIn, peftLoraConfig, sortedKeys, toOutIn, variableFrom } from './lora.ts';
import { dropoutField, resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

/** An attached DyLoRA: the rank it runs at outside training can be changed after training. */
export interface DyLoraAttached extends AttachedMethod {
  /** Rank ρ (1 ≤ ρ ≤ r) for evaluation, merged weights and the PEFT export. */
  useRank(rank: number): void;
  readonly evalRank: number;
  /** The active rank b + 1 the current training step trains (sampled in beforeStep). */
  readonly trainingRank: number;
}

interface DyLoraLayer {
  readonly target: LinearTarget;
  readonly A: tf.Variable<tf.Rank.R2>; // [r, in]
  readonly B: tf.Variable<tf.Rank.R2>; // [out, r]
}

/** x with zero gradient (torch's `.detach()`); the tape records nothing inside the custom gradient. */
const detached = tf.customGrad(((x: tf.Tensor) => ({ value: tf.clone(x), gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy) })) as unknown as Parameters<
  typeof tf.customGrad
>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;

/** The first `rank` components: A[:rank] [rank, in], B[:, :rank] [out, rank]. */
function truncated(layer: DyLoraLayer, rank: number): { A: tf.Tensor2D; B: tf.Tensor2D } {
  const [r, n] = layer.A.shape;
  const m = layer.B.shape[0];
  if (rank === r) return { A: layer.A, B: layer.B };
  return { A: tf.slice(layer.A, [0, 0], [rank, n]), B: tf.slice(layer.B, [0, 0], [m, rank]) };
}

/** Training at index b: components < b detached, component b live (set_rank(b, frozen=True)). */
function trainingFactors(layer: DyLoraLayer, b: number): { A: tf.Tensor2D; B: tf.Tensor2D } {
  const [, n] = layer.A.shape;
  const m = layer.B.shape[0];
  const rowA = tf.slice(layer.A, [b, 0], [1, n]); // [1, in]
  const colB = tf.slice(layer.B, [0, b], [m, 1]); // [out, 1]
  if (b === 0) return { A: rowA, B: colB };
  const head = truncated(layer, b);
  return {
    A: tf.concat([detached(head.A) as tf.Tensor2D, rowA], 0),
    B: tf.concat([detached(head.B) as tf.Tensor2D, colB], 1),
  };
}

export const dylora: Method = {
  id: 'dylora',
  variantOf: 'lora',
  family: 'adapter',
  paper: {
    title: 'DyLoRA: Parameter-Efficient Tuning of Pre-trained Models using Dynamic Search-Free Low-Rank Adaptation',
    year: 2023,
    url: 'https://arxiv.org/abs/2210.07558',
  },
  paperLearningRate: { value: 4e-4, source: 'huawei-noah/Efficient-NLP DyLoRA examples/NLU roberta_base_mrpc.sh (ALGORITHMS.md DyLoRA (d))' },
  summary: 'LoRA trained at a randomly sampled rank each step, so one training gives a working adapter at every rank up to r.',
  parameterPrefix: 'lora_',
  // The official GLUE script: r = 8, α = 16; loralib's lora_dropout default 0.
  schema: [
    { name: 'rank', type: 'integer', default: 8, min: 1, max: 4096, description: 'r, the largest rank; each step trains the truncated adapter of a rank drawn uniformly from 1..r' },
    { name: 'alpha', type: 'number', default: 16, min: 0, description: 'α; an adapter truncated to rank ρ is scaled by α/ρ' },
    dropoutField(),
    {
      name: 'export_rank',
      type: 'integer',
      default: 0,
      min: 0,
      max: 4096,
      description: 'rank ρ ≤ r used for evaluation, merging and the PEFT export (B[:, :ρ], A[:ρ], scaling α/ρ), 0 for r; any ρ works after one training',
    },
  ],
  exportParams: ['export_rank'],
  mergeable: true,
  exportFormats: ['peft', 'merged'],

  attach(model, given, ctx): DyLoraAttached {
    const params = resolveParams('dylora', dylora.schema, given);
    const r = params.rank as number;
    const alpha = params.alpha as number;
    const rate = params.dropout as number;
    let evalRank = (params.export_rank as number) || r;
    if (evalRank > r) throw new LowrankError('BAD_ARGUMENT', `method dylora: export_rank ${evalRank} exceeds rank ${r}; choose export_rank ≤ rank`);
    const targets = linearTargets(model, 'dylora', ctx.targets);
    const initial = InitialValues.from(ctx.initial);
    const initRandom = new Random(ctx.seed);
    // One generator for the per-step rank and the dropout masks: its state is the method's random
    // state in checkpoints, so a resumed run draws the same ranks and masks.
    const trainingRandom = new Random((ctx.seed ^ 0x5bd1e995) >>> 0);
    let index = r - 1; // b, until the first step samples one
    const layers: DyLoraLayer[] = [];
    const trainable = new Map<string, tf.Variable>();

    const detach = () => {
      for (const layer of layers) {
        model.adapters.delete(layer.target.path);
        layer.A.dispose();
        layer.B.dispose();
      }
      layers.length = 0;
      trainable.clear();
    };

    try {
      for (const target of targets) {
        const { path, inFeatures: n, outFeatures: m } = target;
        const bound = 1 / Math.sqrt(n); // kaiming_uniform_(a=√5) on [r, in], as loralib
        const a = Float32Array.from({ length: r * n }, () => (2 * initRandom.next() - 1) * bound);
        const layer: DyLoraLayer = { target, A: variableFrom(tf.tensor2d(a, [r, n])), B: variableFrom(tf.zeros([m, r])) };
        layers.push(layer);
        if (initial) {
          assignValues(layer.A, initial.take(`${path}.lora_A.weight`, [r, n]));
          assignValues(layer.B, initial.take(`${path}.lora_B.weight`, [m, r]));
        }
        trainable.set(`${path}.lora_A.weight`, layer.A);
        trainable.set(`${path}.lora_B.weight`, layer.B);
        const dropout = (x: tf.Tensor2D) => tf.dropout(x, rate, undefined, trainingRandom.int(2 ** 31)) as tf.Tensor2D;
        model.adapters.set(path, {
          apply(x, base, _weight, training) {
            const rank = training ? index + 1 : evalRank;
            const { A, B } = training ? trainingFactors(layer, index) : truncated(layer, rank);
            const input = training && rate > 0 ? dropout(x) : x;
            const update = tf.matMul(tf.matMul(input, A, false, true), B, false, true); // [N, out]
            return tf.add(base(x), tf.mul(update, alpha / rank));
          },
        });
      }
      initial?.assertAllUsed();
    } catch (e) {
      detach();
      throw e;
    }

    return {
      method: dylora,
      params,
      trainable,
      lrScale: () => 1,
      getRandomState: () => trainingRandom.getState(),
      setRandomState: (state) => trainingRandom.setState(state),
      trainableParameterCount: () => [...trainable.values()].reduce((n, v) => n + v.size, 0),
      beforeStep(_step: TrainingStep) {
        index = trainingRandom.int(r); // torch.randint(0, r): one b for every layer
      },
      get trainingRank() {
        return index + 1;
      },
      get evalRank() {
        return evalRank;
      },
      useRank(rank) {
        if (!Number.isInteger(rank) || rank < 1 || rank > r) throw new LowrankError('BAD_ARGUMENT', `method dylora: rank must be an integer in [1, ${r}], got ${rank}`);
        evalRank = rank;
      },
      mergedWeights() {
        const merged = new Map<string, tf.Tensor>();
        for (const layer of layers) {
          const name = `${layer.target.path}.weight`;
          merged.set(
            name,
            tf.tidy(() => {
              const stored = model.weight(name) as tf.Tensor2D;
              const { A, B } = truncated(layer, evalRank);
              return fromOutIn(layer.target, tf.add(toOutIn(layer.target, stored), tf.mul(tf.matMul(B, A), alpha / evalRank)));
            }),
          );
        }
        return merged;
      },
      peftAdapter() {
        const tensors = new Map<string, tf.Tensor>();
        for (const layer of layers) {
          const { A, B } = tf.tidy(() => {
            const t = truncated(layer, evalRank);
            return { A: tf.clone(t.A), B: tf.clone(t.B) };
          });
          tensors.set(`${PEFT_KEY_PREFIX}${layer.target.path}.lora_A.weight`, A);
          tensors.set(`${PEFT_KEY_PREFIX}${layer.target.path}.lora_B.weight`, B);
        }
        const config = peftLoraConfig(model, layers.map((l) => l.target), { r: evalRank, alpha, dropout: rate, useRslora: false });
        return { config: sortedKeys(config), tensors };
      },
      detach,
    };
  },
};

registerMethod(dylora);
