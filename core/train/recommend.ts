/**
 * Starting settings for a new run, from the method and the size of the base model: the wizard's
 * defaults and the figures on its method cards come from here, so a first run on a small model
 * learns instead of sitting at its base loss.
 *
 * Learning rates: LoRA's paper and peft's examples use 1e-4–2e-4 on 7 B+ models; smaller models take
 * larger rates. On the bundled 4 M model the LoRA family learns the review task at 3e-3 on q, k, v, o
 * (docs/methods.md, 86 % at 150 steps) and sits at its base loss at 2e-4 (0 % after 30 steps).
 * Full fine-tuning takes a tenth of the adapters' rate; GaLore, Fira and FRUGAL scale their projected
 * update by α = 0.25, so they take a third; the DCT optimizer has no α and takes full's rate
 * (scripts/methods-report.ts). Methods that train only a few numbers per matrix (VeRA's vectors,
 * SVFit's singular values, NOLA's coefficients) move little at the LoRA rate and take ten times it.
 *
 * Pure: no Node API, so the renderer bundles it beside the contract.
 */
import type { MethodFamily } from '../methods/method.ts';

export interface MethodShape {
  id: string;
  family: MethodFamily;
  defaultTargets?: string[] | 'all-linear';
}

export interface ModelShape {
  parameters: number;
  maxPositions: number;
  targetableModules: string[];
}

export interface RunRecommendation {
  lr: number;
  targets: string[] | 'all-linear';
  /** One line saying where the learning rate comes from. */
  why: string;
}

/** Attention projections (Llama/Mistral/Qwen2 names, then GPT-2's fused c_attn). */
const ATTENTION = ['q_proj', 'k_proj', 'v_proj', 'o_proj'];
const FEW_PARAMETER_METHODS = new Set(['vera', 'svfit', 'nola']);

/** The adapters' learning rate for a base of this many parameters. */
export function adapterLearningRate(parameters: number): number {
  if (parameters <= 50e6) return 3e-3;
  if (parameters <= 500e6) return 1e-3;
  if (parameters <= 3e9) return 4e-4;
  return 2e-4;
}

export function recommendedSettings(method: MethodShape, model: ModelShape): RunRecommendation {
  const base = adapterLearningRate(model.parameters);
  const size = `${(model.parameters / 1e6).toFixed(model.parameters < 1e7 ? 1 : 0)} M-parameter model`;
  let lr = base;
  let why = `adapter rate for a ${size}`;
  if (method.family === 'full' || method.id === 'galore-dct') {
    lr = base / 10;
    why = `a tenth of the adapter rate for a ${size}: every weight trains`;
  } else if (method.family === 'optimizer') {
    lr = base / 3;
    why = `a third of the adapter rate for a ${size}: the projected update is scaled by α = 0.25`;
  } else if (FEW_PARAMETER_METHODS.has(method.id)) {
    lr = base * 10;
    why = `ten times the adapter rate for a ${size}: only a few numbers per matrix train`;
  }
  return { lr: Number(lr.toPrecision(2)), targets: method.defaultTargets ?? defaultAdapterTargets(model.targetableModules), why };
}

/** q, k, v and o where the model has them (the bundled task's report), else every linear layer. */
export function defaultAdapterTargets(targetable: string[]): string[] | 'all-linear' {
  const attention = ATTENTION.filter((t) => targetable.includes(t));
  return attention.length === ATTENTION.length ? attention : 'all-linear';
}

/** The wizard's default budget: steps that take the LoRA run on the bundled task past 70 % accuracy (wizard.e2e). */
export const DEFAULT_RUN_BUDGET = { steps: 150, batchSize: 8, seqLen: 256, evalEvery: 25, checkpointEvery: 50, warmupSteps: 10, metricExamples: 40 } as const;

