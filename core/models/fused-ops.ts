/**
 * The normalisation and rotary-embedding ops the models call. Each runs as one fused kernel
 * (core/backend/fused-kernels.ts) where the active backend has it registered (cpu; wasm with the
 * project's kernels installed) and as the composite of tfjs ops everywhere else (webgpu,
 * tfjs-node), where one op per step is already cheap or native. The composite forms are also the
 * reference the fused kernels are tested against (fused-ops.test.ts).
 *
 * LOWRANK_FUSED_OPS=0 (or `setFusedOps(false)`) runs the composite ops everywhere, to measure what
 * fusing buys; a comma-separated list (`rmsNorm,rope`) fuses only those.
 */
import * as tf from '../tf.ts';
import { FUSED_KERNEL_NAMES as K, registerCpuFusedKernels } from '../backend/fused-kernels.ts';
import { CROSS_ENTROPY_KERNELS } from '../backend/cross-entropy-kernels.ts';
import { SWIGLU_KERNELS } from '../backend/swiglu-kernels.ts';
import { MASKED_SOFTMAX_KERNELS, maskFits } from '../backend/softmax-kernels.ts';
import { ADAMW_KERNEL } from '../backend/adamw-kernels.ts';
import { activeNative } from '../backend/native/addon.ts';

export const FUSED_OPS = ['rmsNorm', 'layerNorm', 'rope', 'crossEntropy', 'swiGlu', 'maskedSoftmax', 'adamW'] as const;
export type FusedOp = (typeof FUSED_OPS)[number];

/** Every kernel an op needs on a backend: forward and gradients. */
const KERNELS_OF: Record<FusedOp, string[]> = {
  rmsNorm: [K.rmsNorm, K.rmsNormGrad, K.rmsNormWeightGrad],
  layerNorm: [K.layerNorm, K.layerNormGrad, K.layerNormWeightGrad],
  rope: [K.rope, K.ropeGrad],
  // wasm with the native addon (core/backend/cross-entropy-kernels.ts); used by causal-lm.ts's loss.
  crossEntropy: [CROSS_ENTROPY_KERNELS.forward, CROSS_ENTROPY_KERNELS.grad],
  // wasm, and only with the native addon (core/backend/swiglu-kernels.ts says why).
  swiGlu: [SWIGLU_KERNELS.forward, SWIGLU_KERNELS.grad],
  // wasm with the native addon (core/backend/softmax-kernels.ts); the Llama attention's softmax.
  maskedSoftmax: [MASKED_SOFTMAX_KERNELS.forward, MASKED_SOFTMAX_KERNELS.grad],
  // wasm with the native addon; used by core/optim/adamw.ts.
  adamW: [ADAMW_KERNEL],
};

/**
 * Ops whose fused kernels are worth it only natively: a JS loop measured slower than the wasm
 * backend's vectorised ops for these (exp, sigmoid; AdamW's ~10 float32-rounded operations), so
 * without the addon they run composite.
 */
const NEEDS_NATIVE: ReadonlySet<FusedOp> = new Set(['swiGlu', 'crossEntropy', 'maskedSoftmax', 'adamW']);

export const FUSED_OPS_ENV = 'LOWRANK_FUSED_OPS';

/** The ops a LOWRANK_FUSED_OPS value turns on: unset, 1, all = every one; 0, none = none; or a list. */
export function parseFusedOpsEnv(value: string | undefined): FusedOp[] {
  const v = value?.trim().toLowerCase();
  if (v == null || v === '' || v === '1' || v === 'all' || v === 'on') return [...FUSED_OPS];
  if (v === '0' || v === 'none' || v === 'off') return [];
  const names = v.split(',').map((s) => s.trim());
  for (const name of names) {
    if (!FUSED_OPS.some((o) => o.toLowerCase() === name)) {
      throw new Error(`${FUSED_OPS_ENV}='${value}': '${name}' is not one of ${FUSED_OPS.join(', ')} (or 0 / 1)`);
    }
  }
  return FUSED_OPS.filter((o) => names.includes(o.toLowerCase()));
}

let enabled = new Set(parseFusedOpsEnv(process.env[FUSED_OPS_ENV]));

/** true / false: all fused ops on / off; a list: only those. */
export function setFusedOps(ops: boolean | readonly FusedOp[]): void {
  enabled = new Set(ops === true ? FUSED_OPS : ops === false ? [] : ops);
}

