/**
 * The fused RMSNorm, LayerNorm and RoPE kernels against the composite tfjs ops they replace
 * (autodiff through tfjs' own kernels and gradients): values and the gradient of every input, on
 * odd shapes, on cpu; then on wasm, that the models' ops really run the fused kernels there and
 * agree with the composite ops on cpu.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { errorVsCpu, relativeError, seededTensor } from '../backend/cpu-parity.ts';
import { FUSED_KERNEL_NAMES } from '../backend/fused-kernels.ts';
import {
  applyRope,
  enabledFusedOps,
  FUSED_OPS,
  fusedOpActive,
  layerNorm,
  parseFusedOpsEnv,
  rmsNorm,
  rmsNormComposite,
  setFusedOps,
  type FusedOp,
} from './fused-ops.ts';

const TOLERANCE = 1e-5;

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});
afterAll(() => setFusedOps(true));

/**
 * Output and gradients of Σ op(inputs)·dy w.r.t. every input, with a random dy so that each
 * output element weighs differently; fused or composite as asked.
 */
function valueAndGrads(fused: boolean, op: (...xs: tf.Tensor[]) => tf.Tensor, inputs: () => tf.Tensor[], dySeed: number): tf.Tensor[] {
  setFusedOps(fused);
  try {
    const xs = inputs();
    const y = op(...xs);
    const dy = tf.mul(seededTensor(y.shape, dySeed), 3);
    const grads = tf.grads((...args: tf.Tensor[]) => tf.sum(tf.mul(op(...args), dy)))(xs);
    return [y, ...grads];
  } finally {
    setFusedOps(true);
  }
}

/** Worst relative error of the fused op against the composite one on cpu, over value and grads. */
async function fusedVsComposite(op: (...xs: tf.Tensor[]) => tf.Tensor, inputs: () => tf.Tensor[]): Promise<number[]> {
  await tf.setBackend('cpu');
  const got = tf.tidy(() => valueAndGrads(true, op, inputs, 99).map((t) => Float32Array.from(t.dataSync())));
  const want = tf.tidy(() => valueAndGrads(false, op, inputs, 99).map((t) => Float32Array.from(t.dataSync())));
  return got.map((g, i) => relativeError(g, want[i]));
}

/** The kernels tf.profile saw while `fn` ran. */
async function kernelsRun(fn: () => tf.Tensor | tf.Tensor[]): Promise<string[]> {
  const profile = await tf.profile(() => tf.tidy(fn));
  return profile.kernels.map((k) => k.name);
}

const rmsNormOp = (x: tf.Tensor, w: tf.Tensor) => rmsNorm(x as tf.Tensor2D, w, 1e-5);
const layerNormOp = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => layerNorm(x as tf.Tensor2D, w, b, 1e-5);
const ropeOp = (x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor) => applyRope(x as tf.Tensor4D, cos as tf.Tensor2D, sin as tf.Tensor2D);

/** cos/sin tables of real angles (rope.ts's layout: the same angle in both halves). */
function ropeTablesFor(T: number, D: number): [tf.Tensor2D, tf.Tensor2D] {
  const cos = new Float32Array(T * D);
  const sin = new Float32Array(T * D);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < D / 2; i++) {
      const angle = (t + 3) / Math.pow(10000, (2 * i) / D);
      cos[t * D + i] = cos[t * D + D / 2 + i] = Math.cos(angle);
      sin[t * D + i] = sin[t * D + D / 2 + i] = Math.sin(angle);
    }
  }
  return [tf.tensor2d(cos, [T, D]), tf.tensor2d(sin, [T, D])];
}

