/**
 * Frozen weights outside the wasm heap (DESIGN.md "Memory at real size"). The base weights under an
 * adapter never change, so the loader hands them to the native addon (native/frozen.c), which keeps
 * them in their stored precision or quantized (int8 per output channel, NF4 with block scales: the
 * QLoRA recipe), and the model's linear layers, embedding gather and tied lm_head read them there
 * through the kernels of core/backend/frozen-kernels.ts. The 4 GB wasm heap then holds activations
 * and trainable tensors only.
 *
 * Methods that need W itself (SVD inits, DoRA's norm, merges, exports) read it through
 * CausalLM.weight(), which materialises a frozen weight as a new float32 tensor for the enclosing
 * tf.tidy; a merged export always rereads the original-precision weights from the safetensors files.
 */
import * as tf from '../tf.ts';
import { activeNative, type FrozenHandle, type FrozenKind, type FrozenSourceKind } from '../backend/native/addon.ts';
import { FROZEN_KERNELS, registerFrozenOperand, unregisterFrozenOperand } from '../backend/frozen-kernels.ts';

/** How a model's frozen base is stored: its checkpoint's own precision, or converted/quantized on load. */
export type BaseDtype = 'auto' | 'f32' | 'f16' | 'bf16' | 'int8' | 'nf4';
export const BASE_DTYPES: readonly BaseDtype[] = ['auto', 'f32', 'f16', 'bf16', 'int8', 'nf4'];

let nextId = 1;

export class FrozenWeight {
  readonly id = nextId++;
  readonly shape: readonly [number, number];
  readonly kind: FrozenKind;
  /** Native bytes held (data and scales). */
  readonly bytes: number;
  private handle: FrozenHandle | null;

  private constructor(handle: FrozenHandle, shape: [number, number], kind: FrozenKind, bytes: number) {
    this.handle = handle;
    this.shape = shape;
    this.kind = kind;
    this.bytes = bytes;
    registerFrozenOperand(this.id, { handle, shape });
  }

  /** Copies a [rows, cols] weight (float32 values, or f16/bf16 bits) into native memory as `kind`. */
  static create(source: Float32Array | Uint16Array, sourceKind: FrozenSourceKind, shape: [number, number], kind: FrozenKind): FrozenWeight {
    const native = activeNative();
    if (native == null) throw new Error('internal: frozen weights need the native addon (frozenWeightsAvailable() says whether it is there)');
    const handle = native.frozenCreate(source, sourceKind, shape[0], shape[1], kind);
    const [, , bytes] = native.frozenInfo(handle);
    return new FrozenWeight(handle, shape, kind, bytes);
  }

  get disposed(): boolean {
    return this.handle == null;
  }

  /** Rows [first, first+count) as float32 (dequantised). */
  readRows(first: number, count: number): Float32Array {
    const out = new Float32Array(count * this.shape[1]);
    activeNative()!.frozenRows(this.live(), first, count, out);
    return out;
  }

  /** The whole weight as a new float32 tensor [rows, cols] (dequantised); the caller owns it. */
  toTensor(): tf.Tensor2D {
    return tf.tensor2d(this.readRows(0, this.shape[0]), [this.shape[0], this.shape[1]]);
  }

  dispose(): void {
    if (this.handle == null) return;
    unregisterFrozenOperand(this.id);
    activeNative()?.frozenFree(this.handle);
    this.handle = null;
  }

  private live(): FrozenHandle {
    if (this.handle == null) throw new Error('internal: frozen weight used after dispose');
    return this.handle;
  }
}

/** Whether weights can be frozen natively here: the addon is loaded and the wasm backend (with its frozen kernels) is active. */
export function frozenWeightsAvailable(): boolean {
  return activeNative() != null && tf.getBackend() === 'wasm' && tf.getKernel(FROZEN_KERNELS.linear, 'wasm') != null;
}

const run = <T extends tf.Tensor | tf.Tensor[]>(name: string, inputs: tf.NamedTensorMap, attrs: tf.NamedAttrMap): T =>
  tf.engine().runKernel(name, inputs, attrs) as unknown as T;

/**
 * x [N, in] through a frozen linear layer: x·Wᵀ for W stored [out, in], x·W for a weight stored
 * [in, out] (`transposed`, GPT-2's Conv1D). The gradient is the input's only (dy·W or dy·Wᵀ): there is
 * no dW, and nothing is saved for the backward pass.
 */
export function frozenLinear(x: tf.Tensor2D, w: FrozenWeight, transposed = false): tf.Tensor2D {
  return run<tf.Tensor2D>(FROZEN_KERNELS.linear, { x }, { weight: w.id, mode: transposed ? 1 : 0 });
}

/** Rows of a frozen embedding [V, C] for ids [N] → [N, C]; no gradient. */
export function frozenGather(ids: tf.Tensor1D, w: FrozenWeight): tf.Tensor2D {
  return run<tf.Tensor2D>(FROZEN_KERNELS.gather, { ids }, { weight: w.id });
}

/**
 * Σᵢ wᵢ·(logsumexp(hᵢ·Wᵀ) − hᵢ·W[tᵢ]) for a frozen head W [V, C], in vocabulary tiles natively: the
 * [N, V] logits never exist. The backward recomputes each tile's logits (native/frozen.c). Rows with
 * wᵢ = 0 cost nothing.
 */
export function frozenLinearCrossEntropy(h: tf.Tensor2D, w: FrozenWeight, targets: tf.Tensor1D, weights: tf.Tensor1D): tf.Scalar {
  // Under a gradient tape the forward pass also computes dh for dy = 1 (two products over W in all,
  // as the unfused path takes; native/frozen.c says how), and the backward pass scales it by dy.
  const withGrad = gradientTapeActive();
  const op = tf.customGrad(((hIn: tf.Tensor2D, t: tf.Tensor1D, wt: tf.Tensor1D, save: tf.GradSaveFunc) => {
    const [loss, lse, dh] = run<tf.Tensor[]>(FROZEN_KERNELS.linearCrossEntropy, { h: hIn, targets: t, weights: wt }, { weight: w.id, withGrad });
    save([hIn, t, wt, lse, dh]);
    return {
      value: loss,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [hs, ts, ws, l, dhForOne] = saved;
        const dh = dhForOne.shape[0] > 0
          ? tf.mul(dhForOne, dy)
          : run<tf.Tensor>(FROZEN_KERNELS.linearCrossEntropyGrad, { h: hs, targets: ts, weights: ws, lse: l, dy }, { weight: w.id });
        return [dh, tf.zerosLike(ts), tf.zerosLike(ws)];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (h: tf.Tensor2D, t: tf.Tensor1D, w: tf.Tensor1D) => tf.Scalar;
  return op(h, targets, weights);
}

/** Whether ops run now are being recorded for a gradient (inside tf.grads / variableGrads). */
function gradientTapeActive(): boolean {
  return (tf.engine() as unknown as { state: { gradientDepth: number } }).state.gradientDepth > 0;
}

tf.registerGradient({
  kernelName: FROZEN_KERNELS.linear,
  inputsToSave: [],
  gradFunc: (dy, _saved, attrs) => ({
    x: () => run<tf.Tensor>(FROZEN_KERNELS.linear, { x: dy as tf.Tensor }, { weight: attrs.weight, mode: 1 - (attrs.mode as number) }),
  }),
});
