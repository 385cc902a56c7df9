/** Test support shared by galore.test.ts and fira.test.ts. */
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
