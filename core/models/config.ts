/**
 * Reads a Hugging Face `config.json` into one normalised ModelConfig that the model code uses,
 * and says which weights (names and shapes) that config implies, so a checkpoint can be checked
 * against it before any tensor is built.
 */
import { LowrankError } from '../errors.ts';

export type Architecture = 'LlamaForCausalLM' | 'MistralForCausalLM' | 'Qwen2ForCausalLM' | 'GPT2LMHeadModel';
export const SUPPORTED_ARCHITECTURES: readonly Architecture[] = [
  'LlamaForCausalLM',
  'MistralForCausalLM',
  'Qwen2ForCausalLM',
  'GPT2LMHeadModel',
];

/** rope_scaling as transformers' modeling_rope_utils.py reads it (`rope_type`, or legacy `type`). */
export type RopeScaling =
  | { type: 'linear'; factor: number }
  | {
      type: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    };

export interface ModelConfig {
  architecture: Architecture;
  /** 'llama' covers Llama, Mistral and Qwen2: same block, different details. */
  family: 'llama' | 'gpt2';
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  maxPositions: number;
  normEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  tieWordEmbeddings: boolean;
  /** Qwen2 puts biases on q/k/v (not o). */
  qkvBias: boolean;
  /** Mistral: each position sees at most this many keys (itself included). */
  slidingWindow: number | null;
  bosTokenId: number | null;
  eosTokenId: number | null;
  torchDtype: string;
  /** The parsed config.json, kept so exports can copy it unchanged. */
  raw: Record<string, unknown>;
}

type Json = Record<string, unknown>;

/** How a value looks in a message: JSON, except numbers JSON cannot show (1e400 parses to Infinity). */
function shown(v: unknown): string {
  return typeof v === 'number' && !Number.isFinite(v) ? String(v) : JSON.stringify(v);
}

/**
 * A numeric field: 'int' non-negative integer, 'count' positive integer (a size of zero layers,
 * heads or vocabulary builds a model with nothing in it, which the weight check would then blame
 * on the weights), 'number' non-negative finite number.
 */
function field(raw: Json, file: string, name: string, kind: 'int' | 'count' | 'number'): number {
  const v = raw[name];
  const integer = kind !== 'number';
  if (typeof v !== 'number' || !Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < 0 || (kind === 'count' && v === 0)) {
    const want = kind === 'count' ? 'a positive integer' : kind === 'int' ? 'a non-negative integer' : 'a non-negative number';
    throw new LowrankError('BAD_CONFIG', `${file}: field "${name}" must be ${want}, got ${shown(v)}`);
  }
  return v;
}

function optional(raw: Json, file: string, name: string, kind: 'int' | 'count' | 'number', fallback: number): number {
  return raw[name] === undefined || raw[name] === null ? fallback : field(raw, file, name, kind);
}

function firstId(v: unknown): number | null {
  if (typeof v === 'number') return v;
  if (Array.isArray(v) && typeof v[0] === 'number') return v[0];
  return null;
}

function parseRopeScaling(raw: Json, file: string): RopeScaling | null {
  const rs = raw.rope_scaling;
  if (rs === undefined || rs === null) return null;
  if (typeof rs !== 'object' || Array.isArray(rs)) {
    throw new LowrankError('BAD_CONFIG', `${file}: rope_scaling must be an object such as {"rope_type": "linear", "factor": 2.0} or null, got ${shown(rs)}`);
  }
  const type = ((rs as Json).rope_type ?? (rs as Json).type) as string | undefined;
  if (type === 'default' || type === undefined) return null;
  const factor = field(rs as Json, `${file} rope_scaling`, 'factor', 'number');
  if (type === 'linear') return { type, factor };
  if (type === 'llama3') {
    return {
      type,
      factor,
      lowFreqFactor: field(rs as Json, `${file} rope_scaling`, 'low_freq_factor', 'number'),
      highFreqFactor: field(rs as Json, `${file} rope_scaling`, 'high_freq_factor', 'number'),
      originalMaxPositionEmbeddings: field(rs as Json, `${file} rope_scaling`, 'original_max_position_embeddings', 'count'),
    };
  }
  throw new LowrankError(
    'BAD_CONFIG',
    `${file}: rope_scaling type "${type}" is not supported (supported: linear, llama3); remove rope_scaling or convert the model`,
  );
}

