// Independent float64 reference of Hugging Face causal LMs: LlamaForCausalLM, MistralForCausalLM,
// Qwen2ForCausalLM, GPT2LMHeadModel — what `transformers` computes for one unpadded sequence with
// position ids 0..T-1, in eval mode (no dropout). Parity tests hold the project's tfjs models to it.
//
// Sources (huggingface/transformers, src/transformers/):
//   models/llama/modeling_llama.py, models/mistral/modeling_mistral.py, models/qwen2/modeling_qwen2.py,
//   models/qwen2/configuration_qwen2.py, models/gpt2/modeling_gpt2.py, modeling_rope_utils.py,
//   masking_utils.py (sliding window), loss/loss_utils.py (ForCausalLMLoss).

import {
  activation,
  add,
  applyRope,
  causalAttention,
  conv1d,
  layerNorm,
  linear,
  logSumExp,
  rmsNorm,
  ropeInverseFrequencies,
  type RopeSettings,
} from './reference-ops.ts';

export type ReferenceConfig = Record<string, unknown>;
export type ReferenceWeights = Map<string, Float64Array>;
export type ReferenceShapes = Map<string, number[]>;

/** Converts checkpoint tensors ({name, shape, data}) into the maps the reference takes. */
export function weightsFromTensors(tensors: ReadonlyArray<{ name: string; shape: number[]; data: ArrayLike<number> }>): {
  weights: ReferenceWeights;
  shapes: ReferenceShapes;
} {
  const weights: ReferenceWeights = new Map();
  const shapes: ReferenceShapes = new Map();
  for (const t of tensors) {
    weights.set(t.name, Float64Array.from(t.data));
    shapes.set(t.name, [...t.shape]);
  }
  return { weights, shapes };
}

function num(config: ReferenceConfig, key: string, fallback?: number): number {
  const value = config[key];
  if (typeof value === 'number') return value;
  if ((value === undefined || value === null) && fallback !== undefined) return fallback;
  throw new Error(`reference: config.${key} must be a number, got ${JSON.stringify(value)}`);
}

function bool(config: ReferenceConfig, key: string, fallback: boolean): boolean {
  const value = config[key];
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'boolean') throw new Error(`reference: config.${key} must be a boolean, got ${JSON.stringify(value)}`);
  return value;
}

/** Fetches a tensor and checks its shape against what the architecture needs. */
class WeightReader {
  constructor(
    private readonly weights: ReferenceWeights,
    private readonly shapes: ReferenceShapes,
  ) {}

  has(name: string): boolean {
    return this.weights.has(name);
  }

  get(name: string, shape: number[]): Float64Array {
    const data = this.weights.get(name);
    if (!data) throw new Error(`reference: missing tensor '${name}' (expected shape [${shape}])`);
    const stored = this.shapes.get(name);
    if (!stored || stored.length !== shape.length || stored.some((d, i) => d !== shape[i])) {
      throw new Error(`reference: tensor '${name}' has shape [${stored}], expected [${shape}]`);
    }
    const size = shape.reduce((a, b) => a * b, 1);
    if (data.length !== size) throw new Error(`reference: tensor '${name}' holds ${data.length} values, shape [${shape}] needs ${size}`);
    return data;
  }
}

function checkIds(ids: number[], vocab: number): void {
  if (ids.length === 0) throw new Error('reference: empty input');
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new Error(`reference: token id ${id} outside [0, ${vocab})`);
  }
}

/** Rows of the embedding matrix [V, C] for each id -> [T, C]. */
function embed(table: Float64Array, ids: number[], width: number): Float64Array {
  const x = new Float64Array(ids.length * width);
  ids.forEach((id, t) => x.set(table.subarray(id * width, (id + 1) * width), t * width));
  return x;
}

/** [T, C] x [V, C]^T -> logits as [T][V]. */
function toLogits(hidden: Float64Array, t: number, head: Float64Array, vocab: number, width: number): number[][] {
  const flat = linear(hidden, t, head, vocab, width);
  const rows: number[][] = [];
  for (let i = 0; i < t; i++) rows.push(Array.from(flat.subarray(i * vocab, (i + 1) * vocab)));
  return rows;
}

/**
 * rope_theta and rope_scaling as transformers v4 writes them, or v5's rope_parameters
 * ({rope_theta, rope_type, factor, ...}). rope_scaling may use the legacy key "type" for "rope_type".
 */