describe('fused kernels match the composite ops on cpu (value, then each gradient)', () => {
  const NORM_SHAPES: Array<[number, number]> = [[1, 7], [5, 33], [3, 5], [17, 64], [2, 256]];
  for (const [rows, C] of NORM_SHAPES) {
    it(`RMSNorm [${rows}, ${C}]: y, dx, dweight`, async () => {
      const errors = await fusedVsComposite(rmsNormOp, () => [tf.mul(seededTensor([rows, C], 1), 2), seededTensor([C], 2)]);
      expect(errors).toHaveLength(3);
      for (const e of errors) expect(e).toBeLessThanOrEqual(TOLERANCE);
    });
    it(`LayerNorm [${rows}, ${C}]: y, dx, dweight, dbias`, async () => {
      // A row offset, so the mean subtraction matters.
      const x = () => tf.add(tf.mul(seededTensor([rows, C], 3), 2), 0.7);
      const errors = await fusedVsComposite(layerNormOp, () => [x(), seededTensor([C], 4), seededTensor([C], 5)]);
      expect(errors).toHaveLength(4);
      for (const e of errors) expect(e).toBeLessThanOrEqual(TOLERANCE);
    });
  }

  it('RMSNorm of width 1, where the composite loses dx to float32 cancellation: dx against the float64 formula', async () => {
    // y = x·w/√(x² + eps), so dx = dy·w·eps/(x² + eps)^(3/2): tiny next to dy·w, which the
    // composite's r·(g − x·r²·g·x) computes as a difference of nearly equal float32 numbers.
    await tf.setBackend('cpu');
    const eps = 1e-5;
    const xs = [0.5, -0.01, 0.003, 2];
    const [w, dy] = [0.7, 1.3];
    const dx = tf.tidy(() => tf.grad((x: tf.Tensor) => tf.sum(tf.mul(rmsNorm(x as tf.Tensor2D, tf.tensor1d([w]), eps), dy)))(tf.tensor2d(xs, [4, 1])).dataSync());
    const want = Float32Array.from(xs, (x) => (dy * w * eps) / (x * x + eps) ** 1.5);
    expect(relativeError(Float32Array.from(dx), want)).toBeLessThanOrEqual(TOLERANCE);
  });

  const ROPE_SHAPES: Array<[number, number, number, number]> = [[1, 1, 1, 2], [2, 3, 5, 6], [1, 4, 7, 32], [3, 2, 9, 14]];
  for (const shape of ROPE_SHAPES) {
    it(`RoPE x [${shape}]: y, dx`, async () => {
      const [, , T, D] = shape;
      // Only x is differentiated: the fused kernel treats the tables as constants (next test).
      const op = (x: tf.Tensor) => {
        const [cos, sin] = ropeTablesFor(T, D);
        return ropeOp(x, cos, sin);
      };
      const errors = await fusedVsComposite(op, () => [seededTensor(shape, 6)]);
      expect(errors).toHaveLength(2);
      for (const e of errors) expect(e).toBeLessThanOrEqual(TOLERANCE);
    });
  }

  it('RoPE with arbitrary tables (not the duplicated-halves layout): y, dx', async () => {
    const op = (x: tf.Tensor) => ropeOp(x, seededTensor([5, 6], 7), seededTensor([5, 6], 8));
    const errors = await fusedVsComposite(op, () => [seededTensor([2, 3, 5, 6], 9)]);
    for (const e of errors) expect(e).toBeLessThanOrEqual(TOLERANCE);
  });

  it('the fused RoPE refuses to differentiate its tables instead of returning a wrong gradient', async () => {
    await tf.setBackend('cpu');
    const [cos, sin] = ropeTablesFor(3, 4);
    const x = seededTensor([1, 2, 3, 4], 1);
    expect(() => tf.grad((c: tf.Tensor) => tf.sum(ropeOp(x, c, sin)))(cos)).toThrow(/no gradient for its cos\/sin/);
    tf.dispose([cos, sin, x]);
  });

  it('the cpu runs really took the fused kernels, and the composite runs did not', async () => {
    await tf.setBackend('cpu');
    const x = seededTensor([5, 33], 1);
    const w = seededTensor([33], 2);
    const fused = await kernelsRun(() => tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(rmsNormOp(a, b)))([x, w]));
    expect(fused).toEqual(expect.arrayContaining([FUSED_KERNEL_NAMES.rmsNorm, FUSED_KERNEL_NAMES.rmsNormGrad, FUSED_KERNEL_NAMES.rmsNormWeightGrad]));
    setFusedOps(false);
    const composite = await kernelsRun(() => tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(rmsNormOp(a, b)))([x, w]));
    setFusedOps(true);
    expect(composite.filter((k) => k.startsWith('Lowrank'))).toEqual([]);
    tf.dispose([x, w]);
  });

  it('a frozen weight costs no weight-gradient kernel', async () => {
    await tf.setBackend('cpu');
    const x = seededTensor([5, 33], 1);
    const w = seededTensor([33], 2);
    const kernels = await kernelsRun(() => tf.grad((a: tf.Tensor) => tf.sum(rmsNormOp(a, w)))(x));
    expect(kernels).toContain(FUSED_KERNEL_NAMES.rmsNormGrad);
    expect(kernels).not.toContain(FUSED_KERNEL_NAMES.rmsNormWeightGrad);
    tf.dispose([x, w]);
  });
});

