// Hand-derived checks of the reference's building blocks; nothing here touches the project's code.
import { describe, expect, it } from 'vitest';
import {
  activation,
  applyRope,
  causalAttention,
  conv1d,
  erf,
  layerNorm,
  linear,
  logSumExp,
  rmsNorm,
  ropeInverseFrequencies,
  softmax,
} from './reference-ops.ts';

const f64 = (values: number[]) => Float64Array.from(values);

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tolerance = 1e-12): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) expect(Math.abs(actual[i] - expected[i])).toBeLessThanOrEqual(tolerance);
}

describe('norms, softmax, activations', () => {
  it('RMSNorm is x * rsqrt(mean(x^2) + eps) * weight, without centring', () => {
    // mean(x^2) = (1 + 4 + 9 + 16) / 4 = 7.5
    const r = 1 / Math.sqrt(7.5 + 1e-6);
    expectClose(rmsNorm(f64([1, 2, 3, 4]), 1, f64([1, 1, 2, 0.5]), 1e-6), [r, 2 * r, 6 * r, 2 * r]);
    // rows are independent
    const two = rmsNorm(f64([1, 2, 3, 4, -2, 0, 0, 0]), 2, f64([1, 1, 1, 1]), 0);
    expectClose(two.subarray(4), [-2, 0, 0, 0]);
  });

  it('LayerNorm centres, divides by the biased std, then scales and shifts', () => {
    // mean 2.5, biased variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    const s = 1 / Math.sqrt(1.25 + 1e-5);
    const y = layerNorm(f64([1, 2, 3, 4]), 1, f64([2, 1, 1, 1]), f64([0, 0, 0, 1]), 1e-5);
    expectClose(y, [-1.5 * s * 2, -0.5 * s, 0.5 * s, 1.5 * s + 1]);
  });

  it('softmax and logSumExp', () => {
    expectClose(softmax([0, Math.log(2), Math.log(3)]), [1 / 6, 2 / 6, 3 / 6]);
    expectClose(softmax([1000, 1000]), [0.5, 0.5]);
    expectClose(softmax([-Infinity, 3]), [0, 1]);
    expect(logSumExp([1000, 1000])).toBeCloseTo(1000 + Math.LN2, 12);
  });

  it('erf matches tabulated values', () => {
    expect(erf(0)).toBe(0);
    expect(erf(0.5)).toBeCloseTo(0.5204998778130465, 14);
    expect(erf(1)).toBeCloseTo(0.8427007929497149, 14);
    expect(erf(-2)).toBeCloseTo(-0.9953222650189527, 14);
    expect(erf(3.5)).toBeCloseTo(0.9999992569016276, 14);
    expect(erf(5)).toBeCloseTo(0.9999999999984626, 14);
  });

  it('activations of ACT2FN', () => {
    expect(activation('silu')(0)).toBe(0);
    expect(activation('silu')(1)).toBeCloseTo(1 / (1 + Math.exp(-1)), 14);
    expect(activation('silu')(-2)).toBeCloseTo(-2 / (1 + Math.exp(2)), 14);
    // torch.nn.functional.gelu(1.0, approximate='tanh') and the exact gelu(1.0)
    expect(activation('gelu_new')(1)).toBeCloseTo(0.8411919906082768, 12);
    expect(activation('gelu')(1)).toBeCloseTo(0.8413447460685429, 12);
    expect(activation('gelu_new')(-3)).toBeCloseTo(0.5 * -3 * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (-3 - 0.044715 * 27))), 14);
    expect(activation('relu')(-1)).toBe(0);
    expect(() => activation('mish')).toThrow(/not implemented/);
  });
});

