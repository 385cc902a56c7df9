/**
 * Dataset formats: telling them apart by their keys, checking each record, and normalising it to
 * what the tokenizer step consumes — plain text, a conversation, or text segments each marked as
 * trained or not.
 *
 *   format             keys                                     becomes
 *   text               text                                     text (packed for pre-training)
 *   prompt-completion  prompt, completion                       segments: prompt (untrained) + completion (trained)
 *   alpaca             instruction, output, [input], [system]   a conversation, or the Alpaca template (below)
 *   chat               messages: [{role, content}]              a conversation
 *   sharegpt           conversations: [{from, value}]           a conversation (human/gpt/system -> user/assistant/system)
 *
 * Choices, following TRL's SFTTrainer where it has one:
 *  - prompt/completion is raw text: the prompt is used verbatim and the completion follows it
 *    directly, so the data decides its own formatting (TRL's "standard" prompt-completion type).
 *    Wrap it as a conversation yourself (the chat format) if you want the chat template.
 *  - Alpaca is an instruction-following format, so it goes through the model's chat template when
 *    the tokenizer folder has one (system? / user: instruction + "\n\n" + input / assistant:
 *    output), and through the original Stanford Alpaca prompt template otherwise.
 */
import type { ChatMessage } from '../tokenize/tokenizer.ts';
import { LowrankError } from '../errors.ts';
import type { RawEntry } from './readers.ts';

export const DATASET_FORMATS = ['text', 'prompt-completion', 'alpaca', 'chat', 'sharegpt'] as const;
export type DatasetFormat = (typeof DATASET_FORMATS)[number];

export interface Segment {
  text: string;
  train: boolean;
}

export type NormalizedRecord =
  | { kind: 'text'; text: string }
  | { kind: 'segments'; segments: Segment[] }
  | { kind: 'chat'; messages: ChatMessage[] };

/** A record that fails validation; `message` is the reason alone (the caller adds file:line). */
export class RecordError extends Error {}

/**
 * The Stanford Alpaca prompts (github.com/tatsu-lab/stanford_alpaca, train.py PROMPT_DICT),
 * verbatim; the response follows "### Response:\n" directly, and an EOS token follows it.
 */
export const ALPACA_PROMPT_WITH_INPUT =
  'Below is an instruction that describes a task, paired with an input that provides further context. ' +
  'Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n';
export const ALPACA_PROMPT_NO_INPUT =
  'Below is an instruction that describes a task. ' +
  'Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Response:\n';

const CHAT_ROLES = ['system', 'user', 'assistant'] as const;
/** ShareGPT speaker names (and the role names some exports use instead) -> chat roles. */
const SHAREGPT_ROLES: Record<string, ChatMessage['role']> = {
  human: 'user',
  user: 'user',
  gpt: 'assistant',
  assistant: 'assistant',
  system: 'system',
};

/** How many leading records detection looks at. */
const DETECT_SAMPLE = 20;

/** The format one record's keys suggest, or undefined. */
export function formatOfRecord(record: Record<string, unknown>): DatasetFormat | undefined {
  for (const key of ['messages', 'conversations']) {
    const list = record[key];
    if (!Array.isArray(list)) continue;
    const first = list.find((m) => typeof m === 'object' && m !== null) as Record<string, unknown> | undefined;
    if (first && 'from' in first && 'value' in first) return 'sharegpt';
    if (first && 'role' in first) return 'chat';
    return key === 'messages' ? 'chat' : 'sharegpt';
  }
  if ('instruction' in record && 'output' in record) return 'alpaca';
  if ('prompt' in record && 'completion' in record) return 'prompt-completion';
  if ('text' in record) return 'text';
  return undefined;
}

/**
 * The format most of the first records agree on, so one odd record at the top does not decide it;
 * ties go to the more specific format (sharegpt, chat, alpaca, prompt-completion, then text).
 */
