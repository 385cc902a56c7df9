/**
 * LoRA-Pro (lorapro.ts). The defining property (METHODS.md): on a test matrix the equivalent gradient
 * of LoRA-Pro's adjusted factor gradients is closer to the full gradient G than plain LoRA's, and is
 * the projection P_B·G + (I − P_B)·G·P_A (Thm 2.1), checked against a float64 computation written out
 * here. Also: X solves the Sylvester equation, and the final gradients' equivalent gradient is
 * P_B·ĝ + (I − P_B)·ĝ·P_A for it; one optimizer step against a hand transcription; the full-size Adam
 * state in the byte count; exact PEFT export; flat tensor count.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { Random } from '../random.ts';
import { optimizerFor } from '../optim/registry.ts';
import { getMethod } from './index.ts';
import { resolveTargets } from './targets.ts';
import { adjustedGradients, equivalentGradient, finalGradients, pairFor } from './lorapro.ts';
import { disposeAll, logits, modelWithWeights, randomize, referenceMerge, relativeError, tinyModel, tokenIds, trainer } from './method-test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'cpu' });
});

const random = (rows: number, cols: number, rng: Random, scale = 1) => tf.tensor2d(Float32Array.from({ length: rows * cols }, () => rng.normal() * scale), [rows, cols]);

/** Float64 matrices as plain arrays, for a reference written independently of the tfjs code. */
function read(t: tf.Tensor): { rows: number; cols: number; v: Float64Array } {
  return { rows: t.shape[0]!, cols: t.shape[1]!, v: Float64Array.from(t.dataSync()) };
}
type M = ReturnType<typeof read>;
function mul(a: M, b: M, aT = false, bT = false): M {
  const rows = aT ? a.cols : a.rows;
  const inner = aT ? a.rows : a.cols;
  const cols = bT ? b.rows : b.cols;
  const v = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      let s = 0;
      for (let k = 0; k < inner; k++) s += (aT ? a.v[k * a.cols + i] : a.v[i * a.cols + k]) * (bT ? b.v[j * b.cols + k] : b.v[k * b.cols + j]);
      v[i * cols + j] = s;
    }
  }
  return { rows, cols, v };
}
/** Inverse of a small SPD matrix by Gauss–Jordan. */
function inverse(a: M): M {
  const n = a.rows;
  const w = Array.from({ length: n }, (_, i) => [...a.v.slice(i * n, (i + 1) * n), ...Array.from({ length: n }, (_, j) => (i === j ? 1 : 0))]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(w[r][c]) > Math.abs(w[p][c])) p = r;
    [w[c], w[p]] = [w[p], w[c]];
    const d = w[c][c];
    for (let j = 0; j < 2 * n; j++) w[c][j] /= d;
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = w[r][c];
      for (let j = 0; j < 2 * n; j++) w[r][j] -= f * w[c][j];
    }
  }
  return { rows: n, cols: n, v: Float64Array.from(w.flatMap((row) => row.slice(n))) };
}
const add = (a: M, b: M, f = 1): M => ({ ...a, v: a.v.map((x, i) => x + f * b.v[i]) });
const frob = (a: M) => Math.sqrt(a.v.reduce((s, x) => s + x * x, 0));
/** P_B·G + (I − P_B)·G·P_A in float64. */
function projection(A: M, B: M, G: M): M {
  const PBG = mul(B, mul(inverse(mul(B, B, true)), mul(B, G, true)));
  const GPA = mul(mul(mul(G, A, false, true), inverse(mul(A, A, false, true))), A);
  const PBGPA = mul(B, mul(inverse(mul(B, B, true)), mul(B, GPA, true)));
  return add(add(PBG, GPA), PBGPA, -1);
}

