/**
 * For the tests only: ggml's dequantizers (ggml-quants.c dequantize_row_q4_0 / q5_0 / q8_0 / q4_K /
 * q6_K), so a test can hold exactly the weight values llama.cpp reads from a quantized file.
 */
import { float16BitsToFloat32 } from '../io/dtype.ts';
import { Q4_0_BLOCK_BYTES, Q4_K_BLOCK_BYTES, Q5_0_BLOCK_BYTES, Q6_K_BLOCK_BYTES, QK4_0, QK_K, scaleMinK4 } from './gguf-quants.ts';
import type { GgmlTensorType } from './gguf-writer.ts';

export function dequantize(type: GgmlTensorType, bytes: Uint8Array, count: number): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(count);
  const f16 = (at: number) => float16BitsToFloat32(view.getUint16(at, true));
  if (type === 'F32') return new Float32Array(bytes.slice().buffer, 0, count);
  if (type === 'F16') {
    for (let i = 0; i < count; i++) out[i] = f16(2 * i);
  } else if (type === 'Q8_0') {
    for (let b = 0; b < count / 32; b++) for (let j = 0; j < 32; j++) out[32 * b + j] = f16(34 * b) * view.getInt8(34 * b + 2 + j);
  } else if (type === 'Q4_0') {
    for (let b = 0; b < count / QK4_0; b++) {
      const at = b * Q4_0_BLOCK_BYTES;
      const d = f16(at);
      for (let j = 0; j < 16; j++) {
        out[32 * b + j] = ((bytes[at + 2 + j]! & 0x0f) - 8) * d;
        out[32 * b + j + 16] = ((bytes[at + 2 + j]! >> 4) - 8) * d;
      }
    }
  } else if (type === 'Q5_0') {
    for (let b = 0; b < count / QK4_0; b++) {
      const at = b * Q5_0_BLOCK_BYTES;
      const d = f16(at);
      const high = view.getUint32(at + 2, true);
      for (let j = 0; j < 16; j++) {
        const h0 = ((high >>> j) << 4) & 0x10;
        const h1 = (high >>> (j + 12)) & 0x10;
        out[32 * b + j] = (((bytes[at + 6 + j]! & 0x0f) | h0) - 16) * d;
        out[32 * b + j + 16] = (((bytes[at + 6 + j]! >> 4) | h1) - 16) * d;
      }
    }
  } else if (type === 'Q4_K') {
    for (let b = 0; b < count / QK_K; b++) {
      const at = b * Q4_K_BLOCK_BYTES;
      const [d, dmin] = [f16(at), f16(at + 2)];
      let y = b * QK_K;
      for (let j = 0, sub = 0; j < QK_K; j += 64, sub += 2) {
        const q = at + 16 + j / 2;
        const [sc1, m1] = scaleMinK4(sub, bytes, at + 4);
        const [sc2, m2] = scaleMinK4(sub + 1, bytes, at + 4);
        for (let l = 0; l < 32; l++) out[y++] = d * sc1 * (bytes[q + l]! & 0x0f) - dmin * m1;
        for (let l = 0; l < 32; l++) out[y++] = d * sc2 * (bytes[q + l]! >> 4) - dmin * m2;
      }
    }
  } else if (type === 'Q6_K') {
    for (let b = 0; b < count / QK_K; b++) {
      const at = b * Q6_K_BLOCK_BYTES;
      const d = f16(at + QK_K / 2 + QK_K / 4 + QK_K / 16);
      for (let n = 0; n < QK_K; n += 128) {
        const ql = at + n / 2;
        const qh = at + QK_K / 2 + n / 4;
        const sc = at + QK_K / 2 + QK_K / 4 + n / 16;
        const y = b * QK_K + n;
        for (let l = 0; l < 32; l++) {
          const s = Math.floor(l / 16);
          const q1 = ((bytes[ql + l]! & 0x0f) | (((bytes[qh + l]! >> 0) & 3) << 4)) - 32;
          const q2 = ((bytes[ql + l + 32]! & 0x0f) | (((bytes[qh + l]! >> 2) & 3) << 4)) - 32;
          const q3 = ((bytes[ql + l]! >> 4) | (((bytes[qh + l]! >> 4) & 3) << 4)) - 32;
          const q4 = ((bytes[ql + l + 32]! >> 4) | (((bytes[qh + l]! >> 6) & 3) << 4)) - 32;
          out[y + l] = d * view.getInt8(sc + s) * q1;
          out[y + l + 32] = d * view.getInt8(sc + s + 2) * q2;
          out[y + l + 64] = d * view.getInt8(sc + s + 4) * q3;
          out[y + l + 96] = d * view.getInt8(sc + s + 6) * q4;
        }
      }
    }
  } else {
    throw new Error(`no dequantizer for ${String(type)}`);
  }
  return out;
}
