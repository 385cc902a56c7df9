/**
 * Property-based fuzzing of the safetensors reader (fast-check): random byte strings, a valid file
 * with random damage (bytes overwritten, inserted, cut, the header length rewritten), and headers built
 * from random entries. Every input either opens and reads back exactly the bytes its header points at,
 * all inside the file, or is refused with a LowrankError (BAD_SAFETENSORS, PICKLE_REFUSED), on one line,
 * within SLOWEST_INPUT_MS; no other exception type. The check of what was read decodes the file's
 * bytes with DataView, independently of the reader.
 */
import { afterAll, describe, it } from 'vitest';
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DTYPE_ITEM_SIZE, SafetensorsFile, type SafetensorsDtype } from '../../core/io/safetensors.ts';
import { checkProperty, classify, FUZZ_TEST_TIMEOUT_MS, newStats } from './fuzz-harness.ts';
import { scratchRoot } from './harness.ts';

const root = scratchRoot('fuzz-st');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
const file = path.join(root, 'fuzz.safetensors');
const REFUSALS = ['BAD_SAFETENSORS', 'PICKLE_REFUSED'] as const;
const EXPECTED = 'opens and reads exactly the bytes its header names, inside the file; or LowrankError BAD_SAFETENSORS/PICKLE_REFUSED, one line; nothing else; no input over 1 s';

function withLength(header: Buffer, data: Uint8Array): Uint8Array {
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(header.length), 0);
  return Buffer.concat([length, header, data]);
}

/** A valid file with one tensor of every dtype the reader takes, plus an empty one. */
function validFile(): Uint8Array {
  const specs: Array<[string, SafetensorsDtype, number[]]> = [
    ['a.f32', 'F32', [2, 3]],
    ['b.f16', 'F16', [4]],
    ['c.bf16', 'BF16', [2, 2]],
    ['d.i32', 'I32', [3]],
    ['e.i64', 'I64', [2]],
    ['f.empty', 'F32', [0, 5]],
  ];
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const [name, dtype, shape] of specs) {
    const bytes = shape.reduce((a, b) => a * b, 1) * DTYPE_ITEM_SIZE[dtype];
    header[name] = { dtype, shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const data = new Uint8Array(offset).map((_, i) => (i * 37 + 11) & 0xff);
  // Small I64 values (sign-extended), so the undamaged file reads whole.
  const view = new DataView(data.buffer);
  const i64 = (header['e.i64'] as { data_offsets: [number, number] }).data_offsets[0];
  view.setBigInt64(i64, -5n, true);
  view.setBigInt64(i64 + 8, 123456n, true);
  return withLength(Buffer.from(JSON.stringify(header)), data);
}
const VALID = validFile();

/**
 * Opens `bytes` (already written to `file`) and reads every tensor, checking each against the bytes
 * themselves. Throws a plain Error (failing the property) when what was read is not what the file holds.
 */
function openAndCheck(bytes: Uint8Array): void {
  const st = SafetensorsFile.open(file);
  try {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (const t of st.tensors.values()) {
      const count = t.shape.reduce((a, b) => a * b, 1);
      const start = st.dataStart + t.begin;
      const end = st.dataStart + t.end;
      if (!(t.begin <= t.end && end <= bytes.length)) throw new Error(`tensor ${t.name} [${t.begin}, ${t.end}) lies outside the ${bytes.length}-byte file`);
      if (end - start !== count * DTYPE_ITEM_SIZE[t.dtype]) throw new Error(`tensor ${t.name}: ${end - start} bytes for ${count} ${t.dtype}`);
      if (t.dtype === 'F32') {
        const got = st.readFloat32(t.name);
        for (let i = 0; i < count; i++) {
          if (new Uint32Array(got.buffer, 4 * i, 1)[0] !== view.getUint32(start + 4 * i, true)) throw new Error(`${t.name}[${i}] differs from the file`);
        }
      } else if (t.dtype === 'F16' || t.dtype === 'BF16') {
        const raw = st.readRaw16(t.name);
        for (let i = 0; i < count; i++) if (raw[i] !== view.getUint16(start + 2 * i, true)) throw new Error(`${t.name}[${i}] differs from the file`);
        if (st.readFloat32(t.name).length !== count) throw new Error(`${t.name}: wrong length as float32`);
      } else if (t.dtype === 'I32') {
        const got = st.readInt32(t.name);
        for (let i = 0; i < count; i++) if (got[i] !== view.getInt32(start + 4 * i, true)) throw new Error(`${t.name}[${i}] differs from the file`);
      } else {
        // I64 narrows to int32 or is refused (BAD_SAFETENSORS) when a value does not fit: never wrapped.
        const got = st.readInt32(t.name);
        for (let i = 0; i < count; i++) if (BigInt(got[i]!) !== view.getBigInt64(start + 8 * i, true)) throw new Error(`${t.name}[${i}] differs from the file`);
      }
    }
  } finally {
    st.close();
  }
}

const stats = { bytes: newStats(), damaged: newStats(), fields: newStats(), headers: newStats() };

/** One damage to a byte string. */
const damage = fc.oneof(
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('length' as const), value: fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.bigInt({ min: 0n, max: 600n })) }),
);
type Damage = typeof damage extends fc.Arbitrary<infer T> ? T : never;

