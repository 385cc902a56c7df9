/**
 * GGUF export for llama.cpp and Ollama, following llama.cpp's convert_hf_to_gguf.py for
 * LlamaForCausalLM / MistralForCausalLM (conversion/llama.py + conversion/base.py, GGUF arch `llama`)
 * and Qwen2ForCausalLM (its Qwen2Model, GGUF arch `qwen2`):
 *  - tensor names `token_embd`, `blk.N.attn_{norm,q,k,v,output}`, `blk.N.ffn_{norm,gate,up,down}`,
 *    `output_norm`, `output` (absent when the embeddings are tied: llama.cpp reuses token_embd);
 *    Qwen2's q/k/v biases as `blk.N.attn_{q,k,v}.bias`;
 *  - Llama only: q_proj and k_proj rows permuted (`LlamaModel.permute`): Hugging Face rotates the two
 *    halves of each head (rotate_half), llama.cpp's LLAMA rope rotates adjacent pairs, so each head's
 *    rows go from [x0..x(D/2-1), y0..y(D/2-1)] to [x0, y0, x1, y1, ...]; k uses the key/value head
 *    count. llama.cpp runs Qwen2 with NEOX rope (rotate_half), so its rows stay as stored;
 *  - 1-D tensors and norms stay F32; other weights F32, F16 or Q8_0 (F16 when a row is not a
 *    multiple of 32, as convert's QuantError fallback does);
 *  - q4_0 and q4_K_M as llama.cpp's llama-quantize picks types for them (src/llama-quant.cpp
 *    llama_tensor_get_type): the output head (token_embd when tied) Q6_K; for q4_K_M also attn_v and
 *    ffn_down Q6_K in the layers `use_more_bits` names; a row that is not a multiple of 256 takes
 *    its fallback (Q4_K → Q5_0, Q6_K → Q8_0), one not a multiple of 32 F16;
 *  - llama3 rope scaling as a `rope_freqs.weight` tensor of per-frequency divisors, linear scaling
 *    as `<arch>.rope.scaling.*` metadata.
 * Next to the .gguf goes an Ollama Modelfile.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import type { ModelConfig } from '../models/config.ts';
import { withFreshDestination } from './destination.ts';
import { BLOCK, GGUF_ALIGNMENT, gguf, writeGguf, type GgmlTensorType, type GgufTensor, type GgufValue } from './gguf-writer.ts';
import { ggufVocab, type GgufVocab } from './gguf-vocab.ts';
import { openExportWeights, type ExportWeight, type WeightValue } from './weights.ts';

export type GgufQuant = 'f32' | 'f16' | 'q8_0' | 'q4_0' | 'q4_K_M';
export const GGUF_QUANTS: readonly GgufQuant[] = ['f32', 'f16', 'q8_0', 'q4_0', 'q4_K_M'];

/** general.file_type (llama_ftype): ALL_F32, MOSTLY_F16, MOSTLY_Q8_0, MOSTLY_Q4_0, MOSTLY_Q4_K_M. */
const FILE_TYPE: Record<GgufQuant, number> = { f32: 0, f16: 1, q8_0: 7, q4_0: 2, q4_K_M: 15 };
/** GGML_QNT_VERSION, written by convert for every file. */
const QUANTIZATION_VERSION = 2;

export interface GgufExportOptions {
  quant: GgufQuant;
  /** general.name and the file name stem; default: the base folder's name. */
  name?: string;
  /** Progress: called before each tensor is encoded (4-bit encoding of a large model takes minutes). */
  log?: (message: string) => void;
}

export interface GgufExportResult {
  /** Paths inside `out`. */
  ggufFile: string;
  modelfile: string;
  tensorTypes: Record<string, GgmlTensorType>;
  /** Things llama.cpp will do differently from transformers (e.g. Mistral's sliding window). */
  notes: string[];
}

/** A model folder, or a base folder plus replaced weights (a method's merged weights). */
export type GgufSource = string | { baseDir: string; weights: Map<string, WeightValue> };

/** Hugging Face architecture -> GGUF general.architecture. */
export const GGUF_ARCHITECTURES: Readonly<Record<string, 'llama' | 'qwen2'>> = { LlamaForCausalLM: 'llama', MistralForCausalLM: 'llama', Qwen2ForCausalLM: 'qwen2' };

