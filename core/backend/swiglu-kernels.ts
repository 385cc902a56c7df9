/**
 * SwiGLU, silu(gate)·up (the Llama MLP's activation), as two kernels on the wasm backend, run by
 * the native addon (native/kernels.c: a branch-free vectorised sigmoid):
 *   LowrankSwiGlu      {gate, up} → silu(gate)·up
 *   LowrankSwiGluGrad  {gate, up, dy}, attr wrt 0 | 1 → d gate = dy·up·σ(g)·(1 + g·(1 − σ(g))) | d up = dy·g·σ(g)
 * (one output per gradient: tfjs asks for each input's gradient in its own scope)
 * The composite form is three ops forward (sigmoid, two muls) and six backward, each a pass over
 * [tokens, intermediate] floats and, forward, a tensor the tape keeps. A JS loop would be slower
 * than the wasm backend's own vectorised sigmoid (measured: Math.exp ~15× its cost per element),
 * so without the addon the models keep the composite ops (fused-ops.ts checks activeNative()).
 */
import { util } from '../tf.ts';
import type { KernelConfig, KernelFunc, TensorInfo } from '../tf.ts';
import { activeNative } from './native/addon.ts';
import { asWasmBackend, type WasmBackendInternals } from './wasm/backend-internals.ts';

export const SWIGLU_KERNELS = {
  forward: 'LowrankSwiGlu',
  grad: 'LowrankSwiGluGrad',
} as const;

function requireNative() {
  const native = activeNative();
  if (native == null) throw new Error('the fused SwiGLU kernel needs the native addon; fused-ops.ts runs the composite ops without it');
  return native;
}

function checkSame(name: string, tensors: TensorInfo[]): void {
  const [first] = tensors;
  util.assert(tensors.every((t) => t.dtype === 'float32' && util.arraysEqual(t.shape, first.shape)),
    () => `${name}: inputs must be float32 of one shape, got ${tensors.map((t) => `${t.dtype} [${t.shape}]`).join(', ')}`);
}

const view = (backend: WasmBackendInternals, t: TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;

const forward: KernelFunc = ({ inputs, backend: backendArg }) => {
  const backend = asWasmBackend(backendArg);
  const { gate, up } = inputs as { gate: TensorInfo; up: TensorInfo };
  checkSame(SWIGLU_KERNELS.forward, [gate, up]);
  const native = requireNative();
  const out = backend.makeOutput(gate.shape, 'float32');
  // Views only after every makeOutput: its malloc can grow the heap and detach earlier views.
  native.swiglu(view(backend, gate), view(backend, up), view(backend, out));
  return out;
};

const gradient: KernelFunc = ({ inputs, backend: backendArg, attrs }) => {
  const backend = asWasmBackend(backendArg);
  const { gate, up, dy } = inputs as { gate: TensorInfo; up: TensorInfo; dy: TensorInfo };
  const wrt = (attrs as { wrt: number }).wrt;
  util.assert(wrt === 0 || wrt === 1, () => `${SWIGLU_KERNELS.grad}: wrt must be 0 (gate) or 1 (up), got ${wrt}`);
  checkSame(SWIGLU_KERNELS.grad, [gate, up, dy]);
  const native = requireNative();
  const out = backend.makeOutput(gate.shape, 'float32');
  native.swigluGrad(view(backend, gate), view(backend, up), view(backend, dy), view(backend, out), wrt as 0 | 1);
  return out;
};

export const swigluWasmConfigs: KernelConfig[] = [
  { kernelName: SWIGLU_KERNELS.forward, backendName: 'wasm', kernelFunc: forward },
  { kernelName: SWIGLU_KERNELS.grad, backendName: 'wasm', kernelFunc: gradient },
];
