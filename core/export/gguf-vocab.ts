/**
 * The tokenizer part of a GGUF file, as llama.cpp's convert_hf_to_gguf.py writes it for byte-level
 * BPE tokenizers (`_set_vocab_gpt2` + gguf-py's SpecialVocab): `tokenizer.ggml.model` "gpt2", the
 * byte-level token strings by id (holes padded as `[PAD<id>]`, UNUSED), token types, merges, the
 * pre-tokenizer name llama.cpp maps to the same split regex (src/llama-vocab.cpp), special ids and
 * whether bos/eos are added, and the chat template. Sentencepiece-style tokenizers are refused.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { isJsonObject, readJsonFile } from '../io/hf-folder.ts';
import { loadTokenizer } from '../tokenize/tokenizer.ts';
import { gguf, type GgufValue } from './gguf-writer.ts';

/** gguf-py TokenType. */
const TOKEN_TYPE = { NORMAL: 1, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5 } as const;

// The Split regexes of the two common byte-level families, as their tokenizer.json stores them.
const LLAMA3_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

export interface GgufVocab {
  metadata: [string, GgufValue][];
  eosToken?: string;
  /** The folder's own chat template, if it has one. */
  chatTemplate?: string;
  /** True when `<|im_start|>` and `<|im_end|>` are single tokens (the default template is then ChatML). */
  hasChatMlTokens: boolean;
}

type Json = Record<string, unknown>;

/** Builds the tokenizer metadata of `dir` for a model whose embedding has `vocabSize` rows. */
export async function ggufVocab(dir: string, vocabSize: number): Promise<GgufVocab> {
  const file = path.join(dir, 'tokenizer.json');
  const json = readJsonFile(file, 'tokenizer', `GGUF files carry the tokenizer, and ${dir} has no tokenizer.json`);
  if (!isJsonObject(json) || !isJsonObject(json.model)) throw new LowrankError('BAD_TOKENIZER', `${file}: not a tokenizer.json (no "model" object)`);
  const model = json.model;
  const pre = byteLevelPreTokenizer(json, file);

  const tokens: (string | undefined)[] = new Array(vocabSize);
  const types: number[] = new Array(vocabSize).fill(TOKEN_TYPE.UNUSED);
  const place = (token: string, id: unknown, type: number) => {
    if (!Number.isInteger(id) || (id as number) < 0) throw new LowrankError('BAD_TOKENIZER', `${file}: token ${JSON.stringify(token)} has id ${JSON.stringify(id)}`);
    if ((id as number) >= vocabSize) {
      throw new LowrankError('BAD_TOKENIZER', `${file}: token ${JSON.stringify(token)} has id ${id}, but the model's vocab_size is ${vocabSize}`);
    }
    tokens[id as number] = token;
    types[id as number] = type;
  };
  for (const [token, id] of Object.entries((model.vocab ?? {}) as Json)) place(token, id, TOKEN_TYPE.NORMAL);
  for (const added of (json.added_tokens ?? []) as Json[]) {
    const content = String(added.content);
    // convert_hf_to_gguf's get_vocab_base: special added tokens, and ones that look special, are CONTROL.
    const looksSpecial = content.startsWith('<|') && content.endsWith('|>');
    place(content, added.id, added.special === true || looksSpecial ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED);
  }
  const tokenList = Array.from(tokens, (t, id) => t ?? `[PAD${id}]`); // map() would skip the holes

  const merges = ((model.merges ?? []) as unknown[]).map((m) => {
    if (typeof m === 'string') return m;
    // transformers >= 4.45 writes [left, right] pairs; gguf-py encodes a space inside a part as U+0120.
    if (Array.isArray(m) && m.length === 2) return m.map((part) => String(part).replaceAll(' ', '\u0120')).join(' ');
    throw new LowrankError('BAD_TOKENIZER', `${file}: merge ${JSON.stringify(m)} is neither "a b" nor ["a", "b"]`);
  });
  if (merges.length === 0) throw new LowrankError('BAD_TOKENIZER', `${file}: the BPE model has no merges; llama.cpp needs them`);

  // Special ids and the add-bos/eos switches exactly as our own tokenizer applies them: encode a
  // probe with and without special tokens and see what the post-processor adds.
  const tokenizer = await loadTokenizer(dir);
  const plain = tokenizer.encode('a', { addSpecialTokens: false });
  const full = tokenizer.encode('a', { addSpecialTokens: true });
  const addBos = tokenizer.bosTokenId !== undefined && full.length > plain.length && full[0] === tokenizer.bosTokenId;
  const addEos = tokenizer.eosTokenId !== undefined && full.length > plain.length && full[full.length - 1] === tokenizer.eosTokenId;

  const metadata: [string, GgufValue][] = [
    ['tokenizer.ggml.model', gguf.string('gpt2')],
    ['tokenizer.ggml.pre', gguf.string(pre)],
    ['tokenizer.ggml.tokens', gguf.strings(tokenList)],
    ['tokenizer.ggml.token_type', gguf.i32s(types)],
    ['tokenizer.ggml.merges', gguf.strings(merges)],
  ];
  if (tokenizer.bosTokenId !== undefined) metadata.push(['tokenizer.ggml.bos_token_id', gguf.u32(tokenizer.bosTokenId)]);
  if (tokenizer.eosTokenId !== undefined) metadata.push(['tokenizer.ggml.eos_token_id', gguf.u32(tokenizer.eosTokenId)]);
  if (tokenizer.padTokenId !== undefined) metadata.push(['tokenizer.ggml.padding_token_id', gguf.u32(tokenizer.padTokenId)]);
  metadata.push(['tokenizer.ggml.add_bos_token', gguf.bool(addBos)], ['tokenizer.ggml.add_eos_token', gguf.bool(addEos)]);
  const chatTemplate = readChatTemplate(dir);
  if (chatTemplate !== undefined) metadata.push(['tokenizer.chat_template', gguf.string(chatTemplate)]);

  return {
    metadata,
    eosToken: tokenizer.eosTokenId !== undefined ? tokenizer.idToToken(tokenizer.eosTokenId) : undefined,
    chatTemplate,
    hasChatMlTokens: tokenizer.tokenToId('<|im_start|>') !== undefined && tokenizer.tokenToId('<|im_end|>') !== undefined,
  };
}

