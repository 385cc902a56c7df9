/**
 * The DCT (SVD-free) low-rank AdamW's defining properties (ALGORITHMS.md §4 (d), METHODS.md
 * `galore-dct`): QᵀQ = I, exactly the r DCT columns (rows) spanning G selected, a first step
 * computed by hand in float64, reselection at t = 1 and t ≡ 0 (mod T) with the moments carried
 * over, no SVD call anywhere (the SVD module is spied on), state = indices + low-rank moments (no
 * projector) in the exact byte count, exact restore and no tensor leak.
 */
import { beforeAll, describe, expect, it, vi } from 'vitest';
import * as tf from '../tf.ts';
import * as svdModule from '../linalg/svd.ts';
import { Random } from '../random.ts';
import { expectExactResume, frobenius, matmul, randomMatrix, transpose } from './low-rank-test-helpers.ts';
import { DctAdamW, dctMatrix, dctStateBytes, type DctLowRankOptions } from './galore-dct.ts';
import { GaLore } from './galore.ts';
import type { Optimizer } from './registry.ts';

// Every SVD entry point, wrapped in a spy that still computes (GaLore below proves the spies see calls).
vi.mock('../linalg/svd.ts', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../linalg/svd.ts')>();
  return { ...actual, truncatedSvd: vi.fn(actual.truncatedSvd), jacobiSvd: vi.fn(actual.jacobiSvd), randomizedSvd: vi.fn(actual.randomizedSvd) };
});

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const settings = (over: Partial<DctLowRankOptions> = {}): DctLowRankOptions => ({ projected: ['w'], rank: 2, updateProjGap: 1, ...over });
const values = (t: tf.Tensor) => Array.from(t.dataSync());
const step = (opt: Optimizer, g: number[][], lr = 0.01) => tf.tidy(() => opt.step(new Map([['w', tf.tensor2d(g)]]), lr));
const rows = (flat: number[], m: number, n: number) => Array.from({ length: m }, (_, i) => flat.slice(i * n, (i + 1) * n));

/** Columns `picked` of the d×d DCT matrix Q, as a flat [d, r] array (float64). */
function dctColumns(d: number, picked: number[]): number[] {
  const q = dctMatrix(d);
  return Array.from({ length: d * picked.length }, (_, k) => q[Math.floor(k / picked.length) * d + picked[k % picked.length]]);
}

