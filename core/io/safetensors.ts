/**
 * The safetensors format (https://github.com/huggingface/safetensors#format): an 8-byte
 * little-endian header length N, N bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]},
 * "__metadata__": {str: str}}`, then the raw little-endian tensor bytes, offsets relative to 8 + N.
 *
 * Reading never maps or slurps the file: `open` reads the header only, and each tensor is read with
 * positioned reads straight into its output array, so a multi-GB checkpoint is never held twice.
 * Folder-level loading (single file, sharded index, refusing pickles) is in checkpoint-reader.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { bfloat16ToFloat32, float16ToFloat32, float32ToBfloat16, float32ToFloat16 } from './dtype.ts';
import { isJsonObject } from './hf-folder.ts';
import { describeJsonError } from './json-error.ts';
// Circular on purpose: checkpoint-reader.ts builds on SafetensorsFile; both sides only use the
// other's exports inside functions, never while the modules are being evaluated.
import { refusePickle } from './checkpoint-reader.ts';

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16' | 'I32' | 'I64';
export type WritableDtype = 'F32' | 'F16' | 'BF16' | 'I32';

export const DTYPE_ITEM_SIZE: Readonly<Record<SafetensorsDtype, number>> = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8 };

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Byte range of the tensor, relative to the start of the data region (as in the header). */
  begin: number;
  end: number;
}

export interface TensorToWrite {
  name: string;
  shape: number[];
  data: Float32Array | Int32Array;
  /** Default: F32 for Float32Array, I32 for Int32Array. F16/BF16 take a Float32Array and round to nearest even. */
  dtype?: WritableDtype;
}

/** The Python/Rust library refuses headers above 100 MB; a larger length means a corrupt or foreign file. */
const MAX_HEADER_BYTES = 100_000_000;
/** Conversion and write chunk: big enough for full-speed I/O, small enough not to double peak memory. */
const CHUNK_BYTES = 16 << 20;
const REFETCH = 're-download or re-export it';
const ZIP_MAGIC = Buffer.from('PK\x03\x04', 'latin1');

// Typed arrays use the platform's byte order and the format is little-endian; every platform
// Electron and Node ship for is little-endian, so say so loudly rather than read garbage.
if (os.endianness() !== 'LE') throw new Error('core/io/safetensors: big-endian platforms are not supported');

function bad(file: string, detail: string): never {
  throw new LowrankError('BAD_SAFETENSORS', `${file}: ${detail}`);
}

