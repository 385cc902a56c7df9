/**
 * SVD checks against hand-derived singular values, matrices built from known factors, and the
 * defining properties: A = U·diag(S)·Vt, UᵀU = I, Vt·Vtᵀ = I, S descending.
 */
import { describe, expect, it } from 'vitest';
import { Random } from '../random.ts';
import { jacobiSvd, randomizedSvd, truncatedSvd, type SvdResult } from './svd.ts';

function gaussian(m: number, n: number, seed: number): Float64Array {
  const rng = new Random(seed);
  return Float64Array.from({ length: m * n }, () => rng.normal());
}

/** Q [rows, cols] (cols ≤ rows) with orthonormal columns, by Gram–Schmidt on a Gaussian matrix. */
function orthonormalColumns(rows: number, cols: number, seed: number): Float64Array {
  const g = gaussian(rows, cols, seed);
  for (let j = 0; j < cols; j++) {
    for (let pass = 0; pass < 2; pass++) {
      for (let p = 0; p < j; p++) {
        let dot = 0;
        for (let i = 0; i < rows; i++) dot += g[i * cols + p] * g[i * cols + j];
        for (let i = 0; i < rows; i++) g[i * cols + j] -= dot * g[i * cols + p];
      }
    }
    let norm = 0;
    for (let i = 0; i < rows; i++) norm += g[i * cols + j] ** 2;
    for (let i = 0; i < rows; i++) g[i * cols + j] /= Math.sqrt(norm);
  }
  return g;
}

/** U·diag(s)·Vᵀ for U [m, k], V [n, k] with orthonormal columns. */
function fromFactors(u: Float64Array, s: number[], v: Float64Array, m: number, n: number): Float64Array {
  const k = s.length;
  const a = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let sum = 0;
      for (let t = 0; t < k; t++) sum += u[i * k + t] * s[t] * v[j * k + t];
      a[i * n + j] = sum;
    }
  }
  return a;
}

function frobenius(a: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += a[i] * a[i];
  return Math.sqrt(sum);
}

function reconstruct(svd: SvdResult): Float64Array {
  const { m, n, k, U, S, Vt } = svd;
  const a = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let sum = 0;
      for (let t = 0; t < k; t++) sum += U[i * k + t] * S[t] * Vt[t * n + j];
      a[i * n + j] = sum;
    }
  }
  return a;
}

/** max |XᵀX − I| for X whose `count` vectors of length `len` sit at x[i·stride + t·step + …]. */
function orthonormalityError(get: (vector: number, i: number) => number, count: number, len: number): number {
  let worst = 0;
  for (let p = 0; p < count; p++) {
    for (let q = p; q < count; q++) {
      let dot = 0;
      for (let i = 0; i < len; i++) dot += get(p, i) * get(q, i);
      worst = Math.max(worst, Math.abs(dot - (p === q ? 1 : 0)));
    }
  }
  return worst;
}

function checkDecomposition(a: Float64Array, svd: SvdResult, tol: number): void {
  const { m, n, k, U, S, Vt } = svd;
  const diff = reconstruct(svd).map((x, i) => x - a[i]);
  expect(frobenius(diff) / frobenius(a)).toBeLessThan(tol);
  expect(orthonormalityError((t, i) => U[i * k + t], k, m)).toBeLessThan(tol);
  expect(orthonormalityError((t, j) => Vt[t * n + j], k, n)).toBeLessThan(tol);
  for (let t = 1; t < k; t++) expect(S[t]).toBeLessThanOrEqual(S[t - 1]);
  for (let t = 0; t < k; t++) expect(S[t]).toBeGreaterThanOrEqual(0);
}

