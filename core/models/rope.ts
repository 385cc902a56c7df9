/**
 * Rotary position embeddings (RoFormer, arXiv:2104.09864) in the `rotate_half` layout that
 * transformers' Llama/Mistral/Qwen2 use: the head dimension is split in two halves, not interleaved.
 * Inverse frequencies follow transformers' modeling_rope_utils.py (default, linear, llama3). The
 * rotation itself, `applyRope`, is in fused-ops.ts (one fused kernel where the backend has it).
 */
import * as tf from '../tf.ts';
import type { ModelConfig } from './config.ts';

/** inv_freq[i] = 1 / theta^(2i/d), then the rope_scaling rule. Float64 for exactness. */
export function inverseFrequencies(c: ModelConfig): Float64Array {
  const half = c.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(c.ropeTheta, (2 * i) / c.headDim);
  const s = c.ropeScaling;
  if (s === null) return inv;
  if (s.type === 'linear') {
    // Linear scaling divides positions by the factor, i.e. the frequencies.
    for (let i = 0; i < half; i++) inv[i] /= s.factor;
    return inv;
  }
  // llama3: long wavelengths are divided by the factor, short ones kept, the band between smoothed.
  const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const wavelen = (2 * Math.PI) / inv[i];
    if (wavelen > lowWavelen) {
      inv[i] = inv[i] / s.factor;
    } else if (wavelen >= highWavelen) {
      const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      inv[i] = (1 - smooth) * (inv[i] / s.factor) + smooth * inv[i];
    }
  }
  return inv;
}

/** cos and sin tables for positions [offset, offset+T): each [T, headDim] = cat(freqs, freqs). */
export function ropeTables(c: ModelConfig, offset: number, T: number): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
  const inv = inverseFrequencies(c);
  const half = inv.length;
  const D = c.headDim;
  const cos = new Float32Array(T * D);
  const sin = new Float32Array(T * D);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const angle = (offset + t) * inv[i];
      const cv = Math.cos(angle);
      const sv = Math.sin(angle);
      cos[t * D + i] = cos[t * D + half + i] = cv;
      sin[t * D + i] = sin[t * D + half + i] = sv;
    }
  }
  return { cos: tf.tensor2d(cos, [T, D]), sin: tf.tensor2d(sin, [T, D]) };
}
