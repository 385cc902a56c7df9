/**
 * Matmul throughput on the active backend, and the before/after table of PERFORMANCE.md §0 for
 * the wasm override (the four products a training step is made of: forward A·B, dW = Aᵀ·B,
 * dX = A·Bᵀ, batched attention), measured with measureMatmulGflops (index.ts).
 * `npm run bench` can call runMatmulBench(); run this file
 * directly (`npx tsx core/backend/matmul-bench.ts [seconds]`) to print the table.
 */
import * as tf from '../tf.ts';
import { pathToFileURL } from 'node:url';
import { initBackend, measureMatmulGflops, type MatmulShape } from './index.ts';
import { installWasmKernels, uninstallWasmKernels } from './wasm/install.ts';

export interface MatmulBenchRow {
  shape: string;
  backend: string;
  /** 'project' = with the project's kernels, 'stock' = the backend's own. */
  kernels: 'project' | 'stock';
  gflops: number;
}

const CASES: Array<{ label: string; shape: MatmulShape }> = [
  { label: '1024x256x1024 A·B', shape: {} },
  { label: '1024x256x1024 Aᵀ·B', shape: { transposeA: true } },
  { label: '1024x256x1024 A·Bᵀ', shape: { transposeB: true } },
  { label: '4x 1024x256x1024 batched', shape: { batch: 4 } },
];

/**
 * The table for the active backend (start one with initBackend first). On wasm each case is also
 * measured with the stock kernels put back, then the project's are reinstalled.
 */
export async function runMatmulBench(opts: { seconds?: number; compareStock?: boolean } = {}): Promise<MatmulBenchRow[]> {
  const { seconds = 1, compareStock = true } = opts;
  const backend = tf.getBackend();
  const rows: MatmulBenchRow[] = [];
  for (const c of CASES) {
    rows.push({ shape: c.label, backend, kernels: 'project', gflops: await measureMatmulGflops({ ...c.shape, seconds }) });
  }
  if (backend === 'wasm' && compareStock) {
    uninstallWasmKernels();
    try {
      for (const c of CASES) {
        rows.push({ shape: c.label, backend, kernels: 'stock', gflops: await measureMatmulGflops({ ...c.shape, seconds }) });
      }
    } finally {
      installWasmKernels();
    }
  }
  return rows;
}

async function main(): Promise<void> {
  const info = await initBackend();
  const seconds = Number(process.argv[2] ?? 1);
  console.log(`backend ${info.backend} (simd ${info.wasmSimd ?? '-'}, threads ${info.wasmThreads ?? '-'}), ${seconds}s per case`);
  const rows = await runMatmulBench({ seconds });
  for (const r of rows) console.log(`${r.shape.padEnd(28)} ${r.kernels.padEnd(8)} ${r.gflops.toFixed(2).padStart(7)} GFLOP/s`);
}

if (process.argv[1] != null && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
