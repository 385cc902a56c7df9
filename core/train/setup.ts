/**
 * From a model folder and a method to a model ready to train, with the memory decisions made on the
 * way and said out loud:
 *  1. where the base lives: in native memory (frozen-weight.ts) when the method leaves it frozen and
 *     the addon is there, in its stored precision or as `baseDtype`; as float32 tensors otherwise;
 *  2. whether to checkpoint activations: 'on', 'off', or 'auto' = only when the run does not fit without;
 *  3. whether it fits at all: a run that cannot is refused before its weights are read (from config.json
 *     and the safetensors headers alone, so in seconds), with the figure and what would make it fit,
 *     and again after the method is attached, with the exact trainable count.
 * The trainer (finetune.ts) and the benchmark's training child (cli/bench-train.ts) both start here.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { frozenBasePlan, loadModel, openCheckpoint, type LoadOptions } from '../models/load.ts';
import { buildModel } from '../models/load.ts';
import { parameterCount } from '../models/config.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import { frozenWeightsAvailable, type BaseDtype } from '../models/frozen-weight.ts';
import { checkpointPlan } from '../models/recompute.ts';
import { getMethod, resolveParams, resolveTargets, type AttachedMethod, type MethodParams } from '../methods/index.ts';
import { loraTrainableCount } from '../methods/lora.ts';
import type { BaseGradientSource, Method } from '../methods/method.ts';
import { optimizerStateBytesFor } from '../optim/registry.ts';
import { webgpuBindingLimit } from '../backend/webgpu.ts';
import {
  adapterActivationFloats,
  estimateTrainingMemory,
  formatBytes,
  memoryBudget,
  overBudget,
  type MemoryBudget,
  type MemoryEstimate,
  type MemoryEstimateInput,
} from './memory.ts';

export type CheckpointingChoice = 'auto' | 'on' | 'off';

export interface TrainingSetupInput {
  modelDir: string;
  methodId: string;
  params: MethodParams;
  targets: string[] | 'all-linear';
  batchSize: number;
  seqLen: number;
  seed: number;
  baseDtype: BaseDtype;
  gradientCheckpointing: CheckpointingChoice;
  /** Saved trainable values to start from (a PEFT adapter). */
  initial?: Map<string, Float32Array>;
  /** For methods initialised from base-weight gradients (LoRA-SB). */
  baseGradients?: (model: CausalLM) => BaseGradientSource;
}

export interface TrainingSetup {
  model: CausalLM;
  attached: AttachedMethod;
  params: MethodParams;
  targets: string[];
  estimate: MemoryEstimate;
  checkpointing: boolean;
  /** Decoder layers recomputed in the backward pass: 'auto' checkpoints only as many as memory needs. */
  checkpointedLayers: number;
  /** How the base is stored natively, or null when its weights are tensors. */
  baseDtype: BaseDtype | null;
}

/**
 * Where the base weights live: in native memory when the method leaves them frozen (adapters) and
 * the addon is there; as tensors otherwise. A quantized base without that is refused.
 */
export function frozenBaseDtype(methodId: string, family: Method['family'], dtype: BaseDtype): BaseDtype | null {
  if (family === 'adapter' && frozenWeightsAvailable()) return dtype;
  if (dtype !== 'auto') {
    const why = family !== 'adapter'
      ? `method ${methodId} trains the base weights, so they cannot be stored as ${dtype}`
      : `a ${dtype} base needs the native kernels (build them with \`node scripts/build-native.js\`; \`lowrank info\` says why they are missing) on the wasm backend`;
    throw new LowrankError('BAD_ARGUMENT', `--base-dtype ${dtype}: ${why}; use --base-dtype auto`);
  }
  return null;
}

/** What the estimate needs to know of a method on a model. */
export interface Sizing {
  trainable: number;
  optimizerStateBytes: number;
  adapterFloats: number;
}

/** The input of memoryPlan: a run's shape and memory choices. */
export type MemoryPlanInput = Pick<TrainingSetupInput, 'batchSize' | 'seqLen' | 'gradientCheckpointing' | 'baseDtype'>;

