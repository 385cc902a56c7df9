// The wasm BatchMatMul/_FusedMatMul overrides against the cpu backend: every transpose
// combination, odd sizes, broadcast batches, fused epilogues, gradients, and no leaks.
import * as tf from '../tf.ts';
import { beforeAll, describe, expect, it } from 'vitest';
import { errorVsCpu, seededTensor } from './cpu-parity.ts';
import { initBackend } from './index.ts';
import { matMulTuning } from './wasm/batch-matmul.ts';
import { nativeAddon, nativeSwitch } from './native/addon.ts';
import { activeWasmKernels } from './wasm/install.ts';
import { needs } from '../../test/helpers/optional-parts.ts';

const TOLERANCE = 1e-5;
const TRANSPOSES: Array<[boolean, boolean]> = [[false, false], [true, false], [false, true], [true, true]];
const SIZES: Array<[number, number, number]> = [
  [1, 1, 1], [1, 7, 3], [3, 1, 7], [7, 3, 1], [33, 7, 65], [65, 33, 3], [3, 65, 33], [64, 64, 64],
];
/** [a batch dims, b batch dims]: equal, broadcast either way, rank-2 vs batched, multi-dim. */
const BATCHES: Array<[number[], number[]]> = [
  [[3], [3]], [[3], [1]], [[1], [3]], [[3], []], [[], [3]], [[2, 1], [3]], [[2, 3], [1, 3]], [[1], []],
];
const ACTIVATIONS = ['linear', 'relu', 'relu6', 'elu', 'sigmoid', 'leakyrelu', 'prelu'] as const;

/** a is logically [..., m, k] and b [..., k, n]; a transposed operand is stored with its last two dims swapped. */
function operands(aBatch: number[], bBatch: number[], [m, k, n]: number[], tA: boolean, tB: boolean, seed = 1) {
  const a = seededTensor([...aBatch, ...(tA ? [k, m] : [m, k])], seed);
  const b = seededTensor([...bBatch, ...(tB ? [n, k] : [k, n])], seed + 1);
  return { a, b };
}

/**
 * tf.matMul with both operands broadcast to the full batch shape first: the reference for batch
 * broadcasting, which the cpu backend gets wrong across several batch dims.
 */
function explicitlyBroadcastMatMul(a: tf.Tensor, b: tf.Tensor, tA: boolean, tB: boolean): tf.Tensor {
  const batch = tf.broadcast_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
  const full = (x: tf.Tensor) => tf.broadcastTo(x, [...batch, ...x.shape.slice(-2)]);
  return tf.matMul(full(a), full(b), tA, tB);
}

beforeAll(async () => {
  const info = await initBackend({ backend: 'wasm' });
  expect(info.kernels).toEqual(expect.arrayContaining(['BatchMatMul', '_FusedMatMul']));
  expect(activeWasmKernels()).toEqual(expect.arrayContaining(['BatchMatMul', '_FusedMatMul']));
});

// Everything runs three times: on the native BLAS (where it is built: every product goes there),
// then without it, with XNNPACK forced for every size (so odd and tiny shapes exercise the
// override's transposes, folds and heap slices) and with the default hand-off of tiny products
// to the stock kernel.
const DEFAULT_STOCK_AT_OR_BELOW = matMulTuning.stockAtOrBelow;
const native = nativeAddon();
const MODES = [
  { name: `native BLAS (${native.ok ? native.library : `absent: ${native.reason}`})`, native: true, stockAtOrBelow: DEFAULT_STOCK_AT_OR_BELOW },
  { name: 'wasm, XNNPACK for every size', native: false, stockAtOrBelow: 0 },
  { name: `wasm, stock kernel for m·k·n <= ${DEFAULT_STOCK_AT_OR_BELOW}`, native: false, stockAtOrBelow: DEFAULT_STOCK_AT_OR_BELOW },
];

