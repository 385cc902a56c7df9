import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { float16BitsToFloat32 } from './dtype.ts';
import { SafetensorsFile, writeSafetensors } from './safetensors.ts';
import { expectLowrankError, float32Bytes, handWrittenSafetensors, scratchFolder } from './test-helpers.ts';

const dir = scratchFolder('safetensors');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function fileWith(name: string, bytes: Buffer): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, bytes);
  return file;
}

function withFile<T>(file: string, use: (f: SafetensorsFile) => T): T {
  const f = SafetensorsFile.open(file);
  try {
    return use(f);
  } finally {
    f.close();
  }
}

describe('SafetensorsFile reading a file written byte by byte', () => {
  // Header deliberately not in offset order and not padded: readers must not rely on either.
  const header =
    '{"__metadata__":{"format":"pt"},' +
    '"d":{"dtype":"I64","shape":[3],"data_offsets":[16,40]},' +
    '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
    '"b":{"dtype":"F16","shape":[2,1],"data_offsets":[8,12]},' +
    '"c":{"dtype":"BF16","shape":[2],"data_offsets":[12,16]},' +
    '"e":{"dtype":"I32","shape":[],"data_offsets":[40,44]},' +
    '"z":{"dtype":"F32","shape":[0,3],"data_offsets":[44,44]}}';
  const data = [
    ...float32Bytes(0x3f800000, 0xc0200000), // a: 1.0, -2.5
    0x00, 0x3c, 0xff, 0x7b, // b: f16 1.0, 65504
    0x80, 0x3f, 0x00, 0xc0, // c: bf16 1.0, -2.0
    1, 0, 0, 0, 0, 0, 0, 0, // d: int64 1
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // -1
    0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, // 2147483647
    7, 0, 0, 0, // e: int32 scalar 7
  ];
  const file = fileWith('hand.safetensors', handWrittenSafetensors(header, data));

  it('reads the header: tensors in offset order, shapes, dtypes, metadata', () => {
    withFile(file, (f) => {
      expect(f.path).toBe(file);
      expect([...f.tensors.keys()]).toEqual(['a', 'b', 'c', 'd', 'e', 'z']);
      expect(f.tensors.get('b')).toEqual({ name: 'b', dtype: 'F16', shape: [2, 1], begin: 8, end: 12 });
      expect(f.metadata).toEqual({ format: 'pt' });
      expect(f.dataStart).toBe(8 + Buffer.byteLength(header));
    });
  });

  it('reads and converts each dtype', () => {
    withFile(file, (f) => {
      expect([...f.readFloat32('a')]).toEqual([1, -2.5]);
      expect([...f.readFloat32('b')]).toEqual([1, 65504]);
      expect([...f.readFloat32('c')]).toEqual([1, -2]);
      expect([...f.readInt32('d')]).toEqual([1, -1, 2147483647]);
      expect([...f.readInt32('e')]).toEqual([7]);
      expect(f.readFloat32('z').length).toBe(0);
    });
  });

  it('refuses the wrong reader, unknown names, and reads after close', () => {
    const f = SafetensorsFile.open(file);
    expectLowrankError(() => f.readFloat32('d'), 'SHAPE_MISMATCH', '"d"', 'I64');
    expectLowrankError(() => f.readInt32('a'), 'SHAPE_MISMATCH', '"a"', 'F32');
    expectLowrankError(() => f.readFloat32('nope'), 'MISSING_WEIGHT', '"nope"', file);
    f.close();
    expectLowrankError(() => f.readFloat32('a'), 'BAD_ARGUMENT', file);
  });

  it('refuses an int64 that does not fit in int32 instead of wrapping it', () => {
    const big = fileWith(
      'i64-big.safetensors',
      handWrittenSafetensors('{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}', [
        5, 0, 0, 0, 0, 0, 0, 0, // 5
        0, 0, 0, 0x80, 0, 0, 0, 0, // 2^31
      ]),
    );
    withFile(big, (f) => expectLowrankError(() => f.readInt32('ids'), 'BAD_SAFETENSORS', big, '"ids"', 'element 1', '2147483648'));
  });
});