export function parseModelConfig(raw: Json, file = 'config.json'): ModelConfig {
  const archs = raw.architectures;
  if (archs !== undefined && archs !== null && !Array.isArray(archs)) {
    throw new LowrankError('BAD_CONFIG', `${file}: "architectures" must be a list such as ["LlamaForCausalLM"], got ${shown(archs)}`);
  }
  const arch = Array.isArray(archs) ? archs[0] : undefined;
  if (typeof arch !== 'string') {
    throw new LowrankError('BAD_CONFIG', `${file}: "architectures" is missing; expected e.g. ["LlamaForCausalLM"]`);
  }
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new LowrankError(
      'UNKNOWN_ARCHITECTURE',
      `${file}: architecture "${arch}" is not supported; supported: ${SUPPORTED_ARCHITECTURES.join(', ')}`,
    );
  }
  const architecture = arch as Architecture;
  const torchDtype = typeof raw.torch_dtype === 'string' ? raw.torch_dtype : typeof raw.dtype === 'string' ? raw.dtype : 'float32';
  const common = {
    architecture,
    bosTokenId: firstId(raw.bos_token_id),
    eosTokenId: firstId(raw.eos_token_id),
    torchDtype,
    raw,
  };

  if (architecture === 'GPT2LMHeadModel') {
    const hiddenSize = field(raw, file, 'n_embd', 'count');
    const numHeads = field(raw, file, 'n_head', 'count');
    if (hiddenSize % numHeads !== 0) {
      throw new LowrankError('BAD_CONFIG', `${file}: n_embd (${hiddenSize}) must be divisible by n_head (${numHeads})`);
    }
    const act = raw.activation_function ?? 'gelu_new';
    if (act !== 'gelu_new' && act !== 'gelu_pytorch_tanh' && act !== 'gelu') {
      throw new LowrankError('BAD_CONFIG', `${file}: activation_function "${String(act)}" is not supported (gelu_new, gelu)`);
    }
    return {
      ...common,
      family: 'gpt2',
      vocabSize: field(raw, file, 'vocab_size', 'count'),
      hiddenSize,
      intermediateSize: optional(raw, file, 'n_inner', 'count', 4 * hiddenSize),
      numLayers: field(raw, file, 'n_layer', 'count'),
      numHeads,
      numKvHeads: numHeads,
      headDim: hiddenSize / numHeads,
      maxPositions: field(raw, file, 'n_positions', 'count'),
      normEps: optional(raw, file, 'layer_norm_epsilon', 'number', 1e-5),
      ropeTheta: 0,
      ropeScaling: null,
      tieWordEmbeddings: raw.tie_word_embeddings !== false,
      qkvBias: true,
      slidingWindow: null,
    };
  }

  const hiddenSize = field(raw, file, 'hidden_size', 'count');
  const numHeads = field(raw, file, 'num_attention_heads', 'count');
  const numKvHeads = optional(raw, file, 'num_key_value_heads', 'count', numHeads);
  const headDim = optional(raw, file, 'head_dim', 'count', Math.floor(hiddenSize / numHeads));
  if (numHeads % numKvHeads !== 0) {
    throw new LowrankError(
      'BAD_CONFIG',
      `${file}: num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`,
    );
  }
  if (raw.head_dim == null && hiddenSize % numHeads !== 0) {
    throw new LowrankError('BAD_CONFIG', `${file}: hidden_size (${hiddenSize}) must be divisible by num_attention_heads (${numHeads})`);
  }
  const act = raw.hidden_act ?? 'silu';
  if (act !== 'silu' && act !== 'swish') {
    throw new LowrankError('BAD_CONFIG', `${file}: hidden_act "${String(act)}" is not supported (silu)`);
  }
  let slidingWindow: number | null = null;
  if (architecture === 'MistralForCausalLM' && typeof raw.sliding_window === 'number') slidingWindow = raw.sliding_window;
  if (architecture === 'Qwen2ForCausalLM' && raw.use_sliding_window === true && typeof raw.sliding_window === 'number') {
    slidingWindow = raw.sliding_window;
  }
  return {
    ...common,
    family: 'llama',
    vocabSize: field(raw, file, 'vocab_size', 'count'),
    hiddenSize,
    intermediateSize: field(raw, file, 'intermediate_size', 'count'),
    numLayers: field(raw, file, 'num_hidden_layers', 'count'),
    numHeads,
    numKvHeads,
    headDim,
    maxPositions: optional(raw, file, 'max_position_embeddings', 'count', 2048),
    normEps: optional(raw, file, 'rms_norm_eps', 'number', 1e-6),
    ropeTheta: optional(raw, file, 'rope_theta', 'number', 10000),
    ropeScaling: parseRopeScaling(raw, file),
    // LlamaConfig, MistralConfig and Qwen2Config all default tie_word_embeddings to false.
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    qkvBias: architecture === 'Qwen2ForCausalLM' ? true : raw.attention_bias === true,
    slidingWindow,
  };
}