function ropeSettings(config: ReferenceConfig, headDim: number): RopeSettings {
  const parameters = config.rope_parameters as Record<string, unknown> | null | undefined;
  let theta: number;
  let scaling: Record<string, unknown> | null;
  if (parameters && typeof parameters === 'object') {
    theta = num(parameters, 'rope_theta', num(config, 'rope_theta', 10000));
    scaling = parameters;
  } else {
    theta = num(config, 'rope_theta', 10000);
    scaling = (config.rope_scaling as Record<string, unknown> | null | undefined) ?? null;
  }
  const partial = scaling?.partial_rotary_factor ?? config.partial_rotary_factor;
  if (partial !== undefined && partial !== null && partial !== 1) {
    throw new Error('reference: partial_rotary_factor is not used by these architectures');
  }
  return { theta, dim: headDim, scaling, maxPositionEmbeddings: num(config, 'max_position_embeddings', 2048) };
}

type LlamaFamily = 'llama' | 'mistral' | 'qwen2';

/**
 * Sliding window of decoder layer `layer`, or null for full causal attention.
 * Mistral: config.sliding_window on every layer when not null (modeling_mistral.py passes it to all layers).
 * Qwen2: only when use_sliding_window, and then on layers >= max_window_layers, unless layer_types says
 * otherwise (configuration_qwen2.py builds layer_types that way). Llama: never.
 */
function slidingWindowOf(family: LlamaFamily, config: ReferenceConfig, layer: number): number | null {
  if (family === 'llama') return null;
  const window = config.sliding_window;
  if (window === undefined || window === null) return null;
  if (typeof window !== 'number') throw new Error(`reference: config.sliding_window must be a number or null`);
  if (family === 'mistral') return window;
  const layerTypes = config.layer_types as string[] | undefined | null;
  if (Array.isArray(layerTypes)) return layerTypes[layer] === 'sliding_attention' ? window : null;
  if (!bool(config, 'use_sliding_window', false)) return null;
  return layer >= num(config, 'max_window_layers', 28) ? window : null;
}

/**
 * LlamaForCausalLM and its copies (models/llama/modeling_llama.py):
 *   h = embed_tokens[ids]
 *   per layer: h += o_proj(attn(rope(q_proj(rms(h))), rope(k_proj(rms(h))), v_proj(rms(h))))
 *              h += down_proj(act(gate_proj(rms(h))) * up_proj(rms(h)))
 *   logits = lm_head(norm(h)), lm_head = embed_tokens when tie_word_embeddings.
 * Biases: Llama q/k/v/o when attention_bias, MLP when mlp_bias; Qwen2 q/k/v always, o_proj never; Mistral none.
 */
