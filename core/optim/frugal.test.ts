/**
 * FRUGAL's defining properties (ALGORITHMS.md §3 (d), METHODS.md `frugal`): a first step computed
 * by hand (float64 Jacobi SVD, right and left), the state-free component measured from the weights
 * with entries in {0, ±lr·s_p·s_i} and equal to −sign(G_res), the residual orthogonal to the
 * subspace (G_res·Pᵀ = 0, Pᵀ·G_res = 0), a full-rank update, the moments zeroed at each subspace
 * change, the reduction to GaLore with rule `no` and no reset, GaLore's exact state bytes, exact
 * restore and no tensor leak.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import { Random } from '../random.ts';
import { expectExactResume, frobenius, lowRankSettings, matmul, randomMatrix, transpose } from './low-rank-test-helpers.ts';
import { Frugal, type FrugalOptions } from './frugal.ts';
import { GaLore, lowRankStateBytes, type LowRankOptions } from './galore.ts';
import type { Optimizer } from './registry.ts';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

/** FRUGAL's settings: density 0.5 (r = 2 on the 4-wide test matrices), s_p = 1. */
const settings = (over: Partial<LowRankOptions> = {}): LowRankOptions => lowRankSettings({ rank: { density: 0.5 }, scale: 1, ...over });

const values = (t: tf.Tensor) => Array.from(t.dataSync());

interface Trace {
  w: number[][];
  p: number[][];
  m: number[][];
  v: number[][];
}

/** Runs `grads` through a fresh optimizer on W0, recording W, P, M and V after each step. */
function run(opt: Optimizer, param: tf.Variable, grads: number[][][], lr: number): Trace {
  const trace: Trace = { w: [], p: [], m: [], v: [] };
  for (const g of grads) {
    tf.tidy(() => opt.step(new Map([['w', tf.tensor2d(g)]]), lr));
    const state = opt.getWeights().tensors;
    trace.w.push(values(param));
    trace.p.push(values(state.get('w.projector')!));
    trace.m.push(values(state.get('w.exp_avg')!));
    trace.v.push(values(state.get('w.exp_avg_sq')!));
  }
  return trace;
}

function frugal(w0: number[][], lowRank: LowRankOptions, options: FrugalOptions, weightDecay = 0) {
  const param = tf.variable(tf.tensor2d(w0));
  return { param, opt: new Frugal(new Map([['w', param]]), lowRank, options, { weightDecay }) };
}

/** Float64 helpers for one [m, n] matrix and its projector P ([r, n] right, [m, r] left). */
function projector(side: 'right' | 'left', m: number, n: number, r: number) {
  return {
    down: (g: number[], p: number[]) => (side === 'right' ? matmul(g, transpose(p, r, n), m, n, r) : matmul(transpose(p, m, r), g, r, m, n)),
    up: (x: number[], p: number[]) => (side === 'right' ? matmul(x, p, m, r, n) : matmul(p, x, m, r, n)),
  };
}