function applyDamage(bytes: Uint8Array, d: Damage): Uint8Array {
  const b = Buffer.from(bytes);
  if (d.kind === 'length') {
    if (b.length >= 8) b.writeBigUInt64LE(d.value, 0);
    return b;
  }
  const at = b.length === 0 ? 0 : d.at % (b.length + 1);
  if (d.kind === 'set') {
    if (at < b.length) b[at] = d.value;
    return b;
  }
  if (d.kind === 'insert') return Buffer.concat([b.subarray(0, at), Buffer.from([d.value]), b.subarray(at)]);
  if (d.kind === 'delete') return Buffer.concat([b.subarray(0, at), b.subarray(at + 1)]);
  return b.subarray(0, at);
}

/** A number where a header wants a count: mostly small and valid, sometimes negative, fractional or huge. */
const count = fc.oneof(
  { weight: 6, arbitrary: fc.nat({ max: 6 }) },
  { weight: 1, arbitrary: fc.integer({ min: -3, max: -1 }) },
  { weight: 1, arbitrary: fc.constantFrom(2 ** 53, 4294967296, 1e300) },
  { weight: 1, arbitrary: fc.double({ min: 0, max: 4, noNaN: true }) },
);
const dtypes = fc.oneof({ weight: 4, arbitrary: fc.constantFrom('F32', 'F16', 'BF16', 'I32', 'I64') }, { weight: 1, arbitrary: fc.constantFrom('F64', 'U8', 'F8_E4M3', 'f32', '') });
const offsets = fc.oneof({ weight: 6, arbitrary: fc.tuple(fc.nat({ max: 80 }), fc.nat({ max: 80 })) }, { weight: 1, arbitrary: fc.array(count, { maxLength: 3 }) });
/** A header entry as a corrupt or hostile writer might put it: mostly near-valid, so the span, overlap and size checks are reached. */
const entry = fc.oneof(
  { weight: 6, arbitrary: fc.record({ dtype: dtypes, shape: fc.array(count, { maxLength: 3 }), data_offsets: offsets }) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) },
);
const header = fc.tuple(fc.dictionary(fc.string({ maxLength: 6 }), entry, { maxKeys: 4 }), fc.option(fc.jsonValue({ maxDepth: 1 })));

/** The valid file with one header field of one tensor changed (its data bytes stay where they are). */
const fieldChange = fc.record({
  tensor: fc.nat(),
  field: fc.constantFrom('dtype', 'shape', 'shape[i]', 'data_offsets[0]', 'data_offsets[1]', 'remove'),
  index: fc.nat(),
  dtype: dtypes,
  count,
  shape: fc.array(count, { maxLength: 3 }),
});
type FieldChange = typeof fieldChange extends fc.Arbitrary<infer T> ? T : never;

