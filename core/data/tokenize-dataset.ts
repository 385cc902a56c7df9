/**
 * Normalised records -> training examples: token ids, and labels that are the ids where the loss
 * is taken and -100 elsewhere (the ignore index of PyTorch's cross_entropy and of
 * core/models/causal-lm.ts). Labels are not shifted: the loss shifts them.
 *
 * The label rule is "train on what the model should learn to write": the completion of a
 * prompt/completion pair, the response of an Alpaca record, and every assistant turn of a
 * conversation together with the marker that ends it (<|im_end|>, <|eot_id|>, </s>, ... — whatever
 * the chat template writes), so the model learns to stop. Pre-training text is trained everywhere.
 *
 * Finding the assistant tokens: the conversation is rendered by the chat template once in full
 * and, for each assistant message, incrementally — the messages before it plus the generation
 * prompt (where the reply starts) and the messages through it (where the turn ends). Those
 * prefixes cut the full text into untrained and trained segments; the full text is tokenized once,
 * and each cut is placed in token space by tokenizing the text up to it and matching that against
 * the full ids (a token that straddles a cut goes to the later segment). This works for any
 * template without `{% generation %}` markers, and the tests check it by decoding the trained
 * tokens back to the assistant replies.
 */
import type { ChatMessage, Tokenizer } from '../tokenize/tokenizer.ts';
import { LowrankError } from '../errors.ts';
import { RecordError, type NormalizedRecord, type Segment } from './formats.ts';

export const IGNORE_INDEX = -100;

export interface Example {
  /** [T] token ids, T <= seqLen. */
  ids: Int32Array;
  /** [T] ids where trained, IGNORE_INDEX elsewhere. */
  labels: Int32Array;
  /** Where it came from, `file:line`. */
  source: string;
}

export interface TokenizeOptions {
  seqLen: number;
  /** Also train on prompts, user turns and system messages (default false). */
  trainOnPrompt?: boolean;
}

function commonPrefixLength<T>(a: ArrayLike<T>, b: ArrayLike<T>): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

function render(tokenizer: Tokenizer, messages: ChatMessage[], addGenerationPrompt: boolean): string {
  try {
    return tokenizer.applyChatTemplate(messages, { addGenerationPrompt });
  } catch (e) {
    // The template's own complaint (roles that must alternate, ...) is about this record.
    if (e instanceof LowrankError && e.code === 'BAD_DATA') throw new RecordError(e.message);
    throw e;
  }
}

/**
 * Where a turn's trained text ends, given the text from the reply's start to the end of the
 * turn's rendering: the end-of-turn marker is kept and the whitespace that separates turns is
 * not. A template with no marker (the plain `role: content` default) ends a turn with the newline
 * alone, and that newline is then trained so the model still learns where a reply ends.
 */
function trainedTurnLength(turnText: string, content: string): number {
  const trimmed = turnText.trimEnd();
  const reply = content.trim();
  const at = reply ? trimmed.indexOf(reply) : -1;
  const nothingAfterReply = at >= 0 && at + reply.length >= trimmed.length;
  return nothingAfterReply ? turnText.length : trimmed.length;
}

/** A conversation as template-rendered text, cut into untrained and trained (assistant) segments. */
export function chatSegments(messages: ChatMessage[], tokenizer: Tokenizer): Segment[] {
  const full = render(tokenizer, messages, false);
  const segments: Segment[] = [];
  let cursor = 0;
  messages.forEach((message, i) => {
    if (message.role !== 'assistant') return;
    const prompt = render(tokenizer, messages.slice(0, i), true);
    const turn = render(tokenizer, messages.slice(0, i + 1), false);
    const start = Math.max(cursor, commonPrefixLength(prompt, full));
    const turnEnd = commonPrefixLength(turn, full);
    if (turnEnd <= start) throw new RecordError(`the chat template renders nothing for the assistant reply in message ${i}`);
    const end = start + trainedTurnLength(full.slice(start, turnEnd), message.content);
    if (start > cursor) segments.push({ text: full.slice(cursor, start), train: false });
    segments.push({ text: full.slice(start, end), train: true });
    cursor = end;
  });
  if (cursor < full.length) segments.push({ text: full.slice(cursor), train: false });
  return segments;
}

/**
 * Segments -> ids and labels. `addSpecialTokens` runs the tokenizer's post-processor (BOS for
 * Llama-style tokenizers; chat templates write their own, so they pass false). `appendEos` adds
 * the EOS token when the text does not already end with it, labelled like the last segment.
 */