export function detectFormat(entries: RawEntry[], file: string): DatasetFormat {
  const votes = new Map<DatasetFormat, number>();
  const sample = entries.filter((e) => e.record).slice(0, DETECT_SAMPLE);
  for (const entry of sample) {
    const format = formatOfRecord(entry.record!);
    if (format) votes.set(format, (votes.get(format) ?? 0) + 1);
  }
  if (sample.length === 0) throw noReadableRecord(entries, file);
  let best: DatasetFormat | undefined;
  for (const format of [...DATASET_FORMATS].reverse()) {
    if ((votes.get(format) ?? 0) > (best ? votes.get(best)! : 0)) best = format;
  }
  if (best) return best;
  const keys = [...new Set(sample.flatMap((e) => Object.keys(e.record!)))].slice(0, 12);
  throw new LowrankError(
    'BAD_DATA',
    `${file}: cannot tell the dataset format: the records have keys ${keys.map((k) => `"${k}"`).join(', ') || '(none)'}; expected "text", "prompt"+"completion", "instruction"+"output" (Alpaca), ` +
      `"messages" (chat) or "conversations" (ShareGPT); rename the fields or force a format with --format ${DATASET_FORMATS.join('|')}`,
  );
}

/**
 * No record to detect the format from: say why (the bad records, by file:line, or that there are
 * none) rather than ask the user to rename fields the file does not have.
 */
function noReadableRecord(entries: RawEntry[], file: string): LowrankError {
  const bad = entries.filter((e) => e.problem !== undefined);
  if (bad.length === 0) {
    const onlyHeader = /\.csv$/i.test(file) ? ' (only a header row)' : '';
    return new LowrankError('BAD_DATA', `${file}: the file holds no records${onlyHeader}; add some`);
  }
  const count = bad.length === 1 ? '1 bad record' : `${bad.length} bad records${bad.length > 3 ? ', the first 3' : ''}`;
  const listed = bad.slice(0, 3).map((e) => `${e.where}: ${e.problem}`).join('; ');
  return new LowrankError('BAD_DATA', `${file}: no record could be read (${count}: ${listed}); fix the file`);
}

/** A --format value: one of DATASET_FORMATS, or 'auto' (detect). */
export function parseFormat(value: string): DatasetFormat | 'auto' {
  if (value === 'auto' || (DATASET_FORMATS as readonly string[]).includes(value)) return value as DatasetFormat | 'auto';
  throw new LowrankError('BAD_ARGUMENT', `--format must be one of ${DATASET_FORMATS.join(', ')} (or auto), got "${value}"`);
}

export interface NormalizeOptions {
  /** Whether the tokenizer folder has its own chat template (decides how Alpaca is rendered). */
  hasChatTemplate: boolean;
}

/** Checks one record against its format; throws RecordError with a precise reason. */
export function normalizeRecord(record: Record<string, unknown>, format: DatasetFormat, opts: NormalizeOptions): NormalizedRecord {
  switch (format) {
    case 'text':
      return { kind: 'text', text: requireString(record, 'text') };
    case 'prompt-completion': {
      const prompt = requireString(record, 'prompt', { allowEmpty: true });
      const completion = requireString(record, 'completion', { what: 'completion' });
      return { kind: 'segments', segments: [{ text: prompt, train: false }, { text: completion, train: true }] };
    }
    case 'alpaca':
      return normalizeAlpaca(record, opts);
    case 'chat':
      return { kind: 'chat', messages: normalizeChat(record) };
    case 'sharegpt':
      return { kind: 'chat', messages: normalizeShareGpt(record) };
  }
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `${typeof value} ${JSON.stringify(value).slice(0, 30)}`;
}

function requireString(record: Record<string, unknown>, key: string, opts: { allowEmpty?: boolean; what?: string } = {}): string {
  if (!(key in record) || record[key] === undefined) throw new RecordError(`missing "${key}"`);
  const value = record[key];
  if (typeof value !== 'string') throw new RecordError(`"${key}" must be a string, got ${describe(value)}`);
  if (!opts.allowEmpty && value.trim() === '') throw new RecordError(`empty ${opts.what ?? `"${key}"`}`);
  return value;
}

function optionalString(record: Record<string, unknown>, key: string): string {
  const value = record[key];
  if (value === undefined || value === null) return '';
  if (typeof value !== 'string') throw new RecordError(`"${key}" must be a string, got ${describe(value)}`);
  return value;
}