export function enabledFusedOps(): FusedOp[] {
  return FUSED_OPS.filter((op) => enabled.has(op));
}

/** Whether `op` runs as a fused kernel on the active backend now. */
export function fusedOpActive(op: FusedOp): boolean {
  if (!enabled.has(op)) return false;
  const backend = tf.getBackend();
  if (!KERNELS_OF[op].every((name) => tf.getKernel(name, backend) != null)) return false;
  // Only where the kernels exist (wasm): elsewhere, e.g. the engine window's webgpu page, the
  // native addon is never looked for.
  return !NEEDS_NATIVE.has(op) || activeNative() != null;
}

const run = <T extends tf.Tensor>(name: string, inputs: tf.NamedTensorMap, attrs: tf.NamedAttrMap = {}): T =>
  tf.engine().runKernel<T>(name, inputs, attrs);

/** x [N, C] * rsqrt(mean(x², -1) + eps) * w, as tfjs ops. */
export function rmsNormComposite(x: tf.Tensor2D, weight: tf.Tensor, eps: number): tf.Tensor2D {
  const meanSquare = tf.mean(tf.square(x), -1, true);
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(meanSquare, eps))), weight);
}

/** RMSNorm over the last axis (Zhang & Sennrich, arXiv:1910.07467): x [N, C], weight [C]. */
export function rmsNorm(x: tf.Tensor2D, weight: tf.Tensor, eps: number): tf.Tensor2D {
  if (isRowsAndVector(x, weight) && fusedOpActive('rmsNorm')) return run(K.rmsNorm, { x, weight }, { eps });
  return rmsNormComposite(x, weight, eps);
}

/** x [N, C] -> (x - mean) / sqrt(var + eps) · w + b, biased variance as torch.nn.LayerNorm. */
export function layerNormComposite(x: tf.Tensor2D, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor2D {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, eps))), weight), bias);
}

