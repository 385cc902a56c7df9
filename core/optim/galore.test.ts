/**
 * GaLore's defining properties (ALGORITHMS.md §1 (d), METHODS.md `galore`): a first step computed
 * by hand on a matrix whose SVD is known, the update inside the projected subspace (right and
 * left), ‖ΔW‖ linear in α, the projector changing only at t ≡ 0 (mod T), the exact state bytes
 * (formula and the tensors actually held), exact restore, and no tensor leak.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import { Random } from '../random.ts';
import { expectExactResume, frobenius, lowRankSettings as settings, matmul, randomMatrix, transpose } from './low-rank-test-helpers.ts';
import { GaLore, lowRankStateBytes, type LowRankOptions } from './galore.ts';
import type { Optimizer } from './registry.ts';

beforeAll(async () => {
  await tf.setBackend('cpu');
});


function values(t: tf.Tensor): number[] {
  return Array.from(t.dataSync());
}

/** Runs `grads` through a fresh optimizer on W0; returns W after each step and P after each step. */
function run(w0: number[][], grads: number[][][], lowRank: LowRankOptions, lr = 0.01, weightDecay = 0): { w: number[][]; p: number[][]; opt: Optimizer; param: tf.Variable } {
  const param = tf.variable(tf.tensor2d(w0));
  const opt = new GaLore(new Map([['w', param]]), lowRank, { weightDecay });
  const w: number[][] = [];
  const p: number[][] = [];
  for (const g of grads) {
    const gt = tf.tensor2d(g);
    opt.step(new Map([['w', gt]]), lr);
    gt.dispose();
    w.push(values(param));
    p.push(values(opt.getWeights().tensors.get('w.projector')!));
  }
  return { w, p, opt, param };
}



