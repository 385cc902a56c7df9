/**
 * Frozen weights in native memory (native/frozen.c through frozen-weight.ts), against references
 * that share no code with them: float64 products, the reference quantisers of
 * test/reference/quantize-reference.ts (bit for bit), the unfused cross-entropy, and a model whose
 * weights are ordinary tensors (logits and LoRA gradients identical for a base kept in its own
 * precision). Needs the native addon: CI builds it, so there it must load.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { needs } from '../../test/helpers/optional-parts.ts';
import { relativeError, seededValues } from '../backend/cpu-parity.ts';
import { float32ToBfloat16, float32ToFloat16, bfloat16ToFloat32, float16ToFloat32 } from '../io/dtype.ts';
import { FrozenWeight, frozenGather, frozenLinear, frozenLinearCrossEntropy, frozenWeightsAvailable } from './frozen-weight.ts';
import { compositeWeightedCrossEntropy } from './causal-lm.ts';
import { loadModel } from './load.ts';
import { getMethod } from '../methods/index.ts';
import { int8RoundTrip, nf4RoundTrip, NF4_THRESHOLDS } from '../../test/reference/quantize-reference.ts';
import { writeRealShape } from '../../test/fixtures/real-shapes.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-frozen-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

/** Normal-ish weights with outliers, so absmax scaling matters. */
function weights(n: number, seed: number): Float32Array {
  const v = seededValues(n, seed);
  for (let i = 0; i < n; i++) v[i] = v[i] * 0.05 + (i % 97 === 0 ? 0.4 * Math.sign(v[i]) : 0);
  return v;
}

const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** x [n, k] · (trans ? Wᵀ : W) in float64, W [rows, cols] row-major. */
function product64(x: Float32Array, n: number, w: Float32Array, rows: number, cols: number, trans: boolean): Float32Array {
  const [k, m] = trans ? [cols, rows] : [rows, cols];
  const out = new Float32Array(n * m);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < m; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += x[i * k + p] * (trans ? w[j * cols + p] : w[p * cols + j]);
      out[i * m + j] = s;
    }
  }
  return out;
}