function llamaFamilyLogits(family: LlamaFamily, config: ReferenceConfig, w: WeightReader, ids: number[]): number[][] {
  const t = ids.length;
  const c = num(config, 'hidden_size');
  const vocab = num(config, 'vocab_size');
  const heads = num(config, 'num_attention_heads');
  const kvHeads = num(config, 'num_key_value_heads', heads);
  const headDim = num(config, 'head_dim', Math.floor(c / heads));
  const inter = num(config, 'intermediate_size');
  const layers = num(config, 'num_hidden_layers');
  const eps = num(config, 'rms_norm_eps', 1e-6);
  const act = activation((config.hidden_act as string | undefined) ?? 'silu');
  const attentionBias = family === 'llama' && bool(config, 'attention_bias', false);
  const qkvBias = family === 'qwen2' || attentionBias;
  const mlpBias = family === 'llama' && bool(config, 'mlp_bias', false);
  // class defaults of LlamaConfig, MistralConfig, Qwen2Config: tie_word_embeddings=False
  const tied = bool(config, 'tie_word_embeddings', false);
  checkIds(ids, vocab);
  if (t > num(config, 'max_position_embeddings', Infinity)) throw new Error('reference: sequence longer than max_position_embeddings');

  const invFreq = ropeInverseFrequencies(ropeSettings(config, headDim), t);
  const optional = (name: string, size: number, present: boolean) => (present ? w.get(name, [size]) : undefined);

  const embedTokens = w.get('model.embed_tokens.weight', [vocab, c]);
  let h = embed(embedTokens, ids, c); // [T, C]
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    const x = rmsNorm(h, t, w.get(`${p}.input_layernorm.weight`, [c]), eps);
    const q = linear(x, t, w.get(`${p}.self_attn.q_proj.weight`, [heads * headDim, c]), heads * headDim, c,
      optional(`${p}.self_attn.q_proj.bias`, heads * headDim, qkvBias)); // [T, H*hd]
    const k = linear(x, t, w.get(`${p}.self_attn.k_proj.weight`, [kvHeads * headDim, c]), kvHeads * headDim, c,
      optional(`${p}.self_attn.k_proj.bias`, kvHeads * headDim, qkvBias)); // [T, KV*hd]
    const v = linear(x, t, w.get(`${p}.self_attn.v_proj.weight`, [kvHeads * headDim, c]), kvHeads * headDim, c,
      optional(`${p}.self_attn.v_proj.bias`, kvHeads * headDim, qkvBias)); // [T, KV*hd]
    for (let i = 0; i < t; i++) {
      applyRope(q.subarray(i * heads * headDim, (i + 1) * heads * headDim), heads, headDim, i, invFreq);
      applyRope(k.subarray(i * kvHeads * headDim, (i + 1) * kvHeads * headDim), kvHeads, headDim, i, invFreq);
    }
    const attended = causalAttention(q, k, v, {
      sequenceLength: t,
      heads,
      kvHeads,
      headDim,
      scale: headDim ** -0.5,
      slidingWindow: slidingWindowOf(family, config, l),
    }); // [T, H*hd]
    const o = linear(attended, t, w.get(`${p}.self_attn.o_proj.weight`, [c, heads * headDim]), c, heads * headDim,
      optional(`${p}.self_attn.o_proj.bias`, c, attentionBias)); // [T, C]
    h = add(h, o);

    const y = rmsNorm(h, t, w.get(`${p}.post_attention_layernorm.weight`, [c]), eps);
    const gate = linear(y, t, w.get(`${p}.mlp.gate_proj.weight`, [inter, c]), inter, c, optional(`${p}.mlp.gate_proj.bias`, inter, mlpBias));
    const up = linear(y, t, w.get(`${p}.mlp.up_proj.weight`, [inter, c]), inter, c, optional(`${p}.mlp.up_proj.bias`, inter, mlpBias));
    for (let i = 0; i < gate.length; i++) gate[i] = act(gate[i]) * up[i]; // [T, I]
    const down = linear(gate, t, w.get(`${p}.mlp.down_proj.weight`, [c, inter]), c, inter, optional(`${p}.mlp.down_proj.bias`, c, mlpBias));
    h = add(h, down);
  }
  h = rmsNorm(h, t, w.get('model.norm.weight', [c]), eps);
  // With tie_word_embeddings transformers points lm_head at embed_tokens after loading, whatever the file holds.
  const head = tied ? embedTokens : w.get('lm_head.weight', [vocab, c]);
  return toLogits(h, t, head, vocab, c);
}

/**
 * GPT2LMHeadModel (models/gpt2/modeling_gpt2.py), eager attention:
 *   h = wte[ids] + wpe[0..T-1]
 *   per block: h += attn.c_proj(attn(split(attn.c_attn(ln_1(h)))));  h += mlp.c_proj(act(mlp.c_fc(ln_2(h))))
 *   logits = ln_f(h) wte^T (lm_head is tied to wte unless tie_word_embeddings is false)
 * Conv1D weights are [in, out]. c_attn's 3C outputs are q | k | v, each split into heads of C/n_head.
 * Keys carry a `transformer.` prefix when saved from GPT2LMHeadModel, none in older hub checkpoints.
 */
