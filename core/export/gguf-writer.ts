/**
 * The GGUF v3 container (ggml's docs/gguf.md; the reader is ggml/src/gguf.cpp): little-endian
 * header `GGUF`, version 3, tensor count (u64), metadata count (u64); typed key/value metadata;
 * tensor infos (name, n_dims, ne[] innermost first, ggml type, offset into the data section); zero
 * padding to the alignment (32 unless `general.alignment` says otherwise); then each tensor's
 * bytes at its offset, every tensor padded to the alignment. Tensors are encoded and written one at
 * a time, so a model never sits in memory twice.
 */
import * as fs from 'node:fs';
import { LowrankError } from '../errors.ts';
import { float32ToFloat16, float32ToFloat16Bits } from '../io/dtype.ts';
import { Q4_0_BLOCK_BYTES, Q4_K_BLOCK_BYTES, Q5_0_BLOCK_BYTES, Q6_K_BLOCK_BYTES, QK4_0, QK_K, quantizeQ4_0, quantizeQ4_K, quantizeQ5_0, quantizeQ6_K } from './gguf-quants.ts';

export const GGUF_MAGIC = 'GGUF';
export const GGUF_VERSION = 3;
export const GGUF_ALIGNMENT = 32;

/** gguf_type: the metadata value types. */
export const GGUF_VALUE_TYPE = { u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12 } as const;

/** ggml_type ids of the tensor types written here. */
export const GGML_TYPE = { F32: 0, F16: 1, Q4_0: 2, Q5_0: 6, Q8_0: 8, Q4_K: 12, Q6_K: 14 } as const;
export type GgmlTensorType = keyof typeof GGML_TYPE;

/** Q8_0: blocks of 32 values along the innermost axis, each an f16 scale + 32 int8 (ggml-common.h block_q8_0). */
export const Q8_0_BLOCK = 32;
const Q8_0_BLOCK_BYTES = 2 + Q8_0_BLOCK;

/** Values per block along the innermost axis and bytes per block (ggml's type traits). */
export const BLOCK: Record<GgmlTensorType, { values: number; bytes: number }> = {
  F32: { values: 1, bytes: 4 },
  F16: { values: 1, bytes: 2 },
  Q4_0: { values: QK4_0, bytes: Q4_0_BLOCK_BYTES },
  Q5_0: { values: QK4_0, bytes: Q5_0_BLOCK_BYTES },
  Q8_0: { values: Q8_0_BLOCK, bytes: Q8_0_BLOCK_BYTES },
  Q4_K: { values: QK_K, bytes: Q4_K_BLOCK_BYTES },
  Q6_K: { values: QK_K, bytes: Q6_K_BLOCK_BYTES },
};

export type GgufValue =
  | { type: 'u32' | 'i32' | 'f32' | 'u64'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; itemType: 'string'; value: string[] }
  | { type: 'array'; itemType: 'i32' | 'f32' | 'u32'; value: number[] };

export const gguf = {
  u32: (value: number): GgufValue => ({ type: 'u32', value }),
  i32: (value: number): GgufValue => ({ type: 'i32', value }),
  f32: (value: number): GgufValue => ({ type: 'f32', value }),
  bool: (value: boolean): GgufValue => ({ type: 'bool', value }),
  string: (value: string): GgufValue => ({ type: 'string', value }),
  strings: (value: string[]): GgufValue => ({ type: 'array', itemType: 'string', value }),
  i32s: (value: number[]): GgufValue => ({ type: 'array', itemType: 'i32', value }),
  f32s: (value: number[]): GgufValue => ({ type: 'array', itemType: 'f32', value }),
};

export interface GgufTensor {
  name: string;
  /** Row-major shape as PyTorch has it; GGUF stores it reversed (ne[0] is the innermost axis). */
  shape: number[];
  type: GgmlTensorType;
  /** Produces the float32 values when the tensor is written. */
  read(): Float32Array;
}

export function tensorByteSize(shape: readonly number[], type: GgmlTensorType): number {
  const count = shape.reduce((a, b) => a * b, 1);
  return (count / BLOCK[type].values) * BLOCK[type].bytes;
}

/** ggml's quantize_row_q8_0_ref: d = max|x|/127 (stored f16), q = roundf(x / d) computed as x·(1/d) in float32. */
export function quantizeQ8_0(values: Float32Array): Uint8Array {
  if (values.length % Q8_0_BLOCK !== 0) throw new Error(`internal: Q8_0 needs a multiple of ${Q8_0_BLOCK} values, got ${values.length}`);
  const blocks = values.length / Q8_0_BLOCK;
  const out = new Uint8Array(blocks * Q8_0_BLOCK_BYTES);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    const start = b * Q8_0_BLOCK;
    let amax = 0;
    for (let j = 0; j < Q8_0_BLOCK; j++) amax = Math.max(amax, Math.abs(values[start + j]!));
    const d = Math.fround(amax / 127);
    const id = d === 0 ? 0 : Math.fround(1 / d);
    const at = b * Q8_0_BLOCK_BYTES;
    view.setUint16(at, float32ToFloat16Bits(d), true);
    for (let j = 0; j < Q8_0_BLOCK; j++) {
      const v = Math.fround(values[start + j]! * id);
      view.setInt8(at + 2 + j, Math.sign(v) * Math.floor(Math.abs(v) + 0.5)); // roundf: halves away from zero
    }
  }
  return out;
}