function quote(name: string): string {
  return JSON.stringify(name); // escapes newlines, so a hostile tensor name cannot break the one-line message
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export class SafetensorsFile {
  readonly path: string;
  /** In file (offset) order. */
  readonly tensors: Map<string, TensorInfo>;
  readonly metadata: Record<string, string>;
  /** Byte offset of the data region: 8 + header length. */
  readonly dataStart: number;
  private fd: number | null;

  private constructor(file: string, fd: number, tensors: Map<string, TensorInfo>, metadata: Record<string, string>, dataStart: number) {
    this.path = file;
    this.fd = fd;
    this.tensors = tensors;
    this.metadata = metadata;
    this.dataStart = dataStart;
  }

  /** Reads and validates the header (not the data). The file stays open until close(). */
  static open(file: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') throw new LowrankError('FILE_NOT_FOUND', `${file} not found; check the path`);
      bad(file, `cannot open (${code ?? String(e)})`);
    }
    try {
      const stat = fs.fstatSync(fd);
      if (stat.isDirectory()) throw new LowrankError('BAD_ARGUMENT', `${file} is a folder, expected a .safetensors file`);
      const size = stat.size;
      if (size < 8) bad(file, `only ${size} bytes, too short for the 8-byte header length: the file is truncated; ${REFETCH}`);
      const lengthBytes = Buffer.alloc(8);
      readFully(fd, lengthBytes, 0, file);
      const headerLength = lengthBytes.readBigUInt64LE(0);
      if (headerLength > BigInt(size - 8) || headerLength > BigInt(MAX_HEADER_BYTES)) {
        // A renamed torch.save file (a zip, or a raw pickle) gets the pickle explanation, not "corrupt".
        if (lengthBytes.subarray(0, 4).equals(ZIP_MAGIC) || (lengthBytes[0] === 0x80 && lengthBytes[1]! >= 2 && lengthBytes[1]! <= 5)) {
          refusePickle(file);
        }
      }
      if (headerLength > BigInt(size - 8)) {
        bad(file, `header longer than the file (header says ${headerLength} bytes, file has ${size - 8} after the length): truncated or not a safetensors file; ${REFETCH}`);
      }
      const n = Number(headerLength);
      if (n > MAX_HEADER_BYTES) bad(file, `header length ${n} bytes is over the 100 MB limit: not a safetensors file`);
      if (n < 2) bad(file, `header length ${n} is too short to hold a JSON object: not a safetensors file`);
      const headerBytes = Buffer.alloc(n);
      readFully(fd, headerBytes, 8, file);
      const { tensors, metadata } = parseHeader(file, headerBytes, size - 8 - n);
      return new SafetensorsFile(file, fd, tensors, metadata, 8 + n);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new LowrankError('MISSING_WEIGHT', `${this.path}: no tensor named ${quote(name)}`);
    return info;
  }

  /** The tensor as float32, converting F16/BF16. Integer tensors are refused (use readInt32). */
  readFloat32(name: string): Float32Array {
    const info = this.info(name);
    const count = elementCount(info.shape);
    const out = new Float32Array(count);
    if (info.dtype === 'F32') {
      this.readBytes(info.begin, new Uint8Array(out.buffer));
      return out;
    }
    if (info.dtype !== 'F16' && info.dtype !== 'BF16') {
      throw new LowrankError('SHAPE_MISMATCH', `${this.path}: tensor ${quote(name)} is ${info.dtype}, expected a float tensor (F32, F16 or BF16)`);
    }
    // Convert in chunks through one scratch buffer: peak memory is the float32 output plus 16 MiB.
    const convert = info.dtype === 'F16' ? float16ToFloat32 : bfloat16ToFloat32;
    const scratch = new Uint16Array(Math.min(count, CHUNK_BYTES / 2));
    for (let start = 0; start < count; start += scratch.length) {
      const part = scratch.subarray(0, Math.min(scratch.length, count - start));
      this.readBytes(info.begin + start * 2, new Uint8Array(part.buffer, 0, part.byteLength));
      convert(part, out.subarray(start, start + part.length));
    }
    return out;
  }

  /** An F16 or BF16 tensor's raw 16-bit values, unconverted (for weights kept in their stored precision). */
  readRaw16(name: string): Uint16Array {
    const info = this.info(name);
    if (info.dtype !== 'F16' && info.dtype !== 'BF16') {
      throw new LowrankError('SHAPE_MISMATCH', `${this.path}: tensor ${quote(name)} is ${info.dtype}, expected F16 or BF16`);
    }
    const out = new Uint16Array(elementCount(info.shape));
    this.readBytes(info.begin, new Uint8Array(out.buffer));
    return out;
  }

  /** The tensor as int32: I32 as is, I64 narrowed (an out-of-range value is an error, never a silent wrap). */
  readInt32(name: string): Int32Array {
    const info = this.info(name);
    const count = elementCount(info.shape);
    const out = new Int32Array(count);
    if (info.dtype === 'I32') {
      this.readBytes(info.begin, new Uint8Array(out.buffer));
      return out;
    }
    if (info.dtype !== 'I64') {
      throw new LowrankError('SHAPE_MISMATCH', `${this.path}: tensor ${quote(name)} is ${info.dtype}, expected an integer tensor (I32 or I64)`);
    }
    // Each int64 is a (low, high) int32 pair; it fits in int32 exactly when high is low's sign extension.
    const scratch = new Int32Array(Math.min(count, CHUNK_BYTES / 8) * 2);
    for (let start = 0; start < count; start += scratch.length / 2) {
      const pairs = Math.min(scratch.length / 2, count - start);
      this.readBytes(info.begin + start * 8, new Uint8Array(scratch.buffer, 0, pairs * 8));
      for (let i = 0; i < pairs; i++) {
        const low = scratch[2 * i]!;
        if (scratch[2 * i + 1] !== low >> 31) {
          const value = new BigInt64Array(scratch.buffer, 8 * i, 1)[0];
          throw new LowrankError('BAD_SAFETENSORS', `${this.path}: tensor ${quote(name)} element ${start + i} is ${value}, outside the int32 range`);
        }
        out[start + i] = low;
      }
    }
    return out;
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }

  private readBytes(begin: number, target: Uint8Array): void {
    if (this.fd === null) throw new LowrankError('BAD_ARGUMENT', `${this.path}: read after close()`);
    readFully(this.fd, target, this.dataStart + begin, this.path);
  }
}

/** Positioned read that loops over short reads; a file that shrank since open() reads as truncated. */
function readFully(fd: number, target: Uint8Array, position: number, file: string): void {
  let done = 0;
  while (done < target.length) {
    // Node caps one read at 2 GiB; stay well below it.
    const got = fs.readSync(fd, target, done, Math.min(target.length - done, 1 << 30), position + done);
    if (got === 0) bad(file, `the file is truncated: it ends at byte ${position + done}, before byte ${position + target.length}; ${REFETCH}`);
    done += got;
  }
}

function parseHeader(file: string, headerBytes: Buffer, dataBytes: number): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    bad(file, `header is not valid UTF-8: not a safetensors file, or corrupt; ${REFETCH}`);
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch {
    bad(file, `header is not valid JSON (${describeJsonError(text)}): not a safetensors file, or corrupt; ${REFETCH}`);
  }
  if (!isJsonObject(header)) bad(file, 'header is not a JSON object: not a safetensors file');

  const metadata: Record<string, string> = {};
  const list: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isJsonObject(entry)) bad(file, '"__metadata__" in the header is not an object');
      // The format says string values; other writers sometimes store numbers. Keep them as text.
      for (const [key, value] of Object.entries(entry)) metadata[key] = typeof value === 'string' ? value : JSON.stringify(value);
      continue;
    }
    list.push(parseEntry(file, name, entry));
  }
  list.sort((a, b) => a.begin - b.begin || a.end - b.end);
  // The format requires the buffers to be contiguous and not to overlap (the reference library refuses
  // both): two tensors sharing bytes would alias, and a gap hides data no tensor owns.
  for (let i = 1; i < list.length; i++) {
    const [previous, t] = [list[i - 1], list[i]];
    if (t.begin < previous.end && t.end > t.begin && previous.end > previous.begin) {
      bad(file, `tensors ${quote(previous.name)} (bytes ${previous.begin}–${previous.end}) and ${quote(t.name)} (bytes ${t.begin}–${t.end}) overlap in data_offsets; the header is corrupt, ${REFETCH}`);
    }
  }
  const needed = list.reduce((most, t) => Math.max(most, t.end), 0);
  if (needed > dataBytes) {
    const expected = 8 + headerBytes.length + needed;
    const has = 8 + headerBytes.length + dataBytes;
    bad(file, `the file is truncated: expected ${expected} bytes, has ${has}; ${REFETCH}`);
  }
  return { tensors: new Map(list.map((t) => [t.name, t])), metadata };
}

