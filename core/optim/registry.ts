/**
 * The optimizer interface the trainer, fine-tuning, pre-training and checkpoints use, and the
 * registry of optimizers by id (tfjs `optimizers/` shape: step, state for resume, dispose).
 *
 * - `adamw`: AdamW over every parameter (core/optim/adamw.ts).
 * - `galore`: GaLore on the projected 2-D weights, AdamW on the rest (core/optim/galore.ts).
 * - `fira`: GaLore + Fira's norm-scaled residual and norm-growth limiter (core/optim/fira.ts).
 * - `frugal`: AdamW in GaLore's SVD subspace + state-free signSGD/SGD on the residual (core/optim/frugal.ts).
 * - `galore-dct`: low-rank AdamW in a subspace of selected DCT columns, no SVD (core/optim/galore-dct.ts).
 *
 * A method that trains with its own optimizer (the `optimizer` family) builds it through
 * `AttachedMethod.createOptimizer`; every other method trains with AdamW (`optimizerFor`).
 */
import type * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import type { AttachedMethod } from '../methods/method.ts';
import { AdamW, type AdamWOptions } from './adamw.ts';
import { GaLore, type LowRankOptions } from './galore.ts';
import { Fira, type FiraOptions } from './fira.ts';
import { Frugal, type FrugalOptions } from './frugal.ts';
import { DctAdamW } from './galore-dct.ts';

/** Optimizer state as checkpoints store it: the step count and named tensors. */
export interface OptimizerState {
  step: number;
  tensors: Map<string, tf.Tensor>;
}

export interface Optimizer {
  /** Completed steps. */
  readonly stepCount: number;
  /** One update of every parameter that has a gradient in `grads`, at learning rate `lr`. */
  step(grads: Map<string, tf.Tensor>, lr: number): void;
  /** Exact bytes of optimizer state (moments, projectors, scalars), all float32. */
  stateBytes(): number;
  /** The state to checkpoint; the tensors are the optimizer's own (do not dispose them). */
  getWeights(): OptimizerState;
  /** Restores a saved state exactly (a resumed run then continues bit for bit). */
  setWeights(state: OptimizerState): void;
  dispose(): void;
}

/** What any optimizer accepts: AdamW's settings, plus the low-rank settings where they apply. */
export interface OptimizerOptions extends AdamWOptions {
  lowRank?: LowRankOptions;
  fira?: FiraOptions;
  frugal?: FrugalOptions;
}

type OptimizerFactory = (params: Map<string, tf.Variable>, options: OptimizerOptions) => Optimizer;

function requireLowRank(id: string, options: OptimizerOptions): LowRankOptions {
  if (!options.lowRank) throw new LowrankError('BAD_ARGUMENT', `optimizer ${id} needs its low-rank settings (rank, update_proj_gap, scale, proj_type)`);
  return options.lowRank;
}

const OPTIMIZERS = new Map<string, OptimizerFactory>([
  ['adamw', (params, options) => new AdamW(params, options)],
  ['galore', (params, options) => new GaLore(params, requireLowRank('galore', options), options)],
  ['fira', (params, options) => new Fira(params, requireLowRank('fira', options), options.fira ?? {}, options)],
  ['frugal', (params, options) => new Frugal(params, requireLowRank('frugal', options), options.frugal ?? {}, options)],
  ['galore-dct', (params, options) => new DctAdamW(params, requireLowRank('galore-dct', options), options)],
]);

export function optimizerIds(): string[] {
  return [...OPTIMIZERS.keys()];
}

export function createOptimizer(id: string, params: Map<string, tf.Variable>, options: OptimizerOptions = {}): Optimizer {
  const factory = OPTIMIZERS.get(id);
  if (!factory) throw new LowrankError('BAD_ARGUMENT', `unknown optimizer "${id}"; known optimizers: ${optimizerIds().join(', ')}`);
  return factory(params, options);
}

/** The optimizer a method trains with: its own where it has one, else AdamW over its trainable tensors. */
export function optimizerFor(attached: Pick<AttachedMethod, 'trainable' | 'createOptimizer'>, options: AdamWOptions = {}): Optimizer {
  return attached.createOptimizer ? attached.createOptimizer(options) : createOptimizer('adamw', attached.trainable, options);
}

/** Exact optimizer-state bytes of training a method: its own count, else AdamW's two float32 moments per trainable element. */
export function optimizerStateBytesFor(attached: Pick<AttachedMethod, 'trainableParameterCount' | 'optimizerStateBytes'>): number {
  return attached.optimizerStateBytes ? attached.optimizerStateBytes() : 2 * 4 * attached.trainableParameterCount();
}
