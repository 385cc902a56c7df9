/**
 * The wizard's cost figures, computed in a job process (they load the model): trainable
 * parameters and the memory estimate of every method on a model, and of one whole run config.
 * Both go through setup.ts's memoryPlan, as the run itself does, at the run's padded sequence
 * length: the figure on a method card is the figure Review shows and the run stores.
 */
import { exactSizing, frozenBaseDtype, memoryPlan, readOnlyLoadOptions } from '../train/setup.ts';
import { loadModel, openCheckpoint, frozenBasePlan } from '../models/load.ts';
import { listMethods, resolveParams, resolveTargets, type Method, type MethodParams } from '../methods/index.ts';
import type { MemoryEstimate } from '../train/memory.ts';
import { loadRunDataset, measureStepSeconds, paddedSeqLen, prepareRun, type FinetuneConfig } from '../train/finetune.ts';
import { recommendedSettings } from '../train/recommend.ts';
import { loadTokenizer } from '../tokenize/tokenizer.ts';
import { parameterCount, targetableModules } from '../models/config.ts';
import { initBackend } from '../backend/index.ts';
import { webgpuBindingLimit } from '../backend/webgpu.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import type { BaseDtype } from '../models/frozen-weight.ts';
import type { FinetuneConfigInput, MethodEstimate, RunEstimate } from '../contract.ts';

const ZERO: MemoryEstimate = {
  weightsBytes: 0, trainableBytes: 0, gradientBytes: 0, optimizerBytes: 0, activationBytes: 0, tensorBytes: 0, frozenBytes: 0, nativeScratchBytes: 0,
  runtimeBytes: 0, loadPeakExtraBytes: 0, processBytes: 0, checkpointing: false, checkpointedLayers: 0,
};

export interface MethodEstimateOptions {
  /** The targets and parameters each method is estimated with (default: the method's defaults and `targets`). */
  targetsFor?: (method: Method) => string[] | 'all-linear';
  paramsFor?: (method: Method) => MethodParams;
  baseDtype?: BaseDtype;
  gradientCheckpointing?: 'auto' | 'on' | 'off';
}

export async function estimateMethods(dir: string, batchSize: number, seqLen: number, targets: string[] | 'all-linear', options: MethodEstimateOptions = {}): Promise<MethodEstimate[]> {
  await initBackend();
  const checkpoint = openCheckpoint(dir);
  const plans = new Map<BaseDtype, ReturnType<typeof frozenBasePlan>>();
  const model = loadModel(dir, readOnlyLoadOptions());
  // Methods that train the base weights (GaLore and the other optimizers) attach to them as tensors, as
  // their runs load them; that copy is loaded only once one of them is estimated to fit.
  let tensorModel: CausalLM | null = null;
  const shape = { batchSize, seqLen, baseDtype: options.baseDtype ?? 'auto', gradientCheckpointing: options.gradientCheckpointing ?? 'auto' } as const;
  try {
    return listMethods().map((method) => {
      try {
        const params = resolveParams(method.id, method.schema, options.paramsFor?.(method) ?? {});
        const resolved = method.family === 'full' ? [] : resolveTargets(model, options.targetsFor?.(method) ?? targets);
        const baseDtype = frozenBaseDtype(method.id, method.family, shape.baseDtype);
        if (baseDtype !== null && !plans.has(baseDtype)) plans.set(baseDtype, frozenBasePlan(checkpoint, baseDtype));
        // Full fine-tuning trains every weight: count them instead of copying the model. Adapters
        // with a slow attach (SVD, random bases) or one that needs data count without attaching.
        const counts = method.family === 'full' || (method.family === 'adapter' && method.countTrainable !== undefined);
        if (method.family === 'optimizer') {
          const everyWeight = parameterCount(model.config);
          memoryPlan(shape, method, model.config, null, resolved, { trainable: everyWeight, optimizerStateBytes: 0, adapterFloats: 0 });
          tensorModel ??= loadModel(dir, { frozenBase: null, maxBindingBytes: webgpuBindingLimit() });
        }
        const on = method.family === 'optimizer' ? tensorModel! : model;
        const attached = counts ? null : method.attach(on, params, { targets: resolved, seed: 0 });
        try {
          const sizing = exactSizing(method, on, params, resolved, attached);
          const { estimate } = memoryPlan(shape, method, model.config, baseDtype === null ? null : plans.get(baseDtype)!, resolved, sizing);
          return { id: method.id, trainableParams: sizing.trainable, estimate, error: null };
        } finally {
          attached?.detach();
        }
      } catch (e) {
        return { id: method.id, trainableParams: 0, estimate: ZERO, error: e instanceof Error ? e.message : String(e) };
      }
    });
  } finally {
    checkpoint.reader.close();
    model.dispose();
    (tensorModel as CausalLM | null)?.dispose();
  }
}