function normalizeAlpaca(record: Record<string, unknown>, opts: NormalizeOptions): NormalizedRecord {
  const instruction = requireString(record, 'instruction');
  const output = requireString(record, 'output', { what: 'output' });
  const input = optionalString(record, 'input');
  const system = optionalString(record, 'system');
  if (opts.hasChatTemplate) {
    const messages: ChatMessage[] = [];
    if (system.trim()) messages.push({ role: 'system', content: system });
    messages.push({ role: 'user', content: input.trim() ? `${instruction}\n\n${input}` : instruction });
    messages.push({ role: 'assistant', content: output });
    return { kind: 'chat', messages };
  }
  const template = input.trim() ? ALPACA_PROMPT_WITH_INPUT : ALPACA_PROMPT_NO_INPUT;
  // Replacer functions, so "$&" and friends in the data are not read as replacement patterns.
  const prompt = template.replace('{instruction}', () => instruction).replace('{input}', () => input);
  return {
    kind: 'segments',
    segments: [{ text: system.trim() ? `${system}\n\n${prompt}` : prompt, train: false }, { text: output, train: true }],
  };
}

/** CSV cells hold strings: a "messages" cell may be the conversation as a JSON string. */
function listField(record: Record<string, unknown>, key: string): unknown[] {
  if (!(key in record)) throw new RecordError(`missing "${key}"`);
  let value = record[key];
  if (typeof value === 'string' && value.trimStart().startsWith('[')) {
    try {
      value = JSON.parse(value);
    } catch {
      throw new RecordError(`"${key}" is a string but not a valid JSON array`);
    }
  }
  if (!Array.isArray(value)) throw new RecordError(`"${key}" must be an array, got ${describe(value)}`);
  if (value.length === 0) throw new RecordError(`"${key}" is empty`);
  return value;
}

function normalizeChat(record: Record<string, unknown>): ChatMessage[] {
  // "conversations" is accepted holding chat messages; a record with neither key is missing "messages".
  const key = 'conversations' in record && !('messages' in record) ? 'conversations' : 'messages';
  const messages = listField(record, key).map((m, i): ChatMessage => {
    const at = `"${key}"[${i}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new RecordError(`${at} must be an object with "role" and "content"`);
    const { role, content } = m as Record<string, unknown>;
    if (role === undefined) throw new RecordError(`${at} is missing "role"`);
    if (typeof role !== 'string' || !(CHAT_ROLES as readonly string[]).includes(role)) {
      throw new RecordError(`${at}.role must be one of ${CHAT_ROLES.join('/')}, got ${describe(role)}`);
    }
    if (content === undefined) throw new RecordError(`${at} is missing "content"`);
    if (typeof content !== 'string') throw new RecordError(`${at}.content must be a string, got ${describe(content)}`);
    if (role === 'assistant' && content.trim() === '') throw new RecordError(`${at}.content is an empty assistant reply`);
    return { role, content };
  });
  return checkConversation(messages, key);
}

function normalizeShareGpt(record: Record<string, unknown>): ChatMessage[] {
  const key = 'messages' in record && !('conversations' in record) ? 'messages' : 'conversations';
  const messages = listField(record, key).map((m, i): ChatMessage => {
    const at = `"${key}"[${i}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new RecordError(`${at} must be an object with "from" and "value"`);
    const { from, value } = m as Record<string, unknown>;
    if (from === undefined) throw new RecordError(`${at} is missing "from"`);
    const role = typeof from === 'string' ? SHAREGPT_ROLES[from] : undefined;
    if (!role) throw new RecordError(`${at}.from must be one of human/gpt/system, got ${describe(from)}`);
    if (value === undefined) throw new RecordError(`${at} is missing "value"`);
    if (typeof value !== 'string') throw new RecordError(`${at}.value must be a string, got ${describe(value)}`);
    if (role === 'assistant' && value.trim() === '') throw new RecordError(`${at}.value is an empty gpt reply`);
    return { role, content: value };
  });
  return checkConversation(messages, key);
}

function checkConversation(messages: ChatMessage[], key: string): ChatMessage[] {
  if (!messages.some((m) => m.role === 'assistant')) throw new RecordError(`"${key}" has no assistant reply to train on`);
  const lateSystem = messages.findIndex((m, i) => i > 0 && m.role === 'system');
  if (lateSystem > 0) throw new RecordError(`"${key}"[${lateSystem}] is a system message; only the first message may be one`);
  return messages;
}
