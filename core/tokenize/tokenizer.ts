/**
 * Loading a Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json, optionally
 * special_tokens_map.json and chat_template.jinja) into one small `Tokenizer` object.
 *
 * The pipeline itself (normalizer, pre-tokenizer, BPE/Unigram/WordPiece model, post-processor,
 * decoder) is @huggingface/tokenizers, a JS port of the Rust `tokenizers` crate. What this file
 * adds is the part `transformers` layers on top of tokenizer.json: which strings are bos/eos/pad,
 * the `add_bos_token`/`add_eos_token` switches of Llama-style tokenizers, and chat templates.
 */
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { z } from 'zod';
import { LowrankError } from '../errors.ts';
import { describeJsonError } from '../io/json-error.ts';
import { checkTokenizerJson } from './tokenizer-json.ts';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface Tokenizer {
  /** Highest token id + 1 (added tokens included): the embedding rows the ids can index. */
  vocabSize: number;
  bosTokenId?: number;
  eosTokenId?: number;
  /** Undefined when the config names no pad token (Llama, Mistral); callers choose a fallback. */
  padTokenId?: number;
  /** `addSpecialTokens` (default true) runs the post-processor, e.g. prepends <s> for Llama. */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): string;
  tokenToId(token: string): number | undefined;
  idToToken(id: number): string | undefined;
  /** False when the folder has no template and `applyChatTemplate` falls back to a default. */
  hasChatTemplate: boolean;
  /**
   * Renders a conversation to text. Templates emit their own bos token, so encode the result
   * with `{ addSpecialTokens: false }` (as transformers' apply_chat_template(tokenize=True) does).
   */
  applyChatTemplate(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean }): string;
}

/**
 * Default chat templates, for folders without one (base models, the bundled model).
 * transformers removed its class-level defaults in v4.43 and raises instead; we prefer a
 * predictable format, chosen by what the vocabulary can express:
 *  - ChatML (`<|im_start|>role\ncontent<|im_end|>\n`, as Qwen2 and SmolLM use) when both
 *    `<|im_start|>` and `<|im_end|>` are single tokens, so the markers are learnable atoms;
 *  - otherwise plain text, one `role: content\n` line per message. The generation prompt is
 *    `assistant:` with no trailing space because byte-level BPE attaches the space to the next
 *    word (" Hello"), so the prompt ends on the same token boundary as the training text.
 */
export const DEFAULT_CHATML_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
export const DEFAULT_PLAIN_TEMPLATE =
  "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}";

// A special token is written either as its string or as a serialized AddedToken ({content, ...}).
const tokenSetting = z
  .union([z.string(), z.looseObject({ content: z.string() }), z.null()], {
    error: 'expected a token string, an object with a "content" string, or null',
  })
  .optional();
const tokenizerConfigSchema = z.looseObject({
  tokenizer_class: z.string().nullish(),
  bos_token: tokenSetting,
  eos_token: tokenSetting,
  pad_token: tokenSetting,
  unk_token: tokenSetting,
  additional_special_tokens: z.array(tokenSetting).nullish(),
  add_bos_token: z.boolean().nullish(),
  add_eos_token: z.boolean().nullish(),
  clean_up_tokenization_spaces: z.boolean().nullish(),
  chat_template: z
    .union([z.string(), z.array(z.looseObject({ name: z.string(), template: z.string() }))])
    .nullish(),
});
const specialTokensMapSchema = z.looseObject({
  bos_token: tokenSetting,
  eos_token: tokenSetting,
  pad_token: tokenSetting,
  unk_token: tokenSetting,
});
type TokenizerConfig = z.infer<typeof tokenizerConfigSchema>;
type TokenSetting = z.infer<typeof tokenSetting>;

/** The slice of tokenizer.json this file touches; the rest goes to @huggingface/tokenizers as is. */
interface TokenizerJson {
  model: Record<string, unknown> & { type?: string; byte_fallback?: boolean };
  added_tokens?: unknown[];
  normalizer?: unknown;
  pre_tokenizer?: unknown;
  post_processor?: unknown;
  decoder?: unknown;
  [key: string]: unknown;
}

