/**
 * Replacements for the wasm backend's `BatchMatMul` and `_FusedMatMul` kernels.
 *
 * Why: in tfjs-backend-wasm 4.22 (`src/cc/batch_mat_mul_impl.cc`) a product reaches XNNPACK only
 * when neither operand is transposed and both have batch 1. Everything else (dW = xᵀ·dy,
 * dX = dy·Wᵀ, batched attention, LoRA's dA/dB: most of a backward pass) falls to a scalar loop at
 * ~1 GFLOP/s, ~15-20× slower (PERFORMANCE.md §0). That loop also adds a rank-1 bias wrongly (it
 * indexes the bias by the flat output position), so stock `fused.matMul` with a transpose or a
 * batch and a bias returns wrong numbers.
 *
 * How, in plain JS over the backend's own kernels:
 *  1. a transposed operand is materialised row-major with the wasm `Transpose` kernel (O(size),
 *     cheap next to the O(m·k·n) product);
 *  2. if `b` has batch 1, all of `a`'s batches are stacked into one [batch·m, k]·[k, n] product:
 *     one XNNPACK call, one weight packing;
 *  3. otherwise each output batch is one XNNPACK call on slices of the heap, addressed through
 *     temporary tensor ids (backend-internals.ts), broadcasting batch dims as tf.matMul does.
 * The stock kernel still does the single-product calls, so its XNNPACK operator cache (keyed on
 * `b`'s id) keeps working for weights that are reused across steps, and it still does tiny
 * products, where per-call overhead outweighs its slow loop (matMulTuning).
 *
 * Threads: XNNPACK uses the backend's threadpool by itself once the threaded-SIMD build is loaded
 * (PERFORMANCE.md §1); nothing here needs to change for that.
 *
 * Native BLAS: where the optional addon is built (core/backend/native/addon.ts), every float32
 * product goes to the system BLAS instead, on the same heap memory: BLAS takes transposed operands
 * and leading dimensions directly, so nothing is materialised, and it runs 5-7× faster than XNNPACK
 * in wasm SIMD on the build machine. The XNNPACK path below stays the fallback.
 */
import { _FusedMatMul, BatchMatMul, broadcast_util, util } from '../../tf.ts';
import type {
  _FusedMatMulAttrs,
  _FusedMatMulInputs,
  BatchMatMulAttrs,
  KernelConfig,
  KernelFunc,
  NamedAttrMap,
  NamedTensorInfoMap,
  TensorInfo,
} from '../../tf.ts';
import {
  asWasmBackend,
  registerHeapSlice,
  releaseHeapSlice,
  reshaped,
  runWasmKernel,
  shapeBytes,
  tensorData,
  type WasmBackendInternals,
} from './backend-internals.ts';
import { activeNative, type NativeAddon } from '../native/addon.ts';
import { applyFusedEpilogue, DEFAULT_LEAKYRELU_ALPHA, stockEpilogueIsExact } from './fused-epilogue.ts';

const BYTES_PER_FLOAT = 4;

/** Tuning that may differ per machine (and with wasm threads); exported so tests can cover both paths. */
export const matMulTuning = {
  /**
   * m·k·n at or below which the stock kernel is used as is. Measured on a shared 2-core AVX-512
   * machine (noisy): at 4·4·4 the stock loop is ~2-4× faster, at 16·16·16 the two are level, from
   * 24·24·24 (and 32·8·32 transposed) the override wins.
   */
  stockAtOrBelow: 16 * 16 * 16,
};

/**
 * Batch broadcasting patterns the stock kernel gets right (checked against cpu in the tests).
 * It flattens batch dims, so e.g. [2,1]·[3] comes out wrong.
 */
function stockBroadcastIsExact(plan: MatMulPlan): boolean {
  return plan.batchA === 1 || plan.batchB === 1 || util.arraysEqual(plan.aBatchShape, plan.bBatchShape);
}

/** Shapes of one (possibly batched, possibly transposed) product, as tf.matMul defines them. */
export interface MatMulPlan {
  /** Broadcast batch dims of the output. */
  batchShape: number[];
  aBatchShape: number[];
  bBatchShape: number[];
  batchA: number;
  batchB: number;
  m: number;
  k: number;
  n: number;
  /** `[...batchShape, m, n]` */
  outShape: number[];
}