describe('writeSafetensors', () => {
  // Byte-exact vectors from the reference implementation's own tests (huggingface/safetensors,
  // safetensors/src/tensor.rs: test_serialization, test_serialization_forced_alignement, test_empty).
  it('matches the reference bytes for one F32 tensor', () => {
    const file = path.join(dir, 'ref1.safetensors');
    writeSafetensors(file, [{ name: 'attn.0', shape: [1, 2, 3], data: new Float32Array([0, 1, 2, 3, 4, 5]) }]);
    const json = '{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}';
    const expected = Buffer.concat([
      Buffer.from([64, 0, 0, 0, 0, 0, 0, 0]),
      Buffer.from(json),
      Buffer.from(float32Bytes(0, 0x3f800000, 0x40000000, 0x40400000, 0x40800000, 0x40a00000)),
    ]);
    expect(fs.readFileSync(file).equals(expected)).toBe(true);
  });

  it('pads the header with spaces to a multiple of 8 like the reference', () => {
    const file = path.join(dir, 'ref2.safetensors');
    writeSafetensors(file, [{ name: 'attn0', shape: [1, 1, 2, 3], data: new Float32Array(6) }]);
    const bytes = fs.readFileSync(file);
    expect(bytes.readBigUInt64LE(0)).toBe(72n);
    expect(bytes.subarray(8, 80).toString()).toBe('{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}       ');

    const empty = path.join(dir, 'empty.safetensors');
    writeSafetensors(empty, []);
    expect([...fs.readFileSync(empty)]).toEqual([8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);
    writeSafetensors(empty, [], { framework: 'pt' });
    expect(fs.readFileSync(empty).toString('latin1')).toBe('(\0\0\0\0\0\0\0{"__metadata__":{"framework":"pt"}}     ');
  });

  it('orders tensors like the Python library: by dtype alignment (descending), then by name', () => {
    const file = path.join(dir, 'order.safetensors');
    writeSafetensors(file, [
      { name: 'b', shape: [1], data: new Float32Array(1), dtype: 'F16' },
      { name: '10', shape: [1], data: new Float32Array(1) },
      { name: 'a', shape: [1], data: new Float32Array(1) },
      { name: 'c', shape: [1], data: new Int32Array(1) },
      { name: 'a2', shape: [1], data: new Float32Array(1), dtype: 'BF16' },
    ]);
    const bytes = fs.readFileSync(file);
    const header = bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString();
    const order = [...header.matchAll(/"([^"]+)":\{"dtype"/g)].map((m) => m[1]);
    expect(order).toEqual(['10', 'a', 'c', 'a2', 'b']);
    withFile(file, (f) => expect([...f.tensors.keys()]).toEqual(['10', 'a', 'c', 'a2', 'b']));
  });

  it('round-trips F32, F16, BF16, I32 and metadata, leaving no temporary file', () => {
    const file = path.join(dir, 'roundtrip.safetensors');
    const random = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i * 12.9898) * 43758.5453);
    // Values exactly representable in the narrow type come back exactly; 0.1 comes back rounded.
    const halfExact = new Float32Array([1, -2, 0.5, 65504, 2 ** -24, -0, Infinity, 0.1]);
    const bf16Exact = new Float32Array([1, -2, 3.140625, 2 ** 100, -(2 ** -126)]);
    const ints = new Int32Array([0, 1, -1, 2147483647, -2147483648]);
    writeSafetensors(
      file,
      [
        { name: 'model.f32', shape: [10, 100], data: random },
        { name: 'model.f16', shape: [8], data: halfExact, dtype: 'F16' },
        { name: 'model.bf16', shape: [5], data: bf16Exact, dtype: 'BF16' },
        { name: 'model.i32', shape: [5, 1], data: ints },
      ],
      { format: 'pt', note: 'written by a test' },
    );
    expect(fs.readdirSync(dir).filter((n) => n.includes('.tmp-'))).toEqual([]);
    withFile(file, (f) => {
      expect(f.metadata).toEqual({ format: 'pt', note: 'written by a test' });
      expect(f.tensors.get('model.f32')!.shape).toEqual([10, 100]);
      expect(f.readFloat32('model.f32')).toEqual(random);
      const half = f.readFloat32('model.f16');
      expect([...half.subarray(0, 7)]).toEqual([1, -2, 0.5, 65504, 2 ** -24, -0, Infinity]);
      expect(half[7]).toBe(float16BitsToFloat32(0x2e66));
      expect(f.readFloat32('model.bf16')).toEqual(bf16Exact);
      expect(f.readInt32('model.i32')).toEqual(ints);
      expect(f.tensors.get('model.i32')).toMatchObject({ dtype: 'I32', shape: [5, 1] });
    });
  });

  it('round-trips tensors larger than one 16 MiB I/O chunk', () => {
    const file = path.join(dir, 'big.safetensors');
    const count = 9_000_001; // > 8 Mi half-precision elements per chunk, and odd
    const data = new Float32Array(count);
    for (let i = 0; i < count; i++) data[i] = (i % 2048) - 1024; // integers: exact in F16 and BF16
    writeSafetensors(file, [
      { name: 'h', shape: [count], data, dtype: 'F16' },
      { name: 'f', shape: [count], data },
    ]);
    // A plain loop: deep equality on 9M elements takes minutes.
    const firstMismatch = (got: Float32Array): number => {
      if (got.length !== count) return -2;
      for (let i = 0; i < count; i++) if (got[i] !== data[i]) return i;
      return -1;
    };
    withFile(file, (f) => {
      expect(firstMismatch(f.readFloat32('h'))).toBe(-1);
      expect(firstMismatch(f.readFloat32('f'))).toBe(-1);
    });
    fs.rmSync(file);
  });

  it('rejects bad arguments and an unwritable path', () => {
    const file = path.join(dir, 'bad.safetensors');
    expectLowrankError(() => writeSafetensors(file, [{ name: 'x', shape: [2, 2], data: new Float32Array(3) }]), 'BAD_ARGUMENT', '"x"');
    expectLowrankError(() => writeSafetensors(file, [{ name: 'x', shape: [1], data: new Int32Array(1), dtype: 'F16' }]), 'BAD_ARGUMENT', 'Float32Array');
    const twice = { name: 'x', shape: [1], data: new Float32Array(1) };
    expectLowrankError(() => writeSafetensors(file, [twice, twice]), 'BAD_ARGUMENT', 'twice');
    const nowhere = path.join(dir, 'no-such-folder', 'x.safetensors');
    expectLowrankError(() => writeSafetensors(nowhere, [twice]), 'WRITE_FAILED', nowhere);
    expect(fs.existsSync(file)).toBe(false);
  });
});