function parseEntry(file: string, name: string, entry: unknown): TensorInfo {
  const where = `tensor ${quote(name)}`;
  if (!isJsonObject(entry)) bad(file, `${where}: expected {"dtype", "shape", "data_offsets"} in the header`);
  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_ITEM_SIZE, dtype)) {
    bad(file, `${where} has dtype ${JSON.stringify(dtype)}, which Lowrank Studio does not read (it reads F32, F16, BF16, I32, I64); convert the checkpoint to F32, F16 or BF16`);
  }
  const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    bad(file, `${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1]) {
    bad(file, `${where}: data_offsets ${JSON.stringify(offsets)} is not [begin, end] with 0 <= begin <= end`);
  }
  const itemSize = DTYPE_ITEM_SIZE[dtype as SafetensorsDtype];
  const bytes = elementCount(shape) * itemSize;
  if (!Number.isSafeInteger(bytes)) bad(file, `${where}: shape ${JSON.stringify(shape)} is impossibly large`);
  const [begin, end] = offsets as [number, number];
  if (end - begin !== bytes) {
    bad(file, `${where}: data_offsets [${begin}, ${end}] span ${end - begin} bytes, but shape ${JSON.stringify(shape)} of ${dtype} needs ${bytes}; the header is inconsistent, ${REFETCH}`);
  }
  return { name, dtype: dtype as SafetensorsDtype, shape: [...shape] as number[], begin, end };
}

// ---------------------------------------------------------------------------------------------
// Writing

/**
 * Position of each dtype in the Rust library's `Dtype` enum (declared in increasing alignment),
 * which `safetensors.serialize` sorts by, descending, then by name: same order, same bytes.
 */
const DTYPE_ORDER: Record<WritableDtype, number> = { F16: 7, BF16: 8, I32: 9, F32: 11 };

interface PlannedTensor {
  name: string;
  nameBytes: Buffer;
  dtype: WritableDtype;
  shape: number[];
  data: Float32Array | Int32Array;
  bytes: number;
}

/**
 * Writes a .safetensors file like the Python library does (tensor order, space-padded header),
 * atomically: into `<path>.tmp-<pid>`, fsync, rename, so a crash never leaves a half-written file
 * under the real name. Data goes out in chunks, never as one file-sized buffer.
 */
export function writeSafetensors(file: string, tensors: TensorToWrite[], metadata?: Record<string, string>): void {
  const plan = tensors.map(planTensor);
  const seen = new Set<string>();
  for (const t of plan) {
    if (seen.has(t.name)) throw new LowrankError('BAD_ARGUMENT', `writeSafetensors ${file}: tensor ${quote(t.name)} given twice`);
    seen.add(t.name);
  }
  plan.sort((a, b) => DTYPE_ORDER[b.dtype] - DTYPE_ORDER[a.dtype] || Buffer.compare(a.nameBytes, b.nameBytes));

  // Built by hand, not JSON.stringify(object): JS objects move integer-like keys ("0", "1") first.
  const entries: string[] = [];
  if (metadata) {
    const fields = Object.entries(metadata).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(String(v))}`);
    entries.push(`"__metadata__":{${fields.join(',')}}`);
  }
  let offset = 0;
  for (const t of plan) {
    const info = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes] };
    entries.push(`${JSON.stringify(t.name)}:${JSON.stringify(info)}`);
    offset += t.bytes;
  }
  const json = Buffer.from(`{${entries.join(',')}}`, 'utf8');
  // Pad with spaces so the data region starts 8-byte aligned, as the Python library does.
  const header = Buffer.alloc(8 + json.length + ((8 - (json.length % 8)) % 8), 0x20);
  header.writeBigUInt64LE(BigInt(header.length - 8), 0);
  json.copy(header, 8);

  const temporary = `${file}.tmp-${process.pid}`;
  let fd: number | null = null;
  try {
    fd = fs.openSync(temporary, 'w');
    writeFully(fd, header);
    for (const t of plan) writeTensorData(fd, t);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(temporary, file);
  } catch (e) {
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(temporary, { force: true });
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOSPC' ? 'the disk is full' : code === 'ENOENT' ? 'the folder does not exist' : (code ?? String(e));
    throw new LowrankError('WRITE_FAILED', `cannot write ${file}: ${why}`);
  }
  syncFolder(path.dirname(file));
}

