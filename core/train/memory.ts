/**
 * Memory estimate of a training run before launch: weights, trainable parameters, gradients,
 * optimizer state and activations at the chosen batch and sequence length.
 *
 * Activations are counted from what the tfjs graph of core/models keeps alive for the backward
 * pass (tfjs' tape holds every intermediate of the forward until gradients are taken), per token
 * and per layer, rather than from a rule of thumb. The counts follow llama.ts / gpt2.ts op by op:
 *   RMSNorm  3·C (x², scaled x, weighted)          attention projections: q 7.5·Hq (matmul, head
 *   transpose, RoPE split/neg/concat/2 muls/add), k 7.5·Hkv, v 2·Hkv; scores 4·H·T per token
 *   (matmul, scale, mask, softmax); attended 2·Hq; o_proj + residual 2·C; MLP 5·I + 2·C.
 *   Head: logits, the shifted copy, one-hot labels and the loss internals ≈ 6·V per token.
 * Fused ops keep less (activationFloatsPerToken). Everything is float32. The backward pass roughly
 * triples that: tfjs keeps the forward intermediates on its tape until variableGrads returns,
 * materialises a gradient of the same size for each, and the op gradients (softmax, mul, matmul
 * transposes) add temporaries of similar size (BACKWARD_FACTOR, measured).
 */
import * as os from 'node:os';
import type { ModelConfig } from '../models/config.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import { parameterCount } from '../models/config.ts';
import { FUSED_OPS, fusedOpActive } from '../models/fused-ops.ts';
import { attentionTuning, DEFAULT_BLOCK_SIZE } from '../models/attention.ts';

/** The fused ops on the active backend (none before a backend has started). */
export function activeFusedOps(): FusedActivationOps {
  return Object.fromEntries(FUSED_OPS.map((op) => [op, fusedOpActive(op)]));
}

const FLOAT = 4;
/**
 * Peak bytes of the head and loss on the logits path per float they keep forward: with the fused
 * cross-entropy it keeps far fewer V-wide forward intermediates while the backward pass's
 * temporaries (its V-wide gradient) stay the same size. Fitted with LAYER_FACTOR on seven small
 * shapes (Llama and GPT-2, 128–256 wide, LoRA and full, each fused-op state): estimate / measured
 * 0.985–1.18 (memory.test.ts).
 */
export const BACKWARD_FACTOR = { composite: 2.25, fused: 3.25 } as const;
/**
 * Distinct tensor bytes at a step's peak per float a decoder layer keeps (layerActivationFloatsPerToken
 * plus its adapters'), measured with memory.test-helpers.ts's buffer count and the wasm heap's growth at
 * real widths (SmolLM2-135M and Qwen2.5-0.5B shapes, 2–8 layers, 256–512 tokens): 1.79–1.85 float32
 * per counted float. The peak comes where the backward pass starts, when every layer's saved tensors
 * are alive and the gradients have not begun to free them.
 */
export const LAYER_FACTOR = 1.85;
/** Checkpointed: the one recomputed layer's backward temporaries on top of its saved tensors (measured 0.49). */
export const RECOMPUTE_FACTOR = 0.5;
/**
 * Node, V8, the wasm module, the tokenizer and the allocators' slack: RSS at a step's peak minus the
 * tensors and the native base, measured 400–470 MB with the native scratch (64 MB) on the shapes above.
 */
export const RUNTIME_BASELINE_BYTES = 360 * 1024 ** 2;