describe('on wasm, the models\' ops run the fused kernels', () => {
  const CASES: Array<{ op: FusedOp; run: () => tf.Tensor[]; kernels: string[] }> = [
    {
      op: 'rmsNorm',
      run: () => tf.grads((x: tf.Tensor, w: tf.Tensor) => tf.sum(tf.mul(rmsNormOp(x, w), seededTensor([5, 33], 3))))([seededTensor([5, 33], 1), seededTensor([33], 2)]),
      kernels: [FUSED_KERNEL_NAMES.rmsNorm, FUSED_KERNEL_NAMES.rmsNormGrad, FUSED_KERNEL_NAMES.rmsNormWeightGrad],
    },
    {
      op: 'layerNorm',
      run: () => tf.grads((x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(layerNormOp(x, w, b), seededTensor([5, 7], 3))))(
        [seededTensor([5, 7], 1), seededTensor([7], 2), seededTensor([7], 4)]),
      kernels: [FUSED_KERNEL_NAMES.layerNorm, FUSED_KERNEL_NAMES.layerNormGrad, FUSED_KERNEL_NAMES.layerNormWeightGrad],
    },
    {
      op: 'rope',
      run: () => {
        const [cos, sin] = ropeTablesFor(5, 6);
        const x = seededTensor([2, 3, 5, 6], 1);
        return [ropeOp(x, cos, sin), tf.grad((a: tf.Tensor) => tf.sum(tf.mul(ropeOp(a, cos, sin), seededTensor([2, 3, 5, 6], 3))))(x)];
      },
      kernels: [FUSED_KERNEL_NAMES.rope, FUSED_KERNEL_NAMES.ropeGrad],
    },
  ];
  for (const { op, run, kernels } of CASES) {
    it(`${op}: fused kernels in the profile, values and gradients equal to the composite ops on cpu`, async () => {
      await tf.setBackend('wasm');
      expect(fusedOpActive(op)).toBe(true);
      expect(await kernelsRun(run)).toEqual(expect.arrayContaining(kernels));
      const reference = () => {
        setFusedOps(false);
        try {
          return run();
        } finally {
          setFusedOps(true);
        }
      };
      expect(await errorVsCpu('wasm', run, reference)).toBeLessThanOrEqual(TOLERANCE);
    });
  }

  it('leaves no tensors or wasm data behind across training-like steps', async () => {
    await tf.setBackend('wasm');
    const backend = tf.backend() as unknown as { numDataIds(): number };
    const x = seededTensor([5, 33], 1);
    const w = seededTensor([33], 2);
    const q = seededTensor([2, 3, 5, 6], 3);
    const [cos, sin] = ropeTablesFor(5, 6);
    const step = () => {
      const grads = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
        tf.add(tf.sum(rmsNormOp(a, b)), tf.add(tf.sum(layerNormOp(a, b, b)), tf.sum(ropeOp(c, cos, sin)))))([x, w, q]);
      tf.dispose(grads);
    };
    step();
    const tensors = tf.memory().numTensors;
    const dataIds = backend.numDataIds();
    for (let i = 0; i < 4; i++) step();
    expect(tf.memory().numTensors).toBe(tensors);
    expect(backend.numDataIds()).toBe(dataIds);
    tf.dispose([x, w, q, cos, sin]);
  });
});

describe('switching fused ops off', () => {
  it('setFusedOps(false) makes every op composite on every backend; a list keeps only those', () => {
    setFusedOps(false);
    expect(enabledFusedOps()).toEqual([]);
    expect(fusedOpActive('rmsNorm')).toBe(false);
    setFusedOps(['rope']);
    expect(enabledFusedOps()).toEqual(['rope']);
    setFusedOps(true);
    expect(enabledFusedOps()).toEqual([...FUSED_OPS]);
  });

  it('LOWRANK_FUSED_OPS: unset/1 = all, 0 = none, a list = those, anything else is an error naming the choices', () => {
    expect(parseFusedOpsEnv(undefined)).toEqual([...FUSED_OPS]);
    expect(parseFusedOpsEnv('1')).toEqual([...FUSED_OPS]);
    expect(parseFusedOpsEnv('0')).toEqual([]);
    expect(parseFusedOpsEnv('RMSNorm, rope')).toEqual(['rmsNorm', 'rope']);
    expect(() => parseFusedOpsEnv('gelu')).toThrow(/'gelu' is not one of rmsNorm, layerNorm, rope/);
  });

  it('an op the kernel does not cover (weight not [C]) takes the composite path', async () => {
    await tf.setBackend('cpu');
    const x = seededTensor([3, 4], 1);
    const w = seededTensor([1, 4], 2);
    const kernels = await kernelsRun(() => rmsNorm(x as tf.Tensor2D, w, 1e-5));
    expect(kernels).not.toContain(FUSED_KERNEL_NAMES.rmsNorm);
    const err = relativeError(rmsNorm(x as tf.Tensor2D, w, 1e-5).dataSync() as Float32Array, rmsNormComposite(x as tf.Tensor2D, w, 1e-5).dataSync() as Float32Array);
    expect(err).toBe(0);
    tf.dispose([x, w]);
  });
});
