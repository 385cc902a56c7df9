/**
 * Checks on the parts of tokenizer.json the pipeline library (@huggingface/tokenizers) takes on
 * trust. Without them an unknown model type falls back to the library's legacy model, a malformed
 * vocabulary or merge list fails deep inside with a JS TypeError, and a damaged one loads and then
 * drops text silently: the library's BPE skips a piece that is not in the vocabulary when there is
 * no unk token, so a lost byte symbol or a merge whose result is not in the vocabulary makes that
 * text vanish from training data without a word. The Rust `tokenizers` crate refuses most of these
 * when it builds the model (MergeTokenOutOfVocabulary, bad merges); so do we, naming the field.
 */
import { LowrankError } from '../errors.ts';
import { BYTE_TO_CHAR } from './bpe-trainer.ts';

const MODEL_TYPES = ['BPE', 'Unigram', 'WordPiece', 'WordLevel'];
/**
 * Every top-level key the tokenizers library writes. An unknown one is a damaged key (a typo in
 * "decoder" would otherwise load as a tokenizer with no decoder and turn " " into "Ġ" on decode).
 */
const TOP_LEVEL_KEYS = ['version', 'truncation', 'padding', 'added_tokens', 'normalizer', 'pre_tokenizer', 'post_processor', 'decoder', 'model'];

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A value in a one-line message, cut short: vocabularies run to megabytes. */
function shown(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Throws BAD_TOKENIZER naming `file` and the field at fault, unless `json` (which has a "model" object) is usable. */
export function checkTokenizerJson(json: Json, file: string): void {
  const bad = (detail: string): never => {
    throw new LowrankError('BAD_TOKENIZER', `${file}: ${detail}; re-save the tokenizer with transformers' save_pretrained`);
  };
  const unknown = Object.keys(json).find((key) => !TOP_LEVEL_KEYS.includes(key));
  if (unknown !== undefined) bad(`unknown top-level key ${shown(unknown)} (a tokenizer.json has ${TOP_LEVEL_KEYS.join(', ')})`);
  const model = json.model as Json;
  const type = model.type;
  if (type !== undefined && (typeof type !== 'string' || !MODEL_TYPES.includes(type))) {
    bad(`model type ${shown(type)} is not supported (${MODEL_TYPES.join(', ')})`);
  }
  const vocab = model.vocab;
  if (type === 'Unigram' || (type === undefined && Array.isArray(vocab))) {
    if (!Array.isArray(vocab) || vocab.length === 0) bad(`"model.vocab" of a Unigram model must be a non-empty list of [piece, score] pairs, got ${shown(vocab)}`);
    const at = (vocab as unknown[]).findIndex((e) => !Array.isArray(e) || typeof e[0] !== 'string' || typeof e[1] !== 'number');
    if (at >= 0) bad(`"model.vocab"[${at}] is ${shown((vocab as unknown[])[at])}, expected a [piece, score] pair`);
  } else {
    checkIdVocabulary(vocab, bad);
    if (type === 'BPE' || (type === undefined && model.merges !== undefined)) checkBpe(json, model, bad);
  }
  checkAddedTokens(json.added_tokens, isObject(vocab) ? (vocab as Record<string, number>) : {}, bad);
}

/** A token -> id object with distinct non-negative integer ids. (Loops, not Object.entries: vocabularies run to 150k entries.) */
function checkIdVocabulary(vocab: unknown, bad: (detail: string) => never): void {
  if (!isObject(vocab) || Object.keys(vocab).length === 0) bad(`"model.vocab" must be a non-empty object mapping tokens to ids, got ${shown(vocab)}`);
  const ids = new Set<number>();
  for (const token in vocab as Json) {
    const id = (vocab as Json)[token];
    if (!Number.isInteger(id) || (id as number) < 0) bad(`"model.vocab" maps ${shown(token)} to ${shown(id)}, expected a non-negative integer id`);
    if (ids.has(id as number)) {
      const other = Object.keys(vocab as Json).find((t) => (vocab as Json)[t] === id);
      bad(`"model.vocab" gives id ${id as number} to both ${shown(other)} and ${shown(token)}`);
    }
    ids.add(id as number);
  }
}

function checkBpe(json: Json, model: Json, bad: (detail: string) => never): void {
  const vocab = model.vocab as Record<string, number>;
  const has = (token: string) => Object.hasOwn(vocab, token);
  // Byte-level BPE spells every text in 256 byte symbols: one missing and that byte's text is dropped.
  const byteLevel = JSON.stringify([json.pre_tokenizer ?? null, json.decoder ?? null]).includes('"ByteLevel"');
  if (byteLevel && model.byte_fallback !== true) {
    const missing = BYTE_TO_CHAR.findIndex((c) => !has(c));
    if (missing >= 0) bad(`"model.vocab" lacks the byte-level symbol ${shown(BYTE_TO_CHAR[missing])} (byte 0x${missing.toString(16).padStart(2, '0')}), so text with that byte would be dropped`);
  }
  const merges = model.merges;
  if (merges === undefined) return;
  if (!Array.isArray(merges)) bad(`"model.merges" must be a list, got ${shown(merges)}`);
  const prefix = typeof model.continuing_subword_prefix === 'string' ? model.continuing_subword_prefix : '';
  for (let i = 0; i < (merges as unknown[]).length; i++) {
    const m = (merges as unknown[])[i];
    let left: unknown;
    let right: unknown;
    if (typeof m === 'string') {
      const space = m.indexOf(' ');
      if (space > 0 && m.indexOf(' ', space + 1) < 0) [left, right] = [m.slice(0, space), m.slice(space + 1)];
    } else if (Array.isArray(m) && m.length === 2) {
      [left, right] = m;
    }
    if (typeof left !== 'string' || typeof right !== 'string' || left === '' || right === '') {
      bad(`"model.merges"[${i}] is ${shown(m)}, expected "a b" or ["a", "b"]`);
    }
    const merged = (left as string) + (prefix && (right as string).startsWith(prefix) ? (right as string).slice(prefix.length) : (right as string));
    for (const token of [left as string, right as string, merged]) {
      if (!has(token)) bad(`"model.merges"[${i}] (${shown(m)}) needs ${shown(token)}, which is not in "model.vocab"`);
    }
  }
}

/** Added tokens: {id, content} each, and an id the vocabulary gives to another token is a clash. */
function checkAddedTokens(added: unknown, vocab: Record<string, number>, bad: (detail: string) => never): void {
  if (added === undefined || added === null) return;
  if (!Array.isArray(added)) bad(`"added_tokens" must be a list, got ${shown(added)}`);
  const checked = (added as unknown[]).map((t, i) => {
    if (!isObject(t) || !Number.isInteger(t.id) || (t.id as number) < 0 || typeof t.content !== 'string' || t.content === '') {
      bad(`"added_tokens"[${i}] is ${shown(t)}, expected {"id": integer, "content": string, ...}`);
    }
    const { id, content } = t as { id: number; content: string };
    if (Object.hasOwn(vocab, content) && vocab[content] !== id) bad(`"added_tokens"[${i}] ${shown(content)} has id ${id}, but "model.vocab" says ${vocab[content]}`);
    return { id, content };
  });
  // Only the added tokens' ids are looked up, so the vocabulary is scanned once, and only when there are any.
  const wanted = new Map(checked.map((t, i) => [t.id, i]));
  if (wanted.size === 0) return;
  for (const token in vocab) {
    const i = wanted.get(vocab[token]!);
    if (i !== undefined && checked[i]!.content !== token) {
      bad(`"added_tokens"[${i}] ${shown(checked[i]!.content)} has id ${checked[i]!.id}, which "model.vocab" gives to ${shown(token)}`);
    }
  }
}