/** LayerNorm over the last axis (Ba et al., arXiv:1607.06450): x [N, C], weight and bias [C]. */
export function layerNorm(x: tf.Tensor2D, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor2D {
  if (isRowsAndVector(x, weight) && isRowsAndVector(x, bias) && fusedOpActive('layerNorm')) {
    return run(K.layerNorm, { x, weight, bias }, { eps });
  }
  return layerNormComposite(x, weight, bias, eps);
}

/** x [B, H, T, D] -> x·cos + rotate_half(x)·sin, rotate_half(x) = cat(-x2, x1), as tfjs ops. */
export function applyRopeComposite(x: tf.Tensor4D, cos: tf.Tensor2D, sin: tf.Tensor2D): tf.Tensor4D {
  const half = x.shape[3] / 2;
  const [x1, x2] = tf.split(x, [half, half], 3);
  const rotated = tf.concat([tf.neg(x2), x1], 3);
  return tf.add(tf.mul(x, cos), tf.mul(rotated, sin));
}

/** Rotary embeddings in the rotate_half layout (rope.ts): x [B, H, T, D], cos and sin [T, D]. */
export function applyRope(x: tf.Tensor4D, cos: tf.Tensor2D, sin: tf.Tensor2D): tf.Tensor4D {
  const [, , T, D] = x.shape;
  const fits = (t: tf.Tensor) => t.dtype === 'float32' && t.rank === 2 && t.shape[0] === T && t.shape[1] === D;
  if (x.dtype === 'float32' && D % 2 === 0 && fits(cos) && fits(sin) && fusedOpActive('rope')) {
    return run(K.rope, { x, cos, sin });
  }
  return applyRopeComposite(x, cos, sin);
}

/** silu(gate)·up, as tfjs ops. */
export function swiGluComposite(gate: tf.Tensor, up: tf.Tensor): tf.Tensor {
  return tf.mul(tf.mul(gate, tf.sigmoid(gate)), up);
}

/** SwiGLU (Shazeer, arXiv:2002.05202), the Llama MLP's activation: silu(gate)·up, same shapes. */
export function swiGlu(gate: tf.Tensor, up: tf.Tensor): tf.Tensor {
  const fits = gate.dtype === 'float32' && up.dtype === 'float32' && tf.util.arraysEqual(gate.shape, up.shape);
  if (fits && fusedOpActive('swiGlu')) return run(SWIGLU_KERNELS.forward, { gate, up });
  return swiGluComposite(gate, up);
}

/** softmax(scale·scores + bias) over the last axis, as tfjs ops. */
export function maskedSoftmaxComposite(scores: tf.Tensor4D, bias: tf.Tensor4D, scale: number): tf.Tensor4D {
  return tf.softmax(tf.add(tf.mul(scores, scale), bias));
}

/**
 * The attention probabilities: softmax(scale·scores + bias) over the keys, scores [B, H, T, S] and
 * the additive causal/padding mask bias [1|B, 1, T, S] (a constant: it has no gradient).
 */
export function maskedSoftmax(scores: tf.Tensor4D, bias: tf.Tensor4D, scale: number): tf.Tensor4D {
  const fits = scores.dtype === 'float32' && bias.dtype === 'float32' && maskFits(scores.shape, bias.shape);
  if (fits && fusedOpActive('maskedSoftmax')) return run(MASKED_SOFTMAX_KERNELS.forward, { scores, bias }, { scale });
  return maskedSoftmaxComposite(scores, bias, scale);
}

function isRowsAndVector(x: tf.Tensor, v: tf.Tensor): boolean {
  return x.rank === 2 && x.dtype === 'float32' && v.rank === 1 && v.dtype === 'float32' && v.shape[0] === x.shape[1];
}

/**
 * Gradients. Each input's closure is called only when that input is on the path to the loss, so
 * a frozen norm weight (LoRA) costs no weight-gradient pass. The saved x is the tensor as it went
 * in; the per-row statistics are recomputed from it, which costs one cheap pass and keeps nothing
 * but x alive between forward and backward, as the composite does.
 */
function registerGradients(): void {
  tf.registerGradient({
    kernelName: K.rmsNorm,
    inputsToSave: ['x', 'weight'],
    gradFunc: (dy, saved, attrs) => {
      const [x, weight] = saved;
      return {
        x: () => run(K.rmsNormGrad, { dy: dy as tf.Tensor, x, weight }, attrs),
        weight: () => run(K.rmsNormWeightGrad, { dy: dy as tf.Tensor, x }, attrs),
      };
    },
  });
  tf.registerGradient({
    kernelName: K.layerNorm,
    inputsToSave: ['x', 'weight'],
    gradFunc: (dy, saved, attrs) => {
      const [x, weight] = saved;
      return {
        x: () => run(K.layerNormGrad, { dy: dy as tf.Tensor, x, weight }, attrs),
        weight: () => run(K.layerNormWeightGrad, { dy: dy as tf.Tensor, x }, attrs),
        bias: () => tf.sum(dy as tf.Tensor, 0),
      };
    },
  });
  tf.registerGradient({
    kernelName: K.rope,
    // Only the tables: saving x too would copy it (the engine clones what it saves) for gradients
    // the models never take.
    inputsToSave: ['cos', 'sin'],
    gradFunc: (dy, saved) => {
      const [cos, sin] = saved;
      const constantTables = () => {
        throw new Error('the fused RoPE kernel has no gradient for its cos/sin tables; use applyRopeComposite to train them');
      };
      return { x: () => run(K.ropeGrad, { dy: dy as tf.Tensor, cos, sin }), cos: constantTables, sin: constantTables };
    },
  });
}

registerCpuFusedKernels();
registerGradients();
tf.registerGradient({
  kernelName: MASKED_SOFTMAX_KERNELS.forward,
  // The output, not the scores: the gradient needs only the probabilities.
  outputsToSave: [true],
  gradFunc: (dy, saved, attrs) => {
    const [probs] = saved;
    const constantMask = () => {
      throw new Error('the fused attention softmax has no gradient for its mask; use maskedSoftmaxComposite to train one');
    };
    return { scores: () => run(MASKED_SOFTMAX_KERNELS.grad, { probs, dy: dy as tf.Tensor }, attrs), bias: constantMask };
  },
});
tf.registerGradient({
  kernelName: SWIGLU_KERNELS.forward,
  inputsToSave: ['gate', 'up'],
  gradFunc: (dy, saved) => {
    const [gate, up] = saved;
    const wrt = (which: 0 | 1) => () => run(SWIGLU_KERNELS.grad, { gate, up, dy: dy as tf.Tensor }, { wrt: which });
    return { gate: wrt(0), up: wrt(1) };
  },
});