/** Every weight the config implies, in the names used inside the project (GPT-2 with `transformer.`). */
export function expectedWeights(c: ModelConfig): Map<string, number[]> {
  const w = new Map<string, number[]>();
  const C = c.hiddenSize;
  if (c.family === 'gpt2') {
    w.set('transformer.wte.weight', [c.vocabSize, C]);
    w.set('transformer.wpe.weight', [c.maxPositions, C]);
    for (let i = 0; i < c.numLayers; i++) {
      const p = `transformer.h.${i}`;
      for (const ln of ['ln_1', 'ln_2']) {
        w.set(`${p}.${ln}.weight`, [C]);
        w.set(`${p}.${ln}.bias`, [C]);
      }
      // Conv1D stores [in, out].
      w.set(`${p}.attn.c_attn.weight`, [C, 3 * C]);
      w.set(`${p}.attn.c_attn.bias`, [3 * C]);
      w.set(`${p}.attn.c_proj.weight`, [C, C]);
      w.set(`${p}.attn.c_proj.bias`, [C]);
      w.set(`${p}.mlp.c_fc.weight`, [C, c.intermediateSize]);
      w.set(`${p}.mlp.c_fc.bias`, [c.intermediateSize]);
      w.set(`${p}.mlp.c_proj.weight`, [c.intermediateSize, C]);
      w.set(`${p}.mlp.c_proj.bias`, [C]);
    }
    w.set('transformer.ln_f.weight', [C]);
    w.set('transformer.ln_f.bias', [C]);
    if (!c.tieWordEmbeddings) w.set('lm_head.weight', [c.vocabSize, C]);
    return w;
  }
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  w.set('model.embed_tokens.weight', [c.vocabSize, C]);
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    w.set(`${p}.input_layernorm.weight`, [C]);
    w.set(`${p}.post_attention_layernorm.weight`, [C]);
    w.set(`${p}.self_attn.q_proj.weight`, [q, C]);
    w.set(`${p}.self_attn.k_proj.weight`, [kv, C]);
    w.set(`${p}.self_attn.v_proj.weight`, [kv, C]);
    w.set(`${p}.self_attn.o_proj.weight`, [C, q]);
    if (c.qkvBias) {
      w.set(`${p}.self_attn.q_proj.bias`, [q]);
      w.set(`${p}.self_attn.k_proj.bias`, [kv]);
      w.set(`${p}.self_attn.v_proj.bias`, [kv]);
    }
    // Llama's attention_bias puts a bias on o_proj too (Qwen2 has q/k/v biases only); mlp_bias on the MLP.
    if (c.qkvBias && c.architecture !== 'Qwen2ForCausalLM') w.set(`${p}.self_attn.o_proj.bias`, [C]);
    if (c.raw.mlp_bias === true) {
      w.set(`${p}.mlp.gate_proj.bias`, [c.intermediateSize]);
      w.set(`${p}.mlp.up_proj.bias`, [c.intermediateSize]);
      w.set(`${p}.mlp.down_proj.bias`, [C]);
    }
    w.set(`${p}.mlp.gate_proj.weight`, [c.intermediateSize, C]);
    w.set(`${p}.mlp.up_proj.weight`, [c.intermediateSize, C]);
    w.set(`${p}.mlp.down_proj.weight`, [C, c.intermediateSize]);
  }
  w.set('model.norm.weight', [C]);
  if (!c.tieWordEmbeddings) w.set('lm_head.weight', [c.vocabSize, C]);
  return w;
}

/** Short names of the linear modules adapters can target (`q_proj`, ... / `c_attn`, ...). */
export function targetableModules(c: ModelConfig): string[] {
  return c.family === 'gpt2'
    ? ['c_attn', 'c_proj', 'c_fc']
    : ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
}

export function parameterCount(c: ModelConfig): number {
  let n = 0;
  for (const shape of expectedWeights(c).values()) n += shape.reduce((a, b) => a * b, 1);
  return n;
}
