/**
 * `Slice` on the wasm backend without copying its whole input.
 *
 * Why: the stock kernel (tfjs-backend-wasm 4.22 `kernels/Slice.ts`) starts with
 * `backend.readSync(x.dataId)`, which copies the entire input out of the heap before taking the
 * slice, so slicing one element of a 1024×1024 tensor costs ~13 ms, and generation, which slices
 * the last position's logits at every token, copies all of them each time. Here the input is read
 * through a zero-copy heap view (taken after the output's malloc, which may grow the heap) and only
 * the sliced runs are copied. Strings keep the stock kernel.
 */
import { slice_util, Slice, util } from '../../tf.ts';
import type { KernelConfig, KernelFunc, SliceAttrs, TensorInfo } from '../../tf.ts';
import { asWasmBackend } from './backend-internals.ts';

type Values = Float32Array | Int32Array | Uint8Array;

/** Copies the box [begin, begin + size) of a row-major `shape` array into `out`, run by run. */
export function copySlice(x: Values, shape: readonly number[], begin: readonly number[], size: readonly number[], out: Values): void {
  const rank = shape.length;
  const strides = util.computeStrides(shape as number[]);
  const inner = size[rank - 1];
  const outer = util.sizeFromShape(size.slice(0, -1) as number[]);
  const index = new Array<number>(rank - 1).fill(0);
  for (let o = 0; o < outer; o++) {
    let offset = begin[rank - 1];
    for (let d = 0; d < rank - 1; d++) offset += (begin[d] + index[d]) * strides[d];
    out.set(x.subarray(offset, offset + inner), o * inner);
    for (let d = rank - 2; d >= 0; d--) {
      if (++index[d] < size[d]) break;
      index[d] = 0;
    }
  }
}

export function createSliceConfig(stock: KernelConfig): KernelConfig {
  const kernelFunc: KernelFunc = (args) => {
    const backend = asWasmBackend(args.backend);
    const { x } = args.inputs as { x: TensorInfo };
    if (x.dtype === 'string' || x.shape.length === 0) return stock.kernelFunc(args);
    const { begin, size } = args.attrs as unknown as SliceAttrs;
    const [begin_, size_] = slice_util.parseSliceParams(x, begin, size);
    const out = backend.makeOutput(size_, x.dtype);
    if (util.sizeFromShape(size_) === 0) return out;
    copySlice(backend.typedArrayFromHeap(x), x.shape, begin_, size_, backend.typedArrayFromHeap(out));
    return out;
  };
  return { kernelName: Slice, backendName: 'wasm', kernelFunc };
}
