/** Test support shared by the GaLore-family optimizer tests (galore, fira, frugal, galore-dct). */
import type { Random } from '../random.ts';
import type { LowRankOptions } from './galore.ts';

/** One projected matrix `w`, rank 2, the official scale, exact SVD; fields overridable. */
export const lowRankSettings = (over: Partial<LowRankOptions> = {}): LowRankOptions => ({
  projected: ['w'], rank: 2, updateProjGap: 200, scale: 0.25, projType: 'std', svd: 'exact', ...over,
});

export function randomMatrix(rng: Random, m: number, n: number, scale = 1): number[][] {
  return Array.from({ length: m }, () => Array.from({ length: n }, () => scale * rng.normal()));
}

export const frobenius = (a: ArrayLike<number>) => Math.sqrt(Array.from(a).reduce((s, x) => s + x * x, 0));

/** Row-major [rows, cols] product a·b of flat arrays. */
export function matmul(a: number[], b: number[], rows: number, inner: number, cols: number): number[] {
  const out = new Array(rows * cols).fill(0);
  for (let i = 0; i < rows; i++) for (let k = 0; k < inner; k++) for (let j = 0; j < cols; j++) out[i * cols + j] += a[i * inner + k] * b[k * cols + j];
  return out;
}

export function transpose(a: number[], rows: number, cols: number): number[] {
  const out = new Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = a[i * cols + j];
  return out;
}
