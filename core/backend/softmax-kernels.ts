/**
 * The attention layer's softmax, softmax(scale·scores + bias), as two kernels on the wasm backend,
 * run by the native addon (native/kernels.c):
 *   LowrankMaskedSoftmax      {scores [B, H, T, S], bias [1|B, 1, T, S]}, attr scale → probs
 *   LowrankMaskedSoftmaxGrad  {probs, dy}, attr scale → d scores = scale·y·(dy − Σ_row dy·y)
 * The composite form (fused-ops.ts) is a scale, a broadcast add of the mask and tf.softmax forward,
 * and five ops backward (two of them broadcasts over [B, H, T, 1]); profiling the bench model's
 * LoRA step put those at ~10 % of it, more than the attention matmuls. Without the addon a JS loop
 * would be slower than the wasm backend's vectorised exp, so the models keep the composite there.
 */
import { util } from '../tf.ts';
import type { KernelConfig, KernelFunc, TensorInfo } from '../tf.ts';
import { activeNative } from './native/addon.ts';
import { asWasmBackend, type WasmBackendInternals } from './wasm/backend-internals.ts';

export const MASKED_SOFTMAX_KERNELS = {
  forward: 'LowrankMaskedSoftmax',
  grad: 'LowrankMaskedSoftmaxGrad',
} as const;

function requireNative() {
  const native = activeNative();
  if (native == null) throw new Error('the fused attention softmax needs the native addon; fused-ops.ts runs the composite ops without it');
  return native;
}

const view = (backend: WasmBackendInternals, t: TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;

/** Whether bias [1|B, 1, T, S] fits scores [B, H, T, S]. */
export function maskFits(scores: readonly number[], bias: readonly number[]): boolean {
  if (scores.length !== 4 || bias.length !== 4) return false;
  const [B, , T, S] = scores;
  return (bias[0] === 1 || bias[0] === B) && bias[1] === 1 && bias[2] === T && bias[3] === S;
}

const forward: KernelFunc = ({ inputs, backend: backendArg, attrs }) => {
  const backend = asWasmBackend(backendArg);
  const { scores, bias } = inputs as { scores: TensorInfo; bias: TensorInfo };
  util.assert(scores.dtype === 'float32' && bias.dtype === 'float32' && maskFits(scores.shape, bias.shape),
    () => `${MASKED_SOFTMAX_KERNELS.forward}: scores [B, H, T, S] and bias [1|B, 1, T, S] float32, got [${scores.shape}] and [${bias.shape}]`);
  const native = requireNative();
  const out = backend.makeOutput(scores.shape, 'float32');
  const [B, H, T, S] = scores.shape;
  // Views only after makeOutput: its malloc can grow the heap and detach earlier views.
  native.maskedSoftmax(view(backend, scores), view(backend, bias), view(backend, out), B, H, T, S, (attrs as { scale: number }).scale);
  return out;
};

const gradient: KernelFunc = ({ inputs, backend: backendArg, attrs }) => {
  const backend = asWasmBackend(backendArg);
  const { probs, dy } = inputs as { probs: TensorInfo; dy: TensorInfo };
  util.assert(probs.dtype === 'float32' && dy.dtype === 'float32' && util.arraysEqual(probs.shape, dy.shape),
    () => `${MASKED_SOFTMAX_KERNELS.grad}: probs and dy float32 of one shape, got [${probs.shape}] and [${dy.shape}]`);
  const native = requireNative();
  const out = backend.makeOutput(probs.shape, 'float32');
  native.maskedSoftmaxGrad(view(backend, probs), view(backend, dy), view(backend, out), probs.shape[probs.shape.length - 1], (attrs as { scale: number }).scale);
  return out;
};

export const maskedSoftmaxWasmConfigs: KernelConfig[] = [
  { kernelName: MASKED_SOFTMAX_KERNELS.forward, backendName: 'wasm', kernelFunc: forward },
  { kernelName: MASKED_SOFTMAX_KERNELS.grad, backendName: 'wasm', kernelFunc: gradient },
];