/** Why `config` cannot be written as GGUF, or null when it can. */
export function ggufUnsupportedReason(c: ModelConfig, baseDir: string): string | null {
  const arch = GGUF_ARCHITECTURES[c.architecture];
  if (!arch) {
    return (
      `GGUF export writes ${Object.keys(GGUF_ARCHITECTURES).join(', ')} models; ${baseDir} is ${c.architecture}. ` +
      `Export a merged Hugging Face folder and convert it with llama.cpp's convert_hf_to_gguf.py`
    );
  }
  if (c.raw.mlp_bias === true) return `${baseDir}: mlp_bias is not supported in GGUF export`;
  // llama.cpp's qwen2 graph has no rope_freqs tensor to carry llama3-style factors.
  if (arch === 'qwen2' && c.ropeScaling?.type === 'llama3') return `${baseDir}: llama3 rope scaling on a Qwen2 model has no GGUF form`;
  return null;
}

export async function exportGguf(out: string, source: GgufSource, opts: GgufExportOptions): Promise<GgufExportResult> {
  if (!GGUF_QUANTS.includes(opts.quant)) {
    throw new LowrankError('BAD_ARGUMENT', `GGUF quantization "${String(opts.quant)}" is not supported; choose ${GGUF_QUANTS.join(', ')}`);
  }
  const baseDir = typeof source === 'string' ? source : source.baseDir;
  const weights = openExportWeights(baseDir, typeof source === 'string' ? undefined : source.weights);
  try {
    const c = weights.config;
    const unsupported = ggufUnsupportedReason(c, baseDir);
    if (unsupported) throw new LowrankError('UNKNOWN_ARCHITECTURE', unsupported);
    const arch = GGUF_ARCHITECTURES[c.architecture]!;
    const name = opts.name ?? path.basename(path.resolve(baseDir));
    const stem = `${name.replace(/[^A-Za-z0-9._-]+/g, '-')}-${opts.quant}`;
    const vocab = await ggufVocab(baseDir, c.vocabSize);
    const tensors = ggufTensors(c, arch, weights.weights, opts.quant).map((t, i, all) => ({
      ...t,
      read: () => {
        opts.log?.(`writing tensor ${i + 1} of ${all.length}: ${t.name} as ${t.type}`);
        return t.read();
      },
    }));
    const metadata = [...modelMetadata(c, arch, name, opts.quant), ...vocab.metadata];
    const notes: string[] = [];
    if (c.slidingWindow !== null && c.slidingWindow < c.maxPositions) {
      notes.push(`sliding_window ${c.slidingWindow} is not carried over (convert_hf_to_gguf does the same): llama.cpp attends to the whole context`);
    }
    const ggufFile = `${stem}.gguf`;
    await withFreshDestination(out, (dir) => {
      writeGguf(path.join(dir, ggufFile), metadata, tensors);
      fs.writeFileSync(path.join(dir, 'Modelfile'), ollamaModelfile(ggufFile, vocab));
    });
    return { ggufFile, modelfile: 'Modelfile', tensorTypes: Object.fromEntries(tensors.map((t) => [t.name, t.type])), notes };
  } finally {
    weights.close();
  }
}

/** HF name -> GGUF name (convert's tensor_mapping for MODEL_ARCH.LLAMA). */
export function llamaTensorName(hf: string): string | undefined {
  if (hf === 'model.embed_tokens.weight') return 'token_embd.weight';
  if (hf === 'model.norm.weight') return 'output_norm.weight';
  if (hf === 'lm_head.weight') return 'output.weight';
  const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(hf);
  if (!m) return undefined;
  const part: Record<string, string> = {
    input_layernorm: 'attn_norm',
    'self_attn.q_proj': 'attn_q',
    'self_attn.k_proj': 'attn_k',
    'self_attn.v_proj': 'attn_v',
    'self_attn.o_proj': 'attn_output',
    post_attention_layernorm: 'ffn_norm',
    'mlp.gate_proj': 'ffn_gate',
    'mlp.up_proj': 'ffn_up',
    'mlp.down_proj': 'ffn_down',
  };
  const mapped = part[m[2]!];
  return mapped ? `blk.${m[1]}.${mapped}.${m[3]}` : undefined;
}