describe('frozen weights in native memory', needs('native'), () => {
  it('store f32, f16 and bf16 exactly as given, and read them back bit for bit', () => {
    const values = weights(37 * 29, 1);
    const f16 = float32ToFloat16(values);
    const bf16 = float32ToBfloat16(values);
    const cases: Array<[string, FrozenWeight, Float32Array]> = [
      ['f32 from f32', FrozenWeight.create(values, 'f32', [37, 29], 'f32'), values],
      ['f16 from f16', FrozenWeight.create(f16, 'f16', [37, 29], 'f16'), float16ToFloat32(f16)],
      ['bf16 from bf16', FrozenWeight.create(bf16, 'bf16', [37, 29], 'bf16'), bfloat16ToFloat32(bf16)],
      // Conversions on load round to nearest even, as torch's .half() / .bfloat16() (and io/dtype.ts) do.
      ['bf16 from f32', FrozenWeight.create(values, 'f32', [37, 29], 'bf16'), bfloat16ToFloat32(float32ToBfloat16(values))],
      ['f16 from f32', FrozenWeight.create(values, 'f32', [37, 29], 'f16'), float16ToFloat32(float32ToFloat16(values))],
      ['f32 from bf16', FrozenWeight.create(bf16, 'bf16', [37, 29], 'f32'), bfloat16ToFloat32(bf16)],
    ];
    for (const [what, w, expected] of cases) {
      expect(bits(w.readRows(0, 37)), what).toEqual(bits(expected));
      expect(bits(w.readRows(5, 3)), what).toEqual(bits(expected.subarray(5 * 29, 8 * 29)));
      w.dispose();
    }
  });

  it('quantise to NF4 and int8 exactly as the reference quantisers, including zero blocks and blocks across rows', () => {
    // cols = 100: NF4 blocks of 64 run across row ends; one all-zero row; odd element count.
    const rows = 41;
    const cols = 100;
    const values = weights(rows * cols, 2);
    values.fill(0, 7 * cols, 8 * cols + 28);
    values[300] = -0;
    const bf16 = float32ToBfloat16(values);
    const source = bfloat16ToFloat32(bf16);
    const nf4 = FrozenWeight.create(bf16, 'bf16', [rows, cols], 'nf4');
    const int8 = FrozenWeight.create(bf16, 'bf16', [rows, cols], 'int8');
    expect(bits(nf4.readRows(0, rows))).toEqual(bits(nf4RoundTrip(source)));
    expect(bits(int8.readRows(0, rows))).toEqual(bits(int8RoundTrip(source, rows, cols)));
    // Storage: 4 bits + one float32 scale per 64 values; 8 bits + one scale per row.
    expect(nf4.bytes).toBe(Math.ceil((rows * cols) / 2) + 4 * Math.ceil((rows * cols) / 64));
    expect(int8.bytes).toBe(rows * cols + 4 * rows);
    // Values exactly at the quantiser's decision thresholds (absmax 1) land where bitsandbytes puts them (strict >).
    const edges = Float32Array.from({ length: 64 }, (_, i) => (i === 0 ? 1 : NF4_THRESHOLDS[i % 15] * (i < 32 ? 1 : -1)));
    const edge = FrozenWeight.create(edges, 'f32', [1, 64], 'nf4');
    expect(bits(edge.readRows(0, 1))).toEqual(bits(nf4RoundTrip(edges)));
    // int8 ties (absmax 127: x·127/absmax = x) round half to even, as rint does.
    const ties = Float32Array.from([127, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -126.5]);
    const tie = FrozenWeight.create(ties, 'f32', [1, 8], 'int8');
    expect(bits(tie.readRows(0, 1))).toEqual(bits(int8RoundTrip(ties, 1, 8)));
    expect(Array.from(tie.readRows(0, 1))).toEqual([127, 0, 2, 2, 0, -2, 4, -126]);
    for (const w of [nf4, int8, edge, tie]) w.dispose();
  });

  for (const kind of ['f32', 'bf16', 'nf4'] as const) {
    it(`${kind}: x·Wᵀ and dy·W equal float64 products of the stored values, in tiles (a 70 × 65,536 weight)`, () => {
      // 16 MB tiles of 65,536 float32 columns hold 64 rows: 70 rows take two tiles.
      const rows = 70;
      const cols = 65536;
      const w = FrozenWeight.create(weights(rows * cols, 3), 'f32', [rows, cols], kind);
      const stored = w.readRows(0, rows);
      const n = 3;
      const x = seededValues(n * cols, 4);
      const dy = seededValues(n * rows, 5);
      const [y, dx] = tf.tidy(() => [frozenLinear(tf.tensor2d(x, [n, cols]), w), frozenLinear(tf.tensor2d(dy, [n, rows]), w, true)].map((t) => t.dataSync() as Float32Array));
      expect(relativeError(y, product64(x, n, stored, rows, cols, true))).toBeLessThan(2e-6);
      expect(relativeError(dx, product64(dy, n, stored, rows, cols, false))).toBeLessThan(2e-6);
      w.dispose();
    });
  }

  it('gathers embedding rows and refuses ids outside the vocabulary', () => {
    const w = FrozenWeight.create(weights(50 * 8, 6), 'f32', [50, 8], 'nf4');
    const all = w.readRows(0, 50);
    const got = tf.tidy(() => frozenGather(tf.tensor1d([3, 49, 0, 3], 'int32'), w).dataSync() as Float32Array);
    const want = Float32Array.from([3, 49, 0, 3].flatMap((r) => Array.from(all.subarray(r * 8, r * 8 + 8))));
    expect(bits(got)).toEqual(bits(want));
    expect(() => tf.tidy(() => frozenGather(tf.tensor1d([50], 'int32'), w))).toThrow(/outside the embedding/);
    w.dispose();
    expect(() => tf.tidy(() => frozenGather(tf.tensor1d([1], 'int32'), w))).toThrow(/not registered|freed/);
  });

  it('fused head + cross-entropy: value and dh equal the unfused loss on the same weights, over several vocabulary tiles, with ignored rows', () => {
    // 1,000 active rows and 32 MB logits tiles: 8,388 vocabulary rows per tile, so V = 20,000 takes 3 tiles.
    const V = 20000;
    const C = 8;
    const N = 1100;
    const w = FrozenWeight.create(weights(V * C, 7), 'f32', [V, C], 'bf16');
    const W = w.readRows(0, V);
    const h = seededValues(N * C, 8).map((v) => v * 20);
    const targets = Int32Array.from({ length: N }, (_, i) => (i * 7919) % V);
    targets[1] = V - 1;
    const rowWeights = Float32Array.from({ length: N }, (_, i) => (i % 11 === 0 ? 0 : 1 / N));
    const run = (fused: boolean) =>
      tf.tidy(() => {
        const hT = tf.tensor2d(h, [N, C]);
        const loss = (x: tf.Tensor) =>
          fused
            ? frozenLinearCrossEntropy(x as tf.Tensor2D, w, tf.tensor1d(targets, 'int32'), tf.tensor1d(rowWeights))
            : compositeWeightedCrossEntropy(tf.matMul(x as tf.Tensor2D, tf.tensor2d(W, [V, C]), false, true), tf.tensor1d(targets, 'int32'), tf.tensor1d(rowWeights));
        const { value, grad } = tf.valueAndGrad(loss)(hT);
        return [value.dataSync()[0], grad.dataSync() as Float32Array] as const;
      });
    const [fusedLoss, fusedGrad] = run(true);
    const [loss, grad] = run(false);
    expect(Math.abs(fusedLoss - loss) / Math.abs(loss)).toBeLessThan(1e-6);
    expect(relativeError(fusedGrad, grad)).toBeLessThan(1e-5);
    // Rows with weight 0 get exactly no gradient.
    expect(Array.from(fusedGrad.subarray(0, C)).every((v) => v === 0)).toBe(true);
    w.dispose();
  });

  it('fused head + cross-entropy: a NaN in one head row (a logit outside every target) gives a NaN loss, in the first tile or a later one', () => {
    // 1,100 rows: 32 MB logits tiles of ~7,600 vocabulary rows, so row V − 2 lies in the third tile.
    const V = 20000;
    const C = 8;
    const N = 1100;
    for (const badRow of [3, V - 2]) {
      const values = weights(V * C, 9);
      values[badRow * C + 1] = NaN;
      const w = FrozenWeight.create(values, 'f32', [V, C], 'f32');
      const targets = Int32Array.from({ length: N }, (_, i) => (i * 31) % 1000 + 10); // never a bad row
      const loss = tf.tidy(() => frozenLinearCrossEntropy(tf.tensor2d(seededValues(N * C, 3), [N, C]), w, tf.tensor1d(targets, 'int32'), tf.tensor1d(new Float32Array(N).fill(1 / N))).dataSync()[0]);
      expect(loss, `NaN in row ${badRow}`).toBeNaN();
      w.dispose();
    }
  });

  it('a model with its base frozen natively gives the same logits, loss and LoRA gradients as with tensors (stored precision)', async () => {
    expect(frozenWeightsAvailable()).toBe(true);
    const dir = writeRealShape(path.join(root, 'qwen'), 'qwen2.5-0.5b', { layers: 2, hidden: 64, heads: 4, kvHeads: 2, intermediate: 96, vocab: 3000 });
    const ids = tf.tensor2d(Int32Array.from({ length: 2 * 12 }, (_, i) => (i * 37) % 3000), [2, 12], 'int32');
    const results = [false, true].map((frozen) => {
      const model = loadModel(dir, frozen ? { frozenBase: { dtype: 'auto' } } : {});
      expect(model.frozen.size).toBe(frozen ? 2 * 7 + 1 : 0);
      const attached = getMethod('lora').attach(model, { rank: 4, alpha: 8, dropout: 0, use_rslora: false }, { targets: model.linearModules(), seed: 1 });
      for (const v of attached.trainable.values()) tf.tidy(() => v.assign(tf.mul(tf.randomNormal(v.shape, 0, 1, 'float32', 3), 0.05)));
      const logits = tf.tidy(() => model.forward(ids).logits.dataSync() as Float32Array);
      const { value, grads } = tf.variableGrads(() => model.loss(ids, ids).loss, [...attached.trainable.values()]);
      const out = { logits, loss: value.dataSync()[0], grads: Object.values(grads).map((g) => g.dataSync() as Float32Array) };
      tf.dispose([value, ...Object.values(grads)]);
      attached.detach();
      model.dispose();
      return out;
    });
    expect(bits(results[1].logits)).toEqual(bits(results[0].logits));
    // The fused head sums the softmax in another order than the unfused loss: equal to float32 rounding.
    expect(Math.abs(results[1].loss - results[0].loss) / results[0].loss).toBeLessThan(1e-6);
    // Its dh differs from the unfused one by that rounding, carried back through every layer (measured 1.1e-6).
    results[1].grads.forEach((g, i) => expect(relativeError(g, results[0].grads[i])).toBeLessThan(2e-6));
    ids.dispose();
  });

  it('frees native memory on dispose and refuses use after it', () => {
    const w = FrozenWeight.create(weights(64, 9), 'f32', [8, 8], 'f32');
    w.dispose();
    expect(w.disposed).toBe(true);
    expect(() => w.readRows(0, 1)).toThrow(/after dispose/);
  });
});
