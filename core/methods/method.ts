/**
 * The method interface (peft's `tuners/<method>/` + `register_peft_method`, CONVENTIONS.md §3):
 * a method declares who it is and its hyper-parameters (the wizard's form is generated from the
 * schema), attaches to a loaded model, and then says what is trainable, how the update merges
 * into the base weights and how it exports. LoRA variants are small strategy objects, not copies.
 */
import type * as tf from '../tf.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import type { AdamWOptions } from '../optim/adamw.ts';
import type { Optimizer } from '../optim/registry.ts';

export type MethodFamily = 'full' | 'adapter' | 'optimizer';
export type ExportFormat = 'peft' | 'merged' | 'gguf';

/** One hyper-parameter; `default` is the paper's (ALGORITHMS.md). */
export type SchemaField =
  | { name: string; type: 'number'; default: number; min?: number; max?: number; description: string }
  | { name: string; type: 'integer'; default: number; min?: number; max?: number; description: string }
  | { name: string; type: 'boolean'; default: boolean; description: string }
  | { name: string; type: 'enum'; default: string; choices: string[]; description: string }
  | { name: string; type: 'string'; default: string; description: string };

/** A learning rate read from a paper or its official code. */
export interface PaperLearningRate {
  value: number;
  /** Where it is from: the script, table or file, e.g. `NVlabs/DoRA commonsense_reasoning/llama2_7B_DoRA.sh`. */
  source: string;
}

export interface MethodInfo {
  /** Registry id, e.g. `lora` (METHODS.md, left column). */
  id: string;
  family: MethodFamily;
  paper: { title: string; year: number; url?: string };
  /** One line for the method card. */
  summary: string;
  /**
   * The learning rate the paper or its official code trains this method with, and where exactly it
   * comes from (script or table): shown on the method card, the sweep centre of `npm run
   * methods-report` and each method's rate in the app's method comparison. Absent where no source
   * pins one (the card says so); those take the run's --lr.
   */
  paperLearningRate?: PaperLearningRate;
  /**
   * Prefix of the trainable tensor names this method owns (`lora_`), checked for clashes by the
   * registry. Empty for methods that train the base weights themselves (`full`, optimizers).
   */
  parameterPrefix: string;
  /**
   * Id of the method this one is a variant of (`dora` -> `lora`). Variants share their base's
   * parameter prefix and PEFT type, as peft's LoraVariant strategies share `lora_`.
   */
  variantOf?: string;
  /**
   * Schema fields that change only how the trained tensors are evaluated, merged and exported
   * (DyLoRA's export_rank), so an export may override them without retraining.
   */
  exportParams?: string[];
  schema: SchemaField[];
  /**
   * The modules `--target` selects when none are given, where the paper's default differs from
   * the adapters' `q_proj, v_proj` (GaLore projects every attention and MLP linear: `all-linear`).
   */
  defaultTargets?: string[] | 'all-linear';
  mergeable: boolean;
  exportFormats: ExportFormat[];
  /**
   * Formats of `exportFormats` (and PEFT) that a run's parameters rule out, each with the reason in
   * words (LOST with SiLU between its factors has no merged form); absent: exportFormats alone decides.
   */
  unavailableExports?(params: MethodParams): Partial<Record<ExportFormat, string>>;
}

export type MethodParams = Record<string, number | boolean | string>;

/** Where a training hook is called: `step` is 0-based, `lr` the step's scheduled learning rate. */
export interface TrainingStep {
  step: number;
  totalSteps: number;
  lr: number;
}

export interface AttachContext {
  /** Full module paths to wrap (already resolved from --target), e.g. `model.layers.0.self_attn.q_proj`. */
  targets: string[];
  seed: number;
  /**
   * Starting values for the method's tensors, to continue training a saved adapter: keyed as
   * `peftAdapter().tensors` names them (the `base_model.model.` prefix is optional), row-major
   * float32 in the exported shapes. Missing keys or wrong sizes are errors.
   */
  initial?: Map<string, Float32Array>;
  /**
   * Gradients of the run's training loss on its first samples, with respect to frozen base weights,
   * for methods initialised from an estimated first full-fine-tuning step (LoRA-SB). Given by
   * fine-tuning runs (core/train/finetune.ts); absent elsewhere, where such a method refuses to attach.
   */
  baseGradients?: BaseGradientSource;
}

