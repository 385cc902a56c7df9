/**
 * Kernels over frozen weights held in native memory (native/frozen.c), for the wasm backend: the
 * activations live on the wasm heap and the addon reads and writes them there in place, while the
 * weight never enters the heap.
 *
 *   LowrankFrozenLinear      {x [N, in]} attrs {weight, mode} → mode 0: x·Wᵀ [N, rows]; mode 1: x·W [N, cols]
 *   LowrankFrozenGather      {ids [N] i32} attrs {weight} → W[ids] [N, cols]
 *   LowrankFrozenLinearCE    {h [N, C], targets [N] i32, weights [N] f32} attrs {weight, withGrad} → [loss [], lse [N], dh]
 *                            (dh [N, C] for dy = 1 when withGrad, else [0, C])
 *   LowrankFrozenLinearCEGrad {h, targets, weights, lse, dy []} attrs {weight} → dh [N, C]
 * `weight` is the id of a FrozenWeight (core/models/frozen-weight.ts keeps the registry); the
 * gradients are registered there. Registered for wasm only (install.ts); models use them only
 * where the addon loaded (the loader keeps weights as tensors otherwise).
 */
import { util } from '../tf.ts';
import type { KernelConfig, KernelFunc, NamedAttrMap, TensorInfo } from '../tf.ts';
import { activeNative, type FrozenHandle, type NativeAddon } from './native/addon.ts';
import { asWasmBackend, tensorData, type WasmBackendInternals } from './wasm/backend-internals.ts';

export const FROZEN_KERNELS = {
  linear: 'LowrankFrozenLinear',
  gather: 'LowrankFrozenGather',
  linearCrossEntropy: 'LowrankFrozenLinearCE',
  linearCrossEntropyGrad: 'LowrankFrozenLinearCEGrad',
} as const;

/** What the kernels need of a frozen weight: its handle and shape [rows, cols]. */
export interface FrozenOperand {
  readonly handle: FrozenHandle;
  readonly shape: readonly [number, number];
}

const operands = new Map<number, FrozenOperand>();

/** Makes a frozen weight addressable by kernels (their attrs carry the id). */
export function registerFrozenOperand(id: number, operand: FrozenOperand): void {
  operands.set(id, operand);
}

export function unregisterFrozenOperand(id: number): void {
  operands.delete(id);
}

function operand(attrs: NamedAttrMap): FrozenOperand {
  const found = operands.get(attrs.weight as number);
  if (found == null) throw new Error(`internal: frozen weight ${String(attrs.weight)} is not registered (disposed?)`);
  return found;
}

function requireNative(): NativeAddon {
  const native = activeNative();
  if (native == null) throw new Error('internal: frozen-weight kernels need the native addon');
  return native;
}

/** Element offset of a float32/int32 tensor in the heap. */
function offset(backend: WasmBackendInternals, t: TensorInfo): number {
  return tensorData(backend, t).memoryOffset / 4;
}

const heapOf = (backend: WasmBackendInternals) => new Float32Array(backend.wasm.HEAPU8.buffer);

const linear: KernelFunc = ({ inputs, backend: backendArg, attrs }) => {
  const backend = asWasmBackend(backendArg);
  const { x } = inputs as { x: TensorInfo };
  const w = operand(attrs!);
  const mode = attrs!.mode as 0 | 1;
  const [rows, cols] = w.shape;
  const inWidth = mode === 0 ? cols : rows;
  util.assert(x.dtype === 'float32' && x.shape.length === 2 && x.shape[1] === inWidth,
    () => `frozen linear (mode ${mode}) takes float32 x [N, ${inWidth}], got ${x.dtype} [${x.shape}]`);
  const n = x.shape[0];
  const out = backend.makeOutput([n, mode === 0 ? rows : cols], 'float32');
  requireNative().frozenMatmul(w.handle, heapOf(backend), offset(backend, x), n, offset(backend, out), mode);
  return out;
};