function gpt2Logits(config: ReferenceConfig, w: WeightReader, ids: number[]): number[][] {
  const t = ids.length;
  const c = num(config, 'n_embd');
  const vocab = num(config, 'vocab_size');
  const heads = num(config, 'n_head');
  const layers = num(config, 'n_layer');
  const positions = num(config, 'n_positions');
  const inner = num(config, 'n_inner', 4 * c);
  const eps = num(config, 'layer_norm_epsilon', 1e-5);
  const act = activation((config.activation_function as string | undefined) ?? 'gelu_new');
  const scaleByHeadDim = bool(config, 'scale_attn_weights', true);
  const scaleByLayer = bool(config, 'scale_attn_by_inverse_layer_idx', false);
  const headDim = c / heads;
  checkIds(ids, vocab);
  if (t > positions) throw new Error(`reference: sequence of ${t} is longer than n_positions ${positions}`);
  // GPT2Config leaves tie_word_embeddings at the PretrainedConfig default, true: lm_head is wte
  const tied = bool(config, 'tie_word_embeddings', true);

  const prefix = w.has('transformer.wte.weight') ? 'transformer.' : '';
  const wte = w.get(`${prefix}wte.weight`, [vocab, c]);
  const wpe = w.get(`${prefix}wpe.weight`, [positions, c]);
  let h = embed(wte, ids, c); // [T, C]
  for (let i = 0; i < t * c; i++) h[i] += wpe[i]; // position i's row of wpe lines up with token i

  for (let l = 0; l < layers; l++) {
    const p = `${prefix}h.${l}`;
    const x = layerNorm(h, t, w.get(`${p}.ln_1.weight`, [c]), w.get(`${p}.ln_1.bias`, [c]), eps);
    const qkv = conv1d(x, t, w.get(`${p}.attn.c_attn.weight`, [c, 3 * c]), c, 3 * c, w.get(`${p}.attn.c_attn.bias`, [3 * c])); // [T, 3C]
    const q = new Float64Array(t * c);
    const k = new Float64Array(t * c);
    const v = new Float64Array(t * c);
    for (let i = 0; i < t; i++) {
      q.set(qkv.subarray(i * 3 * c, i * 3 * c + c), i * c);
      k.set(qkv.subarray(i * 3 * c + c, i * 3 * c + 2 * c), i * c);
      v.set(qkv.subarray(i * 3 * c + 2 * c, i * 3 * c + 3 * c), i * c);
    }
    let scale = scaleByHeadDim ? 1 / Math.sqrt(headDim) : 1;
    if (scaleByLayer) scale /= l + 1;
    const attended = causalAttention(q, k, v, { sequenceLength: t, heads, kvHeads: heads, headDim, scale, slidingWindow: null });
    h = add(h, conv1d(attended, t, w.get(`${p}.attn.c_proj.weight`, [c, c]), c, c, w.get(`${p}.attn.c_proj.bias`, [c])));

    const y = layerNorm(h, t, w.get(`${p}.ln_2.weight`, [c]), w.get(`${p}.ln_2.bias`, [c]), eps);
    const fc = conv1d(y, t, w.get(`${p}.mlp.c_fc.weight`, [c, inner]), c, inner, w.get(`${p}.mlp.c_fc.bias`, [inner])); // [T, 4C]
    for (let i = 0; i < fc.length; i++) fc[i] = act(fc[i]);
    h = add(h, conv1d(fc, t, w.get(`${p}.mlp.c_proj.weight`, [inner, c]), inner, c, w.get(`${p}.mlp.c_proj.bias`, [c])));
  }
  h = layerNorm(h, t, w.get(`${prefix}ln_f.weight`, [c]), w.get(`${prefix}ln_f.bias`, [c]), eps);
  return toLogits(h, t, tied ? wte : w.get('lm_head.weight', [vocab, c]), vocab, c);
}

function architectureOf(config: ReferenceConfig): string {
  const architectures = config.architectures;
  if (!Array.isArray(architectures) || typeof architectures[0] !== 'string') {
    throw new Error('reference: config.architectures[0] is missing');
  }
  return architectures[0];
}

/** Logits [T][V] of a Hugging Face causal LM for one sequence, in float64. */
export function referenceLogits(config: ReferenceConfig, weights: ReferenceWeights, shapes: ReferenceShapes, ids: number[]): number[][] {
  const reader = new WeightReader(weights, shapes);
  const architecture = architectureOf(config);
  switch (architecture) {
    case 'LlamaForCausalLM':
      return llamaFamilyLogits('llama', config, reader, ids);
    case 'MistralForCausalLM':
      return llamaFamilyLogits('mistral', config, reader, ids);
    case 'Qwen2ForCausalLM':
      return llamaFamilyLogits('qwen2', config, reader, ids);
    case 'GPT2LMHeadModel':
      return gpt2Logits(config, reader, ids);
    default:
      throw new Error(`reference: architecture '${architecture}' is not implemented`);
  }
}

/**
 * Mean token cross-entropy from logits, as ForCausalLMLoss (loss/loss_utils.py) computes it: labels are
 * shifted inside (logits[t] predicts labels[t+1]), positions whose shifted label is -100 are skipped, the
 * mean is over the rest (NaN when none is left, like torch's mean of nothing).
 */
export function causalLmLossFromLogits(logits: number[][], labels: number[]): number {
  if (labels.length !== logits.length) throw new Error(`reference: ${labels.length} labels for ${logits.length} positions`);
  let total = 0;
  let count = 0;
  for (let t = 0; t + 1 < labels.length; t++) {
    const target = labels[t + 1];
    if (target === -100) continue;
    const row = logits[t];
    if (!Number.isInteger(target) || target < 0 || target >= row.length) throw new Error(`reference: label ${target} outside the vocabulary`);
    total += logSumExp(row) - row[target];
    count++;
  }
  return total / count;
}

/** referenceLogits then the causal-LM loss of `labels` (same length as ids; -100 = ignore). */
export function referenceLoss(
  config: ReferenceConfig,
  weights: ReferenceWeights,
  shapes: ReferenceShapes,
  ids: number[],
  labels: number[],
): number {
  return causalLmLossFromLogits(referenceLogits(config, weights, shapes, ids), labels);
}