export interface MemoryEstimateInput {
  config: ModelConfig;
  batchSize: number;
  seqLen: number;
  trainableParameters: number;
  /** Optimizer state bytes as the method/optimizer computes them exactly (AdamW: 8 per trainable). */
  optimizerStateBytes: number;
  /** True when the trainable parameters are the base weights themselves (full fine-tuning). */
  trainsBaseWeights: boolean;
  /** Extra forward activation floats per token from adapters (adapterActivationFloats). */
  adapterActivationFloatsPerToken?: number;
  /** Ops that run fused where the training happens; default: those fused on the active backend now. */
  fusedOps?: FusedActivationOps;
  /**
   * The base held in native memory (frozen-weight.ts, `frozenBaseBytes`): its bytes there and how many
   * parameters it takes out of the tensors. Absent: every weight is a float32 tensor.
   */
  frozenBase?: { bytes: number; parameters: number; fusedHead: boolean; largestSourceBytes?: number };
  /** Activation checkpointing of every decoder layer (recompute.ts); `checkpointedLayers` for only the first k. */
  checkpointing?: boolean;
  checkpointedLayers?: number;
}

export interface MemoryEstimate {
  /** Weights held as float32 tensors (all of them without a native base; norms and biases with one). */
  weightsBytes: number;
  trainableBytes: number;
  gradientBytes: number;
  optimizerBytes: number;
  activationBytes: number;
  /** Sum of the tensor terms: what tf.memory() should peak at (the wasm heap's share). */
  tensorBytes: number;
  /** The frozen base in native memory, outside the tensors (0 without one). */
  frozenBytes: number;
  /** Native scratch of the frozen products and the fused head while a step runs. */
  nativeScratchBytes: number;
  /** Node, V8, the wasm module and the allocators' slack (RUNTIME_BASELINE_BYTES). */
  runtimeBytes: number;
  /** Where loading peaks above training (a large weight briefly held twice), what it adds; else 0. */
  loadPeakExtraBytes: number;
  /**
   * What the process RSS should peak at: the sum of the parts above (tensors, native base, scratch,
   * runtime and the load's extra), so a breakdown of them adds up to it.
   */
  processBytes: number;
  checkpointing: boolean;
  /** How many decoder layers are recomputed in the backward pass (the first ones). */
  checkpointedLayers: number;
}

/** A float32 weight tile and a logits tile of the fused head (native/frozen.c TILE_BYTES, LOGITS_TILE_BYTES), and a tile of a frozen product. */
const NATIVE_SCRATCH_BYTES = (16 + 32 + 16) * 1024 ** 2;

/**
 * Which ops run fused (core/models/fused-ops.ts) changes what the tape keeps: a fused RMSNorm or
 * LayerNorm keeps only its output (1·C instead of 3·C / 4·C), fused RoPE replaces split, neg,
 * concat, two muls and an add by one output (q 7.5·Hq → 3·Hq, k 7.5·Hkv → 3·Hkv), and the fused
 * cross-entropy keeps the logits and a per-row log-sum-exp (1·V instead of 6·V); fused SwiGLU
 * keeps gate, up and its output (3·I instead of 5·I); the fused attention softmax (Llama) keeps the
 * scores and the probabilities (2·H·T instead of 4·H·T).
 */
export type FusedActivationOps = Partial<Record<'rmsNorm' | 'layerNorm' | 'rope' | 'crossEntropy' | 'swiGlu' | 'maskedSoftmax', boolean>>;

/** Forward activations kept per token by one decoder layer. */
export function layerActivationFloatsPerToken(c: ModelConfig, seqLen: number, fused: FusedActivationOps = {}): number {
  const C = c.hiddenSize;
  const I = c.intermediateSize;
  const Hq = c.numHeads * c.headDim;
  const Hkv = c.numKvHeads * c.headDim;
  // Attention keys seen per query, on average over a causal sequence the tensor is still T wide; in
  // blocks (attention.ts, long sequences) only the per-row max and sum are kept.
  // The fused softmax (softmax-kernels.ts) replaces scale, mask add and softmax by one output.
  const scores = chunkedAttention(seqLen) ? 2 * c.numHeads : (c.family !== 'gpt2' && fused.maskedSoftmax ? 2 : 4) * c.numHeads * seqLen;
  const rmsNorm = fused.rmsNorm ? C : 3 * C;
  const layerNorm = fused.layerNorm ? C : 4 * C;
  const rotated = fused.rope ? 3 : 7.5; // per q/k feature: matmul, head transpose, RoPE
  return c.family === 'gpt2'
    ? 2 * layerNorm + 3 * C /* c_attn */ + 2 * 3 * C /* split + transposes */ + scores + 2 * C + 2 * C + 8 * I /* c_fc, gelu_new's 6 elementwise ops, c_proj in */ + 2 * C
    : 2 * rmsNorm + rotated * Hq + (rotated + 2) * Hkv + scores + 2 * Hq + 2 * C + (fused.swiGlu ? 3 : 5) * I + 2 * C;
}

