/**
 * The bias + activation part of `_FusedMatMul` on wasm, for the products the stock fused kernel
 * cannot finish correctly itself. Semantics follow the cpu backend's `_FusedMatMul`
 * (`add(product, bias)` with broadcasting, then the activation kernel), which is the reference the
 * tests compare against.
 */
import { util } from '../../tf.ts';
import type { _FusedMatMulAttrs, TensorInfo } from '../../tf.ts';
import { reshaped, runWasmKernel, type WasmBackendInternals } from './backend-internals.ts';

type Activation = _FusedMatMulAttrs['activation'];

export interface FusedEpilogue {
  bias?: TensorInfo;
  activation: Activation;
  preluActivationWeights?: TensorInfo;
  leakyreluAlpha?: number;
}

/** fused.matMul's default slope, used when a caller runs the kernel without the attr. */
export const DEFAULT_LEAKYRELU_ALPHA = 0.2;

/**
 * True when `small` broadcasts to `full` by repeating whole trailing blocks, i.e. without its
 * leading 1s it equals a suffix of `full`. XNNPACK's prelu (and the stock kernels' bias) index
 * their weights as `i % size`, which is exact only in that case.
 */
export function isTrailingBlock(small: readonly number[], full: readonly number[]): boolean {
  let start = 0;
  while (start < small.length && small[start] === 1) start++;
  const core = small.slice(start);
  if (core.length > full.length) return false;
  const offset = full.length - core.length;
  return core.every((d, i) => d === full[offset + i]);
}

/**
 * Whether the stock fused kernel's XNNPACK path computes this epilogue exactly (checked against
 * the cpu backend in the tests): a rank-1 bias of length n (XNNPACK reads exactly n values) and a
 * prelu alpha that repeats in whole trailing blocks. The other activations are fused by the stock
 * kernel on that path.
 */
export function stockEpilogueIsExact(outShape: readonly number[], bias: TensorInfo | undefined,
  activation: Activation, preluActivationWeights: TensorInfo | undefined): boolean {
  const n = outShape[outShape.length - 1];
  if (bias != null && !(bias.shape.length === 1 && bias.shape[0] === n)) return false;
  if (activation === 'prelu') {
    return preluActivationWeights != null && isTrailingBlock(preluActivationWeights.shape, outShape);
  }
  return true;
}

/** Applies bias and activation to `x` with the wasm elementwise kernels; consumes `x`. */
export function applyFusedEpilogue(backend: WasmBackendInternals, x: TensorInfo, e: FusedEpilogue): TensorInfo {
  let y = x;
  const replace = (next: TensorInfo) => {
    backend.disposeData(y.dataId);
    y = next;
  };
  if (e.bias != null) replace(runWasmKernel(backend, 'Add', { a: y, b: e.bias }));
  switch (e.activation) {
    case 'linear':
      break;
    case 'relu':
      replace(runWasmKernel(backend, 'Relu', { x: y }));
      break;
    case 'relu6':
      replace(runWasmKernel(backend, 'Relu6', { x: y }));
      break;
    case 'elu':
      replace(runWasmKernel(backend, 'Elu', { x: y }));
      break;
    case 'sigmoid':
      replace(runWasmKernel(backend, 'Sigmoid', { x: y }));
      break;
    case 'leakyrelu':
      replace(runWasmKernel(backend, 'LeakyRelu', { x: y }, { alpha: e.leakyreluAlpha ?? DEFAULT_LEAKYRELU_ALPHA }));
      break;
    case 'prelu':
      if (e.preluActivationWeights == null) throw new Error('_FusedMatMul: prelu activation without weights');
      replace(prelu(backend, y, e.preluActivationWeights));
      break;
    default:
      throw new Error(`_FusedMatMul on wasm: activation '${String(e.activation)}' is not supported`);
  }
  return y;
}

/**
 * The wasm Prelu kernel indexes alpha as `i % alpha.size`; an alpha that broadcasts any other way
 * (e.g. [m, 1] against [m, n]) is first tiled to the full shape.
 */
function prelu(backend: WasmBackendInternals, x: TensorInfo, alpha: TensorInfo): TensorInfo {
  if (isTrailingBlock(alpha.shape, x.shape)) return runWasmKernel(backend, 'Prelu', { x, alpha });
  util.assert(alpha.shape.length <= x.shape.length, () => `prelu weights ${alpha.shape} do not broadcast to ${x.shape}`);
  const padded = [...new Array<number>(x.shape.length - alpha.shape.length).fill(1), ...alpha.shape];
  const reps = x.shape.map((d, i) => (padded[i] === d ? 1 : d));
  const full = runWasmKernel(backend, 'Tile', { x: reshaped(alpha, padded) }, { reps });
  try {
    return runWasmKernel(backend, 'Prelu', { x, alpha: full });
  } finally {
    backend.disposeData(full.dataId);
  }
}
