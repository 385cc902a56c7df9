/**
 * Activation checkpointing per decoder layer (Chen et al., "Training Deep Nets with Sublinear Memory
 * Cost", arXiv:1604.06174; torch.utils.checkpoint): a layer's forward keeps none of its
 * intermediates, only its input; the backward pass runs the layer again under a tape and takes the
 * gradients from that. Memory for activations falls from every layer's intermediates to one layer's
 * (plus each layer's input), for one more forward pass per step.
 *
 * tfjs has no checkpoint op; tf.customGrad gives one: ops run inside its forward are not taped
 * (the engine's kernel depth is > 0 there), and its gradient function may start a fresh tape
 * (tf.engine().gradients) during the outer backward pass. The layer's trainable tensors are passed
 * as inputs of the custom op so the outer tape routes their gradients through it.
 *
 * The recomputation must see what the forward saw: the same input (saved), the same weights (not yet
 * updated: the optimizer steps after the backward pass) and the same random draws (dropout masks),
 * for which the caller passes the method's random state to rewind.
 */
import * as tf from '../tf.ts';

/** The random state the layer draws from (the attached method's dropout generator), to rewind for the recomputation. */
export interface RandomStateAccess {
  get(): number;
  set(state: number): void;
}

/** What a model needs to checkpoint its layers: which ones, each one's trainable tensors, and the random state to rewind. */
export interface CheckpointPlan {
  /** Whether layer i is recomputed (the first `layers` of checkpointPlan); the others keep their activations. */
  checkpointed(layer: number): boolean;
  layerVariables(layer: number): tf.Variable[];
  random?: RandomStateAccess;
}

/**
 * y = layer(x, constants), x [N, C] -> [N, C], keeping only x (and the constants) for the backward
 * pass. `constants` are the tensors the layer reads that the forward pass creates (RoPE tables, the
 * attention mask): the outer forward disposes those once it ends, so the recomputation gets the
 * saved copies. `variables` must be every trainable tensor the layer reads: their gradients come
 * from the recomputation.
 */
export function recomputed(
  layer: (x: tf.Tensor2D, constants: tf.Tensor[]) => tf.Tensor2D,
  x: tf.Tensor2D,
  constants: tf.Tensor[],
  variables: tf.Variable[],
  random?: RandomStateAccess,
): tf.Tensor2D {
  const stateBefore = random?.get();
  const op = tf.customGrad(((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const input = args[0] as tf.Tensor2D;
    const given = args.slice(1, 1 + constants.length) as tf.Tensor[];
    const value = layer(input, given);
    save([input, ...given]);
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [savedInput, ...savedConstants] = saved as [tf.Tensor2D, ...tf.Tensor[]];
        const stateNow = random?.get();
        if (random && stateBefore !== undefined) random.set(stateBefore);
        // The engine keeps one tape in engine.state.activeTape, and a gradients() call that starts at
        // depth 0 (as this one does, inside the outer backward pass) replaces it and clears it when done:
        // the outer pass still needs it afterwards to release its saved tensors (tfjs 4.22, pinned).
        const state = (tf.engine() as unknown as { state: { activeTape: unknown } }).state;
        const outerTape = state.activeTape;
        try {
          const wrt: tf.Tensor[] = [savedInput, ...variables];
          const { grads } = tf.engine().gradients(() => layer(savedInput, savedConstants), wrt, dy as tf.Tensor2D, true);
          const [dx, ...dVariables] = grads.map((g, i) => g ?? tf.zerosLike(wrt[i]));
          return [dx, ...savedConstants.map((t) => tf.zerosLike(t)), ...dVariables];
        } finally {
          state.activeTape = outerTape;
          if (random && stateNow !== undefined) random.set(stateNow);
        }
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (...inputs: tf.Tensor[]) => tf.Tensor2D;
  return op(x, ...constants, ...variables);
}

/** The decoder layer a weight or adapter tensor belongs to (`model.layers.3.…`, GPT-2's `transformer.h.3.…`), or null. */
export function layerOf(name: string): number | null {
  const match = /(?:^|\.)(?:layers|h)\.(\d+)\./.exec(name);
  return match ? Number(match[1]) : null;
}

/** Trainable tensors that live outside the decoder layers (embeddings, final norm, head): never inside a checkpointed layer. */
const OUTSIDE_LAYERS = /^(model\.embed_tokens|model\.norm|lm_head|transformer\.(wte|wpe|ln_f))\./;

/**
 * The plan that checkpoints the first `layers` decoder layers (all by default: checkpointing only
 * as many as memory requires trades the least recomputation for the memory needed) of a model whose trainable tensors are `trainable` (an attached method's, or full
 * fine-tuning's weights): each tensor goes with the layer its name places it in. A trainable tensor
 * that belongs to no layer and is not one of the model's outer weights could be read inside several
 * layers, and its gradient would be lost: refused.
 */
export function checkpointPlan(trainable: Map<string, tf.Variable>, random?: RandomStateAccess, layers = Infinity): CheckpointPlan {
  const byLayer = new Map<number, tf.Variable[]>();
  for (const [name, variable] of trainable) {
    // State a method keeps beside its trainable tensors (trainable = false) gets no gradient, and does not change within a step.
    if (!variable.trainable) continue;
    const layer = layerOf(name);
    if (layer === null) {
      if (!OUTSIDE_LAYERS.test(name)) {
        throw new Error(`gradient checkpointing: trainable tensor ${name} belongs to no decoder layer; train without checkpointing (--gradient-checkpointing off)`);
      }
      continue;
    }
    const list = byLayer.get(layer) ?? [];
    list.push(variable);
    byLayer.set(layer, list);
  }
  return { checkpointed: (i) => i < layers, layerVariables: (i) => byLayer.get(i) ?? [], random };
}