describe('DCT low-rank AdamW (galore-dct)', () => {
  it('builds an orthonormal DCT basis: QᵀQ = I', () => {
    for (const d of [1, 5, 16]) {
      const q = Array.from(dctMatrix(d));
      const qtq = matmul(transpose(q, d, d), q, d, d, d);
      qtq.forEach((x, k) => expect(x).toBeCloseTo(Math.floor(k / d) === k % d ? 1 : 0, 6));
    }
    // Q[a, b] = c_a·√(2/d)·cos(π·a·(2b+1)/(2d)): row 0 is constant 1/√d.
    expect(dctMatrix(4)[2]).toBeCloseTo(0.5, 7);
    expect(dctMatrix(4)[4 + 1]).toBeCloseTo(Math.sqrt(0.5) * Math.cos((3 * Math.PI) / 8), 7);
  });

  it.each([
    ['right', 9, 6, [4, 1]],
    ['left', 5, 8, [0, 3]],
  ] as const)('selects exactly the r DCT columns spanning G (%s: %i × %i)', (side, m, n, picked) => {
    const rng = new Random(2);
    const r = picked.length;
    // right: G = C·Q_Jᵀ (rows of G in span of columns J of the n×n basis); left: G = Q_J·C (m×m basis).
    const g = side === 'right' ? matmul(randomMatrix(rng, m, r).flat(), transpose(dctColumns(n, [...picked]), n, r), m, r, n) : matmul(dctColumns(m, [...picked]), randomMatrix(rng, r, n).flat(), m, r, n);
    const param = tf.variable(tf.zeros([m, n]));
    const opt = new DctAdamW(new Map([['w', param]]), settings({ rank: r }));
    step(opt, rows(g, m, n));
    expect(opt.projections[0].side).toBe(side);
    expect([...opt.selectedIndices('w')].sort()).toEqual([...picked].sort());
    // The whole gradient lies in the subspace (E = 0), and so does the update.
    const q = dctColumns(Math.min(m, n), [...picked]);
    const d = Math.min(m, n);
    const inside = (x: number[]) => (side === 'right' ? matmul(matmul(x, q, m, n, r), transpose(q, d, r), m, r, n) : matmul(q, matmul(transpose(q, d, r), x, r, m, n), m, r, n));
    const dW = values(param);
    expect(frobenius(inside(g).map((x, k) => x - g[k])) / frobenius(g)).toBeLessThan(1e-6);
    expect(frobenius(inside(dW).map((x, k) => x - dW[k])) / frobenius(dW)).toBeLessThan(1e-5);
    opt.dispose();
    param.dispose();
  });

  it('matches a first step computed by hand, decay first', () => {
    const [m, n, r, lr, wd, eps] = [7, 5, 2, 0.01, 0.1, 1e-8];
    const rng = new Random(4);
    const w0 = randomMatrix(rng, m, n);
    const g = randomMatrix(rng, m, n).flat();
    // S = G·Q, ℓ1 norm of each column, top 2.
    const s = matmul(g, Array.from(dctMatrix(n)), m, n, n);
    const scores = Array.from({ length: n }, (_, j) => s.reduce((sum, x, k) => (k % n === j ? sum + Math.abs(x) : sum), 0));
    const picked = scores.map((x, j) => [x, j]).sort((a, b) => b[0] - a[0]).slice(0, r).map(([, j]) => j);
    const q = dctColumns(n, picked);
    const R = matmul(g, q, m, n, r);
    // t = 1: M = 0.1·R, V = 0.001·R²; lr·√0.001/0.1 · M/(√V + ε·√0.001) = lr·R/(|R| + ε).
    const update = matmul(R.map((x) => x / (Math.abs(x) + eps)), transpose(q, n, r), m, r, n);
    const want = w0.flat().map((w, k) => w * (1 - lr * wd) - lr * update[k]);
    const param = tf.variable(tf.tensor2d(w0));
    const opt = new DctAdamW(new Map([['w', param]]), settings({ rank: r }), { weightDecay: wd });
    step(opt, rows(g, m, n), lr);
    expect(opt.selectedIndices('w')).toEqual(picked);
    values(param).forEach((got, k) => expect(got).toBeCloseTo(want[k], 6));
    opt.dispose();
    param.dispose();
  });

  it('re-selects at t = 1 and t ≡ 0 (mod T), carrying the moments over (no reset)', () => {
    const [m, n, T] = [6, 6, 3];
    // G_t = 5·(column j_t of Q, for every row) + small noise: the best column is j_t, a different one each step.
    const rng = new Random(9);
    const q = Array.from(dctMatrix(n));
    const picks = [0, 1, 2, 3, 4, 5];
    const grads = picks.map((j) => rows(Array.from({ length: m * n }, (_, k) => 5 * q[(k % n) * n + j] + 0.01 * rng.normal()), m, n));
    const param = tf.variable(tf.zeros([m, n]));
    const opt = new DctAdamW(new Map([['w', param]]), settings({ rank: 1, updateProjGap: T }));
    const selected: number[] = [];
    const moments: number[][] = [];
    for (const g of grads) {
      step(opt, g);
      selected.push(opt.selectedIndices('w')[0]);
      moments.push(values(opt.getWeights().tensors.get('w.exp_avg')!));
    }
    // t = 1..6: chosen at t = 1 (col 0), t = 3 (col 2), t = 6 (col 5).
    expect(selected).toEqual([0, 0, 2, 2, 2, 5]);
    // At t = 3 the new subspace's R is averaged into the old M: M₃ = 0.9·M₂ + 0.1·G₃·Q_{:,2}.
    const R3 = matmul(grads[2].flat(), dctColumns(n, [2]), m, n, 1);
    moments[2].forEach((x, i) => expect(x).toBeCloseTo(0.9 * moments[1][i] + 0.1 * R3[i], 6));
    expect(frobenius(moments[1])).toBeGreaterThan(0.1);
    opt.dispose();
    param.dispose();
  });

  it('never calls an SVD (GaLore on the same gradients does)', () => {
    const spies = [svdModule.truncatedSvd, svdModule.jacobiSvd, svdModule.randomizedSvd] as unknown as Array<ReturnType<typeof vi.fn>>;
    const calls = () => spies.reduce((n, spy) => n + spy.mock.calls.length, 0);
    const rng = new Random(3);
    const grads = Array.from({ length: 4 }, () => randomMatrix(rng, 8, 6));
    const before = calls();
    const a = tf.variable(tf.zeros([8, 6]));
    const dct = new DctAdamW(new Map([['w', a]]), settings({ rank: 3 }));
    for (const g of grads) step(dct, g);
    expect(calls()).toBe(before);
    expect(frobenius(values(a))).toBeGreaterThan(0.01);
    const b = tf.variable(tf.zeros([8, 6]));
    const galore = new GaLore(new Map([['w', b]]), { projected: ['w'], rank: 3, updateProjGap: 1, scale: 1, projType: 'std', svd: 'exact' });
    for (const g of grads) step(galore, g);
    expect(calls() - before).toBeGreaterThanOrEqual(4);
    dct.dispose();
    galore.dispose();
    tf.dispose([a, b]);
  });

  it('holds r indices and the low-rank moments per matrix, one basis per size, in the exact byte count', () => {
    const shapes = new Map<string, number[]>([['tall', [12, 5]], ['wide', [5, 9]], ['square', [8, 8]], ['norm', [7]]]);
    const params = new Map([...shapes].map(([name, shape]) => [name, tf.variable(tf.ones(shape))]));
    const lowRank = settings({ rank: 3, projected: ['tall', 'wide', 'square'] });
    const opt = new DctAdamW(params, lowRank);
    // Per matrix r + 2·r·max(m,n); bases 5×5 (shared by tall and wide) and 8×8; AdamW 2·7 for the norm.
    const want = 4 * ((3 + 2 * 3 * 12) + (3 + 2 * 3 * 9) + (3 + 2 * 3 * 8) + 5 * 5 + 8 * 8 + 2 * 7);
    expect(opt.stateBytes()).toBe(want);
    expect(dctStateBytes(shapes, lowRank)).toBe(want);
    const grads = new Map([...shapes].map(([name, shape]) => [name, tf.randomNormal(shape, 0, 1, 'float32', 1)]));
    opt.step(grads, 0.01);
    const state = opt.getWeights().tensors;
    // No projector: the indices are r integers.
    expect([...state.keys()].filter((k) => k.endsWith('.projector'))).toEqual([]);
    expect(state.get('tall.indices')!.shape).toEqual([3]);
    for (const name of ['tall', 'wide', 'square']) for (const i of state.get(`${name}.indices`)!.dataSync()) expect(Number.isInteger(i)).toBe(true);
    const held = [...state.values()].reduce((bytes, t) => bytes + 4 * t.size, 0);
    expect(held + 4 * (5 * 5 + 8 * 8)).toBe(want);
    const q = opt.basis(5)!;
    expect(frobenius(values(tf.tidy(() => tf.sub(tf.matMul(q, q, true, false), tf.eye(5)))))).toBeLessThan(1e-5);
    tf.dispose([...grads.values()]);
    opt.dispose();
    tf.dispose([...params.values()]);
  });

  it('continues exactly after getWeights/setWeights, across a reselection (t = 5), without leaking tensors', () => {
    expectExactResume((w) => new DctAdamW(w, settings({ updateProjGap: 5 }), { weightDecay: 0.1 }) /* indices, M, V and the one basis */, 4);
  });
});
