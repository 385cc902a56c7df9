/**
 * Fira's defining properties (ALGORITHMS.md §2 (d), METHODS.md `fira`): a first step computed by
 * hand, φ of the right length (m for a right projection, n for a left one), the norm-growth limiter
 * holding ‖S_t‖ ≤ γ·‖S_{t−1}‖ on gradients that grow 2× per step (S measured from the weights, not
 * read from the optimizer), and a full-rank update where GaLore's has rank r.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import { Random } from '../random.ts';
import { frobenius, lowRankSettings as settings, randomMatrix } from './low-rank-test-helpers.ts';
import { Fira, firaScaledResidual } from './fira.ts';
import { GaLore, projectionOf, type LowRankOptions } from './galore.ts';

beforeAll(async () => {
  await tf.setBackend('cpu');
});



describe('Fira', () => {
  it('matches a first step computed by hand', () => {
    // Orthogonal columns 3·e0, −2·e1, e2 + 0.5·e3: σ = 3, 2, √1.25; top-2 right singular vectors e0, e1.
    // R = G·Pᵀ = ±[3, 0; 0, −2; 0, 0; 0, 0]; α·back(R) keeps α of the first two columns.
    const G = [[3, 0, 0], [0, -2, 0], [0, 0, 1], [0, 0, 0.5]];
    const [lr, alpha, eps] = [0.01, 0.25, 1e-6];
    const eta = (lr * Math.sqrt(0.001)) / 0.1;
    const n = (x: number) => (0.1 * x) / (Math.sqrt(0.001) * Math.abs(x) + eps);
    // φ per row of N [4, 2]: ‖N_i‖/(‖R_i‖ + 1e-8); rows 2 and 3 of R and N are 0, so φ = 0 there.
    const phi = [Math.abs(n(3)) / (3 + 1e-8), Math.abs(n(-2)) / (2 + 1e-8), 0, 0];
    // S = (G − α·back(R)) ⊙ φ; first step: no limiting.
    const S = [[3 * (1 - alpha) * phi[0], 0, 0], [0, -2 * (1 - alpha) * phi[1], 0], [0, 0, 0], [0, 0, 0]];
    const want = [[-eta * (alpha * n(3) + S[0][0]), 0, 0], [0, -eta * (alpha * n(-2) + S[1][1]), 0], [0, 0, 0], [0, 0, 0]];
    const w = tf.variable(tf.zeros([4, 3]));
    const opt = new Fira(new Map([['w', w]]), settings({ scale: alpha }));
    tf.tidy(() => opt.step(new Map([['w', tf.tensor2d(G)]]), lr));
    Array.from(w.dataSync()).forEach((got, k) => expect(got).toBeCloseTo(want.flat()[k], 7));
    expect(opt.getWeights().tensors.get('w.residual_norm')!.dataSync()[0]).toBeCloseTo(frobenius(S.flat()), 5);
    // One float more per matrix than GaLore: P [2, 3] + M, V [4, 2] + s.
    expect(opt.stateBytes()).toBe(4 * (6 + 16 + 1));
    opt.dispose();
    w.dispose();
  });

  it.each([
    ['right', 9, 5, 9],
    ['left', 4, 7, 7],
  ] as const)('φ has one entry per %s-projected row or column (%i × %i -> %i)', (side, m, n, length) => {
    const rng = new Random(1);
    const projection = projectionOf([m, n], 2, 'std');
    expect(projection.side).toBe(side);
    tf.tidy(() => {
      const g = tf.tensor2d(randomMatrix(rng, m, n));
      const p = tf.tensor2d(randomMatrix(rng, ...projection.projectorShape));
      const r = tf.tensor2d(randomMatrix(rng, ...projection.lowRankShape));
      const normalized = tf.tensor2d(randomMatrix(rng, ...projection.lowRankShape));
      const { phi, residual } = firaScaledResidual(g, r, normalized, p, side, 0.25);
      expect(phi.shape).toEqual([length]);
      expect(residual.shape).toEqual([m, n]);
      // φ_0 by hand: the first row (right) or column (left) of N and R.
      const pick = (t: tf.Tensor2D) => (side === 'right' ? t.arraySync()[0] : t.arraySync().map((row) => row[0]));
      expect(phi.dataSync()[0]).toBeCloseTo(frobenius(pick(normalized)) / (frobenius(pick(r)) + 1e-8), 5);
    });
  });

  it('limits the growth of the scaled residual: ‖S_t‖ ≤ γ·‖S_{t−1}‖ every step', () => {
    const [m, n, lr, alpha] = [8, 6, 0.1, 0.25];
    /** ‖S_t‖ for t = 1..8, S_t measured from the weights: S_t = −ΔW/η_t − α·back(N_t), N_t and P from the state. */
    const residualNorms = (gamma: number): number[] => {
      const rng = new Random(4);
      const w = tf.variable(tf.zeros([m, n]));
      const opt = new Fira(new Map([['w', w]]), settings({ scale: alpha }), { gamma });
      let before = Float64Array.from(w.dataSync());
      const norms: number[] = [];
      // A fixed rank-2 part (what P captures at step 1) plus noise outside it that doubles every step:
      // φ normalises the overall scale away, but the residual's share grows, so unlimited ‖S‖ does too.
      const base = randomMatrix(rng, m, 2);
      const mix = randomMatrix(rng, 2, n);
      const lowRankPart = base.map((row) => mix[0].map((_, j) => 3 * (row[0] * mix[0][j] + row[1] * mix[1][j])));
      for (let t = 1; t <= 8; t++) {
        const noise = randomMatrix(rng, m, n, 0.01 * 2 ** t);
        tf.tidy(() => opt.step(new Map([['w', tf.tensor2d(lowRankPart.map((row, i) => row.map((x, j) => x + noise[i][j])))]]), lr));
        const after = Float64Array.from(w.dataSync());
        const state = opt.getWeights().tensors;
        const eta = (lr * Math.sqrt(1 - 0.999 ** t)) / (1 - 0.9 ** t);
        const subspace = tf.tidy(() => {
          const N = tf.div(state.get('w.exp_avg')!, tf.add(tf.sqrt(state.get('w.exp_avg_sq')!), 1e-6)) as tf.Tensor2D;
          return tf.mul(tf.matMul(N, state.get('w.projector')! as tf.Tensor2D), alpha).dataSync();
        });
        norms.push(frobenius(after.map((x, k) => -(x - before[k]) / eta - subspace[k])));
        // The optimizer's s is the norm it applied.
        expect(state.get('w.residual_norm')!.dataSync()[0] / norms[t - 1]).toBeCloseTo(1, 3);
        before = after;
      }
      opt.dispose();
      w.dispose();
      return norms;
    };
    const growth = (norms: number[]) => norms.slice(1).map((s, i) => s / norms[i]);
    const limited = growth(residualNorms(1.01));
    for (const ratio of limited) expect(ratio).toBeLessThanOrEqual(1.01 * (1 + 1e-4));
    // Without the limiter (γ huge) the same gradients grow ‖S‖ by far more than γ per step.
    expect(Math.max(...growth(residualNorms(1e6)))).toBeGreaterThan(1.3);
  });

  it('makes a full-rank update where GaLore\'s has rank r', () => {
    const rng = new Random(6);
    const [m, n, r] = [8, 6, 2];
    const G = randomMatrix(rng, m, n);
    const ranks = [GaLore, Fira].map((Optimizer) => {
      const w = tf.variable(tf.zeros([m, n]));
      const opt = new Optimizer(new Map([['w', w]]), settings({ rank: r }));
      tf.tidy(() => opt.step(new Map([['w', tf.tensor2d(G)]]), 0.01));
      const s = jacobiSvd(Float64Array.from(w.dataSync()), m, n).S;
      opt.dispose();
      w.dispose();
      return s.filter((sigma) => sigma > 1e-4 * s[0]).length;
    });
    expect(ranks).toEqual([r, n]);
  });
});