/**
 * The batch a training penalty is taken on (the one the loss just saw), for penalties that need
 * the inputs: PELA distils the teacher's block outputs on the same tokens. Row-major [B, T].
 */
export interface PenaltyBatch {
  ids: Int32Array;
  /** 1 for real tokens, 0 for padding; omitted when there is no padding. */
  attentionMask?: Int32Array;
  batchSize: number;
  seqLen: number;
}

/** What a fine-tuning run offers a method at attach time about its first optimizer step. */
export interface BaseGradientSource {
  /**
   * G = Σ_b ∇_W (loss_b / n_b) for each named base weight (as stored, row-major), over the first
   * `samples` training examples in the order training sees them, in batches of `batchSize` (the last
   * may be smaller); loss_b is batch b's mean token loss and n_b its example count (lora-sb
   * utils/gradient_utils.py `estimate_and_process_grads_torch_3`). Taken on the model as it is when
   * called, so call it before wrapping any module.
   */
  gradients(weightNames: string[], samples: number, batchSize: number): Map<string, Float32Array>;
  /**
   * The run's figures LoRA-SB's official step size η_eff = lr / (warmup_ratio · T_est) is computed
   * from (lora-sb train_*.py): T_est = ⌈trainExamples / eg_bs⌉ · epochs, the length of the gradient
   * estimate's loader times the epochs. `epochs` may be fractional (a run set by steps).
   */
  schedule: { lr: number; warmupRatio: number; trainExamples: number; epochs: number };
}

/**
 * Methods that choose the data of each step: FedSVD's simulated clients (client k owns shard k),
 * DiffoRA's held-out half for its module-selection steps. The fine-tuning run splits its training
 * examples into `count` contiguous, near-equal shards in file order and asks, for each step, which
 * shard it trains on and how many steps that shard trained before it (its own batch cursor; each
 * shard has its own seeded epoch order), or null: the whole training set, in the run's usual order.
 */
export interface DataShards {
  readonly count: number;
  /** The shards' example counts and the run's length, once, before the first step (FedAvg weighs clients by the counts). */
  setSizes(sizes: number[], totalSteps: number): void;
  shardAt(step: number): { shard: number; cursor: number } | null;
}

/**
 * DP-SGD (Abadi et al., arXiv:1607.00133, Alg. 1; Opacus): every example's gradient, L2 over all
 * trainable tensors, is scaled to at most `clipNorm`; the clipped gradients are summed, Gaussian
 * noise N(0, (noiseMultiplier·clipNorm)²) is added per element, and the sum is divided by the
 * step's example count. No global clipping follows (Opacus clips per example only).
 */
export interface PrivateGradients {
  clipNorm: number;
  noiseMultiplier: number;
  /** Standard normal values of `shape`, from the method's generator (saved through getRandomState). */
  normal(shape: number[]): tf.Tensor;
}

