/**
 * The chunked linear + cross-entropy against the unfused path it replaces (logits = h·Wᵀ, then
 * causal-lm.ts's weightedCrossEntropy, and its composite tfjs form): value, dh and dW on cpu and
 * wasm over shard layouts, chunk sizes and target positions; that a frozen weight costs no dW
 * product; the memory it saves, measured with tf.profile against linearCrossEntropyBytes; no leaks
 * and no overflow.
 *
 * LCE_BENCH=1 also times value+grad on wasm at model sizes (fused vs unfused, with peak bytes).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { relativeError, runOn, seededValues } from '../backend/cpu-parity.ts';
import { nativeAddon } from '../backend/native/addon.ts';
import { needs } from '../../test/helpers/optional-parts.ts';
import { compositeWeightedCrossEntropy, weightedCrossEntropy } from './causal-lm.ts';
import { fusedOpActive } from './fused-ops.ts';
import { chunkRows, linearCrossEntropy, linearCrossEntropyBytes } from './linear-cross-entropy.ts';

/**
 * Fused against unfused, both float32: worst measured 1.8e-6 (wasm, N=33 C=64 V=1000, dW against the
 * composite form; 2.0e-7 on cpu). Each path is ~1e-6 off the float64 truth there, in different ways.
 */
const TOLERANCE = 4e-6;
/** Against the float64 computation: worst measured 6.7e-7 (wasm, N=33 C=64 V=1000, dh); the unfused path's own worst there is 1.4e-6. */
const TOLERANCE_F64 = 1.5e-6;
/** dy ≠ 1, so that a gradient that forgets dy is caught. */
const DY = 1.7;
const native = nativeAddon();

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

interface Problem {
  N: number;
  C: number;
  shardRows: number[];
  targets: number[];
  /** Row weights; zeros are ignored positions. */
  weights: number[];
  /** Scale of h: 1e3 makes logits in the thousands. */
  scale?: number;
}

function tensorsOf(p: Problem, seed: number) {
  const V = p.shardRows.reduce((a, b) => a + b, 0);
  const h = tf.mul(tf.tensor2d(seededValues(p.N * p.C, seed), [p.N, p.C]), 2 * (p.scale ?? 1)) as tf.Tensor2D;
  const w = seededValues(V * p.C, seed + 1);
  let row = 0;
  const shards = p.shardRows.map((rows) => {
    const shard = tf.tensor2d(w.subarray(row * p.C, (row + rows) * p.C), [rows, p.C]);
    row += rows;
    return shard;
  });
  return { h, shards, targets: tf.tensor1d(p.targets, 'int32'), weights: tf.tensor1d(p.weights) };
}

/** [loss, dh, dW] of the fused op; dW is the shards' gradients concatenated (trainable only). */
function fusedRun(p: Problem, chunkBytes: number | undefined, trainableWeight: boolean, seed = 11): tf.Tensor[] {
  const { h, shards, targets, weights } = tensorsOf(p, seed);
  const f = (x: tf.Tensor, ...ws: tf.Tensor[]) =>
    tf.mul(linearCrossEntropy(x as tf.Tensor2D, trainableWeight ? (ws as tf.Tensor2D[]) : shards, targets, weights, { trainableWeight, chunkBytes }), DY) as tf.Scalar;
  if (!trainableWeight) {
    const { value, grad } = tf.valueAndGrad(f)(h);
    return [value, grad];
  }
  const { value, grads } = tf.valueAndGrads(f)([h, ...shards]);
  return [value, grads[0], tf.concat(grads.slice(1), 0)];
}

