/**
 * 4- to 6-bit GGUF block quantizers, ported from ggml's reference quantizers
 * (ggml/src/ggml-quants.c: quantize_row_q4_0_ref, quantize_row_q5_0_ref, quantize_row_q4_K_ref
 * with make_qkx2_quants, quantize_row_q6_K_ref with make_qx_quants) and laid out as ggml-common.h's
 * block structs, so llama.cpp reads the blocks as its own quantizer would have written them:
 *  - Q4_0 [18 B / 32 values]: f16 d, 16 bytes of nibbles (value j low, value j+16 high); x ≈ d·(q − 8),
 *    d = (signed max-magnitude value) / −8;
 *  - Q5_0 [22 B / 32]: f16 d, u32 of fifth bits, 16 bytes of nibbles; x ≈ d·(q − 16), d = max / −16;
 *  - Q4_K [144 B / 256]: f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) pairs for 8 sub-blocks of 32,
 *    128 bytes of nibbles; x ≈ d·scale_j·q − dmin·min_j, each sub-block fitted by weighted least
 *    squares over 21 candidate scales (make_qkx2_quants);
 *  - Q6_K [210 B / 256]: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 int8 scales (one
 *    per 16 values), f16 d; x ≈ d·scale_j·(q − 32).
 * The scale searches run in float64 where ggml uses float; the scales are rounded to f16 (and the
 * K-quants' sub-block scales to 6 bits) before the values are coded against them, as in ggml, so a
 * reader multiplies exactly by what the codes were chosen for. A block's codes may differ from
 * ggml's own in rare ties, which changes nothing a reader can rely on.
 *
 * Q4_K and Q6_K (the bulk of a q4_K_M file) run in the native addon where it is built
 * (native/quants.c, the same arithmetic, byte-identical output, ~5x faster on one core and split over the cores); `{ native: false }`
 * forces the TypeScript, which the tests compare it with.
 */
import { float16BitsToFloat32, float32ToFloat16Bits } from '../io/dtype.ts';
import { nativeAddon } from '../backend/native/addon.ts';

export const QK4_0 = 32;
export const QK_K = 256;
export const Q4_0_BLOCK_BYTES = 2 + QK4_0 / 2;
export const Q5_0_BLOCK_BYTES = 2 + 4 + QK4_0 / 2;
export const Q4_K_BLOCK_BYTES = 2 + 2 + 12 + QK_K / 2;
export const Q6_K_BLOCK_BYTES = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
/** ggml's GROUP_MAX_EPS: a group whose largest magnitude is below this is all zeros. */
const GROUP_MAX_EPS = 1e-15;

const f32 = Math.fround;

