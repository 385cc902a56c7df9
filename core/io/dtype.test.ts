import { describe, expect, it } from 'vitest';
import {
  bfloat16BitsToFloat32,
  bfloat16ToFloat32,
  float16BitsToFloat32,
  float16ToFloat32,
  float32ToBfloat16,
  float32ToBfloat16Bits,
  float32ToFloat16,
  float32ToFloat16Bits,
} from './dtype.ts';

/** A float32 given by its bit pattern, as a JS number. */
function f32(bits: number): number {
  return new Float32Array(new Uint32Array([bits]).buffer)[0]!;
}

// Bit patterns worked out by hand from the IEEE 754 binary16 layout (1 sign, 5 exponent bits
// biased by 15, 10 mantissa bits).
const HALF_CASES: Array<[string, number, number]> = [
  ['1.0', 1, 0x3c00],
  ['-2.0', -2, 0xc000],
  ['0.5', 0.5, 0x3800],
  ['0.1 (rounded)', 0.1, 0x2e66],
  ['largest finite 65504', 65504, 0x7bff],
  ['65519 rounds down to 65504', 65519, 0x7bff],
  ['65520 is a tie and rounds to even: inf', 65520, 0x7c00],
  ['1e6 overflows to inf', 1e6, 0x7c00],
  ['-inf', -Infinity, 0xfc00],
  ['+0', 0, 0x0000],
  ['-0', -0, 0x8000],
  ['smallest normal 2^-14', 2 ** -14, 0x0400],
  ['largest subnormal 1023 * 2^-24', 1023 * 2 ** -24, 0x03ff],
  ['smallest subnormal 2^-24', 2 ** -24, 0x0001],
  ['2^-25 is a tie between 0 and 2^-24: even is 0', 2 ** -25, 0x0000],
  ['just above 2^-25 rounds up', 2 ** -25 * (1 + 2 ** -20), 0x0001],
  ['1.5 * 2^-24 is a tie: rounds to even 2', 3 * 2 ** -25, 0x0002],
  ['2.5 * 2^-24 is a tie: rounds to even 2', 5 * 2 ** -25, 0x0002],
  ['1 + 2^-11 is a tie: rounds to even 1.0', 1 + 2 ** -11, 0x3c00],
  ['1 + 3 * 2^-11 is a tie: rounds to even 0x3c02', 1 + 3 * 2 ** -11, 0x3c02],
  ['1 + 2^-11 + 2^-20 is above the tie', 1 + 2 ** -11 + 2 ** -20, 0x3c01],
  ['float32 subnormal flushes to 0', f32(0x00000001), 0x0000],
];

describe('float16', () => {
  it.each(HALF_CASES)('encodes %s', (_label, value, bits) => {
    expect(float32ToFloat16Bits(value)).toBe(bits);
    expect(float32ToFloat16(new Float32Array([value]))[0]).toBe(bits);
  });

  it('decodes hand-computed patterns', () => {
    expect(float16BitsToFloat32(0x3c00)).toBe(1);
    expect(float16BitsToFloat32(0x3555)).toBe(0.333251953125);
    expect(float16BitsToFloat32(0x7bff)).toBe(65504);
    expect(float16BitsToFloat32(0x0001)).toBe(2 ** -24);
    expect(float16BitsToFloat32(0x03ff)).toBe(1023 * 2 ** -24);
    expect(Object.is(float16BitsToFloat32(0x8000), -0)).toBe(true);
    expect(float16BitsToFloat32(0xfc00)).toBe(-Infinity);
    expect(float16BitsToFloat32(0x7e00)).toBeNaN();
    const decoded = float16ToFloat32(new Uint16Array([0x3c00, 0xc000, 0x0001, 0x7c00, 0x7c01]));
    expect([...decoded.subarray(0, 4)]).toEqual([1, -2, 2 ** -24, Infinity]);
    expect(decoded[4]).toBeNaN();
  });

  it('NaN stays NaN both ways (never becomes inf)', () => {
    const nans = new Float32Array([NaN, f32(0x7f800001), f32(0xffc00000)]);
    for (const h of float32ToFloat16(nans)) {
      expect(h & 0x7c00).toBe(0x7c00);
      expect(h & 0x03ff).not.toBe(0);
    }
  });

  it('every float16 survives float16 -> float32 -> float16', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = float32ToFloat16(float16ToFloat32(all));
    for (let h = 0; h < 65536; h++) {
      const isNan = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (isNan) expect(back[h]! & 0x7fff).toBeGreaterThan(0x7c00);
      else if (back[h] !== h) throw new Error(`0x${h.toString(16)} came back as 0x${back[h]!.toString(16)}`);
    }
  });

  it('matches a brute-force nearest-even reference on random float32 values', () => {
    // Reference: all non-negative finite halves in increasing order; pick the nearest, ties to the even pattern.
    const halves = Array.from({ length: 0x7c01 }, (_, h) => float16BitsToFloat32(h)); // up to +inf
    const reference = (x: number): number => {
      const a = Math.abs(x);
      let lo = 0;
      let hi = 0x7bff;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (halves[mid]! <= a) lo = mid;
        else hi = mid - 1;
      }
      // The rounding boundary above 65504 is 65520 (as if the next half were 65536).
      const next = lo === 0x7bff ? 65536 : halves[lo + 1]!;
      const below = a - halves[lo]!;
      const above = next - a;
      const h = below < above || (below === above && lo % 2 === 0) ? lo : lo + 1;
      return (x < 0 || Object.is(x, -0) ? 0x8000 : 0) | h;
    };
    const values = new Float32Array(200_000);
    let seed = 12345;
    const random = (): number => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32);
    for (let i = 0; i < values.length; i++) {
      // Spread over 2^-30 .. 2^17 so subnormals, normals and overflow are all hit, plus exact ties.
      const v = (random() < 0.5 ? -1 : 1) * 2 ** (random() * 47 - 30);
      // Every fourth value is an exact tie: the midpoint of two adjacent halves (exact in float32).
      const k = (random() * 0x7bff) | 0;
      values[i] = i % 4 === 0 ? Math.sign(v) * ((halves[k]! + halves[k + 1]!) / 2) : v;
    }
    const got = float32ToFloat16(values);
    for (let i = 0; i < values.length; i++) {
      const want = reference(values[i]!);
      if (got[i] !== want) throw new Error(`${values[i]}: got 0x${got[i]!.toString(16)}, want 0x${want.toString(16)}`);
    }
  });
});