/** The same through the logits: weightedCrossEntropy (the wasm kernel where active) or its composite form. */
function unfusedRun(p: Problem, composite: boolean, trainableWeight: boolean, seed = 11): tf.Tensor[] {
  const { h, shards, targets, weights } = tensorsOf(p, seed);
  const W = tf.concat(shards, 0) as tf.Tensor2D;
  const loss = composite ? compositeWeightedCrossEntropy : weightedCrossEntropy;
  const f = (x: tf.Tensor, w: tf.Tensor) => tf.mul(loss(tf.matMul(x as tf.Tensor2D, w as tf.Tensor2D, false, true), targets, weights), DY) as tf.Scalar;
  if (!trainableWeight) {
    const { value, grad } = tf.valueAndGrad((x: tf.Tensor) => f(x, W))(h);
    return [value, grad];
  }
  const { value, grads } = tf.valueAndGrads(f)([h, W]);
  return [value, ...grads];
}

/** [loss, dh, dW] in float64 from the same float32 inputs: the independent, higher-precision reference. */
function float64Reference(p: Problem, seed = 11): Float64Array[] {
  const { N, C, targets, weights } = p;
  const V = p.shardRows.reduce((a, b) => a + b, 0);
  const h = Float64Array.from(seededValues(N * C, seed), (v) => Math.fround(v * 2 * (p.scale ?? 1)));
  const W = Float64Array.from(seededValues(V * C, seed + 1));
  const loss = new Float64Array(1);
  const dh = new Float64Array(N * C);
  const dW = new Float64Array(V * C);
  const z = new Float64Array(V);
  for (let i = 0; i < N; i++) {
    for (let v = 0; v < V; v++) {
      z[v] = 0;
      for (let c = 0; c < C; c++) z[v] += h[i * C + c] * W[v * C + c];
    }
    const max = z.reduce((a, b) => Math.max(a, b), -Infinity);
    const lse = Math.log(z.reduce((sum, zv) => sum + Math.exp(zv - max), 0)) + max;
    loss[0] += DY * weights[i] * (lse - z[targets[i]]);
    for (let v = 0; v < V; v++) {
      const g = DY * weights[i] * (Math.exp(z[v] - lse) - (v === targets[i] ? 1 : 0));
      for (let c = 0; c < C; c++) {
        dh[i * C + c] += g * W[v * C + c];
        dW[v * C + c] += g * h[i * C + c];
      }
    }
  }
  return [loss, dh, dW];
}

/** relativeError against a float64 reference. */
function errorVs64(x: Float32Array, ref: Float64Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < ref.length; i++) {
    diff = Math.max(diff, Math.abs(x[i] - ref[i]));
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  return x.length === ref.length ? diff / scale : Infinity;
}

/** Relative error of each output of `got` against `want`, both run on `backend`. */
async function errorsOn(backend: string, got: () => tf.Tensor[], want: () => tf.Tensor[]): Promise<number[]> {
  const g = await runOn(backend, got);
  const w = await runOn(backend, want);
  expect(g.map((t) => t.shape)).toEqual(w.map((t) => t.shape));
  return g.map((t, i) => relativeError(t.values, w[i].values));
}

const N7_TARGETS = [0, 36, 10, 11, 13, 14, 20]; // first and last row of V = 37, and both sides of the [11, 3, 23] shard seams
const N7_WEIGHTS = [0.3, 0.2, 0, 0.1, 0.25, 0, 0.15]; // two ignored positions
const bytesFor = (N: number, rows: number) => 4 * N * rows; // chunkBytes that gives `rows` rows per chunk

