/**
 * Writing a tokenizer as the files transformers' `save_pretrained` leaves in a model folder, so
 * `AutoTokenizer.from_pretrained(dir)` and our own `loadTokenizer(dir)` both read it unchanged.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';

export interface TokenizerFolderConfig {
  bos: string;
  eos: string;
  pad?: string;
  /** Jinja chat template; stored in tokenizer_config.json's chat_template, as transformers < 4.50 does. */
  chatTemplate?: string;
  /** The model's context length; omitted means transformers' "no limit" default. */
  modelMaxLength?: number;
}

interface TokenizerJsonLike {
  model: { vocab?: Record<string, number> | unknown };
  added_tokens?: { id: number; content: string; [key: string]: unknown }[];
}

/**
 * Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json into `dir` (created if
 * needed). The config uses tokenizer_class PreTrainedTokenizerFast: it needs nothing but
 * tokenizer.json, unlike GPT2Tokenizer which would also want vocab.json and merges.txt.
 */
export async function writeTokenizerFolder(
  dir: string,
  tokenizerJson: object,
  config: TokenizerFolderConfig,
): Promise<void> {
  const json = tokenizerJson as TokenizerJsonLike;
  const addedTokens = json.added_tokens ?? [];
  const vocab = (json.model?.vocab ?? {}) as Record<string, number>;
  const known = (token: string) => addedTokens.some((t) => t.content === token) || Object.hasOwn(vocab, token);
  for (const [field, token] of [['bos', config.bos], ['eos', config.eos], ['pad', config.pad]] as const) {
    if (token !== undefined && !known(token)) {
      throw new LowrankError(
        'BAD_ARGUMENT',
        `${field} token ${JSON.stringify(token)} is not in the tokenizer; add it to specialTokens when training`,
      );
    }
  }

  // transformers writes added_tokens_decoder keyed by id (as a string) with these five flags.
  const addedTokensDecoder: Record<string, unknown> = {};
  for (const t of addedTokens) {
    addedTokensDecoder[String(t.id)] = {
      content: t.content,
      lstrip: t.lstrip ?? false,
      normalized: t.normalized ?? false,
      rstrip: t.rstrip ?? false,
      single_word: t.single_word ?? false,
      special: t.special ?? true,
    };
  }
  const tokenizerConfig: Record<string, unknown> = {
    added_tokens_decoder: addedTokensDecoder,
    bos_token: config.bos,
    // Decoding must give back the text exactly; cleanup would turn " ." into ".".
    clean_up_tokenization_spaces: false,
    eos_token: config.eos,
    extra_special_tokens: {},
    pad_token: config.pad ?? null,
    tokenizer_class: 'PreTrainedTokenizerFast',
    unk_token: null,
  };
  if (config.chatTemplate !== undefined) tokenizerConfig.chat_template = config.chatTemplate;
  if (config.modelMaxLength !== undefined) tokenizerConfig.model_max_length = config.modelMaxLength;
  const specialTokensMap: Record<string, string> = { bos_token: config.bos, eos_token: config.eos };
  if (config.pad !== undefined) specialTokensMap.pad_token = config.pad;

  await mkdir(dir, { recursive: true });
  // Python's json.dump(indent=2, sort_keys=True) + "\n", which is what save_pretrained writes.
  const pythonStyle = (value: Record<string, unknown>) => JSON.stringify(sortKeys(value), null, 2) + '\n';
  await writeFile(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson, null, 2));
  await writeFile(path.join(dir, 'tokenizer_config.json'), pythonStyle(tokenizerConfig));
  await writeFile(path.join(dir, 'special_tokens_map.json'), pythonStyle(specialTokensMap));
}

function sortKeys(value: Record<string, unknown>): Record<string, unknown> {
  const sorted: Record<string, unknown> = {};
  for (const key of Object.keys(value).sort()) {
    const v = value[key];
    sorted[key] = typeof v === 'object' && v !== null && !Array.isArray(v) ? sortKeys(v as Record<string, unknown>) : v;
  }
  return sorted;
}
