/**
 * AdamW (Loshchilov & Hutter, arXiv:1711.05101): Adam with decoupled weight decay, as
 * torch.optim.AdamW computes it:
 *   p ← p·(1 − lr·λ);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
 *   p ← p − lr · (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε)
 * State (m, v) is exposed through getWeights/setWeights so a checkpoint can restore it exactly.
 */
import * as tf from '../tf.ts';
import { ADAMW_KERNEL } from '../backend/adamw-kernels.ts';
import { fusedOpActive } from '../models/fused-ops.ts';
import type { Optimizer, OptimizerState } from './registry.ts';

export interface AdamWOptions {
  beta1?: number;
  beta2?: number;
  epsilon?: number;
  weightDecay?: number;
  /** Parameters that get no weight decay (norms, biases by convention). */
  noDecay?: (name: string) => boolean;
  /** Per-parameter learning-rate multiplier (e.g. LoRA+ gives B a larger rate). */
  lrScale?: (name: string) => number;
}

export class AdamW implements Optimizer {
  readonly beta1: number;
  readonly beta2: number;
  readonly epsilon: number;
  readonly weightDecay: number;
  private readonly params: Map<string, tf.Variable>;
  private readonly noDecay: (name: string) => boolean;
  private readonly lrScale: (name: string) => number;
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();
  private t = 0;

  constructor(params: Map<string, tf.Variable>, opts: AdamWOptions = {}) {
    this.params = params;
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.epsilon = opts.epsilon ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
    this.noDecay = opts.noDecay ?? (() => false);
    this.lrScale = opts.lrScale ?? (() => 1);
    for (const [name, p] of params) {
      // tidy frees the zerosLike handles; the variables (which tidy does not track) keep the data.
      this.m.set(name, tf.tidy(() => tf.variable(tf.zerosLike(p), false)));
      this.v.set(name, tf.tidy(() => tf.variable(tf.zerosLike(p), false)));
    }
  }

  get stepCount(): number {
    return this.t;
  }

  /** Bytes of optimizer state: two float32 moments per trainable element. */
  stateBytes(): number {
    let n = 0;
    for (const p of this.params.values()) n += p.size;
    return 2 * 4 * n;
  }

  step(grads: Map<string, tf.Tensor>, lr: number): void {
    this.t += 1;
    const b1 = this.beta1;
    const b2 = this.beta2;
    const correction1 = 1 - Math.pow(b1, this.t);
    const correction2 = 1 - Math.pow(b2, this.t);
    const fused = fusedOpActive('adamW');
    tf.tidy(() => {
      for (const [name, p] of this.params) {
        const g = grads.get(name);
        if (!g) continue;
        const m = this.m.get(name)!;
        const v = this.v.get(name)!;
        const rate = lr * this.lrScale(name);
        if (fused) {
          // One pass instead of ~15 ops, same float32 arithmetic (core/backend/adamw-kernels.ts).
          const decay = this.weightDecay > 0 && !this.noDecay(name) ? 1 - rate * this.weightDecay : 1;
          const attrs = { beta1: b1, beta2: b2, epsilon: this.epsilon, rate, decay, correction1, correction2 };
          const [p1, m1, v1] = tf.engine().runKernel(ADAMW_KERNEL, { p, g, m, v }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor[];
          m.assign(m1);
          v.assign(v1);
          p.assign(p1);
          continue;
        }
        const m1 = tf.add(tf.mul(m, b1), tf.mul(g, 1 - b1));
        const v1 = tf.add(tf.mul(v, b2), tf.mul(tf.square(g), 1 - b2));
        m.assign(m1);
        v.assign(v1);
        const denom = tf.add(tf.sqrt(tf.div(v1, correction2)), this.epsilon);
        const update = tf.div(tf.div(m1, correction1), denom);
        const decayed = this.weightDecay > 0 && !this.noDecay(name) ? tf.mul(p, 1 - rate * this.weightDecay) : p;
        p.assign(tf.sub(decayed, tf.mul(update, rate)));
      }
    });
  }

  getWeights(): OptimizerState {
    const tensors = new Map<string, tf.Tensor>();
    for (const [name, m] of this.m) tensors.set(`${name}.exp_avg`, m);
    for (const [name, v] of this.v) tensors.set(`${name}.exp_avg_sq`, v);
    return { step: this.t, tensors };
  }

  setWeights(state: OptimizerState): void {
    this.t = state.step;
    for (const [name, m] of this.m) {
      const saved = state.tensors.get(`${name}.exp_avg`);
      if (saved) m.assign(saved);
    }
    for (const [name, v] of this.v) {
      const saved = state.tensors.get(`${name}.exp_avg_sq`);
      if (saved) v.assign(saved);
    }
  }

  dispose(): void {
    for (const t of this.m.values()) t.dispose();
    for (const t of this.v.values()) t.dispose();
  }
}

/** Scales gradients so their global L2 norm is at most maxNorm; returns the norm before clipping. */
export function clipByGlobalNorm(grads: Map<string, tf.Tensor>, maxNorm: number): { grads: Map<string, tf.Tensor>; norm: number } {
  const normTensor = tf.tidy(() => tf.sqrt(tf.addN([...grads.values()].map((g) => tf.sum(tf.square(g))))));
  const norm = normTensor.dataSync()[0];
  normTensor.dispose();
  if (!(maxNorm > 0) || norm <= maxNorm) return { grads, norm };
  const factor = maxNorm / (norm + 1e-6);
  const clipped = new Map<string, tf.Tensor>();
  for (const [name, g] of grads) {
    clipped.set(name, tf.mul(g, factor));
    g.dispose();
  }
  return { grads: clipped, norm };
}