/** ggml's nearest_int: round half to even (the 1.5·2^23 trick). */
function nearestInt(x: number): number {
  const r = Math.round(x); // halves up; ggml's halves go to even
  return r - x === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

function clamp(value: number, low: number, high: number): number {
  return value < low ? low : value > high ? high : value;
}

/** The f16 a value is stored as, read back: what llama.cpp will multiply by. */
function storedF16(value: number): number {
  return float16BitsToFloat32(float32ToFloat16Bits(value));
}

function checkLength(values: Float32Array, block: number, type: string): number {
  if (values.length % block !== 0) throw new Error(`internal: ${type} needs a multiple of ${block} values, got ${values.length}`);
  return values.length / block;
}

/** The value of largest magnitude in values[start, start + n), with its sign (first one on ties). */
function signedMaxMagnitude(values: Float32Array, start: number, n: number): number {
  let amax = 0;
  let max = 0;
  for (let j = 0; j < n; j++) {
    const v = values[start + j]!;
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  return max;
}

/** quantize_row_q4_0_ref. */
export function quantizeQ4_0(values: Float32Array): Uint8Array {
  const blocks = checkLength(values, QK4_0, 'Q4_0');
  const out = new Uint8Array(blocks * Q4_0_BLOCK_BYTES);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    const start = b * QK4_0;
    const d = f32(signedMaxMagnitude(values, start, QK4_0) / -8);
    const id = d === 0 ? 0 : f32(1 / d);
    const at = b * Q4_0_BLOCK_BYTES;
    view.setUint16(at, float32ToFloat16Bits(d), true);
    for (let j = 0; j < QK4_0 / 2; j++) {
      // (int8_t)(x·id + 8.5f): truncation of a non-negative number, capped at 15.
      const q0 = Math.min(15, Math.trunc(f32(f32(values[start + j]! * id) + 8.5)));
      const q1 = Math.min(15, Math.trunc(f32(f32(values[start + j + 16]! * id) + 8.5)));
      out[at + 2 + j] = q0 | (q1 << 4);
    }
  }
  return out;
}

/** quantize_row_q5_0_ref: Q4_0 with a fifth bit per value kept in a u32 (bit j: value j, bit j+16: value j+16). */
export function quantizeQ5_0(values: Float32Array): Uint8Array {
  const blocks = checkLength(values, QK4_0, 'Q5_0');
  const out = new Uint8Array(blocks * Q5_0_BLOCK_BYTES);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    const start = b * QK4_0;
    const d = f32(signedMaxMagnitude(values, start, QK4_0) / -16);
    const id = d === 0 ? 0 : f32(1 / d);
    const at = b * Q5_0_BLOCK_BYTES;
    view.setUint16(at, float32ToFloat16Bits(d), true);
    let high = 0;
    for (let j = 0; j < QK4_0 / 2; j++) {
      const q0 = Math.min(31, Math.trunc(f32(f32(values[start + j]! * id) + 16.5)));
      const q1 = Math.min(31, Math.trunc(f32(f32(values[start + j + 16]! * id) + 16.5)));
      out[at + 6 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
      high |= ((q0 & 0x10) >>> 4) << j;
      high |= ((q1 & 0x10) >>> 4) << (j + 16);
    }
    view.setUint32(at + 2, high >>> 0, true);
  }
  return out;
}

/**
 * make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin = −1, rdelta = 0.1, nstep = 20,
 * use_mad = false): x ≈ scale·L − theMin with L in [0, nmax], minimising Σ w·err² over the
 * starting grid and 21 stretched ones. Returns [scale, theMin]; fills `codes`. (The fits run in
 * float64: only the stored f16 scales and 6-bit codes reach the file.)
 */
function fitScaleAndMin(x: Float32Array, weights: Float32Array, nmax: number, codes: Uint8Array, scratch: Uint8Array): [number, number] {
  const n = x.length;
  const [rmin, rdelta, nstep] = [-1, 0.1, 20];
  let min = x[0]!;
  let max = x[0]!;
  let sumW = 0;
  let sumX = 0;
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    if (v < min) min = v;
    if (v > max) max = v;
    sumW += weights[i]!;
    sumX += weights[i]! * v;
  }
  if (min > 0) min = 0;
  if (max === min) {
    codes.fill(0);
    return [0, -min];
  }
  const range = max - min;
  let iscale = nmax / range;
  let scale = 1 / iscale;
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    const l = clamp(nearestInt(iscale * (x[i]! - min)), 0, nmax);
    codes[i] = l;
    const diff = scale * l + min - x[i]!;
    bestError += weights[i]! * diff * diff;
  }
  for (let step = 0; step <= nstep; step++) {
    iscale = (rmin + rdelta * step + nmax) / range;
    let sumL = 0;
    let sumL2 = 0;
    let sumXL = 0;
    for (let i = 0; i < n; i++) {
      const l = clamp(nearestInt(iscale * (x[i]! - min)), 0, nmax);
      scratch[i] = l;
      const w = weights[i]!;
      sumL += w * l;
      sumL2 += w * l * l;
      sumXL += w * l * x[i]!;
    }
    const det = sumW * sumL2 - sumL * sumL;
    if (det > 0) {
      let thisScale = (sumW * sumXL - sumX * sumL) / det;
      let thisMin = (sumL2 * sumX - sumL * sumXL) / det;
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = sumXL / sumL2;
      }
      let error = 0;
      for (let i = 0; i < n; i++) {
        const diff = thisScale * scratch[i]! + thisMin - x[i]!;
        error += weights[i]! * diff * diff;
      }
      if (error < bestError) {
        codes.set(scratch.subarray(0, n));
        bestError = error;
        scale = thisScale;
        min = thisMin;
      }
    }
  }
  return [scale, -min];
}

/** ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j from the 12 packed bytes. */
export function scaleMinK4(j: number, packed: Uint8Array, at: number): [number, number] {
  if (j < 4) return [packed[at + j]! & 63, packed[at + j + 4]! & 63];
  return [(packed[at + j + 4]! & 0x0f) | ((packed[at + j - 4]! >> 6) << 4), (packed[at + j + 4]! >> 4) | ((packed[at + j]! >> 6) << 4)];
}