/** Forward activations kept per token by the head and the loss on the logits path. */
export function headActivationFloatsPerToken(c: ModelConfig, fused: FusedActivationOps = {}): number {
  return (fused.crossEntropy ? 1 : 6) * c.vocabSize + 4 * c.hiddenSize;
}

export function activationFloatsPerToken(c: ModelConfig, seqLen: number, fused: FusedActivationOps = {}): number {
  return c.numLayers * layerActivationFloatsPerToken(c, seqLen, fused) + headActivationFloatsPerToken(c, fused);
}

/** Whether the models attend in blocks at this length (attention.ts's rule). */
function chunkedAttention(seqLen: number): boolean {
  return seqLen * seqLen > attentionTuning.chunkedAboveScores;
}

export function estimateTrainingMemory(input: MemoryEstimateInput): MemoryEstimate {
  const { config, batchSize, seqLen } = input;
  const tokens = batchSize * seqLen;
  const frozen = input.frozenBase;
  const weightsBytes = (parameterCount(config) - (frozen?.parameters ?? 0)) * FLOAT;
  const trainableBytes = input.trainsBaseWeights ? 0 : input.trainableParameters * FLOAT;
  const gradientBytes = input.trainableParameters * FLOAT;
  const optimizerBytes = input.optimizerStateBytes;
  const adapterFloats = input.adapterActivationFloatsPerToken ?? 0;
  const fused = input.fusedOps ?? activeFusedOps();
  // The fused loss removes most of the V-wide forward intermediates while its gradient stays V wide.
  const headFactor = fused.crossEntropy ? BACKWARD_FACTOR.fused : BACKWARD_FACTOR.composite;
  const perLayer = layerActivationFloatsPerToken(config, seqLen, fused) + adapterFloats / config.numLayers;
  // A native fused head keeps the final hidden states and their gradient; otherwise the logits path.
  const head = frozen?.fusedHead ? 2 * config.hiddenSize : headFactor * headActivationFloatsPerToken(config, fused);
  const L = config.numLayers;
  const checkpointedLayers = Math.min(L, input.checkpointedLayers ?? (input.checkpointing ? L : 0));
  // A checkpointed layer keeps only its input, and one at a time is recomputed with its backward;
  // the others keep everything until the backward pass reaches them.
  const kept = checkpointedLayers * config.hiddenSize + LAYER_FACTOR * (L - checkpointedLayers) * perLayer +
    (checkpointedLayers > 0 ? (LAYER_FACTOR + RECOMPUTE_FACTOR) * perLayer : 0);
  // Blocked attention's temporaries: one block pair's scores and probabilities at a time (~6 per element).
  const block = Math.min(seqLen, DEFAULT_BLOCK_SIZE);
  const attentionScratch = chunkedAttention(seqLen) ? 6 * batchSize * config.numHeads * block * block : 0;
  const activationBytes = (tokens * (kept + head) + attentionScratch) * FLOAT;
  const tensorBytes = weightsBytes + trainableBytes + gradientBytes + optimizerBytes + activationBytes;
  const frozenBytes = frozen?.bytes ?? 0;
  const nativeScratchBytes = frozen ? NATIVE_SCRATCH_BYTES : 0;
  // Loading reads each weight whole before the addon copies it: the largest is briefly held twice.
  const training = tensorBytes + frozenBytes + nativeScratchBytes;
  const loadPeakExtraBytes = Math.max(0, frozenBytes + (frozen?.largestSourceBytes ?? 0) - training);
  return {
    weightsBytes,
    trainableBytes,
    gradientBytes,
    optimizerBytes,
    activationBytes,
    tensorBytes,
    frozenBytes,
    nativeScratchBytes,
    runtimeBytes: RUNTIME_BASELINE_BYTES,
    loadPeakExtraBytes,
    processBytes: training + loadPeakExtraBytes + RUNTIME_BASELINE_BYTES,
    checkpointing: checkpointedLayers > 0,
    checkpointedLayers,
  };
}