const CASES: Array<{ name: string; p: Problem; chunkBytes?: number }> = [
  { name: 'one shard, V=37 in chunks of 5 (the last one 2 rows)', p: { N: 7, C: 5, shardRows: [37], targets: N7_TARGETS, weights: N7_WEIGHTS }, chunkBytes: bytesFor(7, 5) },
  { name: 'one shard, a single chunk (default chunkBytes)', p: { N: 7, C: 5, shardRows: [37], targets: N7_TARGETS, weights: N7_WEIGHTS } },
  { name: 'one shard, one row per chunk', p: { N: 7, C: 5, shardRows: [37], targets: N7_TARGETS, weights: N7_WEIGHTS }, chunkBytes: 1 },
  { name: '3 shards [11, 3, 23] in chunks of 4', p: { N: 7, C: 5, shardRows: [11, 3, 23], targets: N7_TARGETS, weights: N7_WEIGHTS }, chunkBytes: bytesFor(7, 4) },
  { name: '3 shards [11, 3, 23], each a single chunk', p: { N: 7, C: 5, shardRows: [11, 3, 23], targets: N7_TARGETS, weights: N7_WEIGHTS } },
  { name: 'N = 1, target in the last chunk of the last shard', p: { N: 1, C: 6, shardRows: [20, 17], targets: [36], weights: [1] }, chunkBytes: bytesFor(1, 6) },
  { name: 'N = 1, target 0', p: { N: 1, C: 6, shardRows: [37], targets: [0], weights: [0.5] }, chunkBytes: bytesFor(1, 6) },
  {
    name: 'N = 33, C = 64, V = 1000 as 3 shards, chunks of 96',
    p: {
      N: 33, C: 64, shardRows: [500, 250, 250],
      targets: Array.from({ length: 33 }, (_, i) => (i === 0 ? 0 : i === 1 ? 999 : (i * 7919) % 1000)),
      weights: Array.from({ length: 33 }, (_, i) => (i % 5 === 3 ? 0 : (1 + (i % 3)) / 33)),
    },
    chunkBytes: bytesFor(33, 96),
  },
];

describe('fused linear cross-entropy matches the unfused path: loss, dh, dW', () => {
  for (const backend of ['cpu', 'wasm']) {
    for (const { name, p, chunkBytes } of CASES) {
      it(`${backend}: ${name}`, async () => {
        const vsKernel = await errorsOn(backend, () => fusedRun(p, chunkBytes, true), () => unfusedRun(p, false, true));
        const vsComposite = await errorsOn(backend, () => fusedRun(p, chunkBytes, true), () => unfusedRun(p, true, true));
        expect(vsKernel).toHaveLength(3);
        for (const e of [...vsKernel, ...vsComposite]) expect(e).toBeLessThanOrEqual(TOLERANCE);
        const reference = float64Reference(p);
        const fused = await runOn(backend, () => fusedRun(p, chunkBytes, true));
        for (const [i, t] of fused.entries()) expect(errorVs64(t.values, reference[i])).toBeLessThanOrEqual(TOLERANCE_F64);
      });
    }
  }

  it('on wasm the unfused reference really is the fused cross-entropy kernel (where the addon is built)', async () => {
    await tf.setBackend('wasm');
    expect(fusedOpActive('crossEntropy')).toBe(native.ok);
  });

  it('logits in the thousands (h × 1e3): finite, and still equal to the unfused path', async () => {
    const p: Problem = { N: 7, C: 5, shardRows: [11, 3, 23], targets: N7_TARGETS, weights: N7_WEIGHTS, scale: 1e3 };
    for (const backend of ['cpu', 'wasm']) {
      const got = await runOn(backend, () => fusedRun(p, bytesFor(7, 4), true));
      for (const t of got) expect(t.values.every(Number.isFinite)).toBe(true);
      expect(got[0].values[0]).toBeGreaterThan(100); // the logits really are large: the loss is
      const errors = await errorsOn(backend, () => fusedRun(p, bytesFor(7, 4), true), () => unfusedRun(p, true, true));
      for (const e of errors) expect(e).toBeLessThanOrEqual(TOLERANCE);
      const reference = float64Reference(p);
      for (const [i, t] of got.entries()) expect(errorVs64(t.values, reference[i])).toBeLessThanOrEqual(TOLERANCE_F64);
    }
  });
});

/** The kernels tf.profile saw while `fn` ran. */
async function kernelsRun(fn: () => tf.Tensor[]): Promise<string[]> {
  const profile = await tf.profile(() => {
    tf.dispose(tf.tidy(fn));
    return [];
  });
  return profile.kernels.map((k) => k.name);
}