/** Why the tokenizer of `dir` has no GGUF form (the refusal ggufVocab would give), or null. */
export function ggufTokenizerUnsupportedReason(dir: string): string | null {
  const file = path.join(dir, 'tokenizer.json');
  try {
    const json = readJsonFile(file, 'tokenizer', `GGUF files carry the tokenizer, and ${dir} has no tokenizer.json`);
    if (!isJsonObject(json) || !isJsonObject(json.model)) return `${file}: not a tokenizer.json (no "model" object)`;
    byteLevelPreTokenizer(json, file);
    return null;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

/**
 * llama.cpp has no general pre-tokenizer: it knows named regex sets. Map the tokenizer.json
 * pre-tokenizer to the name whose regexes split text the same way, or refuse.
 */
function byteLevelPreTokenizer(json: Json, file: string): string {
  const model = json.model as Json;
  const refuse = (what: string): never => {
    throw new LowrankError(
      'BAD_TOKENIZER',
      `${file}: GGUF export supports byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM style); this one ${what}. ` +
        `Convert the merged Hugging Face folder with llama.cpp's convert_hf_to_gguf.py instead`,
    );
  };
  if (model.type !== 'BPE') refuse(`is a ${String(model.type)} model`);
  if (model.byte_fallback === true) refuse('is sentencepiece-style BPE with byte fallback (Llama 2, Mistral)');
  const normalizer = json.normalizer as Json | null | undefined;
  if (normalizer && normalizer.type !== 'NFC') refuse(`has a ${String(normalizer.type)} normalizer`);
  const p = json.pre_tokenizer as Json | null | undefined;
  const isByteLevel = (x: unknown, useRegex: boolean) =>
    isJsonObject(x) && x.type === 'ByteLevel' && x.add_prefix_space !== true && (x.use_regex ?? true) === useRegex;
  if (isByteLevel(p, true)) return 'gpt-2';
  if (isJsonObject(p) && p.type === 'Sequence' && Array.isArray(p.pretokenizers) && p.pretokenizers.length === 2) {
    const [first, second] = p.pretokenizers as unknown[];
    if (isJsonObject(first) && first.type === 'Digits' && first.individual_digits === true && isByteLevel(second, true)) return 'smollm';
    if (isJsonObject(first) && first.type === 'Split' && isByteLevel(second, false)) {
      const regex = isJsonObject(first.pattern) ? first.pattern.Regex : undefined;
      if (regex === LLAMA3_REGEX) return 'llama-bpe';
      if (regex === QWEN2_REGEX) return 'qwen2';
    }
  }
  return refuse(`has a pre-tokenizer llama.cpp has no match for (${JSON.stringify(p).slice(0, 160)})`);
}

/** The template transformers would use: chat_template.jinja, chat_template.json, then tokenizer_config.json. */
function readChatTemplate(dir: string): string | undefined {
  const jinja = path.join(dir, 'chat_template.jinja');
  if (fs.existsSync(jinja)) return fs.readFileSync(jinja, 'utf8');
  for (const [file, what] of [['chat_template.json', 'chat template'], ['tokenizer_config.json', 'tokenizer config']] as const) {
    const full = path.join(dir, file);
    if (!fs.existsSync(full)) continue;
    const config = readJsonFile(full, what);
    const template = isJsonObject(config) ? config.chat_template : undefined;
    if (typeof template === 'string') return template;
    if (Array.isArray(template)) {
      const named = template.find((t) => isJsonObject(t) && t.name === 'default') as Json | undefined;
      if (named && typeof named.template === 'string') return named.template;
    }
  }
  return undefined;
}
