// Float64 building blocks of the reference causal LMs (reference-lm.ts).
//
// Plain loops over Float64Array, no tfjs: this file must stay independent of the code it checks.
// Every formula names the transformers source it follows (huggingface/transformers, src/transformers/...).
// Activations are row-major matrices: a sequence of T vectors of width C is a Float64Array of T*C.

/** nn.Linear: y = x W^T + b, W stored [out, in] as torch saves it.  x: [T, in] -> [T, out] */
export function linear(
  x: Float64Array,
  rows: number,
  weight: Float64Array,
  outFeatures: number,
  inFeatures: number,
  bias?: Float64Array,
): Float64Array {
  if (x.length !== rows * inFeatures) throw new Error(`linear: input has ${x.length} values, expected ${rows}x${inFeatures}`);
  if (weight.length !== outFeatures * inFeatures) throw new Error(`linear: weight has ${weight.length} values, expected [${outFeatures}, ${inFeatures}]`);
  const y = new Float64Array(rows * outFeatures);
  for (let t = 0; t < rows; t++) {
    for (let o = 0; o < outFeatures; o++) {
      let s = bias ? bias[o] : 0;
      for (let i = 0; i < inFeatures; i++) s += x[t * inFeatures + i] * weight[o * inFeatures + i];
      y[t * outFeatures + o] = s;
    }
  }
  return y;
}

/**
 * GPT-2's Conv1D (pytorch_utils.py): y = x W + b with W stored [in, out], the transpose of nn.Linear.
 * x: [T, in] -> [T, out]
 */
export function conv1d(
  x: Float64Array,
  rows: number,
  weight: Float64Array,
  inFeatures: number,
  outFeatures: number,
  bias?: Float64Array,
): Float64Array {
  if (x.length !== rows * inFeatures) throw new Error(`conv1d: input has ${x.length} values, expected ${rows}x${inFeatures}`);
  if (weight.length !== outFeatures * inFeatures) throw new Error(`conv1d: weight has ${weight.length} values, expected [${inFeatures}, ${outFeatures}]`);
  const y = new Float64Array(rows * outFeatures);
  for (let t = 0; t < rows; t++) {
    for (let o = 0; o < outFeatures; o++) {
      let s = bias ? bias[o] : 0;
      for (let i = 0; i < inFeatures; i++) s += x[t * inFeatures + i] * weight[i * outFeatures + o];
      y[t * outFeatures + o] = s;
    }
  }
  return y;
}

/**
 * LlamaRMSNorm (models/llama/modeling_llama.py; Mistral and Qwen2 copy it):
 * x * rsqrt(mean(x^2) + eps) * weight — no mean subtraction, no bias.  x: [T, C] -> [T, C]
 */
export function rmsNorm(x: Float64Array, rows: number, weight: Float64Array, eps: number): Float64Array {
  const c = weight.length;
  const y = new Float64Array(x.length);
  for (let t = 0; t < rows; t++) {
    let sumSquares = 0;
    for (let i = 0; i < c; i++) sumSquares += x[t * c + i] ** 2;
    const inverseRms = 1 / Math.sqrt(sumSquares / c + eps);
    for (let i = 0; i < c; i++) y[t * c + i] = x[t * c + i] * inverseRms * weight[i];
  }
  return y;
}

/** torch.nn.LayerNorm as GPT-2 uses it: (x - mean) / sqrt(biased var + eps) * weight + bias.  x: [T, C] */
export function layerNorm(x: Float64Array, rows: number, weight: Float64Array, bias: Float64Array, eps: number): Float64Array {
  const c = weight.length;
  const y = new Float64Array(x.length);
  for (let t = 0; t < rows; t++) {
    let mean = 0;
    for (let i = 0; i < c; i++) mean += x[t * c + i];
    mean /= c;
    let variance = 0;
    for (let i = 0; i < c; i++) variance += (x[t * c + i] - mean) ** 2;
    variance /= c;
    const inverseStd = 1 / Math.sqrt(variance + eps);
    for (let i = 0; i < c; i++) y[t * c + i] = (x[t * c + i] - mean) * inverseStd * weight[i] + bias[i];
  }
  return y;
}

/** Numerically stable softmax over one row; -Infinity entries get probability 0. */
export function softmax(row: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]);
  const out = new Float64Array(row.length);
  let sum = 0;
  for (let i = 0; i < row.length; i++) {
    out[i] = row[i] === -Infinity ? 0 : Math.exp(row[i] - max);
    sum += out[i];
  }
  for (let i = 0; i < row.length; i++) out[i] /= sum;
  return out;
}