describe('jacobiSvd', () => {
  it('finds the singular values of a hand example: [[3, 0], [4, 5]] has σ = 3√5, √5', () => {
    // AᵀA = [[25, 20], [20, 25]] has eigenvalues 45 and 5.
    const svd = jacobiSvd(Float64Array.from([3, 0, 4, 5]), 2, 2);
    expect(svd.S[0]).toBeCloseTo(3 * Math.sqrt(5), 14);
    expect(svd.S[1]).toBeCloseTo(Math.sqrt(5), 14);
  });

  it('recovers known singular values of U·diag(s)·Vᵀ, tall and wide', () => {
    const s = [9, 4.5, 2, 1, 0.25];
    const tall = fromFactors(orthonormalColumns(8, 5, 1), s, orthonormalColumns(5, 5, 2), 8, 5);
    const wide = fromFactors(orthonormalColumns(5, 5, 3), s, orthonormalColumns(11, 5, 4), 5, 11);
    for (const [a, m, n] of [[tall, 8, 5], [wide, 5, 11]] as const) {
      const svd = jacobiSvd(a, m, n);
      expect(svd.k).toBe(5);
      for (let t = 0; t < 5; t++) expect(Math.abs(svd.S[t] - s[t])).toBeLessThan(1e-13);
      checkDecomposition(a, svd, 1e-13);
    }
  });

  it('reconstructs random matrices with orthonormal factors', () => {
    for (const [m, n] of [[7, 5], [5, 9], [30, 30], [1, 4], [4, 1]]) {
      const a = gaussian(m, n, m * 100 + n);
      checkDecomposition(a, jacobiSvd(a, m, n), 1e-13);
    }
  });

  it('keeps U orthonormal for a rank-deficient matrix (rank 2 of 6×6) and the zero matrix', () => {
    const a = fromFactors(orthonormalColumns(6, 2, 5), [3, 1], orthonormalColumns(6, 2, 6), 6, 6);
    const svd = jacobiSvd(a, 6, 6);
    expect(svd.S[0]).toBeCloseTo(3, 13);
    expect(svd.S[1]).toBeCloseTo(1, 13);
    for (let t = 2; t < 6; t++) expect(svd.S[t]).toBeLessThan(1e-13);
    checkDecomposition(a, svd, 1e-13);
    const zero = jacobiSvd(new Float64Array(12), 4, 3);
    expect([...zero.S]).toEqual([0, 0, 0]);
    expect(orthonormalityError((t, i) => zero.U[i * 3 + t], 3, 4)).toBeLessThan(1e-15);
  });
});

describe('randomizedSvd', () => {
  it('finds the top singular triplets of a matrix with a decaying spectrum', () => {
    const m = 120;
    const n = 90;
    const s = Array.from({ length: 90 }, (_, t) => 10 * Math.pow(0.7, t));
    const a = fromFactors(orthonormalColumns(m, 90, 7), s, orthonormalColumns(n, 90, 8), m, n);
    const k = 6;
    const svd = randomizedSvd(a, m, n, k, { niter: 4, seed: 3 });
    expect(svd.k).toBe(k);
    for (let t = 0; t < k; t++) expect(Math.abs(svd.S[t] - s[t]) / s[t]).toBeLessThan(1e-8);
    expect(orthonormalityError((t, i) => svd.U[i * k + t], k, m)).toBeLessThan(1e-12);
    expect(orthonormalityError((t, j) => svd.Vt[t * n + j], k, n)).toBeLessThan(1e-12);
    // Eckart–Young: the rank-k error is the tail of the spectrum, ‖A − A_k‖_F² = Σ_{t≥k} σ_t².
    const diff = reconstruct(svd).map((x, i) => x - a[i]);
    const tail = Math.sqrt(s.slice(k).reduce((acc, x) => acc + x * x, 0));
    expect(Math.abs(frobenius(diff) - tail) / tail).toBeLessThan(1e-6);
  });

  it('is exact for a matrix whose rank is within k + oversampling', () => {
    const a = fromFactors(orthonormalColumns(40, 3, 9), [5, 2, 1], orthonormalColumns(50, 3, 10), 40, 50);
    const svd = randomizedSvd(a, 40, 50, 3, { niter: 1, oversample: 2 });
    for (const [t, want] of [5, 2, 1].entries()) expect(svd.S[t]).toBeCloseTo(want, 12);
    checkDecomposition(a, svd, 1e-12);
  });

  it('agrees with the Jacobi SVD through truncatedSvd on both paths', () => {
    const a = gaussian(25, 20, 11);
    const exact = truncatedSvd(a, 25, 20, 4, { method: 'exact' });
    const jacobi = jacobiSvd(a, 25, 20);
    for (let t = 0; t < 4; t++) expect(exact.S[t]).toBe(jacobi.S[t]);
    const approx = truncatedSvd(a, 25, 20, 4, { method: 'randomized', niter: 30, oversample: 16 });
    for (let t = 0; t < 4; t++) expect(Math.abs(approx.S[t] - jacobi.S[t]) / jacobi.S[t]).toBeLessThan(1e-6);
    expect(() => truncatedSvd(a, 25, 20, 21)).toThrow(/k = 21/);
  });
});