describe('linear layers', () => {
  it('nn.Linear reads [out, in]; Conv1D reads [in, out]', () => {
    // W [out=2, in=3]
    const w = f64([1, 2, 3, 4, 5, 6]);
    const x = f64([1, 0, -1, 2, 1, 0]); // [T=2, 3]
    expectClose(linear(x, 2, w, 2, 3, f64([10, 20])), [1 - 3 + 10, 4 - 6 + 20, 2 + 2 + 10, 8 + 5 + 20]);
    const wT = f64([1, 4, 2, 5, 3, 6]); // the same map stored [in=3, out=2]
    expectClose(conv1d(x, 2, wT, 3, 2, f64([10, 20])), linear(x, 2, w, 2, 3, f64([10, 20])));
  });
});

describe('rotary embeddings', () => {
  it('inverse frequencies are theta^(-2i/dim); linear divides them by the factor', () => {
    const plain = ropeInverseFrequencies({ theta: 10000, dim: 8, scaling: null, maxPositionEmbeddings: 128 }, 4);
    expectClose(plain, [1, 0.1, 0.01, 0.001], 1e-15);
    const linearScaled = ropeInverseFrequencies({ theta: 10000, dim: 8, scaling: { type: 'linear', factor: 2 }, maxPositionEmbeddings: 128 }, 4);
    expectClose(linearScaled, [0.5, 0.05, 0.005, 0.0005], 1e-15);
    const dynamic = ropeInverseFrequencies({ theta: 10000, dim: 8, scaling: { rope_type: 'dynamic', factor: 2 }, maxPositionEmbeddings: 128 }, 16);
    expectClose(dynamic, plain, 0);
    expect(() => ropeInverseFrequencies({ theta: 1e4, dim: 8, scaling: { rope_type: 'yarn', factor: 2 }, maxPositionEmbeddings: 8 }, 4)).toThrow();
  });

  it('llama3 scaling keeps high frequencies, divides low ones, blends the middle (by hand)', () => {
    // theta 1e4, dim 8: inv = [1, 0.1, 0.01, 0.001], wavelengths 2pi * [1, 10, 100, 1000] = [6.28, 62.8, 628, 6283].
    // original_max_position_embeddings 64, low_freq_factor 1, high_freq_factor 4, factor 8:
    // high-frequency bound 64/4 = 16, low-frequency bound 64/1 = 64.
    const scaling = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 };
    const inv = ropeInverseFrequencies({ theta: 10000, dim: 8, scaling, maxPositionEmbeddings: 128 }, 4);
    // 6.28 < 16: kept. 62.8 in [16, 64]: smooth = (64 / 62.83 - 1) / (4 - 1) = 0.0061972, blended.
    const smooth = (64 / (20 * Math.PI) - 1) / 3;
    expect(smooth).toBeCloseTo(0.0061972, 6);
    expectClose(inv, [1, (1 - smooth) * (0.1 / 8) + smooth * 0.1, 0.01 / 8, 0.001 / 8], 1e-15);
    expect(inv[1]).toBeCloseTo(0.0130423, 6); // 0.9938028 * 0.0125 + 0.0061972 * 0.1
  });

  it('is the identity at position 0 and preserves norms', () => {
    const inv = ropeInverseFrequencies({ theta: 10000, dim: 8, scaling: null, maxPositionEmbeddings: 128 }, 4);
    const x = f64([0.3, -1, 2, 0.5, 1.5, -0.2, 0.7, 1, /* head 2 */ 1, 2, 3, 4, 5, 6, 7, 8]);
    const at0 = x.slice();
    applyRope(at0, 2, 8, 0, inv);
    expectClose(at0, x, 0);
    const at5 = x.slice();
    applyRope(at5, 2, 8, 5, inv);
    for (let h = 0; h < 2; h++) {
      const norm = (v: Float64Array) => Math.hypot(...v.subarray(h * 8, h * 8 + 8));
      expect(norm(at5)).toBeCloseTo(norm(x), 12);
    }
    expect(Math.abs(at5[0] - x[0])).toBeGreaterThan(0.1);
  });

  it('rotates the halves pair (d, d + dim/2), not neighbours (2d, 2d+1)', () => {
    const inv = f64([0.3, 0.02]); // dim 4
    const e0 = f64([1, 0, 0, 0]);
    applyRope(e0, 1, 4, 3, inv);
    // rotate_half(e0) = [0, 0, 1, 0], so e0 -> cos(3*0.3) e0 + sin(3*0.3) e2
    expectClose(e0, [Math.cos(0.9), 0, Math.sin(0.9), 0], 1e-15);
    const e3 = f64([0, 0, 0, 1]);
    applyRope(e3, 1, 4, 3, inv);
    // rotate_half(e3) = [0, -1, 0, 0]
    expectClose(e3, [0, -Math.sin(0.06), 0, Math.cos(0.06)], 1e-15);
  });

  it('makes q.k depend on the relative position only', () => {
    const inv = ropeInverseFrequencies({ theta: 10000, dim: 8, scaling: null, maxPositionEmbeddings: 128 }, 4);
    const q = f64([0.3, -1, 2, 0.5, 1.5, -0.2, 0.7, 1]);
    const k = f64([1, 0.5, -0.25, 2, 0, 1, -1, 0.5]);
    const dotAt = (m: number, n: number) => {
      const a = q.slice();
      const b = k.slice();
      applyRope(a, 1, 8, m, inv);
      applyRope(b, 1, 8, n, inv);
      return a.reduce((s, v, i) => s + v * b[i], 0);
    };
    expect(dotAt(7, 3)).toBeCloseTo(dotAt(11, 7), 12);
    expect(dotAt(4, 4)).toBeCloseTo(q.reduce((s, v, i) => s + v * k[i], 0), 12);
  });
});