/** log(sum(exp(row))), stable. */
export function logSumExp(row: ArrayLike<number>): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]);
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  return max + Math.log(sum);
}

/**
 * erf to ~1e-15: Maclaurin series below |x| < 3, Lentz continued fraction for erfc above
 * (Abramowitz & Stegun 7.1.5 and 7.1.14). Only the exact 'gelu' activation needs it.
 */
export function erf(x: number): number {
  const z = Math.abs(x);
  let result: number;
  if (z < 3) {
    let term = z;
    let sum = z;
    for (let n = 1; n < 200 && Math.abs(term) > 1e-17 * Math.abs(sum); n++) {
      term *= (-z * z) / n;
      sum += term / (2 * n + 1);
    }
    result = (2 / Math.sqrt(Math.PI)) * sum;
  } else {
    // erfc(z) = exp(-z^2)/sqrt(pi) * 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + 2/(z + ...)))))
    const tiny = 1e-300;
    let f = z;
    let c = z;
    let d = 0;
    for (let k = 1; k < 200; k++) {
      const a = k / 2;
      d = z + a * d;
      d = d === 0 ? tiny : d;
      c = z + a / c;
      c = c === 0 ? tiny : c;
      d = 1 / d;
      const delta = c * d;
      f *= delta;
      if (Math.abs(delta - 1) < 1e-16) break;
    }
    result = 1 - Math.exp(-z * z) / Math.sqrt(Math.PI) / f;
  }
  return x < 0 ? -result : result;
}

/**
 * The activations of transformers' ACT2FN (activations.py) that these architectures name:
 * silu/swish x*sigmoid(x); gelu_new and gelu_pytorch_tanh 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)));
 * gelu (exact) 0.5x(1+erf(x/sqrt 2)); relu.
 */
