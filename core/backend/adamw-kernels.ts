/**
 * One AdamW step of one parameter as a single kernel on the wasm backend:
 *   LowrankAdamW  {p, g, m, v}, attrs {beta1, beta2, epsilon, rate, decay, correction1, correction2}
 *                 → [p', m', v']
 * with the arithmetic of core/optim/adamw.ts in the same float32 order. The tfjs form is ~15 ops,
 * each a pass over the parameter and a new buffer; for full fine-tuning of the bench model that
 * was about a fifth of a step. Natively (native/kernels.c) it is one vectorised pass, ~5 ms for 4 M
 * parameters against ~35 ms for the ops. Without the addon the optimizer keeps the ops: a JS loop
 * (with float32 rounding after each operation) measured ~100 ms. Outputs are new buffers (tensors
 * are immutable: the old ones may still be shared, e.g. by tensors the tape saved).
 */
import { util } from '../tf.ts';
import type { KernelConfig, KernelFunc, TensorInfo } from '../tf.ts';
import { activeNative } from './native/addon.ts';
import { asWasmBackend } from './wasm/backend-internals.ts';

export const ADAMW_KERNEL = 'LowrankAdamW';

export interface AdamWStepAttrs {
  beta1: number;
  beta2: number;
  epsilon: number;
  /** lr × the parameter's lr scale */
  rate: number;
  /** 1 − rate·weightDecay, or exactly 1 without decay */
  decay: number;
  correction1: number;
  correction2: number;
}

/** The constants as float32, the way tfjs casts scalar operands: [β1, 1−β1, β2, 1−β2, ε, rate, decay, c1, c2]. */
export function adamWConstants(a: AdamWStepAttrs): Float32Array {
  return Float32Array.of(a.beta1, 1 - a.beta1, a.beta2, 1 - a.beta2, a.epsilon, a.rate, a.decay, a.correction1, a.correction2);
}

const adamWStep: KernelFunc = ({ inputs, backend: backendArg, attrs }) => {
  const backend = asWasmBackend(backendArg);
  const { p, g, m, v } = inputs as Record<'p' | 'g' | 'm' | 'v', TensorInfo>;
  util.assert([p, g, m, v].every((t) => t.dtype === 'float32' && util.arraysEqual(t.shape, p.shape)),
    () => `${ADAMW_KERNEL}: p, g, m, v must be float32 of one shape, got ${[p, g, m, v].map((t) => `${t.dtype} [${t.shape}]`).join(', ')}`);
  const outs = [p, m, v].map(() => backend.makeOutput(p.shape, 'float32'));
  // Views only after every makeOutput: its malloc can grow the heap and detach earlier views.
  const view = (t: TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;
  const k = adamWConstants(attrs as unknown as AdamWStepAttrs);
  const native = activeNative();
  if (native == null) throw new Error(`${ADAMW_KERNEL} needs the native addon; the optimizer runs the tfjs ops without it`);
  native.adamw(view(p), view(g), view(m), view(v), view(outs[0]), view(outs[1]), view(outs[2]), k);
  return outs;
};

export const adamWWasmConfig: KernelConfig = { kernelName: ADAMW_KERNEL, backendName: 'wasm', kernelFunc: adamWStep };
