/**
 * A zero-copy `Identity` for the wasm backend.
 *
 * Why: tfjs-core's engine clones every tensor it saves for the backward pass (`engine.clone`, i.e.
 * the Identity kernel), and the stock wasm Identity mallocs a new buffer and copies the data.
 * Profiling a LoRA step of the bench model found ~340 such copies, ~190 MB of memcpy per step, and
 * the copies also double the memory the tape holds. Tensors are immutable in tfjs (variables
 * re-point to new data on assign), so a clone can share the buffer: add a reference to the data
 * and return it under the same dataId, which is exactly what the cpu backend's Identity does.
 * The buffer is freed when the last reference is disposed (BackendWasm.disposeData counts them).
 */
import { Identity } from '../../tf.ts';
import type { KernelConfig, KernelFunc, TensorInfo } from '../../tf.ts';

interface RefCounted {
  incRef(dataId: object): void;
}

const identity: KernelFunc = ({ inputs, backend }) => {
  const { x } = inputs as { x: TensorInfo };
  (backend as unknown as RefCounted).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
};

export const identityConfig: KernelConfig = { kernelName: Identity, backendName: 'wasm', kernelFunc: identity };