describe('FRUGAL', () => {
  it.each([
    ['right', 6, 4],
    ['left', 4, 6],
  ] as const)('matches a first step computed by hand (%s: %i × %i)', (side, m, n) => {
    const [lr, sp, si, wd, eps, r] = [0.01, 0.5, 0.1, 0.1, 1e-8, 2];
    const rng = new Random(21);
    const w0 = randomMatrix(rng, m, n);
    const g = randomMatrix(rng, m, n).flat();
    // P from an independent float64 SVD; its signs cancel in up(·) of anything down-projected with it.
    const svd = jacobiSvd(Float64Array.from(g), m, n);
    const p = side === 'right' ? Array.from(svd.Vt.slice(0, r * n)) : Array.from({ length: m * r }, (_, k) => svd.U[Math.floor(k / r) * svd.k + (k % r)]);
    const { down, up } = projector(side, m, n, r);
    const R = down(g, p);
    // First step: M = 0.1·R, V = 0.001·R², k = 1: M/(1−β1)/(√V/√(1−β2) + ε) = R/(|R| + ε).
    const adam = up(R.map((x) => x / (Math.abs(x) + eps)), p);
    const upR = up(R, p);
    const residual = g.map((x, k) => x - upR[k]);
    const want = w0.flat().map((x, k) => x * (1 - lr * wd) - lr * sp * adam[k] - lr * sp * si * Math.sign(residual[k]));
    const { param, opt } = frugal(w0, settings({ scale: sp }), { inactiveLrScale: si }, wd);
    run(opt, param, [[...Array(m)].map((_, i) => g.slice(i * n, (i + 1) * n))], lr);
    values(param).forEach((got, k) => expect(got).toBeCloseTo(want[k], 6));
    opt.dispose();
    param.dispose();
  });

  it.each([
    ['right', 8, 5],
    ['left', 5, 8],
  ] as const)('puts the residual outside the subspace, with state-free entries in {0, ±lr·s_p·s_i} (%s)', (side, m, n) => {
    const [lr, sp, si, eps, T] = [0.01, 1, 0.1, 1e-8, 2];
    // density 0.4 of the smaller side 5 -> r = 2.
    const r = 2;
    const { down, up } = projector(side, m, n, r);
    /** The state-free component of each step, measured from the weights: −ΔW − lr·s_p·up(Adam part from the state). */
    const stateFree = (rule: 'sign_sgd' | 'sgd') => {
      const rng = new Random(8);
      const grads = Array.from({ length: 5 }, () => randomMatrix(rng, m, n));
      const { param, opt } = frugal(Array.from({ length: m }, () => new Array(n).fill(0)), settings({ rank: { density: 0.4 }, updateProjGap: T }), { rule, inactiveLrScale: si });
      const trace = run(opt, param, grads, lr);
      opt.dispose();
      param.dispose();
      return trace.w.map((w, step) => {
        const before = step === 0 ? new Array(m * n).fill(0) : trace.w[step - 1];
        const k = (step % T) + 1; // Adam step since the last reset
        const adam = up(trace.m[step].map((x, i) => x / (1 - 0.9 ** k) / (Math.sqrt(trace.v[step][i]) / Math.sqrt(1 - 0.999 ** k) + eps)), trace.p[step]);
        const free = w.map((x, i) => -(x - before[i]) - lr * sp * adam[i]);
        const g = grads[step].flat();
        const inside = up(down(g, trace.p[step]), trace.p[step]);
        return { free, g, residual: g.map((x, i) => x - inside[i]), p: trace.p[step] };
      });
    };
    const unit = lr * sp * si;
    for (const { free, residual } of stateFree('sign_sgd')) {
      for (const x of free) expect(Math.min(Math.abs(x), Math.abs(Math.abs(x) - unit))).toBeLessThan(1e-7);
      free.forEach((x, i) => expect(Math.round(x / unit)).toBe(Math.sign(residual[i])));
    }
    // With rule sgd the component is lr·s_p·s_i·G_res itself: the optimizer's residual, read back.
    for (const { free, g, p, residual } of stateFree('sgd')) {
      const used = free.map((x) => x / unit);
      // Right: G_res·Pᵀ = 0;  left: Pᵀ·G_res = 0; and it is G − up(down(G)), a large part of G.
      expect(frobenius(down(used, p)) / frobenius(g)).toBeLessThan(1e-4);
      expect(frobenius(used.map((x, i) => x - residual[i])) / frobenius(g)).toBeLessThan(1e-4);
      expect(frobenius(used)).toBeGreaterThan(0.3 * frobenius(g));
    }
  });

  it('makes a full-rank update; with rule `no` it has rank r', () => {
    const rng = new Random(6);
    const [m, n, r] = [8, 6, 2];
    const G = randomMatrix(rng, m, n);
    const ranks = (['sign_sgd', 'sgd', 'no'] as const).map((rule) => {
      const { param, opt } = frugal(Array.from({ length: m }, () => new Array(n).fill(0)), settings({ rank: { density: 1 / 3 } }), { rule });
      run(opt, param, [G], 0.01);
      const s = jacobiSvd(Float64Array.from(param.dataSync()), m, n).S;
      opt.dispose();
      param.dispose();
      return s.filter((sigma) => sigma > 1e-4 * s[0]).length;
    });
    expect(ranks).toEqual([n, n, r]);
  });

  it('zeroes the moments when the subspace changes (reset_statistics), keeps them otherwise', () => {
    const [m, n, r, T] = [6, 4, 2, 2];
    const rng = new Random(13);
    const grads = Array.from({ length: 3 }, () => randomMatrix(rng, m, n));
    const { down } = projector('right', m, n, r);
    for (const reset of [true, false]) {
      const { param, opt } = frugal(randomMatrix(rng, m, n), settings({ updateProjGap: T }), { resetStatistics: reset });
      const trace = run(opt, param, grads, 0.01);
      // Step 3 ran after a refresh (t = 2 ≡ 0 mod T): new P, R₃ = G₃·P₃ᵀ.
      expect(trace.p[2]).not.toEqual(trace.p[1]);
      const R3 = down(grads[2].flat(), trace.p[2]);
      const want = reset ? R3.map((x) => 0.1 * x) : R3.map((x, i) => 0.9 * trace.m[1][i] + 0.1 * x);
      trace.m[2].forEach((x, i) => expect(x).toBeCloseTo(want[i], 6));
      const wantV = reset ? R3.map((x) => 0.001 * x * x) : R3.map((x, i) => 0.999 * trace.v[1][i] + 0.001 * x * x);
      trace.v[2].forEach((x, i) => expect(x).toBeCloseTo(wantV[i], 6));
      opt.dispose();
      param.dispose();
    }
  });

  it('reduces to GaLore with rule `no` and reset_statistics false (same ε, no decay)', () => {
    const rng = new Random(17);
    const w0 = randomMatrix(rng, 7, 5);
    const grads = Array.from({ length: 6 }, () => randomMatrix(rng, 7, 5));
    // FRUGAL puts ε inside the bias correction, GaLore outside: with ε → 0 the two coincide.
    const lowRank = lowRankSettings({ rank: 2, scale: 0.25, updateProjGap: 3 });
    const a = tf.variable(tf.tensor2d(w0));
    const b = tf.variable(tf.tensor2d(w0));
    const optA = new Frugal(new Map([['w', a]]), lowRank, { rule: 'no', resetStatistics: false }, { epsilon: 1e-12 });
    const optB = new GaLore(new Map([['w', b]]), lowRank, { epsilon: 1e-12 });
    const [ta, tb] = [run(optA, a, grads, 0.01), run(optB, b, grads, 0.01)];
    expect(ta.p).toEqual(tb.p);
    const delta = ta.w[5].map((x, k) => x - w0.flat()[k]);
    const gap = ta.w[5].map((x, k) => x - tb.w[5][k]);
    expect(frobenius(delta)).toBeGreaterThan(0.01);
    expect(frobenius(gap) / frobenius(delta)).toBeLessThan(1e-5);
    // And the default FRUGAL step is not GaLore's.
    const { param, opt } = frugal(w0, lowRank, {});
    const tc = run(opt, param, grads, 0.01);
    expect(frobenius(tc.w[5].map((x, k) => x - tb.w[5][k])) / frobenius(delta)).toBeGreaterThan(0.1);
    for (const o of [optA, optB, opt]) o.dispose();
    tf.dispose([a, b, param]);
  });

  it('holds exactly GaLore\'s state, r = round(ρ·k) (halves to even, at least 1)', () => {
    const shapes = new Map<string, number[]>([['tall', [12, 6]], ['wide', [4, 10]], ['wider', [10, 18]], ['narrow', [10, 2]], ['norm', [7]]]);
    const params = new Map([...shapes].map(([name, shape]) => [name, tf.variable(tf.ones(shape))]));
    const lowRank = settings({ rank: { density: 0.25 }, projected: ['tall', 'wide', 'wider', 'narrow'] });
    const opt = new Frugal(params, lowRank);
    // ρ·k: 0.25·6 = 1.5 -> 2, 0.25·4 = 1, 0.25·10 = 2.5 -> 2, 0.25·2 = 0.5 -> 0 -> 1.
    expect(opt.projections.map((p) => [p.name, p.side, p.r])).toEqual([['tall', 'right', 2], ['wide', 'left', 1], ['wider', 'left', 2], ['narrow', 'right', 1]]);
    const formula = (m: number, n: number, r: number) => r * Math.min(m, n) + 2 * r * Math.max(m, n);
    const want = 4 * (formula(12, 6, 2) + formula(4, 10, 1) + formula(10, 18, 2) + formula(10, 2, 1) + 2 * 7);
    expect(opt.stateBytes()).toBe(want);
    expect(lowRankStateBytes(shapes, lowRank)).toBe(want);
    const grads = new Map([...shapes].map(([name, shape]) => [name, tf.randomNormal(shape, 0, 1, 'float32', 1)]));
    opt.step(grads, 0.01);
    expect([...opt.getWeights().tensors.values()].reduce((bytes, t) => bytes + 4 * t.size, 0)).toBe(want);
    tf.dispose([...grads.values()]);
    opt.dispose();
    tf.dispose([...params.values()]);
  });

  it('continues exactly after getWeights/setWeights, across a reset, without leaking tensors', () => {
    expectExactResume((w) => new Frugal(w, settings({ updateProjGap: 4, svd: 'randomized', seed: 2 }), { inactiveLrScale: 0.1 }, { weightDecay: 0.1 }), 3);
  });
});
