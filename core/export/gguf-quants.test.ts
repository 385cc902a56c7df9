/**
 * The 4- to 6-bit block quantizers on their own: a Q4_0 block worked by hand from ggml's formulas,
 * the error bounds each format guarantees, zeros and constants, and llama-quantize's type choices
 * for q4_K_M on a 32-layer model. (gguf-llama-cpp.test.ts proves llama.cpp reads the blocks.)
 */
import { describe, expect, it } from 'vitest';
import { float16BitsToFloat32 } from '../io/dtype.ts';
import { Q4_0_BLOCK_BYTES, Q4_K_BLOCK_BYTES, Q5_0_BLOCK_BYTES, Q6_K_BLOCK_BYTES, quantizeQ4_0, quantizeQ4_K, quantizeQ5_0, quantizeQ6_K } from './gguf-quants.ts';
import { dequantize } from './gguf-quants.test-helpers.ts';
import { ggufTensorType } from './gguf.ts';
import { mulberry32 } from '../../test/fixtures/tiny-checkpoints.ts';
import { needs } from '../../test/helpers/optional-parts.ts';

function gaussian(count: number, seed: number, std = 1): Float32Array {
  const uniform = mulberry32(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = std * Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  return out;
}

function relativeRms(x: Float32Array, y: Float32Array): number {
  let err = 0;
  let norm = 0;
  for (let i = 0; i < x.length; i++) {
    err += (x[i]! - y[i]!) ** 2;
    norm += x[i]! ** 2;
  }
  return Math.sqrt(err / norm);
}

describe('Q4_0', () => {
  it('encodes the block -16, -15, ..., 15 as ggml does, worked by hand', () => {
    const x = Float32Array.from({ length: 32 }, (_, j) => j - 16);
    const bytes = quantizeQ4_0(x);
    expect(bytes).toHaveLength(Q4_0_BLOCK_BYTES);
    // d = (value of largest magnitude, -16) / -8 = 2, stored as f16 0x4000.
    expect([bytes[0], bytes[1]]).toEqual([0x00, 0x40]);
    // q = min(15, trunc(x / 2 + 8.5)): x0 = -16 → 0, x16 = 0 → 8, x1 = -15 → 1, x17 = 1 → 9, x15 = -1 → 8, x31 = 15 → 16 → 15.
    expect(bytes[2]).toBe(0x80);
    expect(bytes[3]).toBe(0x91);
    expect(bytes[17]).toBe(0xf8);
    const back = dequantize('Q4_0', bytes, 32);
    expect(back[0]).toBe(-16);
    expect(back[31]).toBe(14); // 15 clipped to the top code 15: (15 − 8) · 2
  });

  it('keeps every value within one step d of the original, 4.5 bits per value', () => {
    const x = gaussian(32 * 64, 1);
    const bytes = quantizeQ4_0(x);
    const back = dequantize('Q4_0', bytes, x.length);
    const view = new DataView(bytes.buffer);
    for (let b = 0; b < 64; b++) {
      const d = Math.abs(float16BitsToFloat32(view.getUint16(b * Q4_0_BLOCK_BYTES, true)));
      for (let j = 0; j < 32; j++) expect(Math.abs(back[32 * b + j]! - x[32 * b + j]!)).toBeLessThanOrEqual(d * 1.001);
    }
    expect((bytes.length * 8) / x.length).toBe(4.5);
  });
});

describe('Q5_0', () => {
  it('keeps every value within one step d (half the Q4_0 step) and uses the fifth bit', () => {
    const x = gaussian(32 * 64, 2);
    const bytes = quantizeQ5_0(x);
    expect(bytes).toHaveLength(64 * Q5_0_BLOCK_BYTES);
    const back = dequantize('Q5_0', bytes, x.length);
    const view = new DataView(bytes.buffer);
    let highBits = 0;
    for (let b = 0; b < 64; b++) {
      const d = Math.abs(float16BitsToFloat32(view.getUint16(b * Q5_0_BLOCK_BYTES, true)));
      highBits += view.getUint32(b * Q5_0_BLOCK_BYTES + 2, true) !== 0 ? 1 : 0;
      for (let j = 0; j < 32; j++) expect(Math.abs(back[32 * b + j]! - x[32 * b + j]!)).toBeLessThanOrEqual(d * 1.001);
    }
    expect(highBits).toBe(64);
    expect(relativeRms(x, back)).toBeLessThan(relativeRms(x, dequantize('Q4_0', quantizeQ4_0(x), x.length)) / 1.8);
  });
});

describe('K-quants (256-value super-blocks)', () => {
  it('Q4_K: 4.5 bits per value, error within the sub-block steps, better than Q4_0', () => {
    const x = gaussian(256 * 32, 3, 0.05);
    const bytes = quantizeQ4_K(x);
    expect(bytes).toHaveLength(32 * Q4_K_BLOCK_BYTES);
    expect((bytes.length * 8) / x.length).toBe(4.5);
    const back = dequantize('Q4_K', bytes, x.length);
    const q4k = relativeRms(x, back);
    const q40 = relativeRms(x, dequantize('Q4_0', quantizeQ4_0(x), x.length));
    console.log(`relative RMS error: Q4_K ${q4k.toFixed(4)}, Q4_0 ${q40.toFixed(4)}`);
    expect(q4k).toBeLessThan(q40);
    expect(q4k).toBeLessThan(0.08); // measured 0.0715 (Q4_0: 0.0872)
  });

  it('Q6_K: 6.5625 bits per value and about a quarter of Q4_K\'s error', () => {
    const x = gaussian(256 * 32, 4, 0.05);
    const bytes = quantizeQ6_K(x);
    expect(bytes).toHaveLength(32 * Q6_K_BLOCK_BYTES);
    expect((bytes.length * 8) / x.length).toBe(6.5625);
    const q6k = relativeRms(x, dequantize('Q6_K', bytes, x.length));
    const q4k = relativeRms(x, dequantize('Q4_K', quantizeQ4_K(x), x.length));
    console.log(`relative RMS error: Q6_K ${q6k.toFixed(4)}, Q4_K ${q4k.toFixed(4)}`);
    expect(q6k).toBeLessThan(q4k / 3);
  });

  it.each([
    ['Q4_K', quantizeQ4_K],
    ['Q6_K', quantizeQ6_K],
  ] as const)('%s: the native encoder writes the TypeScript\'s bytes exactly, several times faster', needs('native'), (_, quantize) => {
    // Gaussian weights at three scales, a block of zeros, a constant block, a one-sided (all-positive)
    // block, a block of tiny values near f16's subnormals and one with a single large outlier.
    const blocks = [gaussian(256 * 64, 11, 0.02), gaussian(256 * 8, 12, 3), gaussian(256 * 8, 13, 1e-5), new Float32Array(256), new Float32Array(256).fill(0.37),
      Float32Array.from(gaussian(256, 14), Math.abs), Float32Array.from(gaussian(256, 15), (v, i) => (i === 77 ? 40 : v * 0.01))];
    const values = new Float32Array(blocks.reduce((n, b) => n + b.length, 0));
    blocks.reduce((at, b) => (values.set(b, at), at + b.length), 0);
    let t = performance.now();
    const typescript = quantize(values, { native: false });
    const tsSeconds = (performance.now() - t) / 1000;
    t = performance.now();
    const native = quantize(values);
    const nativeSeconds = (performance.now() - t) / 1000;
    expect(native.length).toBe(typescript.length);
    const differing = native.findIndex((b, i) => b !== typescript[i]);
    expect(differing, `first differing byte ${differing}`).toBe(-1);
    expect(nativeSeconds).toBeLessThan(tsSeconds / 2); // measured 4.4-5.6x on one core of the build machine under load, more with its cores
  });

  it('zeros stay zeros and a constant block comes back within f16 precision', () => {
    for (const [type, quantize] of [['Q4_K', quantizeQ4_K], ['Q6_K', quantizeQ6_K]] as const) {
      expect(dequantize(type, quantize(new Float32Array(256)), 256).every((v) => v === 0)).toBe(true);
      const constant = new Float32Array(256).fill(0.37);
      const back = dequantize(type, quantize(constant), 256);
      for (const v of back) expect(Math.abs(v - 0.37)).toBeLessThan(0.37 * 2e-3);
    }
  });
});

describe("llama-quantize's tensor types", () => {
  const c = { numLayers: 32 };
  it('q4_K_M: Q6_K for the head and for attn_v / ffn_down in the layers use_more_bits names', () => {
    // use_more_bits(i, 32): i < 4, i ≥ 28, or (i − 4) % 3 == 2 → 0–3, 6, 9, …, 27, 28–31.
    const moreBits = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31];
    for (let i = 0; i < 32; i++) {
      const expected = moreBits.includes(i) ? 'Q6_K' : 'Q4_K';
      expect(ggufTensorType(`blk.${i}.attn_v.weight`, [512, 2048], 'q4_K_M', c, false), `layer ${i}`).toBe(expected);
      expect(ggufTensorType(`blk.${i}.ffn_down.weight`, [2048, 8192], 'q4_K_M', c, false), `layer ${i}`).toBe(expected);
      expect(ggufTensorType(`blk.${i}.attn_q.weight`, [2048, 2048], 'q4_K_M', c, false)).toBe('Q4_K');
    }
    expect(ggufTensorType('output.weight', [32000, 2048], 'q4_K_M', c, true)).toBe('Q6_K');
    expect(ggufTensorType('token_embd.weight', [32000, 2048], 'q4_K_M', c, false)).toBe('Q4_K');
    expect(ggufTensorType('blk.0.attn_norm.weight', [2048], 'q4_K_M', c, false)).toBe('F32');
  });

  it('q4_0: Q4_0 everywhere but the head (Q6_K); rows K-quants cannot divide take the fallbacks', () => {
    expect(ggufTensorType('blk.6.attn_v.weight', [512, 2048], 'q4_0', c, false)).toBe('Q4_0');
    expect(ggufTensorType('output.weight', [32000, 2048], 'q4_0', c, true)).toBe('Q6_K');
    expect(ggufTensorType('output.weight', [32000, 896], 'q4_0', c, true)).toBe('Q8_0'); // 896 % 256 ≠ 0
    expect(ggufTensorType('blk.1.ffn_up.weight', [4864, 896], 'q4_K_M', c, false)).toBe('Q5_0');
    expect(ggufTensorType('blk.0.ffn_down.weight', [896, 4864], 'q4_K_M', c, false)).toBe('Q6_K'); // Qwen2.5-0.5B: 4864 = 19 · 256
    expect(ggufTensorType('blk.0.attn_v.weight', [128, 896], 'q4_K_M', c, false)).toBe('Q8_0'); // Q6_K's fallback (896 % 256 ≠ 0)
    expect(ggufTensorType('blk.1.ffn_down.weight', [256, 688], 'q4_0', c, false)).toBe('F16'); // 688 % 32 ≠ 0
  });
});