/** A method attached to one model instance. */
export interface AttachedMethod {
  readonly method: MethodInfo;
  readonly params: MethodParams;
  /**
   * Trainable variables by name; adapters use PEFT's key names without `base_model.model.`. A method
   * may also list state that checkpoints must carry but nothing differentiates, as variables created
   * with trainable = false (FedSVD's server-side A and B): the trainer computes no gradient for them.
   */
  readonly trainable: Map<string, tf.Variable>;
  /** Learning-rate multiplier per trainable name (LoRA+ gives B a larger rate); default 1. */
  lrScale(name: string): number;
  /** State of the method's random generator (dropout masks), for checkpoints; absent if it has none. */
  getRandomState?(): number;
  setRandomState?(state: number): void;
  /** Exact count of trainable elements. */
  trainableParameterCount(): number;
  /**
   * Training hooks, all optional, called by the fine-tuning loop (core/train/finetune.ts) around
   * each optimizer step; the trainer itself stays model-agnostic. State they keep must be restored
   * on resume through setRandomState, the optimizer state or the trainable tensors, so a resumed
   * run continues exactly.
   *  - beforeStep: before the step's forward passes (DyLoRA samples the step's rank).
   *  - trainingPenalty: a scalar added to the training loss inside differentiation (SoRA's
   *    λ·Σ|g|/N, PELA's distillation); built from the method's variables, so its gradient reaches
   *    them; called right after the loss's forward pass on `batch` (given by every training loop; a
   *    penalty that needs it refuses a call without). The reported loss leaves it out.
   *  - afterOptimizerStep: right after the optimizer updated the trainable tensors (SoRA's
   *    proximal soft-threshold on its gates).
   */
  beforeStep?(step: TrainingStep): void;
  trainingPenalty?(batch?: PenaltyBatch): tf.Scalar;
  afterOptimizerStep?(step: TrainingStep): void;
  /**
   * Figures of the last step the method computed besides the loss (PELA's distillation loss), logged
   * as train metrics under these names; absent or empty for methods with none.
   */
  stepMetrics?(): Record<string, number>;
  /**
   * Lines for the run's log that the method wrote since it was last asked, taken after each optimizer
   * step (DiffoRA's chosen modules when its search ends, FedSVD's rounds).
   */
  takeLogLines?(): string[];
  /** Which data shard each step trains on (FedSVD's simulated clients); absent: the whole training set. */
  readonly dataShards?: DataShards;
  /** Train with DP-SGD's per-example clipping and noise (FedSVD's private clients); absent: ordinary gradients. */
  readonly privateGradients?: PrivateGradients;
  /**
   * The optimizer the method trains with (GaLore, Fira), over `trainable`, taking the run's AdamW
   * settings; absent: AdamW (core/optim/registry.ts `optimizerFor`).
   */
  createOptimizer?(options: AdamWOptions): Optimizer;
  /** Exact optimizer-state bytes of that optimizer, without allocating it; absent: AdamW's 8 per trainable element. */
  optimizerStateBytes?(): number;
  /**
   * Base weight name -> merged weight (new tensors, the base weight's stored layout), for every
   * weight the method changes. Model weights are left untouched; the caller disposes the result.
   */
  mergedWeights(): Map<string, tf.Tensor>;
  /**
   * True when mergedWeights gives whole new weights for the wrapped modules rather than the frozen
   * base plus an update (LOST reparameterises W and never reads it after attaching): an export then
   * writes them as they are instead of moving the update onto a lossy base's original weights.
   */
  readonly replacesWeights?: boolean;
  /**
   * PEFT adapter: adapter_config.json fields (peft_type, r, lora_alpha, target_modules, use_rslora,
   * use_dora, ...) and tensors keyed as peft saves them (`base_model.model.<path>.lora_A.weight`).
   * Absent for methods without a PEFT form. The tensors are new; the caller disposes them.
   */
  peftAdapter?(): { config: Record<string, unknown>; tensors: Map<string, tf.Tensor> };
  /**
   * Unhooks the method from the model, puts back any base weight it replaced while attached
   * (PiSSA's residual, `full`'s variables) and frees its tensors.
   */
  detach(): void;
}

export interface Method extends MethodInfo {
  attach(model: CausalLM, params: MethodParams, ctx: AttachContext): AttachedMethod;
  /**
   * The exact trainable count attach would give, without attaching: for methods whose attach is
   * slow (an SVD per module, k random bases) or needs training data (LoRA-SB), so the wizard's
   * per-method figures stay quick. Checked against attach in the methods' tests. Same errors as
   * attach for a rank the targets cannot take.
   */
  countTrainable?(model: CausalLM, params: MethodParams, targets: string[]): number;
}