/**
 * THE memory estimate of a run (the wizard's method cards, Review, the refusal before a run and the
 * figure stored with it all come from here): how many layers to checkpoint and the estimate at that,
 * or a DOES_NOT_FIT error with what would fit.
 */
export function memoryPlan(
  input: MemoryPlanInput,
  method: Method,
  config: CausalLM['config'],
  frozenPlan: { bytes: number; parameters: number; largestSourceBytes?: number } | null,
  targets: string[],
  sizing: Sizing,
): { estimate: MemoryEstimate; checkpointedLayers: number } {
  const headAdapted = targets.includes('lm_head');
  const estimateWith = (checkpointedLayers: number, batchSize = input.batchSize, seqLen = input.seqLen): MemoryEstimate =>
    estimateTrainingMemory(estimateInput(method, config, sizing, checkpointedLayers, frozenPlan, headAdapted, batchSize, seqLen));
  const checkpointedLayers = refuseIfNoneFits(input, config.numLayers, memoryBudget(tf.getBackend()), estimateWith, frozenPlan !== null);
  return { estimate: estimateWith(checkpointedLayers), checkpointedLayers };
}

/** The exact sizing of an attached method, or of a method's own count without attaching (attached = null; adapters only). */
export function exactSizing(method: Method, model: CausalLM, params: MethodParams, targets: string[], attached: AttachedMethod | null): Sizing {
  const trainable = attached ? attached.trainableParameterCount() : method.family === 'full' ? parameterCount(model.config) : method.countTrainable!(model, params, targets);
  return {
    trainable,
    // Adapters and full fine-tuning train with AdamW: two moments per trainable value.
    optimizerStateBytes: attached ? optimizerStateBytesFor(attached) : 8 * trainable,
    adapterFloats: method.family === 'adapter' ? adapterActivationFloats(model, targets, Number(params.rank ?? 0), Number(params.dropout ?? 0)) : 0,
  };
}

/**
 * How to load a model that is only read (generation, logits, evaluation, estimates): its weights
 * frozen in native memory in their stored precision where the addon is there, and sharded where a
 * GPU's binding limit asks for it.
 */
export function readOnlyLoadOptions(): LoadOptions {
  return { frozenBase: frozenWeightsAvailable() ? { dtype: 'auto' } : null, maxBindingBytes: webgpuBindingLimit() };
}

export async function setUpTraining(input: TrainingSetupInput): Promise<TrainingSetup> {
  const method = getMethod(input.methodId);
  const params = resolveParams(method.id, method.schema, input.params);
  const baseDtype = frozenBaseDtype(method.id, method.family, input.baseDtype);
  const checkpoint = openCheckpoint(input.modelDir);
  const frozenPlan = baseDtype === null ? null : frozenBasePlan(checkpoint, baseDtype);
  checkpoint.reader.close();
  const config = checkpoint.config;

  // 1. Before reading any weight: a model without weights answers shapes from config.json.
  const skeleton = buildModel(config, new Map());
  const targets = method.family === 'full' ? [] : resolveTargets(skeleton, input.targets);
  memoryPlan(input, method, config, frozenPlan, targets, roughSizing(method, skeleton, params, targets));

  // 2. The model and the method, then the exact figures.
  const model = loadModel(input.modelDir, { frozenBase: baseDtype === null ? null : { dtype: baseDtype }, maxBindingBytes: webgpuBindingLimit() });
  let attached: AttachedMethod | null = null;
  try {
    attached = method.attach(model, params, { targets, seed: input.seed, initial: input.initial, baseGradients: input.baseGradients?.(model) });
    const { estimate, checkpointedLayers } = memoryPlan(input, method, config, frozenPlan, targets, exactSizing(method, model, params, targets, attached));
    if (checkpointedLayers > 0) {
      const random = attached.getRandomState && attached.setRandomState
        ? { get: attached.getRandomState.bind(attached), set: attached.setRandomState.bind(attached) }
        : undefined;
      model.checkpointing = checkpointPlan(attached.trainable, random, checkpointedLayers);
    }
    return { model, attached, params, targets, estimate, checkpointing: checkpointedLayers > 0, checkpointedLayers, baseDtype };
  } catch (e) {
    attached?.detach();
    model.dispose();
    throw e;
  }
}