export function tokenizeSegments(
  segments: Segment[],
  tokenizer: Tokenizer,
  opts: { addSpecialTokens: boolean; appendEos: boolean },
): { ids: number[]; labels: number[] } {
  // Adjacent segments with the same flag need no cut between them.
  const merged: Segment[] = [];
  for (const s of segments) {
    if (s.text === '') continue;
    const last = merged[merged.length - 1];
    if (last && last.train === s.train) last.text += s.text;
    else merged.push({ ...s });
  }
  const fullText = merged.map((s) => s.text).join('');
  const ids = tokenizer.encode(fullText, { addSpecialTokens: opts.addSpecialTokens });
  const labels = new Array<number>(ids.length);
  let textEnd = 0;
  let tokenStart = 0;
  merged.forEach((segment, k) => {
    textEnd += segment.text.length;
    const tokenEnd =
      k === merged.length - 1 ? ids.length : commonPrefixLength(tokenizer.encode(fullText.slice(0, textEnd), { addSpecialTokens: opts.addSpecialTokens }), ids);
    for (let t = tokenStart; t < tokenEnd; t++) labels[t] = segment.train ? ids[t]! : IGNORE_INDEX;
    tokenStart = Math.max(tokenStart, tokenEnd);
  });
  const eos = tokenizer.eosTokenId;
  if (opts.appendEos && eos !== undefined && ids[ids.length - 1] !== eos) {
    ids.push(eos);
    labels.push(merged[merged.length - 1]?.train ? eos : IGNORE_INDEX);
  }
  return { ids, labels };
}

/** The untruncated ids and labels of a prompt/completion, Alpaca or chat record. */
export function tokenizeRecord(record: NormalizedRecord, tokenizer: Tokenizer, trainOnPrompt = false): { ids: number[]; labels: number[] } {
  let out: { ids: number[]; labels: number[] };
  if (record.kind === 'chat') {
    // No EOS after a conversation: the template's end-of-turn marker is the stop signal.
    out = tokenizeSegments(chatSegments(record.messages, tokenizer), tokenizer, { addSpecialTokens: false, appendEos: false });
  } else if (record.kind === 'segments') {
    out = tokenizeSegments(record.segments, tokenizer, { addSpecialTokens: true, appendEos: true });
  } else {
    out = tokenizeSegments([{ text: record.text, train: true }], tokenizer, { addSpecialTokens: true, appendEos: true });
  }
  if (trainOnPrompt) out.labels = out.ids.slice();
  return out;
}

/** Cuts to the first seqLen tokens (the prompt survives; the end of a long reply is lost). */
export function toExample(tokens: { ids: number[]; labels: number[] }, seqLen: number, source: string): { example: Example; truncated: boolean } {
  const truncated = tokens.ids.length > seqLen;
  const n = Math.min(seqLen, tokens.ids.length);
  return {
    example: { ids: Int32Array.from(tokens.ids.slice(0, n)), labels: Int32Array.from(tokens.labels.slice(0, n)), source },
    truncated,
  };
}

export function trainedTokenCount(example: Example): number {
  let n = 0;
  for (const label of example.labels) if (label !== IGNORE_INDEX) n++;
  return n;
}

/**
 * Packing for pre-training text (the group_texts of transformers' run_clm.py): documents are
 * tokenized, each followed by EOS, concatenated, and cut into consecutive seqLen windows with no
 * padding; the last, shorter window is kept when it holds at least two tokens (one prediction).
 * Windows may span documents; the EOS between them tells the model a new one starts (attention is
 * not blocked across the boundary, as in GPT-2-style pre-training). Stops after `maxWindows`.
 */
export function packDocuments(
  documents: Array<{ text: string; source: string }>,
  tokenizer: Tokenizer,
  seqLen: number,
  maxWindows = Infinity,
): Example[] {
  if (!Number.isInteger(seqLen) || seqLen < 2) throw new LowrankError('BAD_ARGUMENT', `seqLen must be an integer >= 2, got ${seqLen}`);
  const eos = tokenizer.eosTokenId;
  const examples: Example[] = [];
  let window: number[] = [];
  let windowSource = '';
  const flush = () => {
    if (window.length >= 2) {
      const ids = Int32Array.from(window);
      examples.push({ ids, labels: ids.slice(), source: windowSource });
    }
    window = [];
  };
  for (const doc of documents) {
    const ids = tokenizer.encode(doc.text, { addSpecialTokens: true });
    if (eos !== undefined && ids[ids.length - 1] !== eos) ids.push(eos);
    for (let at = 0; at < ids.length; ) {
      if (window.length === 0) windowSource = doc.source;
      const take = Math.min(seqLen - window.length, ids.length - at);
      for (let t = 0; t < take; t++) window.push(ids[at + t]!);
      at += take;
      if (window.length === seqLen) {
        flush();
        if (examples.length >= maxWindows) return examples;
      }
    }
  }
  flush();
  return examples.slice(0, maxWindows);
}
