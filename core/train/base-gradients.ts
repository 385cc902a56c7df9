/**
 * Gradients of the causal-LM loss with respect to frozen base weights, summed over a few batches:
 * the estimate of a first full-fine-tuning step that LoRA-SB initialises from (Ponkshe et al.,
 * arXiv:2411.19557; lora-sb utils/gradient_utils.py `estimate_and_process_grads_torch_3`):
 *   G = Σ_b ∇_W (loss_b / n_b),  loss_b the mean token loss of batch b, n_b its example count.
 * The base weights are plain tensors, not variables; tf.grads differentiates with respect to them
 * directly, so nothing in the model changes.
 */
import * as tf from '../tf.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import type { Batch } from './trainer.ts';
import { lmLoss } from './pretrain.ts';

/** The first `rows` examples of a batch. */
export function firstRows(batch: Batch, rows: number): Batch {
  if (rows >= batch.batchSize) return batch;
  const n = rows * batch.seqLen;
  return {
    ids: batch.ids.slice(0, n),
    labels: batch.labels.slice(0, n),
    attentionMask: batch.attentionMask?.slice(0, n),
    batchSize: rows,
    seqLen: batch.seqLen,
  };
}

/** Batches truncated to hold exactly the first `samples` examples (fewer if they run out). */
export function firstSamples(batches: Batch[], samples: number): Batch[] {
  const out: Batch[] = [];
  let left = samples;
  for (const batch of batches) {
    if (left <= 0) break;
    out.push(firstRows(batch, left));
    left -= Math.min(left, batch.batchSize);
  }
  return out;
}

/** G per weight name, in the stored layout; the model's weights and adapters are left as they are. */
export function accumulateBaseGradients(model: CausalLM, weightNames: string[], batches: Batch[]): Map<string, Float32Array> {
  // A base held in native memory has no tensor to differentiate: materialise those weights while the gradients are taken.
  const materialised = weightNames.filter((name) => model.isFrozen(name));
  for (const name of materialised) model.weights.set(name, model.weight(name));
  try {
    return baseGradients(model, weightNames, batches);
  } finally {
    for (const name of materialised) {
      model.weights.get(name)?.dispose();
      model.weights.delete(name);
    }
  }
}

function baseGradients(model: CausalLM, weightNames: string[], batches: Batch[]): Map<string, Float32Array> {
  const weights = weightNames.map((name) => model.weight(name));
  let sums: tf.Tensor[] | null = null;
  for (const batch of batches) {
    const grads = tf.tidy(() => tf.grads((..._ws: tf.Tensor[]) => tf.div(lmLoss(model, batch).loss, batch.batchSize))(weights));
    if (!sums) {
      sums = grads;
      continue;
    }
    const next: tf.Tensor[] = sums.map((s, i) => tf.add(s, grads[i]));
    for (const t of [...sums, ...grads]) t.dispose();
    sums = next;
  }
  const result = new Map<string, Float32Array>();
  weightNames.forEach((name, i) => {
    const size = weights[i].size;
    result.set(name, sums ? (sums[i].dataSync() as Float32Array).slice() : new Float32Array(size));
  });
  for (const t of sums ?? []) t.dispose();
  return result;
}
