/**
 * The causal-LM loss as two fused kernels on the wasm backend: softmax cross-entropy forward
 * (per-row log-sum-exp and the weighted loss) and its gradient.
 *
 * Why: with the matmuls on the native BLAS, the loss became the largest non-matmul cost of a
 * training step. Over logits [batch·seq, vocab] (4 M floats for the bench model) the composite
 * form (core/models/causal-lm.ts) runs max, sub, exp, sum, log and a gather forward, and sub, exp,
 * a one-hot, sub and mul backward: ten passes and two exps over the largest tensor of the step,
 * ~85 ms. Fused: two passes forward, one backward, with a vectorised exp in the native addon
 * (native/kernels.c): ~7 ms. Without the addon the models keep the composite form: a JS loop
 * measured slower than it (~95 ms: V8's Math.exp costs twice the wasm backend's vectorised exp).
 *
 * Kernels:
 *   LowrankCrossEntropy      {logits [N,V] f32, targets [N] i32, weights [N] f32} → [loss [] f32, lse [N] f32]
 *   LowrankCrossEntropyGrad  {logits, targets, weights, lse, dy [] f32} → dlogits [N,V] f32
 * loss = Σᵢ wᵢ·(lseᵢ − zᵢ[tᵢ]),  dlogitsᵢⱼ = (exp(zᵢⱼ − lseᵢ) − [j = tᵢ])·wᵢ·dy
 * Registered for wasm only (install.ts), used only with the native addon (fused-ops.ts); the cpu
 * backend keeps the composite form, which is the reference the tests hold these to.
 */
import { util } from '../tf.ts';
import type { KernelConfig, KernelFunc, TensorInfo } from '../tf.ts';
import { activeNative, type NativeAddon } from './native/addon.ts';

function requireNative(): NativeAddon {
  const native = activeNative();
  if (native == null) throw new Error('the fused cross-entropy kernels need the native addon; fused-ops.ts runs the composite loss without it');
  return native;
}
import { asWasmBackend, type WasmBackendInternals } from './wasm/backend-internals.ts';

export const CROSS_ENTROPY_KERNELS = {
  forward: 'LowrankCrossEntropy',
  grad: 'LowrankCrossEntropyGrad',
} as const;

function checkInputs(logits: TensorInfo, targets: TensorInfo, weights: TensorInfo): [number, number] {
  util.assert(logits.shape.length === 2, () => `cross-entropy takes logits [rows, vocab], got [${logits.shape}]`);
  const [rows, vocab] = logits.shape;
  util.assert(logits.dtype === 'float32' && weights.dtype === 'float32' && targets.dtype === 'int32',
    () => `cross-entropy takes float32 logits and weights and int32 targets, got ${logits.dtype}, ${weights.dtype}, ${targets.dtype}`);
  util.assert(util.sizeFromShape(targets.shape) === rows && util.sizeFromShape(weights.shape) === rows,
    () => `cross-entropy: targets [${targets.shape}] and weights [${weights.shape}] must have one entry per logits row (${rows})`);
  return [rows, vocab];
}

const f32 = (backend: WasmBackendInternals, t: TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;
const i32 = (backend: WasmBackendInternals, t: TensorInfo) => backend.typedArrayFromHeap(t) as Int32Array;

const forward: KernelFunc = ({ inputs, backend: backendArg }) => {
  const backend = asWasmBackend(backendArg);
  const { logits, targets, weights } = inputs as { logits: TensorInfo; targets: TensorInfo; weights: TensorInfo };
  const [rows] = checkInputs(logits, targets, weights);
  const loss = backend.makeOutput([], 'float32');
  const lse = backend.makeOutput([rows], 'float32');
  // Views only after every makeOutput: its malloc can grow the heap and detach earlier views.
  const args = [f32(backend, logits), i32(backend, targets), f32(backend, weights), f32(backend, lse)] as const;
  f32(backend, loss)[0] = requireNative().crossEntropy(...args);
  return [loss, lse];
};

const gradient: KernelFunc = ({ inputs, backend: backendArg }) => {
  const backend = asWasmBackend(backendArg);
  const { logits, targets, weights, lse, dy } = inputs as Record<'logits' | 'targets' | 'weights' | 'lse' | 'dy', TensorInfo>;
  checkInputs(logits, targets, weights);
  const grad = backend.makeOutput(logits.shape, 'float32');
  const args = [f32(backend, logits), i32(backend, targets), f32(backend, weights), f32(backend, lse), f32(backend, grad),
    f32(backend, dy)[0]] as const;
  requireNative().crossEntropyGrad(...args);
  return grad;
};

export const crossEntropyWasmConfigs: KernelConfig[] = [
  { kernelName: CROSS_ENTROPY_KERNELS.forward, backendName: 'wasm', kernelFunc: forward },
  { kernelName: CROSS_ENTROPY_KERNELS.grad, backendName: 'wasm', kernelFunc: gradient },
];
