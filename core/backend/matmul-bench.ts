/**
 * Matmul throughput on the active backend, and the before/after table of PERFORMANCE.md §0 for
 * the wasm override (the four products a training step is made of: forward A·B, dW = Aᵀ·B,
 * dX = A·Bᵀ, batched attention), measured with measureMatmulGflops (index.ts).
 * `npm run bench` can call runMatmulBench(); run this file
 * directly (`npx tsx core/backend/matmul-bench.ts [seconds] [repeats]`) to print the table.
 */
import * as tf from '../tf.ts';
import { pathToFileURL } from 'node:url';
import { initBackend, measureMatmulGflops, type MatmulShape } from './index.ts';
import { installWasmKernels, uninstallWasmKernels } from './wasm/install.ts';
import { activeNative, nativeSwitch } from './native/addon.ts';

export type MatmulKernels = 'native' | 'project' | 'stock';

export interface MatmulBenchRow {
  shape: string;
  backend: string;
  /**
   * 'native' = the project's kernels on the native BLAS (wasm only, where it is built),
   * 'project' = the project's wasm kernels (XNNPACK), 'stock' = the backend's own.
   */
  kernels: MatmulKernels;
  gflops: number;
}

const CASES: Array<{ label: string; shape: MatmulShape }> = [
  { label: '1024x256x1024 A·B', shape: {} },
  { label: '1024x256x1024 Aᵀ·B', shape: { transposeA: true } },
  { label: '1024x256x1024 A·Bᵀ', shape: { transposeB: true } },
  { label: '4x 1024x256x1024 batched', shape: { batch: 4 } },
];

export interface MatmulBenchOptions {
  /** Timed seconds per measurement. */
  seconds?: number;
  /** On wasm, also measure with the stock kernels put back. */
  compareStock?: boolean;
  /** Measurements per row; the median is reported (the machine may be shared and noisy). */
  repeats?: number;
}

/**
 * The table for the active backend (start one with initBackend first). On wasm, the native BLAS
 * (where built), the project's wasm kernels and the stock kernels are measured alternately for
 * each case, so that load from other processes affects all alike; the project's kernels and the
 * native switch are restored at the end.
 */
export async function runMatmulBench(opts: MatmulBenchOptions = {}): Promise<MatmulBenchRow[]> {
  const { seconds = 1, compareStock = true, repeats = 1 } = opts;
  const backend = tf.getBackend();
  const variants: MatmulKernels[] = backend !== 'wasm' ? ['project']
    : [...(activeNative() != null ? ['native' as const] : []), 'project' as const, ...(compareStock ? ['stock' as const] : [])];
  const rows: MatmulBenchRow[] = [];
  for (const c of CASES) {
    const measured = new Map<MatmulKernels, number[]>(variants.map((v) => [v, []]));
    for (let r = 0; r < repeats; r++) {
      for (const v of variants) measured.get(v)!.push(await withMatmulKernels(v, () => measureMatmulGflops({ ...c.shape, seconds })));
    }
    for (const v of variants) rows.push({ shape: c.label, backend, kernels: v, gflops: median(measured.get(v)!) });
  }
  return rows;
}

/**
 * Runs `fn` with the given matmul kernels on wasm: the native BLAS, the project's wasm kernels
 * without it, or the stock kernels; puts the default (project kernels, native on) back after.
 */
export async function withMatmulKernels<T>(kernels: MatmulKernels, fn: () => Promise<T>): Promise<T> {
  nativeSwitch.enabled = kernels === 'native';
  if (kernels === 'stock') uninstallWasmKernels();
  try {
    return await fn();
  } finally {
    if (kernels === 'stock') installWasmKernels();
    nativeSwitch.enabled = true;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** `npx tsx core/backend/matmul-bench.ts [seconds] [repeats]` */
async function main(): Promise<void> {
  const info = await initBackend();
  const seconds = Number(process.argv[2] ?? 1);
  const repeats = Number(process.argv[3] ?? 1);
  console.log(`backend ${info.backend} (simd ${info.wasmSimd ?? '-'}, threads ${info.wasmThreads ?? '-'}), ` +
    `${seconds}s per measurement, median of ${repeats}`);
  const rows = await runMatmulBench({ seconds, repeats });
  for (const r of rows) console.log(`${r.shape.padEnd(28)} ${r.kernels.padEnd(8)} ${r.gflops.toFixed(2).padStart(7)} GFLOP/s`);
}

if (process.argv[1] != null && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