describe('LoRA-Pro adjustment', () => {
  const m = 12;
  const n = 10;
  const r = 3;
  const s = 2;

  it('brings the equivalent gradient closer to the full gradient than plain LoRA, as the projection of Thm 2.1', () => {
    const rng = new Random(11);
    const A = random(r, n, rng, 0.5);
    const B = random(m, r, rng, 0.5);
    const G = random(m, n, rng);
    // Autograd's factor gradients for h = W₀x + s·B·A·x: G_A = s·BᵀG, G_B = s·G·Aᵀ.
    const gA = tf.mul(tf.matMul(B, G, true, false), s) as tf.Tensor2D;
    const gB = tf.mul(tf.matMul(G, A, false, true), s) as tf.Tensor2D;
    const pair = pairFor(A, B, s);
    const plain = read(equivalentGradient(pair, gA, gB)); // s²(BBᵀG + GAᵀA)
    const adjusted = adjustedGradients(pair, gA, gB);
    const pro = read(equivalentGradient(pair, adjusted.gA, adjusted.gB));
    const g = read(G);
    const errorPlain = frob(add(plain, g, -1));
    const errorPro = frob(add(pro, g, -1));
    console.log(`lorapro: ‖g̃ − G‖ ${errorPro.toFixed(4)} against plain LoRA's ${errorPlain.toFixed(4)} (‖G‖ ${frob(g).toFixed(4)})`);
    expect(errorPro).toBeLessThan(errorPlain);
    const want = projection(read(A), read(B), g);
    expect(frob(add(pro, want, -1)) / frob(want)).toBeLessThanOrEqual(1e-5);
    // Optimal among all factor gradients: any other (g_A, g_B) does no better.
    const other = read(equivalentGradient(pair, tf.add(adjusted.gA, random(r, n, rng, 0.1)) as tf.Tensor2D, adjusted.gB));
    expect(frob(add(other, g, -1))).toBeGreaterThan(errorPro);
    disposeAll([A, B, G, gA, gB, pair.invAA, pair.invBB, adjusted.gA, adjusted.gB]);
  });

  it('solves the Sylvester equation, and the final gradients amount to P_B·ĝ + (I − P_B)·ĝ·P_A', () => {
    const rng = new Random(12);
    const A = random(r, n, rng, 0.5);
    const B = random(m, r, rng, 0.5);
    const gHat = random(m, n, rng);
    const pair = pairFor(A, B, s);
    const final = finalGradients(pair, gHat);
    // (BᵀB)X + X(AAᵀ) = −s⁻²(BᵀB)⁻¹·(s·Bᵀĝ)·Aᵀ
    const a = read(A);
    const b = read(B);
    const x = read(final.X);
    const BtB = mul(b, b, true);
    const AAt = mul(a, a, false, true);
    const rhs = mul(mul(inverse(BtB), mul(b, read(gHat), true)), a, false, true);
    const c = { ...rhs, v: rhs.v.map((v) => (-v * s) / (s * s)) };
    const residual = add(add(mul(BtB, x), mul(x, AAt)), c, -1);
    expect(frob(residual) / frob(c)).toBeLessThanOrEqual(1e-4);
    const equivalent = read(equivalentGradient(pair, final.gA, final.gB));
    const want = projection(a, b, read(gHat));
    expect(frob(add(equivalent, want, -1)) / frob(want)).toBeLessThanOrEqual(1e-4);
    disposeAll([A, B, gHat, pair.invAA, pair.invBB, final.gA, final.gB, final.X]);
  });

  it('at B = 0 (the first step) takes the general formulas without NaN: g_A = 0 and the update is G·P_A', () => {
    const rng = new Random(13);
    const A = random(r, n, rng, 0.5);
    const B = tf.zeros([m, r]) as tf.Tensor2D;
    const G = random(m, n, rng);
    const gA = tf.zeros([r, n]) as tf.Tensor2D;
    const gB = tf.mul(tf.matMul(G, A, false, true), s) as tf.Tensor2D;
    const pair = pairFor(A, B, s);
    const adjusted = adjustedGradients(pair, gA, gB);
    expect(Math.max(...adjusted.gA.dataSync().map(Math.abs))).toBe(0);
    const pro = read(equivalentGradient(pair, adjusted.gA, adjusted.gB));
    const a = read(A);
    const want = mul(mul(mul(read(G), a, false, true), inverse(mul(a, a, false, true))), a);
    expect(frob(add(pro, want, -1)) / frob(want)).toBeLessThanOrEqual(1e-5);
    const final = finalGradients(pair, G);
    expect(final.X.dataSync().every((v) => v === 0)).toBe(true);
    expect(final.gB.dataSync().every(Number.isFinite)).toBe(true);
    disposeAll([A, B, G, gA, gB, pair.invAA, pair.invBB, adjusted.gA, adjusted.gB, final.gA, final.gB, final.X]);
  });
});

