// The native GEMM addon on its own (plain Float32Arrays, no tfjs): products against a float64
// loop for every transpose and leading dimension, batches in one call, bounds checks, threads.
// Skipped where the addon is not built; batch-matmul.test.ts requires it on CI.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { nativeAddon } from './addon.ts';
import { needs } from '../../../test/helpers/optional-parts.ts';

const state = nativeAddon();

function seeded(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let x = seed * 2654435761 >>> 0;
  for (let i = 0; i < n; i++) {
    x = (x * 1664525 + 1013904223) >>> 0;
    out[i] = x / 2 ** 32 - 0.5;
  }
  return out;
}

/** op(A)·op(B) in float64 from row-major storage with leading dimensions. */
function reference(heap: Float32Array, tA: boolean, tB: boolean, m: number, n: number, k: number,
  aOff: number, lda: number, bOff: number, ldb: number): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let sum = 0;
      for (let p = 0; p < k; p++) {
        const a = heap[aOff + (tA ? p * lda + i : i * lda + p)];
        const b = heap[bOff + (tB ? j * ldb + p : p * ldb + j)];
        sum += a * b;
      }
      c[i * n + j] = sum;
    }
  }
  return c;
}

describe('native GEMM addon', needs('native'), () => {
  const addon = state.ok ? state.addon : null!;

  for (const [tA, tB] of [[false, false], [true, false], [false, true], [true, true]] as const) {
    for (const [m, n, k] of [[1, 1, 1], [7, 5, 33], [33, 65, 3], [64, 17, 9]]) {
      it(`${m}x${n}x${k} transposeA=${tA} transposeB=${tB}, padded leading dims, 3 batches`, () => {
        // Leading dims wider than the rows (padding columns that must be left alone).
        const lda = (tA ? m : k) + 3;
        const ldb = (tB ? k : n) + 2;
        const ldc = n + 1;
        const aSize = (tA ? k : m) * lda;
        const bSize = (tB ? n : k) * ldb;
        const cSize = m * ldc;
        const batches = 3;
        const heap = seeded(batches * (aSize + bSize + cSize) + 5, m * 131 + n * 7 + k);
        const aOffsets = Uint32Array.from({ length: batches }, (_, i) => 5 + i * aSize);
        const bOffsets = Uint32Array.from({ length: batches }, (_, i) => 5 + batches * aSize + i * bSize);
        const cOffsets = Uint32Array.from({ length: batches }, (_, i) => 5 + batches * (aSize + bSize) + i * cSize);
        const before = heap.slice();
        const expected = [...aOffsets].map((a, i) => reference(heap, tA, tB, m, n, k, a, lda, bOffsets[i], ldb));
        addon.sgemmBatch(heap, Int32Array.of(tA ? 1 : 0, tB ? 1 : 0, m, n, k, lda, ldb, ldc), aOffsets, bOffsets, cOffsets, 0);
        for (let bIdx = 0; bIdx < batches; bIdx++) {
          for (let i = 0; i < m; i++) {
            for (let j = 0; j < ldc; j++) {
              const at = cOffsets[bIdx] + i * ldc + j;
              if (j < n) expect(Math.abs(heap[at] - expected[bIdx][i * n + j])).toBeLessThan(1e-5 * Math.max(1, k));
              else expect(heap[at]).toBe(before[at]); // padding untouched
            }
          }
        }
        // Operands untouched.
        expect(heap.subarray(0, cOffsets[0])).toEqual(before.subarray(0, cOffsets[0]));
      });
    }
  }

  it('accumulates into C with beta = 1', () => {
    const heap = seeded(4 + 4 + 4, 3);
    const c0 = heap.slice(8, 12);
    const ab = reference(heap, false, false, 2, 2, 2, 0, 2, 4, 2);
    addon.sgemmBatch(heap, Int32Array.of(0, 0, 2, 2, 2, 2, 2, 2), Uint32Array.of(0), Uint32Array.of(4), Uint32Array.of(8), 1);
    for (let i = 0; i < 4; i++) expect(heap[8 + i]).toBeCloseTo(c0[i] + ab[i], 6);
  });

  it('refuses offsets outside the heap view, wrong types and bad sizes, writing nothing', () => {
    const heap = seeded(12, 4);
    const before = heap.slice();
    const dims = Int32Array.of(0, 0, 2, 2, 2, 2, 2, 2);
    const call = (c: number, d = dims) => () => addon.sgemmBatch(heap, d, Uint32Array.of(0), Uint32Array.of(4), Uint32Array.of(c), 0);
    expect(call(9)).toThrow(/an output lies outside the heap view/);
    expect(call(8, Int32Array.of(0, 0, 2, 2, -1, 2, 2, 2))).toThrow(/negative size/);
    expect(() => addon.sgemmBatch(new Float64Array(12) as unknown as Float32Array, dims, Uint32Array.of(0), Uint32Array.of(4), Uint32Array.of(8), 0)).toThrow(/bad arguments/);
    expect(() => addon.sgemmBatch(heap, dims, Uint32Array.of(0, 0), Uint32Array.of(4), Uint32Array.of(8), 0)).toThrow(/differ in length/);
    expect(heap).toEqual(before);
  });

  it('works on a SharedArrayBuffer (the threaded wasm heap)', () => {
    const heap = new Float32Array(new SharedArrayBuffer(12 * 4));
    heap.set(seeded(8, 5));
    const ab = reference(heap, false, true, 2, 2, 2, 0, 2, 4, 2);
    addon.sgemmBatch(heap, Int32Array.of(0, 1, 2, 2, 2, 2, 2, 2), Uint32Array.of(0), Uint32Array.of(4), Uint32Array.of(8), 0);
    expect([...heap.subarray(8)].map((v, i) => Math.abs(v - ab[i]))).toSatisfy((d: number[]) => d.every((x) => x < 1e-6));
  });

  it('sets and reports its thread count and names its library', () => {
    const was = addon.threads();
    addon.setThreads(1);
    expect(addon.threads()).toBe(1);
    addon.setThreads(was);
    expect(() => addon.setThreads(0)).toThrow(/thread count >= 1/);
    expect(addon.library()).toMatch(/OpenBLAS|Accelerate/);
  });
});

describe('scripts/build-native.js', () => {
  const script = path.resolve(import.meta.dirname, '../../../scripts/build-native.js');
  const withoutCI = () => Object.fromEntries(Object.entries(process.env).filter(([name]) => name !== 'CI'));
  it('never fails an install outside CI: a broken or missing compiler is one line and exit 0', () => {
    for (const cc of ['false', '/nonexistent/cc']) {
      const run = spawnSync(process.execPath, [script], { env: { ...withoutCI(), CC: cc }, encoding: 'utf8' });
      expect(run.status).toBe(0);
      expect(run.stdout.trim()).toMatch(/^lowrank: native kernels not built \(.+\); the engine uses its wasm kernels\.$/);
      expect(run.stderr).toBe('');
    }
  });

  it('fails the install on CI (which installs OpenBLAS and a compiler) with the same one line', () => {
    for (const cc of ['false', '/nonexistent/cc']) {
      const run = spawnSync(process.execPath, [script], { env: { ...withoutCI(), CI: 'true', CC: cc }, encoding: 'utf8' });
      expect(run.status).toBe(1);
      expect(run.stderr.trim()).toMatch(/^lowrank: native kernels not built \(.+\); CI is set, so this fails the install\.$/);
      expect(run.stdout).toBe('');
    }
  });
});
