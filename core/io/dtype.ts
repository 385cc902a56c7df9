/**
 * float16 / bfloat16 <-> float32 conversion on typed arrays.
 *
 * Checkpoints arrive as F16/BF16 and the engine computes in float32, so these loops run over every
 * weight of a model at load and export time: they work on raw bit patterns through Uint32Array
 * views and allocate nothing per element. Writing rounds to nearest, ties to even (IEEE 754 default,
 * and what torch's `.half()` / `.bfloat16()` do), so an exported file matches what Python would write.
 */

// One shared scratch cell for the scalar helpers (reinterpreting float bits without a DataView).
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

function float32Bits(src: Float32Array): Uint32Array {
  return new Uint32Array(src.buffer, src.byteOffset, src.length);
}

// ---------------------------------------------------------------------------------------------
// float16 (IEEE binary16: 1 sign, 5 exponent bits biased by 15, 10 mantissa bits)

/** Bit pattern of a float32 (given as its uint32 bits) rounded to float16. */
function float32BitsToFloat16Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const abs = x & 0x7fffffff;
  if (abs >= 0x7f800000) {
    // Inf stays inf; NaN keeps its top payload bits and is forced quiet so it cannot become inf.
    return abs === 0x7f800000 ? sign | 0x7c00 : sign | 0x7e00 | ((abs >>> 13) & 0x3ff);
  }
  // >= 65536 (2^16) is past the largest finite half even after rounding; [65520, 65536) rounds up
  // to inf through the carry in the normal path below, as IEEE requires.
  if (abs >= 0x47800000) return sign | 0x7c00;
  if (abs >= 0x38800000) {
    // Normal half: rebias the exponent (127 -> 15 is -112 << 23), then drop 13 mantissa bits with
    // round-half-to-even; a mantissa carry correctly bumps the exponent.
    const m = abs - 0x38000000;
    return sign | ((m + 0xfff + ((m >>> 13) & 1)) >>> 13);
  }
  // Subnormal half (value = h * 2^-24). Below 2^-25 everything rounds to zero; exactly 2^-25 is a
  // tie that rounds to the even value 0.
  const exponent = abs >>> 23;
  if (exponent < 102) return sign;
  const mantissa = (abs & 0x7fffff) | 0x800000;
  const shift = 126 - exponent; // 14..24
  let h = mantissa >>> shift;
  const rest = mantissa & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rest > half || (rest === half && (h & 1) === 1)) h += 1; // may carry into the smallest normal: right
  return sign | h;
}

/** Exact float16 -> float32 value (every half is representable in float32). */
function float16BitsToFloat32Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >>> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** Bits of each float32 for each float16, built once on first use (256 KiB): decoding is then one load per element. */
let halfTable: Uint32Array | null = null;
function float16Table(): Uint32Array {
  if (halfTable) return halfTable;
  const table = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const exponent = (h >>> 10) & 0x1f;
    if (exponent === 31 && (h & 0x3ff) !== 0) {
      // NaN: keep sign and payload (shifted into the float32 mantissa) instead of a canonical NaN.
      table[h] = ((h & 0x8000) << 16) | 0x7f800000 | ((h & 0x3ff) << 13);
    } else {
      scratchF32[0] = float16BitsToFloat32Value(h);
      table[h] = scratchU32[0]!;
    }
  }
  halfTable = table;
  return table;
}

/** float16 bit patterns -> float32. `out` (same length) is filled and returned; allocated if absent. */
export function float16ToFloat32(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  checkLengths(src.length, out.length);
  const table = float16Table();
  const outBits = float32Bits(out);
  for (let i = 0; i < src.length; i++) outBits[i] = table[src[i]!]!;
  return out;
}

/** float32 -> float16 bit patterns, round to nearest even; overflow -> ±inf, NaN stays NaN. */
export function float32ToFloat16(src: Float32Array, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  checkLengths(src.length, out.length);
  const bits = float32Bits(src);
  for (let i = 0; i < src.length; i++) out[i] = float32BitsToFloat16Bits(bits[i]!);
  return out;
}

/** One value -> float16 bits (for tests, headers, and one-off constants). */
export function float32ToFloat16Bits(value: number): number {
  scratchF32[0] = value;
  return float32BitsToFloat16Bits(scratchU32[0]!);
}

/** float16 bits -> the value as a JS number. */
export function float16BitsToFloat32(bits: number): number {
  return float16BitsToFloat32Value(bits & 0xffff);
}

// ---------------------------------------------------------------------------------------------
// bfloat16 (the top 16 bits of a float32: same exponent range, 7 mantissa bits)

function float32BitsToBfloat16Bits(x: number): number {
  // NaN must not round: adding the rounding bias to a NaN with a low payload could carry it to inf.
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) & 0x8000) | 0x7fc0 | ((x >>> 16) & 0x3f);
  // Round half to even on the 16 dropped bits; the largest finite values correctly carry to inf.
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** bfloat16 bit patterns -> float32 (exact: a shift). */
export function bfloat16ToFloat32(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  checkLengths(src.length, out.length);
  const outBits = float32Bits(out);
  for (let i = 0; i < src.length; i++) outBits[i] = src[i]! << 16;
  return out;
}

/** float32 -> bfloat16 bit patterns, round to nearest even; NaN stays NaN. */
export function float32ToBfloat16(src: Float32Array, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  checkLengths(src.length, out.length);
  const bits = float32Bits(src);
  for (let i = 0; i < src.length; i++) out[i] = float32BitsToBfloat16Bits(bits[i]!);
  return out;
}

export function float32ToBfloat16Bits(value: number): number {
  scratchF32[0] = value;
  return float32BitsToBfloat16Bits(scratchU32[0]!);
}

export function bfloat16BitsToFloat32(bits: number): number {
  scratchU32[0] = (bits & 0xffff) << 16;
  return scratchF32[0]!;
}

function checkLengths(source: number, target: number): void {
  // A short `out` would silently drop values (typed-array writes past the end are no-ops).
  if (source !== target) throw new RangeError(`dtype conversion: output length ${target} != input length ${source}`);
}
