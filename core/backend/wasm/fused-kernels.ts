/**
 * The fused kernels of core/backend/fused-kernels.ts on the wasm backend: the same arithmetic, run
 * by JS on zero-copy Float32Array views of the wasm heap (PERFORMANCE.md §2), like
 * unsorted-segment-sum.ts. Registered by install.ts with the other project kernels.
 */
import type { KernelConfig, KernelFunc, TensorInfo } from '../../tf.ts';
import { checkFloat32, FUSED_KERNELS, type FusedKernelDefinition } from '../fused-kernels.ts';
import { asWasmBackend } from './backend-internals.ts';

function wasmKernelFunc(def: FusedKernelDefinition): KernelFunc {
  return ({ inputs, backend: backendArg, attrs = {} }) => {
    const backend = asWasmBackend(backendArg);
    const named = inputs as Record<string, TensorInfo>;
    const ins = def.inputNames.map((n) => named[n]);
    checkFloat32(def, ins);
    const outs = def.outputShapes(ins, attrs).map((s) => backend.makeOutput(s, 'float32'));
    // Views only after every makeOutput: its malloc can grow the heap and detach earlier views.
    const view = (t: TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;
    def.compute(ins.map(view), outs.map(view), ins.map((t) => t.shape), attrs);
    return outs.length === 1 ? outs[0] : outs;
  };
}

export const fusedKernelConfigs: KernelConfig[] = FUSED_KERNELS.map((def) => ({
  kernelName: def.kernelName,
  backendName: 'wasm',
  kernelFunc: wasmKernelFunc(def),
}));