describe('GaLore', () => {
  // G has orthogonal columns 3·e0, −2·e1, e2: singular values 3, 2, 1, right singular vectors e0, e1
  // (up to sign, which cancels in back(N) = N·P). So P = ±[e0; e1] and R = G·Pᵀ = ±[3, 0; 0, −2; 0, 0; 0, 0].
  const G = [[3, 0, 0], [0, -2, 0], [0, 0, 1], [0, 0, 0]];
  const W0 = [[0.5, -0.1, 0.2], [0.3, 0.4, -0.6], [0.7, 0.05, 0.1], [-0.2, 0.9, 0.8]];

  it('matches a first step computed by hand (right projection, then the transposed left one)', () => {
    const [lr, alpha, wd, eps] = [0.01, 0.25, 0.1, 1e-6];
    // First step: M = 0.1·R, V = 0.001·R², N = M/(√V + ε), η = lr·√(1 − 0.999)/(1 − 0.9).
    const eta = (lr * Math.sqrt(0.001)) / 0.1;
    const n = (x: number) => (0.1 * x) / (Math.sqrt(0.001) * Math.abs(x) + eps);
    const delta = [[-eta * alpha * n(3), 0, 0], [0, -eta * alpha * n(-2), 0], [0, 0, 0], [0, 0, 0]];
    // Decoupled decay after the step, with lr (not η): W ← (W − η·α·back(N))·(1 − lr·λ).
    const want = W0.map((row, i) => row.map((w, j) => (w + delta[i][j]) * (1 - lr * wd)));
    const right = run(W0, [G], settings({ scale: alpha }), lr, wd);
    expect(right.w[0]).toHaveLength(12);
    right.w[0].forEach((got, k) => expect(got).toBeCloseTo(want.flat()[k], 6));
    // The transposed problem is 'left': P = U_r [3, 2], R = Pᵀ·G [2, 4].
    const tr = <T>(a: T[][]) => a[0].map((_, j) => a.map((row) => row[j]));
    const left = run(tr(W0), [tr(G)], settings({ scale: alpha }), lr, wd);
    left.w[0].forEach((got, k) => expect(got).toBeCloseTo(tr(want).flat()[k], 6));
    for (const r of [right, left]) {
      r.opt.dispose();
      r.param.dispose();
    }
  });

  it.each([
    ['right', 8, 5],
    ['left', 5, 8],
  ] as const)('keeps the update in the projected subspace (%s: %i × %i)', (side, m, n) => {
    const rng = new Random(3);
    const w0 = randomMatrix(rng, m, n);
    const grads = Array.from({ length: 5 }, () => randomMatrix(rng, m, n));
    const { w, p, opt, param } = run(w0, grads, settings({ rank: 2 }), 0.05);
    const dW = w[4].map((x, k) => x - w0.flat()[k]);
    const P = p[4];
    const r = 2;
    // P is orthonormal and spans G₀'s top-2 singular subspace: ‖proj(G₀)‖² = σ₁² + σ₂² (independent Jacobi SVD).
    const svd = jacobiSvd(Float64Array.from(grads[0].flat()), m, n);
    const proj = side === 'right' ? matmul(grads[0].flat(), transpose(P, r, n), m, n, r) : matmul(transpose(P, m, r), grads[0].flat(), r, m, n);
    expect(frobenius(proj) ** 2).toBeCloseTo(svd.S[0] ** 2 + svd.S[1] ** 2, 3);
    // Right: ΔW·(I − PᵀP) = 0;  left: (I − P·Pᵀ)·ΔW = 0.
    const inside = side === 'right' ? matmul(matmul(dW, transpose(P, r, n), m, n, r), P, m, r, n) : matmul(P, matmul(transpose(P, m, r), dW, r, m, n), m, r, n);
    const outside = dW.map((x, k) => x - inside[k]);
    expect(frobenius(dW)).toBeGreaterThan(0.05);
    expect(frobenius(outside) / frobenius(dW)).toBeLessThan(1e-5);
    // Rank of ΔW is at most r.
    const s = jacobiSvd(Float64Array.from(dW), m, n).S;
    expect(s[r] / s[0]).toBeLessThan(1e-5);
    opt.dispose();
    param.dispose();
  });

  it('scales ‖ΔW‖ linearly with α', () => {
    const rng = new Random(5);
    const w0 = randomMatrix(rng, 6, 4);
    const grads = Array.from({ length: 3 }, () => randomMatrix(rng, 6, 4));
    const deltas = [0.25, 1].map((scale) => {
      const r = run(w0, grads, settings({ scale }));
      r.opt.dispose();
      r.param.dispose();
      return r.w[2].map((x, k) => x - w0.flat()[k]);
    });
    expect(frobenius(deltas[1]) / frobenius(deltas[0])).toBeCloseTo(4, 4);
    deltas[1].forEach((d, k) => expect(d).toBeCloseTo(4 * deltas[0][k], 6));
  });

  it('recomputes P only at steps t ≡ 0 (mod T)', () => {
    const rng = new Random(9);
    const grads = Array.from({ length: 7 }, () => randomMatrix(rng, 6, 4));
    const { p, opt, param } = run(randomMatrix(rng, 6, 4), grads, settings({ updateProjGap: 3 }));
    // p[k] is P after step k+1, which ran with t = k completed steps.
    const changed = p.map((pk, k) => (k === 0 ? true : pk.some((x, i) => x !== p[k - 1][i])));
    expect(changed).toEqual([true, false, false, true, false, false, true]);
    opt.dispose();
    param.dispose();
  });

  it('holds exactly r·min(m,n) + 2·r·max(m,n) floats per projected matrix plus AdamW for the rest', () => {
    const shapes = new Map<string, number[]>([['tall', [12, 5]], ['wide', [4, 9]], ['narrow', [7, 2]], ['norm', [7]], ['embed', [10, 3]]]);
    const params = new Map([...shapes].map(([name, shape]) => [name, tf.variable(tf.ones(shape))]));
    const lowRank = { ...settings({ rank: 3 }), projected: ['tall', 'wide', 'narrow'] };
    const opt = new GaLore(params, lowRank);
    // r = 3 clamps to 2 for the 7×2 matrix.
    const formula = (m: number, n: number, r: number) => r * Math.min(m, n) + 2 * r * Math.max(m, n);
    const want = 4 * (formula(12, 5, 3) + formula(4, 9, 3) + formula(7, 2, 2) + 2 * 7 + 2 * 30);
    expect(want).toBe(4 * (87 + 66 + 32 + 14 + 60));
    expect(opt.stateBytes()).toBe(want);
    expect(lowRankStateBytes(shapes, lowRank)).toBe(want);
    // And that is what the optimizer actually holds after a step.
    const grads = new Map([...shapes].map(([name, shape]) => [name, tf.randomNormal(shape, 0, 1, 'float32', 1)]));
    opt.step(grads, 0.01);
    const held = [...opt.getWeights().tensors.values()].reduce((bytes, t) => bytes + 4 * t.size, 0);
    expect(held).toBe(want);
    expect(opt.projections.map((p) => [p.name, p.side, p.r])).toEqual([['tall', 'right', 3], ['wide', 'left', 3], ['narrow', 'right', 2]]);
    tf.dispose([...grads.values()]);
    opt.dispose();
    tf.dispose([...params.values()]);
  });

  it('continues exactly after getWeights/setWeights, across a projector refresh, without leaking tensors', () => {
    expectExactResume((w) => new GaLore(w, settings({ updateProjGap: 4, svd: 'randomized', seed: 2 })), 3);
  });
});