/**
 * Every method's figures for the wizard's draft: the chosen method with the draft's targets and
 * parameters, the others with the targets and parameters the wizard gives them when picked.
 */
export async function estimateMethodsForRun(config: FinetuneConfigInput): Promise<MethodEstimate[]> {
  await initBackend();
  const tokenizer = await loadTokenizer(config.model);
  const dataset = await loadRunDataset(config as FinetuneConfig, tokenizer);
  const modelConfig = openCheckpoint(config.model);
  modelConfig.reader.close();
  const model = { parameters: parameterCount(modelConfig.config), maxPositions: modelConfig.config.maxPositions, targetableModules: targetableModules(modelConfig.config) };
  return estimateMethods(config.model, config.batchSize, paddedSeqLen(config, dataset), config.targets, {
    targetsFor: (m) => (m.id === config.method ? config.targets : recommendedSettings(m, model).targets),
    paramsFor: (m) => (m.id === config.method ? config.params : {}),
    baseDtype: config.baseDtype,
    gradientCheckpointing: config.gradientCheckpointing,
  });
}

export type RunEstimateFigures = Omit<RunEstimate, 'estimatedSeconds' | 'availableBytes' | 'timeBasis'> & {
  /** Real (non-padding) tokens the run trains on: the unit of a stored run's tokens/s. */
  tokens: number;
  parameters: number;
  /** The first training steps of this very configuration, timed (null where a step would take long). */
  stepSeconds: number[] | null;
  evaluations: number;
  validationBatches: number;
};

/** Above this many multiply-adds per step (~6 FLOPs per parameter per token), Review does not time real steps. */
const MEASURE_BELOW_FLOPS = 2e11;

export async function estimateRun(config: FinetuneConfigInput): Promise<RunEstimateFigures> {
  const prepared = await prepareRun(config as FinetuneConfig);
  try {
    const { dataset, totalSteps } = prepared;
    const meanLength = dataset.train.reduce((n, e) => n + e.ids.length, 0) / dataset.train.length;
    const parameters = parameterCount(prepared.model.config);
    const stepTokens = config.batchSize * config.gradientAccumulation * paddedSeqLen(config, dataset);
    const figures = {
      totalSteps,
      trainableParams: prepared.attached.trainableParameterCount(),
      estimate: prepared.estimate,
      trainExamples: dataset.train.length,
      validationExamples: dataset.validation.length,
      tokens: totalSteps * config.batchSize * config.gradientAccumulation * meanLength,
      parameters,
      evaluations: dataset.validation.length ? Math.ceil(totalSteps / config.evalEvery) : 0,
      validationBatches: Math.ceil(Math.min(256, dataset.validation.length) / config.batchSize),
    };
    const stepSeconds = 6 * parameters * stepTokens < MEASURE_BELOW_FLOPS ? await measureStepSeconds(prepared, 3) : null;
    return { ...figures, stepSeconds };
  } finally {
    prepared.attached.detach();
    prepared.model.dispose();
  }
}
