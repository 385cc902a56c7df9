/**
 * The fused causal-LM cross-entropy against the textbook formula (log-softmax + one-hot, via tfjs'
 * generic ops and autodiff): loss and gradient, with ignored (-100) labels and padding.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { causalLmLoss } from './causal-lm.ts';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

function textbookLoss(logits: tf.Tensor3D, labels: number[][]): tf.Scalar {
  const [B, T, V] = logits.shape;
  const logProbs = tf.logSoftmax(logits.reshape([B * T, V]));
  let total: tf.Scalar = tf.scalar(0);
  let count = 0;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t + 1 < T; t++) {
      const target = labels[b][t + 1];
      if (target === -100) continue;
      total = tf.sub(total, logProbs.slice([b * T + t, target], [1, 1]).reshape([])) as tf.Scalar;
      count++;
    }
  }
  return tf.div(total, count) as tf.Scalar;
}

describe('causalLmLoss', () => {
  it('equals mean -log softmax at the shifted labels, in value and gradient', () => {
    const [B, T, V] = [2, 5, 7];
    const logits = tf.randomNormal([B, T, V], 0, 2, 'float32', 3) as tf.Tensor3D;
    const labels = [
      [1, 4, 6, 0, 2],
      [3, 5, -100, 2, -100],
    ];
    const ours = (z: tf.Tensor) => causalLmLoss(z as tf.Tensor3D, tf.tensor2d(labels, [B, T], 'int32')).loss;
    const reference = (z: tf.Tensor) => textbookLoss(z as tf.Tensor3D, labels);
    expect(ours(logits).dataSync()[0]).toBeCloseTo(reference(logits).dataSync()[0], 5);
    const g1 = tf.grad(ours)(logits).dataSync();
    const g2 = tf.grad(reference)(logits).dataSync();
    for (let i = 0; i < g1.length; i++) expect(g1[i]).toBeCloseTo(g2[i], 6);
    expect(causalLmLoss(logits, tf.tensor2d(labels, [B, T], 'int32')).tokens.dataSync()[0]).toBe(4 + 2);
  });
});
