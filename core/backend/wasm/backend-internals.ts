/**
 * The part of tfjs-backend-wasm 4.22's `BackendWasm` that the project's wasm kernels use, and the
 * helpers every one of them needs. Some of it is private in the package's typings
 * (`dataIdNextNumber`) or typed as the raw emscripten module; the version is pinned in
 * package.json, and declaring exactly what we touch here means an upgrade breaks in one place.
 * See PERFORMANCE.md §2 for how wasm kernels see tensor data.
 */
import { getKernel, util } from '../../tf.ts';
import type { DataType, NamedAttrMap, NamedTensorInfoMap, TensorInfo } from '../../tf.ts';

export interface WasmTensorData {
  /** The integer id the C++ side knows the tensor by (`register_tensor`). */
  id: number;
  /** Byte offset of the tensor's data in the wasm heap. */
  memoryOffset: number;
  shape: number[];
  dtype: DataType;
  refCount: number;
}

type CwrapArg = 'number' | 'array';
// Emscripten's cwrap returns an untyped function; each kernel casts it to the C signature it binds.
type CFunction = (...args: Array<number | boolean | Uint8Array>) => unknown;

export interface WasmBackendInternals {
  wasm: {
    /** The whole heap; after a malloc that grew memory this is a new view (re-read it each time). */
    HEAPU8: Uint8Array;
    cwrap(name: string, returnType: null | 'number', argTypes: CwrapArg[]): CFunction;
    tfjs: {
      registerTensor(id: number, size: number, memoryOffset: number): void;
      disposeData(id: number): void;
    };
  };
  dataIdMap: { get(dataId: object): WasmTensorData | undefined };
  dataIdNextNumber: number;
  makeOutput(shape: number[], dtype: DataType, memoryOffset?: number): TensorInfo;
  typedArrayFromHeap(t: TensorInfo): Float32Array | Int32Array | Uint8Array;
  disposeData(dataId: object, force?: boolean): boolean;
}

export function asWasmBackend(backend: unknown): WasmBackendInternals {
  const b = backend as Partial<WasmBackendInternals>;
  if (b.wasm == null || b.dataIdMap == null || typeof b.makeOutput !== 'function') {
    throw new Error('project wasm kernel called with a backend that is not tfjs-backend-wasm 4.22');
  }
  return b as WasmBackendInternals;
}

export function tensorData(backend: WasmBackendInternals, t: TensorInfo): WasmTensorData {
  const data = backend.dataIdMap.get(t.dataId);
  if (data == null) throw new Error('tensor is not on the wasm backend (disposed, or moved elsewhere)');
  return data;
}

/** A shape as the byte array the C++ kernels take (`size_t*`, 32-bit in wasm32). */
export function shapeBytes(shape: readonly number[]): Uint8Array {
  return new Uint8Array(new Int32Array(shape).buffer);
}

/**
 * Registers a C++ tensor id over `size` floats of heap memory that belongs to another tensor, so a
 * C++ kernel can work on a slice without a copy or a malloc. Ids come from the backend's own
 * counter, so they never collide with, or are reused by, real tensors: the XNNPACK operator cache
 * is keyed on ids and would otherwise serve stale packed weights.
 */
export function registerHeapSlice(backend: WasmBackendInternals, byteOffset: number, size: number): number {
  const id = backend.dataIdNextNumber++;
  backend.wasm.tfjs.registerTensor(id, size, byteOffset);
  return id;
}

/**
 * Forgets a slice id. `dispose_data` also drops the XNNPACK operators cached on it. The memory is
 * never `_free`d here: it belongs to the parent tensor.
 */
export function releaseHeapSlice(backend: WasmBackendInternals, id: number): void {
  backend.wasm.tfjs.disposeData(id);
}

/** Runs another wasm kernel (whatever is registered now) from inside a kernel. */
export function runWasmKernel(
  backend: WasmBackendInternals,
  kernelName: string,
  inputs: NamedTensorInfoMap,
  attrs: NamedAttrMap = {},
): TensorInfo {
  const kernel = getKernel(kernelName, 'wasm');
  if (kernel == null) throw new Error(`wasm backend has no '${kernelName}' kernel`);
  return kernel.kernelFunc({ inputs, backend, attrs }) as TensorInfo;
}

/** A TensorInfo over the same data with another shape of the same size (a free reshape). */
export function reshaped(t: TensorInfo, shape: number[]): TensorInfo {
  util.assert(util.sizeFromShape(shape) === util.sizeFromShape(t.shape), () => `cannot view ${t.shape} as ${shape}`);
  return { dataId: t.dataId, shape, dtype: t.dtype };
}