describe('bfloat16', () => {
  // bfloat16 is the top half of a float32, so these follow from the float32 patterns directly.
  const BF16_CASES: Array<[string, number, number]> = [
    ['1.0', 1, 0x3f80],
    ['-2.0', -2, 0xc000],
    ['pi (0x40490fdb) rounds down', Math.PI, 0x4049],
    ['1 + 2^-8 is a tie: rounds to even 1.0', f32(0x3f808000), 0x3f80],
    ['1 + 3 * 2^-8 is a tie: rounds to even 0x3f82', f32(0x3f818000), 0x3f82],
    ['above the tie rounds up', f32(0x3f808001), 0x3f81],
    ['largest float32 rounds to inf', f32(0x7f7fffff), 0x7f80],
    ['-inf', -Infinity, 0xff80],
    ['-0', -0, 0x8000],
    ['float32 subnormal 0x8000 is a tie: rounds to 0', f32(0x00008000), 0x0000],
    ['float32 subnormal 0x18000 is a tie: rounds to even 2', f32(0x00018000), 0x0002],
  ];

  it.each(BF16_CASES)('encodes %s', (_label, value, bits) => {
    expect(float32ToBfloat16Bits(value)).toBe(bits);
    expect(float32ToBfloat16(new Float32Array([value]))[0]).toBe(bits);
  });

  it('decodes', () => {
    expect(bfloat16BitsToFloat32(0x3f80)).toBe(1);
    expect(bfloat16BitsToFloat32(0x7f7f)).toBe(f32(0x7f7f0000));
    expect(bfloat16BitsToFloat32(0x0001)).toBe(2 ** -133);
    const out = bfloat16ToFloat32(new Uint16Array([0xc000, 0x7f80, 0x7fc1]));
    expect([...out.subarray(0, 2)]).toEqual([-2, Infinity]);
    expect(out[2]).toBeNaN();
  });

  it('NaN with a low payload does not round to inf', () => {
    expect(float32ToBfloat16Bits(f32(0x7f800001)) & 0x7f).not.toBe(0);
    expect(float32ToBfloat16Bits(f32(0x7fffffff)) & 0x7f80).toBe(0x7f80);
  });

  it('every bfloat16 survives bfloat16 -> float32 -> bfloat16', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = float32ToBfloat16(bfloat16ToFloat32(all));
    for (let h = 0; h < 65536; h++) {
      const isNan = (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
      if (isNan) expect(back[h]! & 0x7fff).toBeGreaterThan(0x7f80);
      else if (back[h] !== h) throw new Error(`0x${h.toString(16)} came back as 0x${back[h]!.toString(16)}`);
    }
  });
});

describe('conversion into a caller-provided array', () => {
  it('fills `out` and rejects a length mismatch', () => {
    const out = new Float32Array(2);
    expect(float16ToFloat32(new Uint16Array([0x3c00, 0x4000]), out)).toBe(out);
    expect([...out]).toEqual([1, 2]);
    expect(() => float32ToFloat16(new Float32Array(3), new Uint16Array(2))).toThrow(RangeError);
  });
});