/** What a run may use: the process's RAM budget and, on the wasm backend, the 4 GB heap the tensors live in. */
export interface MemoryBudget {
  processBytes: number;
  /** null where tensors are not in a wasm heap (cpu, webgpu, tfjs-node). */
  tensorBytes: number | null;
}

/** wasm32 addresses 4 GiB (measured: tfjs-wasm grows to 4.0 GiB); the heap ran 2.5 % above the estimated tensors at real size, and the module and fragmentation take the rest of the margin. */
export const WASM_TENSOR_LIMIT_BYTES = 3.5 * 1024 ** 3;
/** LOWRANK_MEMORY_LIMIT=<GB> caps the process budget (default: 90 % of the machine's RAM). */
export const MEMORY_LIMIT_ENV = 'LOWRANK_MEMORY_LIMIT';

export function memoryBudget(backend: string): MemoryBudget {
  const capGb = Number(process.env[MEMORY_LIMIT_ENV]);
  const ram = 0.9 * os.totalmem();
  return {
    processBytes: Number.isFinite(capGb) && capGb > 0 ? Math.min(ram, capGb * 1024 ** 3) : ram,
    tensorBytes: backend === 'wasm' ? WASM_TENSOR_LIMIT_BYTES : null,
  };
}

/** Why an estimate does not fit the budget, or null when it does. */
export function overBudget(estimate: MemoryEstimate, budget: MemoryBudget): string | null {
  if (budget.tensorBytes !== null && estimate.tensorBytes > budget.tensorBytes) {
    return `its tensors need ${formatBytes(estimate.tensorBytes)}, more than the ${formatBytes(budget.tensorBytes)} the wasm heap can hold`;
  }
  if (estimate.processBytes > budget.processBytes) {
    const source = process.env[MEMORY_LIMIT_ENV] ? `${MEMORY_LIMIT_ENV}=${process.env[MEMORY_LIMIT_ENV]}` : '90 % of the RAM';
    return `it needs ${formatBytes(estimate.processBytes)} of memory, more than the ${formatBytes(budget.processBytes)} available (${source})`;
  }
  return null;
}

/** The process's peak resident memory so far (getrusage maxrss; Linux reports it in KB, as Node passes on). */
export function peakRssBytes(): number {
  return process.resourceUsage().maxRSS * 1024;
}

/**
 * Forward intermediates a LoRA-style adapter adds per token, summed over the wrapped modules:
 * x·Aᵀ [r], its product with (s·B)ᵀ and the sum with the base output [2·out], and the dropped-out
 * input [in] when dropout is on.
 */
export function adapterActivationFloats(model: CausalLM, targets: string[], rank: number, dropout: number): number {
  let floats = 0;
  for (const path of targets) {
    const [rows, cols] = model.weightShape(`${path}.weight`) as [number, number];
    const [out, inFeatures] = model.isTransposedLinear(path) ? [cols, rows] : [rows, cols];
    floats += rank + 2 * out + (dropout > 0 ? inFeatures : 0);
  }
  return floats;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v >= 100 || u === 0 ? 0 : 1)} ${units[u]}`;
}

/** Peak process RSS and tfjs tensor bytes, sampled by the trainer after each step. */
export class PeakMemory {
  rssBytes = 0;
  tensorBytes = 0;
  sample(tfBytes: number): void {
    // The kernel's high-water mark also sees peaks inside a step, between samples.
    this.rssBytes = Math.max(this.rssBytes, peakRssBytes());
    this.tensorBytes = Math.max(this.tensorBytes, tfBytes);
  }
}