// transformers' LlamaTokenizerFast/GemmaTokenizerFast rebuild the post-processor from
// add_bos_token/add_eos_token on load, ignoring the one stored in tokenizer.json.
const LLAMA_STYLE_CLASSES = /^(Llama|CodeLlama|Gemma)Tokenizer(Fast)?$/;

export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  const tokenizerFile = path.join(dir, 'tokenizer.json');
  const configFile = path.join(dir, 'tokenizer_config.json');
  const json = await readJson(tokenizerFile, true);
  if (!isObject(json) || !isObject(json.model)) {
    throw new LowrankError('BAD_TOKENIZER', `${tokenizerFile}: not a tokenizer.json (no "model" object)`);
  }
  checkTokenizerJson(json, tokenizerFile);
  const tokenizerJson = json as TokenizerJson;

  const config = parseWith(tokenizerConfigSchema, (await readJson(configFile, false)) ?? {}, configFile);
  // special_tokens_map.json overrides tokenizer_config.json, as in transformers' from_pretrained.
  const specialMapFile = path.join(dir, 'special_tokens_map.json');
  const specialMap = parseWith(specialTokensMapSchema, (await readJson(specialMapFile, false)) ?? {}, specialMapFile);
  const tokenSource = new Map<string, string>();
  const special = (key: 'bos_token' | 'eos_token' | 'pad_token' | 'unk_token'): string | undefined => {
    const fromMap = tokenContent(specialMap[key]);
    tokenSource.set(key, fromMap !== undefined ? specialMapFile : configFile);
    return fromMap ?? tokenContent(config[key]);
  };
  const bos = special('bos_token');
  const eos = special('eos_token');
  const pad = special('pad_token');
  const unk = special('unk_token');

  const pipelineJson: TokenizerJson = {
    // The JS port requires these keys to exist; absent means "none" in the Rust crate.
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: null,
    ...tokenizerJson,
    added_tokens: tokenizerJson.added_tokens ?? [],
  };
  if (rebuildsPostProcessor(config, tokenizerJson)) {
    pipelineJson.post_processor = llamaPostProcessor(config, bos, eos, configFile);
  }

  const libraryConfig = {
    ...config,
    bos_token: bos,
    eos_token: eos,
    pad_token: pad,
    unk_token: unk,
    additional_special_tokens: (config.additional_special_tokens ?? []).map(tokenContent).filter(isString),
  };
  let lib: HfTokenizer;
  try {
    lib = new HfTokenizer(pipelineJson, libraryConfig);
  } catch (e) {
    throw new LowrankError('BAD_TOKENIZER', `${tokenizerFile}: cannot build the tokenizer: ${messageOf(e)}`);
  }

  const idOf = (token: string | undefined, field: string): number | undefined => {
    if (token === undefined) return undefined;
    const id = lib.token_to_id(token);
    if (id === undefined) {
      throw new LowrankError(
        'BAD_TOKENIZER',
        `${tokenSource.get(field)}: ${field} ${JSON.stringify(token)} is not in the vocabulary of ${tokenizerFile}`,
      );
    }
    return id;
  };
  const bosTokenId = idOf(bos, 'bos_token');
  const eosTokenId = idOf(eos, 'eos_token');
  const padTokenId = idOf(pad, 'pad_token');
  const vocabSize = lib.model?.vocab.length ?? 0;
  // transformers now defaults clean_up_tokenization_spaces to False; the JS port defaults to true,
  // which rewrites " ." to "." and would break decode(encode(s)) == s.
  const cleanUpSpaces = config.clean_up_tokenization_spaces ?? false;

  const chat = await resolveChatTemplate(dir, config, configFile);
  const templateSource = chat?.source ?? `default template for ${dir}`;
  const templateText =
    chat?.template ??
    (lib.token_to_id('<|im_start|>') !== undefined && lib.token_to_id('<|im_end|>') !== undefined
      ? DEFAULT_CHATML_TEMPLATE
      : DEFAULT_PLAIN_TEMPLATE);
  let template: Template;
  try {
    template = new Template(templateText);
  } catch (e) {
    throw new LowrankError('BAD_TOKENIZER', `${templateSource}: chat template does not parse: ${messageOf(e)}`);
  }
  // transformers passes the special-token strings to the template (Llama 3 and Mistral templates use bos_token).
  const templateTokens: Record<string, string> = {};
  for (const [key, value] of Object.entries({ bos_token: bos, eos_token: eos, pad_token: pad, unk_token: unk })) {
    if (value !== undefined) templateTokens[key] = value;
  }

  return {
    vocabSize,
    bosTokenId,
    eosTokenId,
    padTokenId,
    hasChatTemplate: chat !== undefined,
    encode(text, opts = {}) {
      const ids = lib.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
      // Without byte fallback or an unk token, an unknown piece maps to no id at all.
      if (ids.some((id) => id === undefined)) {
        throw new LowrankError(
          'BAD_TOKENIZER',
          `${tokenizerFile}: cannot encode ${JSON.stringify(text.slice(0, 40))}: a piece is not in the vocabulary and there is no unk_token`,
        );
      }
      return ids;
    },
    decode(ids, opts = {}) {
      for (const id of ids) {
        if (!Number.isInteger(id) || id < 0 || id >= vocabSize || lib.id_to_token(id) === undefined) {
          throw new LowrankError('BAD_ARGUMENT', `decode: token id ${id} is not in the vocabulary of ${tokenizerFile}`);
        }
      }
      // The JS port throws on an empty list; an empty sequence decodes to the empty string.
      if (ids.length === 0) return '';
      return lib.decode(ids, {
        skip_special_tokens: opts.skipSpecialTokens ?? false,
        clean_up_tokenization_spaces: cleanUpSpaces,
      });
    },
    tokenToId: (token) => lib.token_to_id(token),
    idToToken: (id) => lib.id_to_token(id),
    applyChatTemplate(messages, opts = {}) {
      try {
        // @huggingface/jinja defines raise_exception itself (throwing an Error with the template's
        // message) and refuses to redefine it, so it is not passed here.
        return template.render({ messages, add_generation_prompt: opts.addGenerationPrompt ?? false, ...templateTokens });
      } catch (e) {
        // The template parsed at load, so a failure now is specific to this conversation: a
        // raise_exception (roles that do not alternate, a system message where none is allowed)
        // or a message missing a field the template reads. That is bad data, not a bad tokenizer.
        throw new LowrankError('BAD_DATA', `chat template (${templateSource}) rejected the conversation: ${messageOf(e)}`);
      }
    },
  };
}