describe('SafetensorsFile.open errors', () => {
  const goodHeader = '{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}';

  it('missing file', () => {
    const file = path.join(dir, 'missing.safetensors');
    expectLowrankError(() => SafetensorsFile.open(file), 'FILE_NOT_FOUND', file);
  });

  it('truncated file: says so, with expected and actual sizes', () => {
    const whole = handWrittenSafetensors(goodHeader, float32Bytes(1, 2, 3, 4));
    const file = fileWith('truncated.safetensors', whole.subarray(0, whole.length - 5));
    expectLowrankError(() => SafetensorsFile.open(file), 'BAD_SAFETENSORS', file, 'truncated', `expected ${whole.length} bytes, has ${whole.length - 5}`, 're-download or re-export');
  });

  it('header length larger than the file', () => {
    const bytes = Buffer.alloc(8 + 2);
    bytes.writeUInt32LE(1000, 0);
    bytes.write('{}', 8);
    const file = fileWith('long-header.safetensors', bytes);
    expectLowrankError(() => SafetensorsFile.open(file), 'BAD_SAFETENSORS', file, 'header longer than the file');
    const tiny = fileWith('tiny.safetensors', Buffer.from([1, 2, 3]));
    expectLowrankError(() => SafetensorsFile.open(tiny), 'BAD_SAFETENSORS', tiny, 'truncated');
  });

  it('header that is not JSON, with the place it breaks', () => {
    const file = fileWith('not-json.safetensors', handWrittenSafetensors('{"w":{"dtype":\n"F32",}}', []));
    expectLowrankError(() => SafetensorsFile.open(file), 'BAD_SAFETENSORS', file, 'not valid JSON', 'line 2 column 7');
    const array = fileWith('array.safetensors', handWrittenSafetensors('[1,2]   ', []));
    expectLowrankError(() => SafetensorsFile.open(array), 'BAD_SAFETENSORS', array, 'not a JSON object');
  });

  it('unsupported dtype: names the tensor and the dtype', () => {
    const header = '{"lm_head.weight":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}';
    const file = fileWith('f64.safetensors', handWrittenSafetensors(header, new Array(8).fill(0)));
    expectLowrankError(() => SafetensorsFile.open(file), 'BAD_SAFETENSORS', file, '"lm_head.weight"', 'F64', 'F32, F16, BF16');
  });

  it('offsets that disagree with the shape', () => {
    const header = '{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}';
    const file = fileWith('offsets.safetensors', handWrittenSafetensors(header, new Array(16).fill(0)));
    expectLowrankError(() => SafetensorsFile.open(file), 'BAD_SAFETENSORS', file, '"w"', 'span 12 bytes', 'needs 16');
  });

  it('two tensors sharing bytes (overlapping data_offsets) are refused, naming both', () => {
    const header = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}';
    const file = fileWith('overlap.safetensors', handWrittenSafetensors(header, new Array(12).fill(0)));
    expectLowrankError(() => SafetensorsFile.open(file), 'BAD_SAFETENSORS', file, '"a"', '"b"', 'overlap');
    // The same bytes for two names (an aliased tied weight) are refused too; empty tensors share offsets harmlessly.
    const alias = '{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"y":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}';
    const aliased = fileWith('alias.safetensors', handWrittenSafetensors(alias, new Array(4).fill(0)));
    expectLowrankError(() => SafetensorsFile.open(aliased), 'BAD_SAFETENSORS', aliased, '"x"', '"y"', 'overlap');
  });

  it('malformed shape and offsets', () => {
    const shape = fileWith('shape.safetensors', handWrittenSafetensors('{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', [0, 0, 0, 0]));
    expectLowrankError(() => SafetensorsFile.open(shape), 'BAD_SAFETENSORS', shape, 'non-negative integers');
    const offsets = fileWith('offs.safetensors', handWrittenSafetensors('{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}', [0, 0, 0, 0]));
    expectLowrankError(() => SafetensorsFile.open(offsets), 'BAD_SAFETENSORS', offsets, 'data_offsets');
  });

  it('a PyTorch file renamed to .safetensors gets the pickle explanation', () => {
    const zip = fileWith('renamed.safetensors', Buffer.from('PK\x03\x04\0\0\0\0archive/data.pkl', 'latin1'));
    expectLowrankError(() => SafetensorsFile.open(zip), 'PICKLE_REFUSED', zip, 'arbitrary code', 'renamed.converted.safetensors');
    const raw = fileWith('raw-pickle.safetensors', Buffer.from([0x80, 0x02, 0x7d, 0x71, 0, 0x58, 1, 0, 0, 0]));
    expectLowrankError(() => SafetensorsFile.open(raw), 'PICKLE_REFUSED', raw);
  });

  it('a folder instead of a file', () => {
    expectLowrankError(() => SafetensorsFile.open(dir), 'BAD_ARGUMENT', dir);
  });
});