/**
 * convert_hf_to_gguf's LlamaModel.permute: view the rows as [heads, 2, D/2] and swap the last two
 * axes, so row h·D + 2i + j takes row h·D + j·D/2 + i. Works on weights [rows, cols] and biases [rows].
 */
export function permuteRotaryRows(data: Float32Array, rows: number, heads: number): Float32Array {
  const cols = data.length / rows;
  const headDim = rows / heads;
  const half = headDim / 2;
  if (!Number.isInteger(cols) || !Number.isInteger(half)) throw new Error(`internal: cannot permute ${rows} rows into ${heads} heads`);
  const out = new Float32Array(data.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const to = (h * headDim + 2 * i + j) * cols;
        const from = (h * headDim + j * half + i) * cols;
        out.set(data.subarray(from, from + cols), to);
      }
    }
  }
  return out;
}

/** llama-quant.cpp's use_more_bits: the first and last eighth of the layers, and every third between. */
function useMoreBits(layer: number, layers: number): boolean {
  const eighth = Math.floor(layers / 8);
  return layer < eighth || layer >= Math.floor((7 * layers) / 8) || (layer - eighth) % 3 === 2;
}

/**
 * The type a weight is stored as. `head` marks the output projection (token_embd when the
 * embeddings are tied), `layer` the decoder layer of attn_v / ffn_down (for q4_K_M's extra bits).
 */
export function ggufTensorType(ggufName: string, shape: number[], quant: GgufQuant, c: Pick<ModelConfig, 'numLayers'>, head: boolean): GgmlTensorType {
  if (shape.length <= 1 || ggufName.endsWith('_norm.weight')) return 'F32';
  if (quant === 'f32') return 'F32';
  if (quant === 'f16') return 'F16';
  let type: GgmlTensorType = quant === 'q8_0' ? 'Q8_0' : quant === 'q4_0' ? 'Q4_0' : 'Q4_K';
  if (quant !== 'q8_0') {
    const layer = Number(/^blk\.(\d+)\./.exec(ggufName)?.[1] ?? -1);
    const moreBits = quant === 'q4_K_M' && /\.(attn_v|ffn_down)\.weight$/.test(ggufName) && useMoreBits(layer, c.numLayers);
    if (head || moreBits) type = 'Q6_K';
  }
  const row = shape[shape.length - 1]!;
  // llama-quantize's fallbacks for rows its K-quant blocks do not divide.
  if (row % BLOCK[type].values !== 0) type = type === 'Q4_K' ? 'Q5_0' : type === 'Q6_K' ? 'Q8_0' : type;
  return row % BLOCK[type].values === 0 ? type : 'F16';
}

function ggufTensors(c: ModelConfig, arch: 'llama' | 'qwen2', weights: ExportWeight[], quant: GgufQuant): GgufTensor[] {
  const tensors: GgufTensor[] = [];
  const ropeFactors = llama3RopeFactors(c);
  if (ropeFactors) tensors.push({ name: 'rope_freqs.weight', shape: [ropeFactors.length], type: 'F32', read: () => ropeFactors });
  for (const w of weights) {
    const name = llamaTensorName(w.canonical);
    if (!name) throw new Error(`internal: no GGUF name for ${w.canonical}`);
    const heads = arch !== 'llama' ? 0 : w.canonical.includes('.self_attn.q_proj.') ? c.numHeads : w.canonical.includes('.self_attn.k_proj.') ? c.numKvHeads : 0;
    const read = heads > 0 ? () => permuteRotaryRows(w.read(), w.shape[0]!, heads) : () => w.read();
    const head = name === 'output.weight' || (c.tieWordEmbeddings && name === 'token_embd.weight');
    tensors.push({ name, shape: w.shape, type: ggufTensorType(name, w.shape, quant, c, head), read });
  }
  return tensors;
}