/** Llama-family classes always; other sentencepiece-style tokenizers only when the config sets a flag. */
function rebuildsPostProcessor(config: TokenizerConfig, json: TokenizerJson): boolean {
  if (config.tokenizer_class && LLAMA_STYLE_CLASSES.test(config.tokenizer_class)) return true;
  const explicit = typeof config.add_bos_token === 'boolean' || typeof config.add_eos_token === 'boolean';
  return explicit && isSentencePieceStyle(json);
}

/** Converted sentencepiece models: byte fallback, or '▁' as the space marker. */
function isSentencePieceStyle(json: TokenizerJson): boolean {
  if (json.model.byte_fallback === true) return true;
  const text = JSON.stringify([json.normalizer ?? null, json.pre_tokenizer ?? null]);
  return text.includes('"Metaspace"') || text.includes('"prepend":"▁"');
}

/**
 * The TemplateProcessing transformers' LlamaTokenizerFast.update_post_processor builds:
 * single = "[bos:0] $A:0 [eos:0]", pair = single + "[bos:1] $B:1 [eos:1]", with
 * add_bos_token defaulting to true and add_eos_token to false.
 */
function llamaPostProcessor(
  config: TokenizerConfig,
  bos: string | undefined,
  eos: string | undefined,
  configFile: string,
): unknown {
  const addBos = config.add_bos_token ?? true;
  const addEos = config.add_eos_token ?? false;
  if (addBos && bos === undefined) {
    throw new LowrankError('BAD_TOKENIZER', `${configFile}: add_bos_token is true but no bos_token is set`);
  }
  if (addEos && eos === undefined) {
    throw new LowrankError('BAD_TOKENIZER', `${configFile}: add_eos_token is true but no eos_token is set`);
  }
  const specialItem = (token: string, typeId: number) => ({ SpecialToken: { id: token, type_id: typeId } });
  const sequence = (typeId: number) => {
    const items: unknown[] = [];
    if (addBos) items.push(specialItem(bos!, typeId));
    items.push({ Sequence: { id: typeId === 0 ? 'A' : 'B', type_id: typeId } });
    if (addEos) items.push(specialItem(eos!, typeId));
    return items;
  };
  return { type: 'TemplateProcessing', single: sequence(0), pair: [...sequence(0), ...sequence(1)] };
}