describe('a frozen weight: dh only, no dW product', () => {
  const p = CASES[3].p; // 3 shards [11, 3, 23] in chunks of 4: 3 + 1 + 6 = 10 chunks
  const chunkBytes = bytesFor(7, 4);
  const chunks = p.shardRows.reduce((n, rows) => n + Math.ceil(rows / chunkRows(p.N, chunkBytes)), 0);

  for (const backend of ['cpu', 'wasm']) {
    it(`${backend}: dh equals the unfused path's; matmuls: forward 1 per chunk, backward 2 (3 when trainable)`, async () => {
      const errors = await errorsOn(backend, () => fusedRun(p, chunkBytes, false), () => unfusedRun(p, false, false));
      expect(errors).toHaveLength(2);
      for (const e of errors) expect(e).toBeLessThanOrEqual(TOLERANCE);

      await tf.setBackend(backend);
      const matmuls = (kernels: string[]) => kernels.filter((k) => k === 'BatchMatMul').length;
      expect(chunks).toBe(10);
      expect(matmuls(await kernelsRun(() => fusedRun(p, chunkBytes, false)))).toBe(3 * chunks);
      expect(matmuls(await kernelsRun(() => fusedRun(p, chunkBytes, true)))).toBe(4 * chunks);
    });
  }

  it('the frozen shards are not inputs of the op: asking for their gradient is an error, not a silent zero', async () => {
    await tf.setBackend('cpu');
    tf.tidy(() => {
      const { h, shards, targets, weights } = tensorsOf(p, 3);
      const f = (x: tf.Tensor) => linearCrossEntropy(x as tf.Tensor2D, shards, targets, weights);
      expect(() => tf.grads((x: tf.Tensor) => f(x))([h, shards[0]])).toThrow(/Cannot compute gradient/);
    });
  });
});

describe('no leaks; bad shapes', () => {
  for (const backend of ['cpu', 'wasm']) {
    it(`${backend}: tf.memory().numTensors is unchanged after value+grad in tf.tidy (frozen and trainable)`, async () => {
      await tf.setBackend(backend);
      const p = CASES[3].p;
      const before = tf.memory().numTensors;
      const backendData = tf.backend() as unknown as { numDataIds(): number };
      const dataIds = backendData.numDataIds();
      for (const trainable of [false, true]) {
        const values = tf.tidy(() => fusedRun(p, bytesFor(7, 4), trainable).map((t) => t.dataSync()[0]));
        expect(values.every(Number.isFinite)).toBe(true);
      }
      expect(tf.memory().numTensors).toBe(before);
      expect(backendData.numDataIds()).toBe(dataIds);
    });
  }

  it('shape mismatches name the argument', async () => {
    await tf.setBackend('cpu');
    tf.tidy(() => {
      const h = tf.zeros([2, 3]) as tf.Tensor2D;
      const w = tf.zeros([5, 3]) as tf.Tensor2D;
      const t = tf.tensor1d([0, 1], 'int32');
      const weights = tf.ones([2]) as tf.Tensor1D;
      expect(() => linearCrossEntropy(h, [tf.zeros([5, 4]) as tf.Tensor2D], t, weights)).toThrow(/weightShards\[0\] is \[5,4\]/);
      expect(() => linearCrossEntropy(h, [], t, weights)).toThrow(/weightShards is empty/);
      expect(() => linearCrossEntropy(h, [w], tf.tensor1d([0, 1]), weights)).toThrow(/targets must be int32/);
      expect(() => linearCrossEntropy(h, [w], t, tf.ones([3]) as tf.Tensor1D)).toThrow(/weights must be \[2\]/);
    });
  });
});

/** Bytes above what existed before `fn` at the peak of its kernels, per tf.profile. */
async function peakBytesOf(fn: () => tf.Tensor[]): Promise<number> {
  const start = tf.memory().numBytes;
  const profile = await tf.profile(() => {
    tf.dispose(tf.tidy(fn));
    return [];
  });
  return profile.peakBytes - start;
}