function estimateInput(
  method: Method,
  config: CausalLM['config'],
  sizing: Sizing,
  checkpointedLayers: number,
  frozenPlan: { bytes: number; parameters: number } | null,
  headAdapted: boolean,
  batchSize: number,
  seqLen: number,
): MemoryEstimateInput {
  return {
    config,
    batchSize,
    seqLen,
    trainableParameters: sizing.trainable,
    optimizerStateBytes: sizing.optimizerStateBytes,
    trainsBaseWeights: method.family !== 'adapter',
    adapterActivationFloatsPerToken: sizing.adapterFloats,
    frozenBase: frozenPlan ? { ...frozenPlan, fusedHead: !headAdapted } : undefined,
    checkpointedLayers,
  };
}

/** Trainable count and state before attaching: the method's own count, LoRA's r·(in + out) otherwise, every weight for the others. */
function roughSizing(method: Method, skeleton: CausalLM, params: MethodParams, targets: string[]): Sizing {
  if (method.family !== 'adapter') {
    // A lower bound for the refusal before loading: AdamW's two moments for full fine-tuning; the
    // low-memory optimizers' exact state comes after attaching.
    const n = parameterCount(skeleton.config);
    return { trainable: n, optimizerStateBytes: method.family === 'full' ? 8 * n : 0, adapterFloats: 0 };
  }
  const trainable = method.countTrainable?.(skeleton, params, targets) ?? loraTrainableCount(skeleton, { rank: Number(params.rank ?? 8) }, targets);
  const adapterFloats = adapterActivationFloats(skeleton, targets, Number(params.rank ?? 0), Number(params.dropout ?? 0));
  return { trainable, optimizerStateBytes: 8 * trainable, adapterFloats };
}

/**
 * How many layers to checkpoint: all ('on'), none ('off'), or for 'auto' the fewest that fit, since
 * each one costs a recomputed forward pass. Refuses with the figure and what would fit when even the
 * most checkpointing allowed does not.
 */
function refuseIfNoneFits(
  input: MemoryPlanInput,
  layers: number,
  budget: MemoryBudget,
  estimate: (checkpointedLayers: number, batchSize?: number, seqLen?: number) => MemoryEstimate,
  nativeBase: boolean,
): number {
  const choice = input.gradientCheckpointing;
  const most = choice === 'off' ? 0 : layers;
  if (choice === 'auto') {
    for (let k = 0; k <= layers; k++) if (overBudget(estimate(k), budget) === null) return k;
  } else if (overBudget(estimate(most), budget) === null) {
    return most;
  }
  const why = overBudget(estimate(most), budget)!;
  const fixes: string[] = [];
  if (most < layers) fixes.push('--gradient-checkpointing on');
  for (let b = input.batchSize >> 1; b >= 1; b >>= 1) {
    if (overBudget(estimate(layers, b), budget) === null) {
      fixes.push(`--batch-size ${b}${most < layers ? ' with checkpointing' : ''}`);
      break;
    }
  }
  for (let s = input.seqLen >> 1; s >= 16; s >>= 1) {
    if (overBudget(estimate(layers, input.batchSize, s), budget) === null) {
      fixes.push(`--seq-len ${s}`);
      break;
    }
  }
  if (nativeBase && input.baseDtype !== 'nf4') fixes.push('--base-dtype nf4 (a 4-bit base, as QLoRA)');
  if (!nativeBase) fixes.push('a method that keeps the base frozen (lora) with the native kernels built');
  throw new LowrankError(
    'DOES_NOT_FIT',
    `this run does not fit: ${why} (estimate: ${describe(estimate(most))}); ${fixes.length ? `try ${fixes.join(', or ')}` : 'use a smaller model'}`,
  );
}

function describe(e: MemoryEstimate): string {
  const parts = [`activations ${formatBytes(e.activationBytes)}`, `weights ${formatBytes(e.weightsBytes + e.frozenBytes)}`];
  if (e.optimizerBytes + e.gradientBytes > 0) parts.push(`gradients and optimizer state ${formatBytes(e.optimizerBytes + e.gradientBytes)}`);
  return parts.join(', ');
}