function changeField(bytes: Uint8Array, c: FieldChange): Uint8Array {
  const length = Number(Buffer.from(bytes).readBigUInt64LE(0));
  const h = JSON.parse(Buffer.from(bytes.subarray(8, 8 + length)).toString('utf8')) as Record<string, Record<string, unknown>>;
  const names = Object.keys(h).filter((n) => n !== '__metadata__');
  const name = names[c.tensor % names.length]!;
  const t = h[name]!;
  if (c.field === 'dtype') t.dtype = c.dtype;
  else if (c.field === 'shape') t.shape = c.shape;
  else if (c.field === 'shape[i]') (t.shape as number[])[c.index % Math.max(1, (t.shape as number[]).length)] = c.count;
  else if (c.field === 'remove') delete h[name];
  else (t.data_offsets as number[])[c.field === 'data_offsets[0]' ? 0 : 1] = c.count;
  return withLength(Buffer.from(JSON.stringify(h)), bytes.subarray(8 + length));
}

describe('fuzzing the safetensors reader', () => {
  it('random bytes: LowrankError or a consistent file, never another exception', async () => {
    // Half the time the first 8 bytes say a header length that fits, so the bytes reach the UTF-8 and JSON checks.
    const property = fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), fc.boolean(), fc.nat(), async (random, fitLength, n) => {
      const bytes = Buffer.from(random);
      if (fitLength && bytes.length >= 8) bytes.writeBigUInt64LE(BigInt(n % (bytes.length - 7)), 0);
      fs.writeFileSync(file, bytes);
      await classify(stats.bytes, REFUSALS, () => openAndCheck(bytes));
    });
    await checkProperty({ group: 'safetensors', name: 'random byte strings (0-300 bytes; half with a header length that fits)', expected: EXPECTED, numRuns: 3000, timeLimitMs: 5000 }, property, stats.bytes);
  }, FUZZ_TEST_TIMEOUT_MS);

  it('a valid file with 1-4 random damages: LowrankError or a consistent file', async () => {
    const property = fc.asyncProperty(fc.array(damage, { minLength: 1, maxLength: 4 }), async (damages) => {
      const bytes = damages.reduce(applyDamage, VALID);
      fs.writeFileSync(file, bytes);
      await classify(stats.damaged, REFUSALS, () => openAndCheck(bytes));
    });
    await checkProperty(
      { group: 'safetensors', name: 'a valid 6-tensor file with 1-4 damages (bytes set/inserted/deleted, cut, header length rewritten)', expected: EXPECTED, numRuns: 3000, timeLimitMs: 6000 },
      property,
      stats.damaged,
    );
  }, FUZZ_TEST_TIMEOUT_MS);

  it('a valid file with one header field changed: LowrankError or a consistent file', async () => {
    const property = fc.asyncProperty(fieldChange, async (c) => {
      const bytes = changeField(VALID, c);
      fs.writeFileSync(file, bytes);
      await classify(stats.fields, REFUSALS, () => openAndCheck(bytes));
    });
    await checkProperty(
      { group: 'safetensors', name: 'a valid 6-tensor file with one header field changed (dtype, shape, a dimension, an offset, or a tensor removed)', expected: EXPECTED, numRuns: 3000, timeLimitMs: 6000 },
      property,
      stats.fields,
    );
  }, FUZZ_TEST_TIMEOUT_MS);

  it('headers of random entries over random data: LowrankError or a consistent file', async () => {
    const property = fc.asyncProperty(header, fc.uint8Array({ maxLength: 64 }), async ([entries, metadata], data) => {
      const h: Record<string, unknown> = { ...entries };
      if (metadata !== null) h.__metadata__ = metadata;
      const bytes = withLength(Buffer.from(JSON.stringify(h)), data);
      fs.writeFileSync(file, bytes);
      await classify(stats.headers, REFUSALS, () => openAndCheck(bytes));
    });
    await checkProperty(
      { group: 'safetensors', name: 'headers of random entries (dtype, shape, data_offsets near-valid or any JSON) over 0-64 data bytes', expected: EXPECTED, numRuns: 3000, timeLimitMs: 6000 },
      property,
      stats.headers,
    );
  }, FUZZ_TEST_TIMEOUT_MS);
});
