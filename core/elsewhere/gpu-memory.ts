/**
 * Memory per GPU of a job run elsewhere, from this project's estimator (core/train/memory.ts) with
 * the precisions a PyTorch engine keeps:
 *  - a frozen base (adapters) in bf16, or int8 / NF4 where the run quantizes it (NF4: 4 bits plus a
 *    float32 scale per 64-value block, no double quantization, as here);
 *  - trained tensors in float32 with a float32 gradient each (LLaMA-Factory casts trainable
 *    parameters to float32; a full fine-tune keeps float32 master weights under bf16 autocast);
 *  - optimizer state as this project computes it exactly: AdamW's two moments, GaLore's projected
 *    moments and projectors (optim/galore.ts lowRankStateBytes);
 *  - activations: the estimator's count for this model, batch and sequence length with every layer
 *    checkpointed (both engines' default) and eager PyTorch's ops (below), halved for bf16.
 * Data parallelism keeps everything on every GPU; ZeRO-2 shards gradients and optimizer state;
 * ZeRO-3 and FSDP (FULL_SHARD) shard the weights too. CUDA's own context (~0.5–1 GB) comes on top.
 */
import type { ModelConfig } from '../models/config.ts';
import { expectedWeights, parameterCount, targetableModules } from '../models/config.ts';
import { lowRankStateBytes, type ProjectionType } from '../optim/galore.ts';
import { estimateTrainingMemory } from '../train/memory.ts';
import type { FinetuneConfig } from '../train/finetune.ts';

export const STRATEGIES = ['single', 'ddp', 'zero2', 'zero3', 'fsdp'] as const;
export type Strategy = (typeof STRATEGIES)[number];
export const STRATEGY_NAMES: Record<Strategy, string> = {
  single: 'one GPU',
  ddp: 'data parallel (torchrun)',
  zero2: 'DeepSpeed ZeRO-2',
  zero3: 'DeepSpeed ZeRO-3',
  fsdp: 'FSDP (FULL_SHARD)',
};

export interface GpuMemoryTerms {
  weightsBytes: number;
  trainableBytes: number;
  gradientBytes: number;
  optimizerBytes: number;
  activationBytes: number;
  trainableParameters: number;
}

const NF4_BYTES_PER_PARAM = 0.5 + 4 / 64;

/** The linear weights a target list selects (`q_proj` matches every layer's `...q_proj.weight`). */
function targetWeights(config: ModelConfig, targets: string[] | 'all-linear'): Array<[string, number[]]> {
  const names = targets === 'all-linear' ? targetableModules(config) : targets;
  return [...expectedWeights(config)].filter(([name, shape]) => shape.length === 2 && names.some((t) => name.endsWith(`.${t}.weight`)));
}

export function gpuMemoryTerms(model: ModelConfig, run: FinetuneConfig): GpuMemoryTerms {
  const P = parameterCount(model);
  const p = run.params;
  const adapter = run.method !== 'full' && run.method !== 'galore';
  let trainable = P;
  let optimizerBytes = 8 * P;
  if (adapter) {
    const rank = Number(p.rank);
    trainable = 0;
    for (const [, shape] of targetWeights(model, run.targets)) {
      // [out, in] here; GPT-2's Conv1D [in, out] gives the same r·(in + out).
      trainable += rank * (shape[0] + shape[1]) + (run.method === 'dora' ? (model.family === 'gpt2' ? shape[1] : shape[0]) : 0);
    }
    optimizerBytes = 8 * trainable;
  } else if (run.method === 'galore') {
    const shapes = expectedWeights(model);
    const projected = targetWeights(model, run.targets).map(([name]) => name);
    optimizerBytes = lowRankStateBytes(shapes, { projected, rank: Number(p.rank), projType: String(p.proj_type) as ProjectionType });
  }
  const baseBytesPerParam = run.baseDtype === 'nf4' ? NF4_BYTES_PER_PARAM : run.baseDtype === 'int8' ? 1 : 2;
  const checkpointing = run.gradientCheckpointing !== 'off';
  const activations = estimateTrainingMemory({
    config: model,
    batchSize: run.batchSize,
    seqLen: run.seqLen,
    trainableParameters: trainable,
    optimizerStateBytes: optimizerBytes,
    trainsBaseWeights: !adapter,
    checkpointing,
    // Eager PyTorch keeps every intermediate of its norms, RoPE and SwiGLU (the composite counts),
    // while its cross-entropy keeps the logits and one V-wide softmax, as the fused loss here does.
    fusedOps: { crossEntropy: true },
  }).activationBytes;
  return {
    weightsBytes: adapter ? P * baseBytesPerParam : 4 * P,
    trainableBytes: adapter ? 4 * trainable : 0,
    gradientBytes: 4 * trainable,
    optimizerBytes,
    activationBytes: activations / 2,
    trainableParameters: trainable,
  };
}

/** Bytes on each GPU under a strategy with `gpus` GPUs. */
export function bytesPerGpu(t: GpuMemoryTerms, strategy: Strategy, gpus: number): number {
  const n = strategy === 'single' || strategy === 'ddp' ? 1 : gpus;
  const weightsShard = strategy === 'zero3' || strategy === 'fsdp' ? n : 1;
  return (t.weightsBytes + t.trainableBytes) / weightsShard + (t.gradientBytes + t.optimizerBytes) / n + t.activationBytes;
}