describe('lorapro on a model', () => {
  it('counts full-size Adam state, trains with SGD on the adjusted gradients, and exports an exact PEFT LoRA', () => {
    const { model, original } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 2, 8, 5);
    const targets = resolveTargets(model, ['q_proj', 'v_proj']);
    const attached = getMethod('lorapro').attach(model, { rank: 4, alpha: 8 }, { targets, seed: 3 });
    let full = 0;
    for (const path of targets) {
      const [rows, cols] = model.weightShape(`${path}.weight`);
      full += rows * cols;
    }
    expect(attached.optimizerStateBytes!()).toBe(8 * full);
    const optimizer = optimizerFor(attached, { weightDecay: 0 });
    expect(optimizer.stateBytes()).toBe(8 * full);
    optimizer.dispose();
    expect(relativeError(logits(model, ids), logits(model, ids))).toBe(0);
    const before = logits(model, ids);
    const loop = trainer(model, attached, ids, 0.01);
    for (let step = 0; step < 3; step++) loop.step();
    loop.dispose();
    expect(relativeError(logits(model, ids), before)).toBeGreaterThan(1e-4);
    randomize(attached, 4, 0.05);
    const adapterLogits = logits(model, ids);
    const merged = attached.mergedWeights();
    expect(relativeError(logits(modelWithWeights(model, merged), ids), adapterLogits)).toBeLessThanOrEqual(1e-5);
    const { config, tensors } = attached.peftAdapter!();
    expect(config).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 8, lora_dropout: 0 });
    const reference = referenceMerge(config, tensors, original);
    expect(reference.size).toBe(targets.length);
    for (const [name, want] of reference) expect(relativeError(merged.get(name)!.dataSync(), want)).toBeLessThanOrEqual(1e-5);
    disposeAll([...merged.values(), ...tensors.values()]);
    attached.detach();
    ids.dispose();
    model.dispose();
  });

  it('one step equals a hand transcription of lorapro_full_adjustment and SGD; tensor count flat', () => {
    const { model } = tinyModel('llama-gqa-tied');
    const ids = tokenIds(model.config.vocabSize, 2, 6, 4);
    const targets = resolveTargets(model, ['q_proj']);
    const attached = getMethod('lorapro').attach(model, { rank: 3, alpha: 6 }, { targets, seed: 2 });
    randomize(attached, 8, 0.1); // B ≠ 0: the general case
    const [path] = targets;
    const A = attached.trainable.get(`${path}.lora_A.weight`)! as tf.Variable<tf.Rank.R2>;
    const B = attached.trainable.get(`${path}.lora_B.weight`)! as tf.Variable<tf.Rank.R2>;
    model.training = true;
    const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.sum(tf.square(model.forward(ids).logits)) as tf.Scalar), [A, B]);
    model.training = false;
    const gA = grads[A.name] as tf.Tensor2D;
    const gB = grads[B.name] as tf.Tensor2D;
    // By hand: first Adam step, ĝ = g̃ / (|g̃| + ε) (m̂ = g̃, √v̂ = |g̃|), then the final gradients and SGD.
    const a = read(A);
    const b = read(B);
    const sc = 2;
    const invBB = inverse(mul(b, b, true));
    const invAA = inverse(mul(a, a, false, true));
    const PB = (y: M) => add(y, mul(b, mul(invBB, mul(b, y, true))), -1); // (I − P_B)·y
    const gTilde = (ga: M, gb: M) => {
      const e = add(mul(b, ga), mul(gb, a));
      return { ...e, v: e.v.map((x) => sc * x) };
    };
    const scaled = (x: M, f: number) => ({ ...x, v: x.v.map((v) => v * f) });
    const equiv = gTilde(scaled(mul(invBB, read(gA)), 1 / sc ** 2), scaled(PB(mul(read(gB), invAA)), 1 / sc ** 2));
    const gHat = { ...equiv, v: equiv.v.map((x) => x / (Math.abs(x) + 1e-8)) };
    const gAp = scaled(mul(b, gHat, true), sc);
    const gBp = scaled(mul(gHat, a, false, true), sc);
    // X from the Kronecker form of (BᵀB)X + X(AAᵀ) = C, solved by Gauss–Jordan.
    const P = mul(b, b, true);
    const Q = mul(a, a, false, true);
    const r = P.rows;
    const C = scaled(mul(mul(invBB, gAp), a, false, true), -1 / sc ** 2);
    const K = { rows: r * r, cols: r * r, v: new Float64Array(r ** 4) };
    for (let i = 0; i < r; i++) {
      for (let j = 0; j < r; j++) {
        for (let k = 0; k < r; k++) {
          K.v[(i * r + j) * r * r + (k * r + j)] += P.v[i * r + k];
          K.v[(i * r + j) * r * r + (i * r + k)] += Q.v[k * r + j];
        }
      }
    }
    const x = { rows: r, cols: r, v: mul(inverse(K), { rows: r * r, cols: 1, v: C.v }).v };
    const wantA = add(scaled(mul(invBB, gAp), 1 / sc ** 2), mul(x, a));
    const wantB = add(scaled(PB(mul(gBp, invAA)), 1 / sc ** 2), mul(b, x), -1);
    const lr = 0.01;
    const optimizer = optimizerFor(attached, { weightDecay: 0 });
    optimizer.step(new Map([[`${path}.lora_A.weight`, gA], [`${path}.lora_B.weight`, gB]]), lr);
    expect(relativeError(A.dataSync(), a.v.map((v, i) => v - lr * wantA.v[i]))).toBeLessThanOrEqual(1e-5);
    expect(relativeError(B.dataSync(), b.v.map((v, i) => v - lr * wantB.v[i]))).toBeLessThanOrEqual(1e-5);
    const count = tf.memory().numTensors;
    optimizer.step(new Map([[`${path}.lora_A.weight`, gA], [`${path}.lora_B.weight`, gB]]), lr);
    expect(tf.memory().numTensors).toBe(count);
    disposeAll([value, gA, gB]);
    optimizer.dispose();
    attached.detach();
    ids.dispose();
    model.dispose();
  });
});