/** Value and dh (frozen weight) at model-like sizes; tensors built inside so nothing is shared between runs. */
function lossAndGradient(N: number, C: number, V: number, fused: boolean, chunkBytes?: number) {
  const h = tf.tensor2d(seededValues(N * C, 5), [N, C]);
  const W = tf.tensor2d(seededValues(V * C, 6), [V, C]);
  const targets = tf.tensor1d(Array.from({ length: N }, (_, i) => (i * 7919) % V), 'int32');
  const weights = tf.fill([N], 1 / N) as tf.Tensor1D;
  const run = () => {
    const f = fused
      ? (x: tf.Tensor) => linearCrossEntropy(x as tf.Tensor2D, [W], targets, weights, { chunkBytes })
      : (x: tf.Tensor) => weightedCrossEntropy(tf.matMul(x as tf.Tensor2D, W, false, true), targets, weights);
    const { value, grad } = tf.valueAndGrad(f)(h);
    return [value, grad];
  };
  return { run, dispose: () => tf.dispose([h, W, targets, weights]) };
}

// The unfused figures assume the wasm cross-entropy kernel (one [N, V] gradient); without the addon
// the composite gradient holds several, and cross-entropy-kernels.test.ts says so already.
describe('memory on wasm: N=512, V=32768, C=64, chunks of 4 MB', needs('native'), () => {
  const [N, V, C, chunkBytes] = [512, 32768, 64, 4 * 2 ** 20];

  it('the fused peak is below the unfused one by the predicted saving (±25 %); each path\'s peak is its prediction (±25 %)', async () => {
    await tf.setBackend('wasm');
    const peak = async (fused: boolean) => {
      const problem = lossAndGradient(N, C, V, fused, chunkBytes);
      try {
        return await peakBytesOf(problem.run);
      } finally {
        problem.dispose();
      }
    };
    const total = (b: { saved: number; transient: number }) => b.saved + b.transient;
    const predictedUnfused = total(linearCrossEntropyBytes(N, V, C, false));
    const predictedFused = total(linearCrossEntropyBytes(N, V, C, true, chunkBytes));
    const predictedSaving = predictedUnfused - predictedFused;
    const [unfused, fused] = [await peak(false), await peak(true)];
    expect(Math.abs(unfused - fused - predictedSaving)).toBeLessThanOrEqual(0.25 * predictedSaving);
    expect(Math.abs(unfused - predictedUnfused)).toBeLessThanOrEqual(0.25 * predictedUnfused);
    // Both paths save W for their backward pass; the clone shares W's data, but tfjs' engine counts
    // its bytes again, so that much of each measured peak is bookkeeping, not memory.
    const weightClone = 4 * V * C;
    expect(Math.abs(fused - weightClone - predictedFused)).toBeLessThanOrEqual(0.25 * predictedFused);
  });
});

describe.runIf(process.env.LCE_BENCH === '1')('timing on wasm (LCE_BENCH=1)', () => {
  const SIZES: Array<[number, number, number]> = [[1024, 576, 49152], [512, 896, 151936]];
  for (const [N, C, V] of SIZES) {
    it(`N=${N}, C=${C}, V=${V}: value+grad(h), fused vs unfused`, async () => {
      await tf.setBackend('wasm');
      for (const fused of [false, true]) {
        const problem = lossAndGradient(N, C, V, fused);
        const peak = await peakBytesOf(problem.run);
        tf.dispose(problem.run()); // warm-up
        const times: number[] = [];
        for (let i = 0; i < 3; i++) {
          const t0 = performance.now();
          const out = tf.tidy(problem.run);
          await Promise.all(out.map((t) => t.data()));
          times.push(performance.now() - t0);
          tf.dispose(out);
        }
        problem.dispose();
        const predicted = linearCrossEntropyBytes(N, V, C, fused);
        console.log(`N=${N} C=${C} V=${V} ${fused ? 'fused  ' : 'unfused'}: ${Math.min(...times).toFixed(0)} ms (best of 3: ${times.map((t) => t.toFixed(0)).join(', ')}), ` +
          `peak ${(peak / 2 ** 20).toFixed(1)} MiB, predicted ${((predicted.saved + predicted.transient) / 2 ** 20).toFixed(1)} MiB`);
      }
    }, 600_000);
  }
});