export function planMatMul(
  aShape: readonly number[],
  bShape: readonly number[],
  transposeA: boolean,
  transposeB: boolean,
): MatMulPlan {
  const aRank = aShape.length;
  const bRank = bShape.length;
  util.assert(aRank >= 2 && bRank >= 2, () => `matMul needs rank >= 2, got ${aShape} and ${bShape}`);
  const m = transposeA ? aShape[aRank - 1] : aShape[aRank - 2];
  const kA = transposeA ? aShape[aRank - 2] : aShape[aRank - 1];
  const kB = transposeB ? bShape[bRank - 1] : bShape[bRank - 2];
  const n = transposeB ? bShape[bRank - 2] : bShape[bRank - 1];
  util.assert(
    kA === kB,
    () =>
      `Error in matMul: inner shapes (${kA}) and (${kB}) of Tensors with shapes ${aShape} and ` +
      `${bShape} and transposeA=${transposeA} and transposeB=${transposeB} must match.`,
  );
  const aBatchShape = aShape.slice(0, -2);
  const bBatchShape = bShape.slice(0, -2);
  const batchShape = broadcast_util.assertAndGetBroadcastShape(aBatchShape, bBatchShape);
  return {
    batchShape,
    aBatchShape,
    bBatchShape,
    batchA: util.sizeFromShape(aBatchShape),
    batchB: util.sizeFromShape(bBatchShape),
    m,
    k: kA,
    n,
    outShape: [...batchShape, m, n],
  };
}

/**
 * For each flat index of the broadcast batch shape, the flat batch index of an operand whose batch
 * dims broadcast to it (numpy rules: right-aligned, size-1 dims repeat).
 */
export function batchIndexMap(outBatchShape: readonly number[], operandBatchShape: readonly number[]): Int32Array {
  const total = util.sizeFromShape(outBatchShape as number[]);
  const map = new Int32Array(total);
  const lead = outBatchShape.length - operandBatchShape.length;
  const strides = new Array<number>(operandBatchShape.length);
  let stride = 1;
  for (let d = operandBatchShape.length - 1; d >= 0; d--) {
    strides[d] = operandBatchShape[d] === 1 ? 0 : stride;
    stride *= operandBatchShape[d];
  }
  for (let i = 0; i < total; i++) {
    let rest = i;
    let index = 0;
    for (let d = outBatchShape.length - 1; d >= lead; d--) {
      const coord = rest % outBatchShape[d];
      rest = (rest - coord) / outBatchShape[d];
      index += coord * strides[d - lead];
    }
    map[i] = index;
  }
  return map;
}

type CBatchMatMul = (
  aId: number, aShape: Uint8Array, aRank: number,
  bId: number, bShape: Uint8Array, bRank: number,
  transposeA: number, transposeB: number, outId: number,
) => void;

/** The stock kernels, captured before the override replaced them in the registry. */
export interface StockMatMulKernels {
  batchMatMul: KernelConfig;
  fusedMatMul: KernelConfig;
}

/**
 * The product on the native BLAS, in place on the wasm heap: one call when all of a's batches meet
 * the same b (stacked into [batch·m, k] rows), else one BLAS product per output batch, in a single
 * addon call.
 */
function nativeProduct(backend: WasmBackendInternals, gemm: NativeAddon, plan: MatMulPlan,
  a: TensorInfo, b: TensorInfo, transposeA: boolean, transposeB: boolean): TensorInfo {
  const { m, k, n } = plan;
  const out = backend.makeOutput(plan.outShape, 'float32');
  const aBase = floatOffset(backend, a);
  const bBase = floatOffset(backend, b);
  const outBase = floatOffset(backend, out);
  // Stored row lengths: a is [m, k], or [k, m] when transposed; b is [k, n], or [n, k].
  const lda = transposeA ? m : k;
  const ldb = transposeB ? k : n;
  let dims: Int32Array;
  let offsets: [Uint32Array, Uint32Array, Uint32Array];
  if (plan.batchB === 1 && !transposeA) {
    dims = Int32Array.of(0, transposeB ? 1 : 0, plan.batchA * m, n, k, lda, ldb, n);
    offsets = [Uint32Array.of(aBase), Uint32Array.of(bBase), Uint32Array.of(outBase)];
  } else {
    const aOf = batchIndexMap(plan.batchShape, plan.aBatchShape);
    const bOf = batchIndexMap(plan.batchShape, plan.bBatchShape);
    offsets = [new Uint32Array(aOf.length), new Uint32Array(aOf.length), new Uint32Array(aOf.length)];
    for (let i = 0; i < aOf.length; i++) {
      offsets[0][i] = aBase + aOf[i] * m * k;
      offsets[1][i] = bBase + bOf[i] * k * n;
      offsets[2][i] = outBase + i * m * n;
    }
    dims = Int32Array.of(transposeA ? 1 : 0, transposeB ? 1 : 0, m, n, k, lda, ldb, n);
  }
  // The heap view is taken after makeOutput: its malloc may have grown (and replaced) the buffer.
  const heap = new Float32Array(backend.wasm.HEAPU8.buffer);
  gemm.sgemmBatch(heap, dims, offsets[0], offsets[1], offsets[2], 0);
  return out;
}