function planTensor(t: TensorToWrite): PlannedTensor {
  const where = `writeSafetensors: tensor ${quote(t.name)}`;
  const isFloat = t.data instanceof Float32Array;
  const dtype = t.dtype ?? (isFloat ? 'F32' : 'I32');
  if (!Object.hasOwn(DTYPE_ORDER, dtype)) throw new LowrankError('BAD_ARGUMENT', `${where}: cannot write dtype ${dtype}`);
  if ((dtype === 'I32') === isFloat) {
    throw new LowrankError('BAD_ARGUMENT', `${where}: dtype ${dtype} needs ${dtype === 'I32' ? 'an Int32Array' : 'a Float32Array'}`);
  }
  if (t.name === '__metadata__') throw new LowrankError('BAD_ARGUMENT', `${where}: the name is reserved by the format`);
  if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0) || elementCount(t.shape) !== t.data.length) {
    throw new LowrankError('BAD_ARGUMENT', `${where}: shape ${JSON.stringify(t.shape)} does not hold ${t.data.length} values`);
  }
  const bytes = t.data.length * (dtype === 'F16' || dtype === 'BF16' ? 2 : 4);
  return { name: t.name, nameBytes: Buffer.from(t.name, 'utf8'), dtype, shape: [...t.shape], data: t.data, bytes };
}

function writeTensorData(fd: number, t: PlannedTensor): void {
  const data = t.data;
  if (t.dtype === 'F32' || t.dtype === 'I32') {
    // Write straight from the array's memory, a chunk at a time (no copy).
    const all = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    for (let start = 0; start < all.length; start += CHUNK_BYTES) writeFully(fd, all.subarray(start, start + CHUNK_BYTES));
    return;
  }
  const convert = t.dtype === 'F16' ? float32ToFloat16 : float32ToBfloat16;
  const scratch = new Uint16Array(Math.min(data.length, CHUNK_BYTES / 2));
  for (let start = 0; start < data.length; start += scratch.length) {
    const part = scratch.subarray(0, Math.min(scratch.length, data.length - start));
    convert(data.subarray(start, start + part.length) as Float32Array, part);
    writeFully(fd, new Uint8Array(part.buffer, 0, part.byteLength));
  }
}

function writeFully(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length; ) done += fs.writeSync(fd, bytes, done, bytes.length - done);
}

/** Makes a rename into `folder` durable. Best effort: Windows cannot open a folder for fsync, and that is fine there. */
export function syncFolder(folder: string): void {
  try {
    const fd = fs.openSync(folder, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // ignored, see above
  }
}

export { CheckpointReader, isPickleFile } from './checkpoint-reader.ts';
export { refusePickle };