/** convert's generate_extra_tensors for rope_type llama3: per frequency, what llama.cpp divides it by. */
function llama3RopeFactors(c: ModelConfig): Float32Array | null {
  const s = c.ropeScaling;
  if (s?.type !== 'llama3') return null;
  const half = c.headDim / 2;
  const factors = new Float32Array(half);
  const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  for (let i = 0; i < half; i++) {
    // torch computes the frequencies in float32; so do we, to write the same divisors.
    const freq = Math.fround(1 / Math.fround(Math.pow(c.ropeTheta, Math.fround((2 * i) / c.headDim))));
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highWavelen) factors[i] = 1;
    else if (wavelen > lowWavelen) factors[i] = s.factor;
    else {
      const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      factors[i] = 1 / ((1 - smooth) / s.factor + smooth);
    }
  }
  return factors;
}

function modelMetadata(c: ModelConfig, arch: 'llama' | 'qwen2', name: string, quant: GgufQuant): [string, GgufValue][] {
  const m: [string, GgufValue][] = [
    ['general.architecture', gguf.string(arch)],
    ['general.type', gguf.string('model')],
    ['general.name', gguf.string(name)],
    ['general.alignment', gguf.u32(GGUF_ALIGNMENT)],
    [`${arch}.vocab_size`, gguf.u32(c.vocabSize)],
    [`${arch}.context_length`, gguf.u32(c.maxPositions)],
    [`${arch}.embedding_length`, gguf.u32(c.hiddenSize)],
    [`${arch}.block_count`, gguf.u32(c.numLayers)],
    [`${arch}.feed_forward_length`, gguf.u32(c.intermediateSize)],
    [`${arch}.attention.head_count`, gguf.u32(c.numHeads)],
    [`${arch}.attention.head_count_kv`, gguf.u32(c.numKvHeads)],
    [`${arch}.rope.freq_base`, gguf.f32(c.ropeTheta)],
    [`${arch}.attention.layer_norm_rms_epsilon`, gguf.f32(c.normEps)],
    [`${arch}.rope.dimension_count`, gguf.u32(c.headDim)],
  ];
  // llama.cpp assumes head size = embedding / heads unless told (Mistral-Nemo style head_dim).
  if (c.headDim * c.numHeads !== c.hiddenSize || c.raw.head_dim != null) {
    m.push([`${arch}.attention.key_length`, gguf.u32(c.headDim)], [`${arch}.attention.value_length`, gguf.u32(c.headDim)]);
  }
  if (c.ropeScaling?.type === 'linear') {
    m.push([`${arch}.rope.scaling.type`, gguf.string('linear')], [`${arch}.rope.scaling.factor`, gguf.f32(c.ropeScaling.factor)]);
  }
  m.push(['general.file_type', gguf.u32(FILE_TYPE[quant])], ['general.quantization_version', gguf.u32(QUANTIZATION_VERSION)]);
  return m;
}

/** Ollama's ChatML template (Go text/template over .Messages), the format of DEFAULT_CHATML_TEMPLATE. */
const OLLAMA_CHATML = '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n';
/** The plain `role: content` lines of DEFAULT_PLAIN_TEMPLATE. */
const OLLAMA_PLAIN = '{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant:';

/**
 * `FROM ./<file>.gguf`, a TEMPLATE when the chat format is ChatML or Lowrank Studio's default (what
 * the model was fine-tuned with), and stop tokens. A folder's own non-ChatML template is left to
 * Ollama, which reads tokenizer.chat_template from the GGUF.
 */
export function ollamaModelfile(ggufFile: string, vocab: Pick<GgufVocab, 'chatTemplate' | 'eosToken' | 'hasChatMlTokens'>): string {
  const lines = [`# Ollama Modelfile written by Lowrank Studio; create the model with: ollama create <name> -f Modelfile`, `FROM ./${ggufFile}`];
  const chatMl = vocab.chatTemplate !== undefined ? vocab.chatTemplate.includes('<|im_start|>') : vocab.hasChatMlTokens;
  if (chatMl) lines.push(`TEMPLATE """${OLLAMA_CHATML}"""`);
  else if (vocab.chatTemplate === undefined) lines.push(`TEMPLATE """${OLLAMA_PLAIN}"""`);
  const stops = new Set<string>();
  if (chatMl) stops.add('<|im_end|>');
  if (vocab.eosToken !== undefined) stops.add(vocab.eosToken);
  for (const stop of stops) lines.push(`PARAMETER stop ${JSON.stringify(stop)}`);
  return `${lines.join('\n')}\n`;
}