/** A tensor's position in the heap in floats (tfjs's malloc aligns every buffer to 8+ bytes). */
function floatOffset(backend: WasmBackendInternals, t: TensorInfo): number {
  const offset = tensorData(backend, t).memoryOffset;
  util.assert(offset % BYTES_PER_FLOAT === 0, () => `tensor data at unaligned heap offset ${offset}`);
  return offset / BYTES_PER_FLOAT;
}

export function createMatMulKernels(stock: StockMatMulKernels): KernelConfig[] {
  // C functions are bound per backend instance: a re-created wasm backend is a new module.
  let boundBackend: WasmBackendInternals | null = null;
  let cBatchMatMul: CBatchMatMul | null = null;

  /**
   * Idempotent setup, also called lazily from the kernels: the engine runs setupFuncs on
   * `setBackend`, but these kernels may be installed after the backend was already set.
   */
  function setup(backendArg: unknown): CBatchMatMul {
    const backend = asWasmBackend(backendArg);
    if (boundBackend === backend && cBatchMatMul != null) return cBatchMatMul;
    // We delegate to the stock kernels, so their own C bindings must exist too.
    stock.batchMatMul.setupFunc?.(backend);
    stock.fusedMatMul.setupFunc?.(backend);
    cBatchMatMul = backend.wasm.cwrap(BatchMatMul, null, [
      'number', 'array', 'number', 'number', 'array', 'number', 'number', 'number', 'number',
    ]) as unknown as CBatchMatMul;
    boundBackend = backend;
    return cBatchMatMul;
  }

  function callStock(kernel: KernelConfig, backend: WasmBackendInternals, inputs: NamedTensorInfoMap,
    attrs: NamedAttrMap): TensorInfo {
    return kernel.kernelFunc({ inputs, backend, attrs }) as TensorInfo;
  }

  /**
   * `x` as a row-major [batch, rows, cols] operand. Stored transposed ([batch, cols, rows]) it is
   * materialised, and the copy is pushed to `temps` for the caller to dispose.
   */
  function rowMajor(backend: WasmBackendInternals, x: TensorInfo, batch: number, rows: number, cols: number,
    transposed: boolean, temps: TensorInfo[]): TensorInfo {
    if (!transposed) return reshaped(x, [batch, rows, cols]);
    const t = runWasmKernel(backend, 'Transpose', { x: reshaped(x, [batch, cols, rows]) }, { perm: [0, 2, 1] });
    temps.push(t);
    return reshaped(t, [batch, rows, cols]);
  }

  /** One XNNPACK call per output batch, on heap slices of the row-major operands. */
  function perBatchProduct(backend: WasmBackendInternals, c: CBatchMatMul, plan: MatMulPlan,
    a3: TensorInfo, b3: TensorInfo): TensorInfo {
    const { m, k, n } = plan;
    const out = backend.makeOutput(plan.outShape, 'float32');
    // Byte offsets, not typed-array views: makeOutput's malloc may grow the heap, which detaches
    // views but leaves offsets valid.
    const aBase = tensorData(backend, a3).memoryOffset;
    const bBase = tensorData(backend, b3).memoryOffset;
    const outBase = tensorData(backend, out).memoryOffset;
    const aOf = batchIndexMap(plan.batchShape, plan.aBatchShape);
    const bOf = batchIndexMap(plan.batchShape, plan.bBatchShape);
    const aShape = shapeBytes([1, m, k]);
    const bShape = shapeBytes([1, k, n]);
    for (let i = 0; i < aOf.length; i++) {
      const aId = registerHeapSlice(backend, aBase + aOf[i] * m * k * BYTES_PER_FLOAT, m * k);
      const bId = registerHeapSlice(backend, bBase + bOf[i] * k * n * BYTES_PER_FLOAT, k * n);
      const outId = registerHeapSlice(backend, outBase + i * m * n * BYTES_PER_FLOAT, m * n);
      try {
        c(aId, aShape, 3, bId, bShape, 3, 0, 0, outId);
      } finally {
        releaseHeapSlice(backend, aId);
        releaseHeapSlice(backend, bId);
        releaseHeapSlice(backend, outId);
      }
    }
    return out;
  }

  /**
   * The product a·b (no epilogue) on the native BLAS when it is loaded, else on XNNPACK, for any
   * transposes and batch shapes. `fold` runs the single-product case on XNNPACK; it defaults to the
   * stock BatchMatMul.
   */
  function product(backend: WasmBackendInternals, c: CBatchMatMul, a: TensorInfo, b: TensorInfo,
    transposeA: boolean, transposeB: boolean,
    fold?: (a2: TensorInfo, b2: TensorInfo) => TensorInfo): TensorInfo {
    const plan = planMatMul(a.shape, b.shape, transposeA, transposeB);
    const { batchA, batchB, m, k, n } = plan;
    if (util.sizeFromShape(plan.outShape) === 0) return backend.makeOutput(plan.outShape, 'float32');
    if (k === 0) {
      const out = backend.makeOutput(plan.outShape, 'float32');
      backend.typedArrayFromHeap(out).fill(0); // an empty sum; malloc'd memory is not zeroed
      return out;
    }
    const native = fold == null ? activeNative() : null;
    if (native != null) return nativeProduct(backend, native, plan, a, b, transposeA, transposeB);
    if (fold == null && m * k * n <= matMulTuning.stockAtOrBelow && stockBroadcastIsExact(plan)) {
      // Per-call overhead (a transpose, XNNPACK operator creation) dominates tiny products, which
      // the stock scalar loop finishes sooner.
      return callStock(stock.batchMatMul, backend, { a, b }, { transposeA, transposeB });
    }
    const temps: TensorInfo[] = [];
    try {
      const a3 = rowMajor(backend, a, batchA, m, k, transposeA, temps);
      const b3 = rowMajor(backend, b, batchB, k, n, transposeB, temps);
      if (batchB === 1) {
        // All of a's batches meet the same b: one [batchA·m, k]·[k, n] product.
        const a2 = reshaped(a3, [1, batchA * m, k]);
        const b2 = reshaped(b3, [1, k, n]);
        const out = fold != null ? fold(a2, b2)
          : callStock(stock.batchMatMul, backend, { a: a2, b: b2 }, { transposeA: false, transposeB: false });
        return reshaped(out, plan.outShape);
      }
      return perBatchProduct(backend, c, plan, a3, b3);
    } finally {
      for (const t of temps) backend.disposeData(t.dataId);
    }
  }

  const batchMatMul: KernelFunc = (args) => {
    const backend = asWasmBackend(args.backend);
    const c = setup(backend);
    const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
    const { transposeA, transposeB } = args.attrs as unknown as BatchMatMulAttrs;
    // Non-float inputs: the stock kernel raises tfjs's own error for them.
    if (a.dtype !== 'float32' || b.dtype !== 'float32') return stock.batchMatMul.kernelFunc(args);
    return product(backend, c, a, b, transposeA, transposeB);
  };

  const fusedMatMul: KernelFunc = (args) => {
    const backend = asWasmBackend(args.backend);
    const c = setup(backend);
    const { a, b, bias, preluActivationWeights } = args.inputs as _FusedMatMulInputs;
    const attrs = args.attrs as unknown as _FusedMatMulAttrs;
    const { transposeA, transposeB, activation, leakyreluAlpha } = attrs;
    if (a.dtype !== 'float32' || b.dtype !== 'float32') return stock.fusedMatMul.kernelFunc(args);
    const plan = planMatMul(a.shape, b.shape, transposeA, transposeB);
    // With the native BLAS the product goes there and the epilogue is one pass after it.
    const fusable = activeNative() == null && plan.batchB === 1 && plan.k > 0 && util.sizeFromShape(plan.outShape) > 0 &&
      stockEpilogueIsExact(plan.outShape, bias, activation, preluActivationWeights);
    if (fusable) {
      // XNNPACK applies bias and activation in the same pass as the product.
      const fold = (a2: TensorInfo, b2: TensorInfo) => callStock(stock.fusedMatMul, backend,
        { a: a2, b: b2, bias, preluActivationWeights },
        { transposeA: false, transposeB: false, activation, leakyreluAlpha: leakyreluAlpha ?? DEFAULT_LEAKYRELU_ALPHA });
      return product(backend, c, a, b, transposeA, transposeB, fold);
    }
    const y = product(backend, c, a, b, transposeA, transposeB);
    return applyFusedEpilogue(backend, y, { bias, activation, preluActivationWeights, leakyreluAlpha });
  };

  return [
    { kernelName: BatchMatMul, backendName: 'wasm', kernelFunc: batchMatMul, setupFunc: setup },
    { kernelName: _FusedMatMul, backendName: 'wasm', kernelFunc: fusedMatMul, setupFunc: setup },
  ];
}
