/**
 * symmetricEigen against matrices built from known eigenpairs (Q·diag(λ)·Qᵀ with a random orthogonal
 * Q), a hand 2×2 case and the defining properties A·V = V·diag(λ), VᵀV = I, λ ascending — including
 * repeated and zero eigenvalues (the rank-deficient Gram matrices SaRA's rank term hands it).
 */
import { describe, expect, it } from 'vitest';
import { Random } from '../random.ts';
import { symmetricEigen } from './symmetric-eigen.ts';

/** Q [n, n] orthogonal, by Gram–Schmidt on a Gaussian matrix. */
function orthogonal(n: number, seed: number): Float64Array {
  const rng = new Random(seed);
  const q = Float64Array.from({ length: n * n }, () => rng.normal());
  for (let j = 0; j < n; j++) {
    for (let pass = 0; pass < 2; pass++) {
      for (let p = 0; p < j; p++) {
        let dot = 0;
        for (let i = 0; i < n; i++) dot += q[i * n + p] * q[i * n + j];
        for (let i = 0; i < n; i++) q[i * n + j] -= dot * q[i * n + p];
      }
    }
    let norm = 0;
    for (let i = 0; i < n; i++) norm += q[i * n + j] ** 2;
    for (let i = 0; i < n; i++) q[i * n + j] /= Math.sqrt(norm);
  }
  return q;
}

function fromEigenpairs(q: Float64Array, values: number[]): Float64Array {
  const n = values.length;
  const a = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (let k = 0; k < n; k++) a[i * n + j] += q[i * n + k] * values[k] * q[j * n + k];
  return a;
}

function expectDecomposes(a: Float64Array, n: number): ReturnType<typeof symmetricEigen> {
  const eig = symmetricEigen(a, n);
  const scale = Math.max(...a.map(Math.abs), 1e-300);
  for (let k = 1; k < n; k++) expect(eig.values[k]).toBeGreaterThanOrEqual(eig.values[k - 1]);
  let residual = 0;
  let orthogonality = 0;
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < n; k++) {
      let av = 0;
      for (let j = 0; j < n; j++) av += a[i * n + j] * eig.vectors[j * n + k];
      residual = Math.max(residual, Math.abs(av - eig.values[k] * eig.vectors[i * n + k]));
      let dot = 0;
      for (let j = 0; j < n; j++) dot += eig.vectors[j * n + i] * eig.vectors[j * n + k];
      orthogonality = Math.max(orthogonality, Math.abs(dot - (i === k ? 1 : 0)));
    }
  }
  expect(residual / scale).toBeLessThanOrEqual(1e-12);
  expect(orthogonality).toBeLessThanOrEqual(1e-12);
  return eig;
}

describe('symmetricEigen', () => {
  it('finds the eigenpairs of a hand 2×2 matrix', () => {
    // [[2, 1], [1, 2]]: eigenvalues 1 and 3, vectors (1, −1)/√2 and (1, 1)/√2.
    const eig = expectDecomposes(Float64Array.from([2, 1, 1, 2]), 2);
    expect(eig.values[0]).toBeCloseTo(1, 14);
    expect(eig.values[1]).toBeCloseTo(3, 14);
    expect(Math.abs(eig.vectors[0 * 2 + 1])).toBeCloseTo(Math.SQRT1_2, 14);
  });

  it.each([
    ['distinct', [5, -2, 0.5, 3, 1e-3, 7, -4, 2]],
    ['repeated and zero', [0, 0, 0, 2, 2, 9, 1, 1]],
  ])('recovers known eigenvalues (%s) of Q·diag(λ)·Qᵀ', (_, values) => {
    const n = values.length;
    const eig = expectDecomposes(fromEigenpairs(orthogonal(n, 4), values), n);
    const sorted = [...values].sort((x, y) => x - y);
    eig.values.forEach((v, k) => expect(Math.abs(v - sorted[k])).toBeLessThanOrEqual(1e-12 * 9));
  });

  it('decomposes a 60×60 Gram matrix of a sparse wide matrix (rank 40)', () => {
    const rng = new Random(9);
    const [rows, cols] = [40, 90];
    const x = Float64Array.from({ length: rows * cols }, () => (rng.next() < 0.1 ? rng.normal() : 0));
    // XᵀX restricted to its first 60 columns: PSD with rank ≤ 40.
    const n = 60;
    const g = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (let t = 0; t < rows; t++) g[i * n + j] += x[t * cols + i] * x[t * cols + j];
    const eig = expectDecomposes(g, n);
    expect(eig.values.filter((v) => Math.abs(v) <= 1e-10 * eig.values[n - 1]).length).toBeGreaterThanOrEqual(n - rows);
  });

  it('handles 0×0 and 1×1', () => {
    expect(symmetricEigen(new Float64Array(0), 0).values).toHaveLength(0);
    const one = symmetricEigen(Float64Array.from([-3]), 1);
    expect([...one.values]).toEqual([-3]);
    expect([...one.vectors]).toEqual([1]);
  });
});
