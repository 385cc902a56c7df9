/**
 * The method interface (peft's `tuners/<method>/` + `register_peft_method`, CONVENTIONS.md §3):
 * a method declares who it is and its hyper-parameters (the wizard's form is generated from the
 * schema), attaches to a loaded model, and then says what is trainable, how the update merges
 * into the base weights and how it exports. LoRA variants are small strategy objects, not copies.
 */
import type * as tf from '../tf.ts';
import type { CausalLM } from '../models/causal-lm.ts';

export type MethodFamily = 'full' | 'adapter' | 'optimizer';
export type ExportFormat = 'peft' | 'merged' | 'gguf';

/** One hyper-parameter; `default` is the paper's (ALGORITHMS.md). */
export type SchemaField =
  | { name: string; type: 'number'; default: number; min?: number; max?: number; description: string }
  | { name: string; type: 'integer'; default: number; min?: number; max?: number; description: string }
  | { name: string; type: 'boolean'; default: boolean; description: string }
  | { name: string; type: 'enum'; default: string; choices: string[]; description: string }
  | { name: string; type: 'string'; default: string; description: string };

export interface MethodInfo {
  /** Registry id, e.g. `lora` (METHODS.md, left column). */
  id: string;
  family: MethodFamily;
  paper: { title: string; year: number; url?: string };
  /** One line for the method card. */
  summary: string;
  /** Prefix of the trainable tensor names this method owns (`lora_`), checked for clashes. */
  parameterPrefix: string;
  schema: SchemaField[];
  mergeable: boolean;
  exportFormats: ExportFormat[];
}

export type MethodParams = Record<string, number | boolean | string>;

export interface AttachContext {
  /** Full module paths to wrap (already resolved from --target), e.g. `model.layers.0.self_attn.q_proj`. */
  targets: string[];
  seed: number;
}

/** A method attached to one model instance. */
export interface AttachedMethod {
  readonly method: MethodInfo;
  readonly params: MethodParams;
  /** Trainable variables by name; adapters use PEFT's key names without `base_model.model.`. */
  readonly trainable: Map<string, tf.Variable>;
  /** Learning-rate multiplier per trainable name (LoRA+ gives B a larger rate); default 1. */
  lrScale(name: string): number;
  /** Exact count of trainable elements. */
  trainableParameterCount(): number;
  /**
   * Base weight name -> merged weight (new tensors, the base weight's stored layout), for every
   * weight the method changes. Model weights are left untouched.
   */
  mergedWeights(): Map<string, tf.Tensor>;
  /**
   * PEFT adapter: adapter_config.json fields (peft_type, r, lora_alpha, target_modules, use_rslora,
   * use_dora, ...) and tensors keyed as peft saves them (`base_model.model.<path>.lora_A.weight`).
   * Absent for methods without a PEFT form.
   */
  peftAdapter?(): { config: Record<string, unknown>; tensors: Map<string, tf.Tensor> };
  /** Unhooks the method from the model and frees its tensors. */
  detach(): void;
}

export interface Method extends MethodInfo {
  attach(model: CausalLM, params: MethodParams, ctx: AttachContext): AttachedMethod;
}