/**
 * The folder's template, in transformers' order of precedence: chat_template.jinja (written by
 * transformers >= 4.50), chat_template.json, then tokenizer_config.json's chat_template. A named
 * list of templates yields the one called "default", as apply_chat_template does without tools.
 */
async function resolveChatTemplate(
  dir: string,
  config: TokenizerConfig,
  configFile: string,
): Promise<{ template: string; source: string } | undefined> {
  const jinjaFile = path.join(dir, 'chat_template.jinja');
  const jinja = await readText(jinjaFile);
  if (jinja !== undefined) return { template: jinja, source: jinjaFile };
  const jsonFile = path.join(dir, 'chat_template.json');
  const json = await readJson(jsonFile, false);
  if (isObject(json) && typeof json.chat_template === 'string') {
    return { template: json.chat_template, source: jsonFile };
  }
  const fromConfig = config.chat_template;
  if (typeof fromConfig === 'string') return { template: fromConfig, source: configFile };
  if (Array.isArray(fromConfig) && fromConfig.length > 0) {
    const chosen = fromConfig.find((t) => t.name === 'default');
    if (!chosen) {
      const names = fromConfig.map((t) => t.name).join(', ');
      throw new LowrankError('BAD_TOKENIZER', `${configFile}: chat_template lists [${names}] but none is named "default"`);
    }
    return { template: chosen.template, source: configFile };
  }
  return undefined;
}

function parseWith<T>(schema: z.ZodType<T>, value: unknown, file: string): T {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  const field = issue.path.join('.') || '(top level)';
  throw new LowrankError('BAD_TOKENIZER', `${file}: field "${field}" is invalid: ${issue.message}`);
}

function tokenContent(value: TokenSetting): string | undefined {
  if (value === null || value === undefined) return undefined;
  return typeof value === 'string' ? value : value.content;
}

async function readText(file: string): Promise<string | undefined> {
  try {
    const text = await readFile(file, 'utf8');
    // Windows editors prepend a byte-order mark, which JSON.parse rejects.
    return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new LowrankError('BAD_TOKENIZER', `${file}: cannot read (${code ?? messageOf(e)})`);
  }
}

/** Parsed JSON, or undefined when the file is absent and optional. */
async function readJson(file: string, required: boolean): Promise<unknown> {
  const text = await readText(file);
  if (text === undefined) {
    if (!required) return undefined;
    throw new LowrankError(
      'FILE_NOT_FOUND',
      `${file} not found: a tokenizer folder needs tokenizer.json (save the tokenizer with transformers' save_pretrained)`,
    );
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new LowrankError('BAD_TOKENIZER', `${file}: not valid JSON (${describeJsonError(text)}); fix or re-download the file`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isString(value: unknown): value is string {
  return typeof value === 'string';
}

function messageOf(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split('\n')[0]!;
}