export interface KQuantOptions {
  /** Use the native addon when it is built (default); false runs the TypeScript. */
  native?: boolean;
}

function nativeKQuant(values: Float32Array, out: Uint8Array, type: 4 | 6, options: KQuantOptions): boolean {
  if (options.native === false) return false;
  const state = nativeAddon();
  if (!state.ok) return false;
  state.addon.quantizeKQuant(values, out, type);
  return true;
}

/** quantize_row_q4_K_ref. */
export function quantizeQ4_K(values: Float32Array, options: KQuantOptions = {}): Uint8Array {
  const blocks = checkLength(values, QK_K, 'Q4_K');
  const out = new Uint8Array(blocks * Q4_K_BLOCK_BYTES);
  if (nativeKQuant(values, out, 4, options)) return out;
  const view = new DataView(out.buffer);
  const codes = new Uint8Array(QK_K);
  const scratch = new Uint8Array(32);
  const weights = new Float32Array(32);
  const scales = new Float32Array(QK_K / 32);
  const mins = new Float32Array(QK_K / 32);
  for (let b = 0; b < blocks; b++) {
    const x = values.subarray(b * QK_K, (b + 1) * QK_K);
    const at = b * Q4_K_BLOCK_BYTES;
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < QK_K / 32; j++) {
      const sub = x.subarray(32 * j, 32 * j + 32);
      let sumX2 = 0;
      for (let l = 0; l < 32; l++) sumX2 = f32(sumX2 + f32(sub[l]! * sub[l]!));
      // Importance of each value: the sub-block's RMS plus its own magnitude.
      const rms = f32(Math.sqrt(f32(sumX2 / 32)));
      for (let l = 0; l < 32; l++) weights[l] = f32(rms + Math.abs(sub[l]!));
      [scales[j], mins[j]] = fitScaleAndMin(sub, weights, 15, codes.subarray(32 * j, 32 * j + 32), scratch);
      maxScale = Math.max(maxScale, scales[j]!);
      maxMin = Math.max(maxMin, mins[j]!);
    }
    const invScale = maxScale > 0 ? f32(63 / maxScale) : 0;
    const invMin = maxMin > 0 ? f32(63 / maxMin) : 0;
    const packed = at + 4;
    for (let j = 0; j < QK_K / 32; j++) {
      const ls = Math.min(63, nearestInt(f32(invScale * scales[j]!)));
      const lm = Math.min(63, nearestInt(f32(invMin * mins[j]!)));
      if (j < 4) {
        out[packed + j] = ls;
        out[packed + j + 4] = lm;
      } else {
        out[packed + j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
        out[packed + j - 4] |= (ls >> 4) << 6;
        out[packed + j] |= (lm >> 4) << 6;
      }
    }
    view.setUint16(at, float32ToFloat16Bits(f32(maxScale / 63)), true);
    view.setUint16(at + 2, float32ToFloat16Bits(f32(maxMin / 63)), true);
    const d = storedF16(f32(maxScale / 63));
    const dmin = storedF16(f32(maxMin / 63));
    // Re-quantize against the scales as stored (6-bit codes times f16 d), which is what a reader sees.
    for (let j = 0; j < QK_K / 32; j++) {
      const [sc, m] = scaleMinK4(j, out, packed);
      const dj = f32(d * sc);
      if (dj === 0) continue;
      const mj = f32(dmin * m);
      for (let i = 0; i < 32; i++) codes[32 * j + i] = Math.max(0, Math.min(15, nearestInt(f32(f32(x[32 * j + i]! + mj) / dj))));
    }
    // 64 values per 32 bytes: value l low nibble, value l + 32 high nibble.
    const qs = at + 16;
    for (let j = 0; j < QK_K; j += 64) {
      for (let l = 0; l < 32; l++) out[qs + j / 2 + l] = codes[j + l]! | (codes[j + l + 32]! << 4);
    }
  }
  return out;
}

/**
 * make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL): a signed scale with x ≈ scale·(L − nmax),
 * L in [0, 2·nmax), weights x², refined over 18 stretched grids (in float64, as fitScaleAndMin).
 * Fills `codes`, returns the scale.
 */