describe('attention', () => {
  // q = k = 0 makes every visible key equally likely, so each output is the mean of the visible values.
  const t = 8;
  const zeros = new Float64Array(t);
  const values = f64([0, 1, 2, 3, 4, 5, 6, 7]);

  it('is causal: position i averages values 0..i', () => {
    const out = causalAttention(zeros, zeros, values, { sequenceLength: t, heads: 1, kvHeads: 1, headDim: 1, scale: 1, slidingWindow: null });
    expectClose(out, [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5]);
  });

  it('a sliding window w lets position i see j with i - w < j <= i (w keys, itself included)', () => {
    const out = causalAttention(zeros, zeros, values, { sequenceLength: t, heads: 1, kvHeads: 1, headDim: 1, scale: 1, slidingWindow: 3 });
    // i=5 sees 3, 4, 5; i=1 sees 0, 1
    expectClose(out, [0, 0.5, 1, 2, 3, 4, 5, 6]);
  });

  it('grouped-query heads share key/value head floor(h / groups), as repeat_kv', () => {
    // 4 query heads, 2 kv heads, head_dim 1: kv head 0 carries value 1, kv head 1 carries value 2
    const q = new Float64Array(2 * 4);
    const k = new Float64Array(2 * 2);
    const v = f64([1, 2, 1, 2]);
    const out = causalAttention(q, k, v, { sequenceLength: 2, heads: 4, kvHeads: 2, headDim: 1, scale: 1, slidingWindow: null });
    expectClose(out, [1, 1, 2, 2, 1, 1, 2, 2]);
  });

  it('weights keys by softmax(scale * q.k)', () => {
    // one head, head_dim 2, two positions; at i=1 the scores are scale*q1.k0 and scale*q1.k1
    const q = f64([0, 0, 1, 2]);
    const k = f64([3, 0, 0, 1]);
    const v = f64([10, 0, 0, 10]);
    const out = causalAttention(q, k, v, { sequenceLength: 2, heads: 1, kvHeads: 1, headDim: 2, scale: 0.5, slidingWindow: null });
    const [p0, p1] = softmax([0.5 * 3, 0.5 * 2]);
    expectClose(out, [10, 0, 10 * p0, 10 * p1]);
  });
});