/** The bytes of `values` stored as `type` (rows along the innermost axis, blocks within rows). */
export function encodeValues(type: GgmlTensorType, values: Float32Array): Uint8Array {
  if (type === 'F32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  if (type === 'F16') return new Uint8Array(float32ToFloat16(values).buffer);
  if (type === 'Q4_0') return quantizeQ4_0(values);
  if (type === 'Q5_0') return quantizeQ5_0(values);
  if (type === 'Q4_K') return quantizeQ4_K(values);
  if (type === 'Q6_K') return quantizeQ6_K(values);
  return quantizeQ8_0(values);
}

function encodeTensor(t: GgufTensor, values: Float32Array): Uint8Array {
  const count = t.shape.reduce((a, b) => a * b, 1);
  if (values.length !== count) throw new Error(`internal: tensor ${t.name} read ${values.length} values for shape [${t.shape.join(', ')}]`);
  return encodeValues(t.type, values);
}

/** Grows as header bytes are appended; the header holds every metadata string (a vocabulary is a few MB). */
class ByteSink {
  private chunks: Buffer[] = [];
  length = 0;
  private push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  i32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.push(b);
  }
  u64(v: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  f32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.push(b);
  }
  bool(v: boolean): void {
    this.push(Buffer.from([v ? 1 : 0]));
  }
  string(s: string): void {
    const bytes = Buffer.from(s, 'utf8');
    this.u64(bytes.length);
    this.push(bytes);
  }
  padTo(alignment: number): void {
    const pad = (alignment - (this.length % alignment)) % alignment;
    if (pad > 0) this.push(Buffer.alloc(pad));
  }
  concat(): Buffer {
    return Buffer.concat(this.chunks, this.length);
  }
}

function writeValue(sink: ByteSink, v: GgufValue): void {
  switch (v.type) {
    case 'u32': return sink.u32(v.value);
    case 'i32': return sink.i32(v.value);
    case 'f32': return sink.f32(v.value);
    case 'u64': return sink.u64(v.value);
    case 'bool': return sink.bool(v.value);
    case 'string': return sink.string(v.value);
    case 'array': {
      sink.u32(GGUF_VALUE_TYPE[v.itemType]);
      sink.u64(v.value.length);
      for (const item of v.value as (string | number)[]) {
        if (v.itemType === 'string') sink.string(item as string);
        else if (v.itemType === 'f32') sink.f32(item as number);
        else if (v.itemType === 'i32') sink.i32(item as number);
        else sink.u32(item as number);
      }
    }
  }
}

/** Writes a GGUF v3 file. Keys must be unique; tensor names at most 63 bytes (GGML_MAX_NAME - 1). */
export function writeGguf(file: string, metadata: [string, GgufValue][], tensors: GgufTensor[]): void {
  const keys = new Set<string>();
  for (const [key] of metadata) {
    if (keys.has(key)) throw new Error(`internal: GGUF key ${key} given twice`);
    keys.add(key);
  }
  const header = new ByteSink();
  header.u32(Buffer.from(GGUF_MAGIC, 'latin1').readUInt32LE(0));
  header.u32(GGUF_VERSION);
  header.u64(tensors.length);
  header.u64(metadata.length);
  for (const [key, value] of metadata) {
    header.string(key);
    header.u32(GGUF_VALUE_TYPE[value.type]);
    writeValue(header, value);
  }
  let offset = 0;
  for (const t of tensors) {
    if (Buffer.byteLength(t.name, 'utf8') >= 64) throw new Error(`internal: GGUF tensor name ${t.name} is longer than 63 bytes`);
    if (t.shape[t.shape.length - 1]! % BLOCK[t.type].values !== 0) {
      throw new Error(`internal: ${t.type} tensor ${t.name} has a row length that is not a multiple of ${BLOCK[t.type].values}`);
    }
    header.string(t.name);
    header.u32(t.shape.length);
    for (let i = t.shape.length - 1; i >= 0; i--) header.u64(t.shape[i]!);
    header.u32(GGML_TYPE[t.type]);
    header.u64(offset);
    offset += tensorByteSize(t.shape, t.type);
    offset += (GGUF_ALIGNMENT - (offset % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT;
  }
  header.padTo(GGUF_ALIGNMENT);

  const fd = fs.openSync(file, 'w');
  try {
    writeFully(fd, header.concat());
    const zeros = new Uint8Array(GGUF_ALIGNMENT);
    for (const t of tensors) {
      const bytes = encodeTensor(t, t.read());
      writeFully(fd, bytes);
      const pad = (GGUF_ALIGNMENT - (bytes.length % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT;
      writeFully(fd, zeros.subarray(0, pad));
    }
    fs.fsyncSync(fd);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new LowrankError('WRITE_FAILED', `cannot write ${file}: ${code === 'ENOSPC' ? 'the disk is full' : (code ?? String(e))}`);
  } finally {
    fs.closeSync(fd);
  }
}

function writeFully(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length; ) done += fs.writeSync(fd, bytes, done, bytes.length - done);
}