function fitSignedScale(x: Float32Array, nmax: number, codes: Uint8Array): number {
  const n = x.length;
  let amax = 0;
  let max = 0;
  for (let i = 0; i < n; i++) {
    if (Math.abs(x[i]!) > amax) {
      amax = Math.abs(x[i]!);
      max = x[i]!;
    }
  }
  if (amax < GROUP_MAX_EPS) {
    codes.fill(0);
    return 0;
  }
  const codeAt = (iscale: number, v: number) => clamp(nearestInt(iscale * v), -nmax, nmax - 1);
  let iscale = -nmax / max;
  let sumLX = 0;
  let sumL2 = 0;
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    const l = codeAt(iscale, v);
    codes[i] = l + nmax;
    const w = v * v;
    sumLX += w * v * l;
    sumL2 += w * l * l;
  }
  let scale = sumL2 ? sumLX / sumL2 : 0;
  let best = scale * sumLX;
  for (let step = -9; step <= 9; step++) {
    if (step === 0) continue;
    iscale = -(nmax + 0.1 * step) / max;
    sumLX = 0;
    sumL2 = 0;
    for (let i = 0; i < n; i++) {
      const v = x[i]!;
      const l = codeAt(iscale, v);
      const w = v * v;
      sumLX += w * v * l;
      sumL2 += w * l * l;
    }
    if (sumL2 > 0 && sumLX * sumLX > best * sumL2) {
      for (let i = 0; i < n; i++) codes[i] = nmax + codeAt(iscale, x[i]!);
      scale = sumLX / sumL2;
      best = scale * sumLX;
    }
  }
  return scale;
}

/** quantize_row_q6_K_ref. */
export function quantizeQ6_K(values: Float32Array, options: KQuantOptions = {}): Uint8Array {
  const blocks = checkLength(values, QK_K, 'Q6_K');
  const out = new Uint8Array(blocks * Q6_K_BLOCK_BYTES);
  if (nativeKQuant(values, out, 6, options)) return out;
  const view = new DataView(out.buffer);
  const codes = new Uint8Array(QK_K);
  const scales = new Float32Array(QK_K / 16);
  const [ql, qh, sc, dAt] = [0, QK_K / 2, QK_K / 2 + QK_K / 4, QK_K / 2 + QK_K / 4 + QK_K / 16];
  for (let b = 0; b < blocks; b++) {
    const x = values.subarray(b * QK_K, (b + 1) * QK_K);
    const at = b * Q6_K_BLOCK_BYTES;
    let maxScale = 0;
    let maxAbsScale = 0;
    for (let j = 0; j < QK_K / 16; j++) {
      scales[j] = fitSignedScale(x.subarray(16 * j, 16 * j + 16), 32, codes.subarray(16 * j, 16 * j + 16));
      if (Math.abs(scales[j]!) > maxAbsScale) {
        maxAbsScale = Math.abs(scales[j]!);
        maxScale = scales[j]!;
      }
    }
    if (maxAbsScale < GROUP_MAX_EPS) continue; // all zeros, d = 0
    const iscale = f32(-128 / maxScale);
    view.setUint16(at + dAt, float32ToFloat16Bits(f32(1 / iscale)), true);
    const d = storedF16(f32(1 / iscale));
    for (let j = 0; j < QK_K / 16; j++) view.setInt8(at + sc + j, Math.min(127, nearestInt(f32(iscale * scales[j]!))));
    for (let j = 0; j < QK_K / 16; j++) {
      const dj = f32(d * view.getInt8(at + sc + j));
      if (dj === 0) continue;
      for (let i = 0; i < 16; i++) codes[16 * j + i] = Math.max(-32, Math.min(31, nearestInt(f32(x[16 * j + i]! / dj)))) + 32;
    }
    for (let j = 0; j < QK_K; j += 128) {
      const low = at + ql + j / 2;
      const high = at + qh + j / 4;
      for (let l = 0; l < 32; l++) {
        const [c0, c1, c2, c3] = [codes[j + l]!, codes[j + l + 32]!, codes[j + l + 64]!, codes[j + l + 96]!];
        out[low + l] = (c0 & 0x0f) | ((c2 & 0x0f) << 4);
        out[low + l + 32] = (c1 & 0x0f) | ((c3 & 0x0f) << 4);
        out[high + l] = (c0 >> 4) | ((c1 >> 4) << 2) | ((c2 >> 4) << 4) | ((c3 >> 4) << 6);
      }
    }
  }
  return out;
}