export function activation(name: string): (x: number) => number {
  switch (name) {
    case 'silu':
    case 'swish':
      return (x) => x / (1 + Math.exp(-x));
    case 'gelu_new':
    case 'gelu_pytorch_tanh':
    case 'gelu_fast':
      return (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
    case 'gelu':
      return (x) => 0.5 * x * (1 + erf(x / Math.SQRT2));
    case 'relu':
      return (x) => Math.max(0, x);
    default:
      throw new Error(`reference: activation '${name}' is not implemented`);
  }
}

export interface RopeSettings {
  /** rope_theta */
  theta: number;
  /** the rotated width: head_dim */
  dim: number;
  /** rope_scaling / rope_parameters without rope_theta; null for plain RoPE */
  scaling: Record<string, unknown> | null;
  maxPositionEmbeddings: number;
}

function scalingNumber(scaling: Record<string, unknown>, key: string): number {
  const value = scaling[key];
  if (typeof value !== 'number') throw new Error(`reference: rope_scaling.${key} must be a number, got ${JSON.stringify(value)}`);
  return value;
}

/**
 * Inverse frequencies, [dim/2], from modeling_rope_utils.py:
 * - default:  inv_freq[i] = 1 / theta^(2i/dim)                        (_compute_default_rope_parameters)
 * - linear:   default / factor                                        (_compute_linear_scaling_rope_parameters)
 * - dynamic:  equals default while seq_len <= max_position_embeddings (_compute_dynamic_ntk_parameters)
 * - llama3:   wavelen = 2pi/inv_freq; wavelen < orig/high_freq_factor: kept; wavelen > orig/low_freq_factor:
 *             divided by factor; between: (1-s)*inv/factor + s*inv with s = (orig/wavelen - low)/(high - low)
 *             (_compute_llama3_parameters)
 */
export function ropeInverseFrequencies(rope: RopeSettings, sequenceLength: number): Float64Array {
  const half = rope.dim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / rope.theta ** ((2 * i) / rope.dim);
  const scaling = rope.scaling;
  if (scaling === null) return inv;
  const type = (scaling.rope_type ?? scaling.type ?? 'default') as string;
  if (type === 'default') return inv;
  if (type === 'linear') {
    const factor = scalingNumber(scaling, 'factor');
    return inv.map((f) => f / factor);
  }
  if (type === 'dynamic') {
    if (sequenceLength > rope.maxPositionEmbeddings) {
      throw new Error('reference: dynamic RoPE beyond max_position_embeddings is not implemented');
    }
    return inv;
  }
  if (type === 'llama3') {
    const factor = scalingNumber(scaling, 'factor');
    const lowFreqFactor = scalingNumber(scaling, 'low_freq_factor');
    const highFreqFactor = scalingNumber(scaling, 'high_freq_factor');
    const oldContextLength = scalingNumber(scaling, 'original_max_position_embeddings');
    const lowFreqWavelen = oldContextLength / lowFreqFactor;
    const highFreqWavelen = oldContextLength / highFreqFactor;
    return inv.map((f) => {
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highFreqWavelen) return f;
      if (wavelen > lowFreqWavelen) return f / factor;
      const smooth = (oldContextLength / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
      return ((1 - smooth) * f) / factor + smooth * f;
    });
  }
  throw new Error(`reference: rope type '${type}' is not implemented (default, linear, dynamic, llama3 are)`);
}

/**
 * apply_rotary_pos_emb with rotate_half (models/llama/modeling_llama.py), in place, for every head of one
 * position: the pair (d, d + dim/2) is rotated by angle position*inv_freq[d] — the halves layout, not the
 * interleaved (2d, 2d+1) layout of the RoPE paper. x: [heads * headDim] of one position.
 */
export function applyRope(x: Float64Array, heads: number, headDim: number, position: number, invFreq: Float64Array): void {
  const half = headDim / 2;
  if (invFreq.length !== half) throw new Error(`applyRope: ${invFreq.length} frequencies for head_dim ${headDim}`);
  for (let h = 0; h < heads; h++) {
    const base = h * headDim;
    for (let d = 0; d < half; d++) {
      const angle = position * invFreq[d];
      const cos = Math.cos(angle);
      const sin = Math.sin(angle);
      const first = x[base + d];
      const second = x[base + d + half];
      // q*cos + rotate_half(q)*sin with rotate_half(q) = cat(-q2, q1)
      x[base + d] = first * cos - second * sin;
      x[base + d + half] = second * cos + first * sin;
    }
  }
}

export interface AttentionShape {
  sequenceLength: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** multiplies q.k; head_dim^-0.5 in all four architectures */
  scale: number;
  /** position i attends to j with i - slidingWindow < j <= i (masking_utils.py sliding_window_overlay); null: all j <= i */
  slidingWindow: number | null;
}

/**
 * Causal scaled-dot-product attention with grouped-query heads (eager_attention_forward + repeat_kv in
 * models/llama/modeling_llama.py): attention head h reads key/value head floor(h / (heads / kvHeads)).
 * q: [T, heads*headDim], k, v: [T, kvHeads*headDim] -> [T, heads*headDim]
 */
export function causalAttention(q: Float64Array, k: Float64Array, v: Float64Array, shape: AttentionShape): Float64Array {
  const { sequenceLength: t, heads, kvHeads, headDim, scale, slidingWindow } = shape;
  if (heads % kvHeads !== 0) throw new Error(`attention: ${heads} heads are not a multiple of ${kvHeads} key/value heads`);
  const groups = heads / kvHeads;
  const qWidth = heads * headDim;
  const kvWidth = kvHeads * headDim;
  const out = new Float64Array(t * qWidth);
  const scores = new Float64Array(t);
  for (let h = 0; h < heads; h++) {
    const kvHead = Math.floor(h / groups);
    for (let i = 0; i < t; i++) {
      for (let j = 0; j < t; j++) {
        const visible = j <= i && (slidingWindow === null || j > i - slidingWindow);
        if (!visible) {
          scores[j] = -Infinity;
          continue;
        }
        let dot = 0;
        for (let d = 0; d < headDim; d++) dot += q[i * qWidth + h * headDim + d] * k[j * kvWidth + kvHead * headDim + d];
        scores[j] = dot * scale;
      }
      const p = softmax(scores);
      for (let j = 0; j <= i; j++) {
        if (p[j] === 0) continue;
        for (let d = 0; d < headDim; d++) out[i * qWidth + h * headDim + d] += p[j] * v[j * kvWidth + kvHead * headDim + d];
      }
    }
  }
  return out;
}

/** Elementwise a + b into a new array. */
export function add(a: Float64Array, b: Float64Array): Float64Array {
  if (a.length !== b.length) throw new Error(`add: lengths ${a.length} and ${b.length} differ`);
  const y = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) y[i] = a[i] + b[i];
  return y;
}
