/**
 * The wizard's cost figures, computed in a job process (they load the model): trainable
 * parameters and the memory estimate of every method on a model, and of one whole run config.
 */
import { readOnlyLoadOptions } from '../train/setup.ts';
import { loadModel } from '../models/load.ts';
import { parameterCount } from '../models/config.ts';
import { listMethods, resolveParams, resolveTargets } from '../methods/index.ts';
import { optimizerStateBytesFor } from '../optim/registry.ts';
import { adapterActivationFloats, estimateTrainingMemory, type MemoryEstimate } from '../train/memory.ts';
import { prepareRun, type FinetuneConfig } from '../train/finetune.ts';
import { initBackend } from '../backend/index.ts';
import type { FinetuneConfigInput, MethodEstimate, RunEstimate } from '../contract.ts';

const ZERO: MemoryEstimate = {
  weightsBytes: 0, trainableBytes: 0, gradientBytes: 0, optimizerBytes: 0, activationBytes: 0, tensorBytes: 0, frozenBytes: 0, nativeScratchBytes: 0,
  processBytes: 0, checkpointing: false, checkpointedLayers: 0,
};

export async function estimateMethods(dir: string, batchSize: number, seqLen: number, targets: string[] | 'all-linear'): Promise<MethodEstimate[]> {
  await initBackend();
  const model = loadModel(dir, readOnlyLoadOptions());
  try {
    return listMethods().map((method) => {
      try {
        const params = resolveParams(method.id, method.schema, {});
        const resolved = method.family === 'full' ? [] : resolveTargets(model, targets);
        // Full fine-tuning trains every weight: count them instead of copying the model. Methods
        // with a slow attach (SVD, random bases) or one that needs data count without attaching;
        // adapters train with AdamW, two moments per trainable value.
        const counted = method.family === 'adapter' ? method.countTrainable?.(model, params, resolved) : undefined;
        const attached = method.family === 'full' || counted != null ? null : method.attach(model, params, { targets: resolved, seed: 0 });
        try {
          const trainable = counted ?? (attached ? attached.trainableParameterCount() : parameterCount(model.config));
          const optimizerStateBytes = attached ? optimizerStateBytesFor(attached) : 2 * 4 * trainable;
          const estimate = estimateTrainingMemory({
            config: model.config,
            batchSize,
            seqLen,
            trainableParameters: trainable,
            optimizerStateBytes,
            trainsBaseWeights: method.family !== 'adapter',
            adapterActivationFloatsPerToken: method.family === 'adapter' ? adapterActivationFloats(model, resolved, Number(params.rank ?? 0), Number(params.dropout ?? 0)) : 0,
          });
          return { id: method.id, trainableParams: trainable, estimate, error: null };
        } finally {
          attached?.detach();
        }
      } catch (e) {
        return { id: method.id, trainableParams: 0, estimate: ZERO, error: e instanceof Error ? e.message : String(e) };
      }
    });
  } finally {
    model.dispose();
  }
}

export type RunEstimateFigures = Omit<RunEstimate, 'estimatedSeconds' | 'availableBytes'> & { tokens: number; parameters: number };

export async function estimateRun(config: FinetuneConfigInput): Promise<RunEstimateFigures> {
  const prepared = await prepareRun(config as FinetuneConfig);
  try {
    return {
      totalSteps: prepared.totalSteps,
      trainableParams: prepared.attached.trainableParameterCount(),
      estimate: prepared.estimate,
      trainExamples: prepared.dataset.train.length,
      validationExamples: prepared.dataset.validation.length,
      tokens: prepared.totalSteps * config.batchSize * config.gradientAccumulation * config.seqLen,
      parameters: parameterCount(prepared.model.config),
    };
  } finally {
    prepared.attached.detach();
    prepared.model.dispose();
  }
}