const gather: KernelFunc = ({ inputs, backend: backendArg, attrs }) => {
  const backend = asWasmBackend(backendArg);
  const { ids } = inputs as { ids: TensorInfo };
  const w = operand(attrs!);
  util.assert(ids.dtype === 'int32' && ids.shape.length === 1, () => `frozen gather takes int32 ids [N], got ${ids.dtype} [${ids.shape}]`);
  const out = backend.makeOutput([ids.shape[0], w.shape[1]], 'float32');
  const heap = heapOf(backend);
  const idView = new Int32Array(heap.buffer, tensorData(backend, ids).memoryOffset, ids.shape[0]);
  requireNative().frozenGather(w.handle, idView, heap, offset(backend, out));
  return out;
};

function checkCe(h: TensorInfo, targets: TensorInfo, weights: TensorInfo, w: FrozenOperand): number {
  util.assert(h.dtype === 'float32' && h.shape.length === 2 && h.shape[1] === w.shape[1],
    () => `frozen linear cross-entropy takes float32 h [N, ${w.shape[1]}], got ${h.dtype} [${h.shape}]`);
  const n = h.shape[0];
  util.assert(targets.dtype === 'int32' && weights.dtype === 'float32' && util.sizeFromShape(targets.shape) === n &&
    util.sizeFromShape(weights.shape) === n, () => 'frozen linear cross-entropy: int32 targets and float32 weights, one per row of h');
  return n;
}

const linearCrossEntropy: KernelFunc = ({ inputs, backend: backendArg, attrs }) => {
  const backend = asWasmBackend(backendArg);
  const { h, targets, weights } = inputs as Record<'h' | 'targets' | 'weights', TensorInfo>;
  const w = operand(attrs!);
  const n = checkCe(h, targets, weights, w);
  const withGrad = attrs!.withGrad === true;
  const loss = backend.makeOutput([], 'float32');
  const lse = backend.makeOutput([n], 'float32');
  const dh = backend.makeOutput(withGrad ? h.shape : [0, w.shape[1]], 'float32');
  const heap = heapOf(backend);
  const view = (t: TensorInfo) => new Float32Array(heap.buffer, tensorData(backend, t).memoryOffset, n);
  const targetView = new Int32Array(heap.buffer, tensorData(backend, targets).memoryOffset, n);
  heap[offset(backend, loss)] = requireNative().frozenLinearCrossEntropy(w.handle, heap, offset(backend, h), n, targetView, view(weights),
    view(lse), withGrad ? offset(backend, dh) : -1);
  return [loss, lse, dh];
};

const linearCrossEntropyGrad: KernelFunc = ({ inputs, backend: backendArg, attrs }) => {
  const backend = asWasmBackend(backendArg);
  const { h, targets, weights, lse, dy } = inputs as Record<'h' | 'targets' | 'weights' | 'lse' | 'dy', TensorInfo>;
  const w = operand(attrs!);
  const n = checkCe(h, targets, weights, w);
  const dh = backend.makeOutput(h.shape, 'float32');
  const heap = heapOf(backend);
  const view = (t: TensorInfo) => new Float32Array(heap.buffer, tensorData(backend, t).memoryOffset, n);
  const targetView = new Int32Array(heap.buffer, tensorData(backend, targets).memoryOffset, n);
  requireNative().frozenLinearCrossEntropyGrad(w.handle, heap, offset(backend, h), n, targetView, view(weights), view(lse),
    heap[offset(backend, dy)], offset(backend, dh));
  return dh;
};

export const frozenWasmConfigs: KernelConfig[] = [
  { kernelName: FROZEN_KERNELS.linear, backendName: 'wasm', kernelFunc: linear },
  { kernelName: FROZEN_KERNELS.gather, backendName: 'wasm', kernelFunc: gather },
  { kernelName: FROZEN_KERNELS.linearCrossEntropy, backendName: 'wasm', kernelFunc: linearCrossEntropy },
  { kernelName: FROZEN_KERNELS.linearCrossEntropyGrad, backendName: 'wasm', kernelFunc: linearCrossEntropyGrad },
];