// CI installs OpenBLAS (.ci/run), so there the native path must really be built and tested:
// needs('native') skips the native mode only off CI, and on CI a missing addon fails this file.
for (const mode of MODES) describe(mode.name, mode.native ? needs('native') : {}, () => {
  beforeAll(() => {
    nativeSwitch.enabled = mode.native;
    matMulTuning.stockAtOrBelow = mode.stockAtOrBelow;
  });

  describe('BatchMatMul on wasm matches cpu', () => {
    for (const size of SIZES) {
      for (const [tA, tB] of TRANSPOSES) {
        it(`${size.join('x')} transposeA=${tA} transposeB=${tB}`, async () => {
          const err = await errorVsCpu('wasm', () => {
            const { a, b } = operands([], [], size, tA, tB);
            return tf.matMul(a, b, tA, tB);
          });
          expect(err).toBeLessThanOrEqual(TOLERANCE);
        });
      }
    }

    for (const [aBatch, bBatch] of BATCHES) {
      for (const [tA, tB] of TRANSPOSES) {
        it(`batch [${aBatch}]·[${bBatch}] 7x33x5 transposeA=${tA} transposeB=${tB}`, async () => {
          const err = await errorVsCpu('wasm', () => {
            const { a, b } = operands(aBatch, bBatch, [7, 33, 5], tA, tB);
            return tf.matMul(a, b, tA, tB);
          }, () => {
            const { a, b } = operands(aBatch, bBatch, [7, 33, 5], tA, tB);
            return explicitlyBroadcastMatMul(a, b, tA, tB);
          });
          expect(err).toBeLessThanOrEqual(TOLERANCE);
        });
      }
    }

    it.each([[[3, 0, 2]], [[0, 4, 3]], [[2, 5, 0]]])('empty dimension %j', async (size) => {
      const err = await errorVsCpu('wasm', () => {
        const { a, b } = operands([2], [2], size, true, false);
        return tf.matMul(a, b, true, false);
      });
      expect(err).toBe(0);
    });
  });

  describe('_FusedMatMul on wasm matches cpu', () => {
    const FUSED_BATCHES: Array<[number[], number[]]> = [[[], []], [[3], [1]], [[3], [3]], [[1], [3]]];
    for (const activation of ACTIVATIONS) {
      for (const [aBatch, bBatch] of FUSED_BATCHES) {
        for (const [tA, tB] of TRANSPOSES) {
          it(`${activation} batch [${aBatch}]·[${bBatch}] transposeA=${tA} transposeB=${tB}, bias [n]`, async () => {
            const [m, k, n] = [7, 33, 5];
            const err = await errorVsCpu('wasm', () => {
              const { a, b } = operands(aBatch, bBatch, [m, k, n], tA, tB);
              return tf.fused.matMul({
                a, b, transposeA: tA, transposeB: tB,
                bias: seededTensor([n], 3),
                activation,
                preluActivationWeights: activation === 'prelu' ? seededTensor([n], 4) : undefined,
                leakyreluAlpha: 0.3,
              });
            });
            expect(err).toBeLessThanOrEqual(TOLERANCE);
          });
        }
      }
    }

    // Bias and prelu weights that broadcast other than as a length-n row take the epilogue path.
    const EPILOGUES: Array<{ bias?: number[]; alpha?: number[]; batch: [number[], number[]] }> = [
      { batch: [[], []] },
      { bias: [1], batch: [[], []] },
      { bias: [7, 5], batch: [[3], [1]] },
      { bias: [3, 1, 5], batch: [[3], [3]] },
      { alpha: [7, 1], batch: [[3], [1]] },
      { alpha: [1], batch: [[], []] },
      { bias: [5], alpha: [7, 5], batch: [[1], [3]] },
    ];
    for (const { bias, alpha, batch } of EPILOGUES) {
      for (const [tA, tB] of TRANSPOSES) {
        it(`bias ${bias ? `[${bias}]` : 'none'} prelu ${alpha ? `[${alpha}]` : 'none'} batch [${batch[0]}]·[${batch[1]}] transposeA=${tA} transposeB=${tB}`, async () => {
          const err = await errorVsCpu('wasm', () => {
            const { a, b } = operands(batch[0], batch[1], [7, 33, 5], tA, tB);
            return tf.fused.matMul({
              a, b, transposeA: tA, transposeB: tB,
              bias: bias ? seededTensor(bias, 3) : undefined,
              activation: alpha ? 'prelu' : 'relu',
              preluActivationWeights: alpha ? seededTensor(alpha, 4) : undefined,
            });
          });
          expect(err).toBeLessThanOrEqual(TOLERANCE);
        });
      }
    }
  });

  // Only equal batch dims: tfjs-core 4.22's BatchMatMul gradient does not sum over broadcast batch
  // dims, so tf.grad of a broadcast product (even [B,T,D]·[D,N]) fails on every backend.
  describe('gradients through the overridden kernels match cpu', () => {
    for (const [aBatch, bBatch] of [[[], []], [[3], [3]], [[2, 3], [2, 3]]] as Array<[number[], number[]]>) {
      for (const [tA, tB] of TRANSPOSES) {
        it(`d(matMul) batch [${aBatch}]·[${bBatch}] transposeA=${tA} transposeB=${tB}`, async () => {
          const gradsOf = (matMul: typeof explicitlyBroadcastMatMul) => () => {
            const { a, b } = operands(aBatch, bBatch, [7, 33, 65], tA, tB);
            const w = seededTensor(explicitlyBroadcastMatMul(a, b, tA, tB).shape, 9);
            return tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(matMul(x, y, tA, tB), w)))([a, b]);
          };
          const err = await errorVsCpu('wasm', gradsOf(tf.matMul), gradsOf(explicitlyBroadcastMatMul));
          expect(err).toBeLessThanOrEqual(TOLERANCE);
        });
      }
    }

    for (const [tA, tB] of TRANSPOSES) {
      it(`d(fused matMul + bias + relu) transposeA=${tA} transposeB=${tB}`, async () => {
        const err = await errorVsCpu('wasm', () => {
          const { a, b } = operands([3], [3], [7, 33, 5], tA, tB);
          const bias = seededTensor([5], 5);
          const w = seededTensor([3, 7, 5], 9);
          const f = (x: tf.Tensor, y: tf.Tensor, c: tf.Tensor) =>
            tf.sum(tf.mul(tf.fused.matMul({ a: x, b: y, transposeA: tA, transposeB: tB, bias: c, activation: 'relu' }), w));
          return tf.grads(f)([a, b, bias]);
        });
        expect(err).toBeLessThanOrEqual(TOLERANCE);
      });
    }
  });

  it.runIf(mode.native)('sends every product to the native BLAS', () => {
    if (!native.ok) throw new Error('unreachable: the native mode is skipped without the addon');
    const original = native.addon.sgemmBatch;
    let calls = 0;
    native.addon.sgemmBatch = (...args) => {
      calls++;
      original.apply(native.addon, args);
    };
    try {
      const [a, b] = [seededTensor([3, 5, 4], 1), seededTensor([3, 5, 2], 2)];
      tf.dispose([tf.matMul(a, b, true, false), tf.matMul(tf.reshape(a, [15, 4]), tf.reshape(b, [2, 15]), true, true), a, b]);
    } finally {
      native.addon.sgemmBatch = original;
    }
    expect(calls).toBe(2);
  });

  describe('memory', () => {
    it('leaves no tensors or backend data behind on any path', () => {
      const a = seededTensor([3, 33, 7], 1);
      const b = seededTensor([3, 33, 5], 2);
      const b1 = seededTensor([1, 33, 5], 2);
      const c = seededTensor([3, 7, 33], 5);
      const bias = seededTensor([7, 5], 3);
      const bias5 = seededTensor([5], 3);
      const alpha = seededTensor([7, 1], 4);
      const backend = tf.backend() as unknown as { numDataIds(): number };
      const everyPath = () => {
        tf.matMul(a, b, true, false).dispose(); // per-batch slices + transpose
        tf.matMul(a, b1, true, false).dispose(); // fold + transpose
        tf.matMul(c, b).dispose(); // per-batch, no transpose
        tf.fused.matMul({ a, b: b1, transposeA: true, bias: bias5, activation: 'relu' }).dispose(); // stock fused on the fold
        tf.fused.matMul({ a, b, transposeA: true, bias, activation: 'prelu', preluActivationWeights: alpha }).dispose(); // epilogue, tiled alpha
        tf.dispose(tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.matMul(x, y, true, false)))([a, b]));
      };
      everyPath(); // first use may create lasting state (e.g. scalars cached by the engine)
      const tensors = tf.memory().numTensors;
      const dataIds = backend.numDataIds();
      for (let i = 0; i < 5; i++) everyPath();
      expect(tf.memory().numTensors).toBe(tensors);
      expect(backend.numDataIds()).toBe(dataIds);
      tf.dispose([a, b, b1, c, bias, bias5, alpha]);
    });
  });
});
