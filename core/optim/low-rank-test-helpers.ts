/** Test support shared by the GaLore-family optimizer tests (galore, fira, frugal, galore-dct). */
import { expect } from 'vitest';
import * as tf from '../tf.ts';
import { Random } from '../random.ts';
import type { LowRankOptions } from './galore.ts';
import type { Optimizer } from './registry.ts';

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

/**
 * Exact resume of an optimizer over one 6×4 weight `w`: 3 steps on optimizer A, its state copied
 * into a fresh B (getWeights/setWeights), then both take the last 3 steps; B's weight must equal A's
 * bit for bit, the tensor count stay flat, and disposing A free `stateTensors` tensors. Pick the
 * optimizer's T so a projector refresh / reset / reselection falls among the last 3 steps.
 */
export function expectExactResume(make: (w: Map<string, tf.Variable>) => Optimizer, stateTensors: number): void {
  const rng = new Random(11);
  const w0 = randomMatrix(rng, 6, 4);
  const grads = Array.from({ length: 6 }, () => randomMatrix(rng, 6, 4));
  const step = (opt: Optimizer, g: number[][]) => tf.tidy(() => opt.step(new Map([['w', tf.tensor2d(g)]]), 0.01));
  const a = tf.variable(tf.tensor2d(w0));
  const optA = make(new Map([['w', a]]));
  for (const g of grads.slice(0, 3)) step(optA, g);
  const b = tf.variable(a);
  const optB = make(new Map([['w', b]]));
  optB.setWeights(optA.getWeights());
  expect(optB.stepCount).toBe(3);
  const counts: number[] = [];
  for (const g of grads.slice(3)) {
    step(optA, g);
    step(optB, g);
    counts.push(tf.memory().numTensors);
  }
  expect(Array.from(b.dataSync())).toEqual(Array.from(a.dataSync()));
  expect(counts).toEqual(counts.map(() => counts[0]));
  const before = tf.memory().numTensors;
  optA.dispose();
  expect(before - tf.memory().numTensors).toBe(stateTensors);
  optB.dispose();
  tf.dispose([a, b]);
}
