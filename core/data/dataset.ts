/**
 * A dataset file -> training and validation examples, and the preview that `lowrank data preview`
 * and the UI show. The stages: read (readers.ts) -> detect or force the format and check each
 * record (formats.ts) -> tokenize with labels (tokenize-dataset.ts) -> seeded split (batches.ts).
 *
 * Defaults: format detected from the first records' keys; --on-bad-line fail (every bad record is
 * collected first, then one error lists the first 10 as file:line: reason); no validation split;
 * seed 0; loss only on completions / responses / assistant turns; text packed into seqLen windows;
 * longer sequences cut to seqLen and counted (one left with nothing to train on is dropped, and
 * counted too). The split is by record (by document for text), so no record is in both parts.
 */
import { LowrankError } from '../errors.ts';
import type { Tokenizer } from '../tokenize/tokenizer.ts';
import { splitTrainValidation } from './batches.ts';
import { detectFormat, normalizeRecord, RecordError, type DatasetFormat, type NormalizedRecord } from './formats.ts';
import { readDatasetFile } from './readers.ts';
import { IGNORE_INDEX, packDocuments, tokenizeRecord, toExample, trainedTokenCount, type Example } from './tokenize-dataset.ts';

export type OnBadLine = 'skip' | 'fail';

export interface DatasetOptions {
  /** Forced format; undefined or 'auto' detects it. */
  format?: DatasetFormat | 'auto';
  seqLen: number;
  onBadLine?: OnBadLine;
  /** Validation part: a fraction in [0, 1) or a whole number of records (default 0). */
  validation?: number;
  seed?: number;
  trainOnPrompt?: boolean;
  /** Pack text documents into full seqLen windows (default true); false gives one example per document. */
  pack?: boolean;
}

export interface DatasetProblem {
  where: string;
  reason: string;
}

export interface DatasetStats {
  /** Usable records (documents for text), both parts. */
  records: number;
  /** Bad records left out (with onBadLine 'skip'). */
  skipped: number;
  /** Records longer than seqLen, cut to it. */
  truncated: number;
  /** Truncated records dropped because nothing trainable was left within seqLen. */
  droppedAfterTruncation: number;
  /** Tokens in all examples (no padding). */
  tokens: number;
  /** Tokens with a label (where the loss is taken). */
  trainedTokens: number;
}

export interface LoadedDataset {
  file: string;
  format: DatasetFormat;
  train: Example[];
  validation: Example[];
  stats: DatasetStats;
  problems: DatasetProblem[];
}

const LISTED_PROBLEMS = 10;

/** An --on-bad-line value. */
export function parseOnBadLine(value: string): OnBadLine {
  if (value === 'skip' || value === 'fail') return value;
  throw new LowrankError('BAD_ARGUMENT', `--on-bad-line must be skip or fail, got "${value}"`);
}

function checkSeqLen(seqLen: number): void {
  if (!Number.isInteger(seqLen) || seqLen < 2) throw new LowrankError('BAD_ARGUMENT', `seqLen must be an integer >= 2, got ${seqLen}`);
}

interface CheckedRecord {
  source: string;
  record: NormalizedRecord;
}

/** Reads and checks every record; bad ones become problems, in file order. */
async function readChecked(file: string, tokenizer: Tokenizer, forced: DatasetFormat | 'auto' | undefined) {
  const raw = await readDatasetFile(file);
  let format: DatasetFormat;
  if (raw.kind === 'txt') {
    if (forced && forced !== 'auto' && forced !== 'text') {
      throw new LowrankError('BAD_ARGUMENT', `${file}: a .txt file holds plain text; --format ${forced} needs a .jsonl, .json or .csv file`);
    }
    format = 'text';
  } else {
    format = forced && forced !== 'auto' ? forced : detectFormat(raw.entries, file);
  }
  const items: CheckedRecord[] = [];
  const problems: DatasetProblem[] = [];
  for (const entry of raw.entries) {
    if (entry.problem !== undefined) {
      problems.push({ where: entry.where, reason: entry.problem });
      continue;
    }
    try {
      items.push({ source: entry.where, record: normalizeRecord(entry.record, format, { hasChatTemplate: tokenizer.hasChatTemplate }) });
    } catch (e) {
      if (!(e instanceof RecordError)) throw e;
      problems.push({ where: entry.where, reason: e.message });
    }
  }
  return { format, items, problems };
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ');
}

function badDataError(file: string, problems: DatasetProblem[]): LowrankError {
  const listed = problems.slice(0, LISTED_PROBLEMS).map((p) => `${p.where}: ${oneLine(p.reason)}`);
  const count = problems.length === 1 ? '1 bad record' : `${problems.length} bad records`;
  const head = problems.length > LISTED_PROBLEMS ? `${count}, the first ${LISTED_PROBLEMS}: ` : `${count}: `;
  return new LowrankError(
    'BAD_DATA',
    `${file}: ${head}${listed.join('; ')}. Fix them, or pass --on-bad-line skip to train without them`,
  );
}

export async function loadDataset(file: string, tokenizer: Tokenizer, opts: DatasetOptions): Promise<LoadedDataset> {
  const seqLen = opts.seqLen;
  checkSeqLen(seqLen);
  const { format, items, problems } = await readChecked(file, tokenizer, opts.format);

  // Tokenize before deciding: a chat template can still reject a conversation (roles that do not
  // alternate), and that is one more bad record to list.
  const tokenized: Array<{ source: string; ids: number[]; labels: number[] } | { source: string; text: string }> = [];
  for (const item of items) {
    if (item.record.kind === 'text' && opts.pack !== false) {
      tokenized.push({ source: item.source, text: item.record.text });
      continue;
    }
    try {
      tokenized.push({ source: item.source, ...tokenizeRecord(item.record, tokenizer, opts.trainOnPrompt) });
    } catch (e) {
      if (!(e instanceof RecordError)) throw e;
      problems.push({ where: item.source, reason: e.message });
    }
  }
  if (problems.length && (opts.onBadLine ?? 'fail') === 'fail') {
    // Keep file order when template rejections were appended after reader/format problems.
    throw badDataError(file, sortByPosition(problems));
  }
  if (tokenized.length === 0) {
    throw new LowrankError('BAD_DATA', `${file}: no usable records (${problems.length} bad records skipped)`);
  }

  const parts = splitTrainValidation(tokenized, opts.validation ?? 0, opts.seed ?? 0);
  const stats: DatasetStats = {
    records: tokenized.length,
    skipped: problems.length,
    truncated: 0,
    droppedAfterTruncation: 0,
    tokens: 0,
    trainedTokens: 0,
  };
  const build = (part: typeof tokenized): Example[] => {
    let examples: Example[];
    if (part.length && 'text' in part[0]!) {
      examples = packDocuments(part as Array<{ source: string; text: string }>, tokenizer, seqLen);
    } else {
      examples = [];
      for (const item of part as Array<{ source: string; ids: number[]; labels: number[] }>) {
        const { example, truncated } = toExample(item, seqLen, item.source);
        if (truncated) stats.truncated++;
        if (trainedTokenCount(example) === 0) {
          stats.droppedAfterTruncation++;
          continue;
        }
        examples.push(example);
      }
    }
    for (const e of examples) {
      stats.tokens += e.ids.length;
      stats.trainedTokens += trainedTokenCount(e);
    }
    return examples;
  };
  const train = build(parts.train);
  const validation = build(parts.validation);
  if (train.length === 0) {
    throw new LowrankError('BAD_DATA', `${file}: every record's prompt is longer than seqLen ${seqLen}, nothing is left to train on; raise --seq-len`);
  }
  return { file, format, train, validation, stats, problems: sortByPosition(problems) };
}

/** Orders problems by line, then by record number (where strings are `file:line` or `file:line (record n)`). */
function sortByPosition(problems: DatasetProblem[]): DatasetProblem[] {
  const position = (where: string) => Number(/:(?:record )?(\d+)(?: \(record \d+\))?$/.exec(where)?.[1] ?? 0);
  return problems.map((p, i) => ({ p, i })).sort((a, b) => position(a.p.where) - position(b.p.where) || a.i - b.i).map((x) => x.p);
}

export interface PreviewSpan {
  text: string;
  trained: boolean;
}

export interface PreviewExample {
  source: string;
  tokens: number;
  trainedTokens: number;
  truncated: boolean;
  /** The example decoded back from its tokens, in runs of trained and untrained tokens. */
  spans: PreviewSpan[];
}

export interface DatasetPreview {
  file: string;
  format: DatasetFormat;
  /** Usable records in the whole file. */
  records: number;
  examples: PreviewExample[];
  /** Bad records in the whole file (template rejections only among the previewed ones). */
  problems: DatasetProblem[];
}

/** Decodes an example in runs of consecutive trained / untrained tokens. */
export function previewSpans(example: Example, tokenizer: Tokenizer): PreviewSpan[] {
  const spans: PreviewSpan[] = [];
  let runStart = 0;
  for (let t = 1; t <= example.ids.length; t++) {
    const trained = example.labels[runStart] !== IGNORE_INDEX;
    if (t < example.ids.length && (example.labels[t] !== IGNORE_INDEX) === trained) continue;
    spans.push({ text: tokenizer.decode([...example.ids.subarray(runStart, t)]), trained });
    runStart = t;
  }
  return spans;
}

/**
 * The first `count` examples (default 3) as the model will see them. Never throws for bad
 * records — it lists them — but does for a file it cannot read.
 */
export async function previewDataset(
  file: string,
  tokenizer: Tokenizer,
  opts: Omit<DatasetOptions, 'onBadLine' | 'validation' | 'seed'> & { count?: number },
): Promise<DatasetPreview> {
  const count = opts.count ?? 3;
  checkSeqLen(opts.seqLen);
  const { format, items, problems } = await readChecked(file, tokenizer, opts.format);
  const shown: Array<{ example: Example; truncated: boolean }> = [];
  if (format === 'text' && opts.pack !== false) {
    const docs = items.map((i) => ({ source: i.source, text: (i.record as { text: string }).text }));
    for (const example of packDocuments(docs, tokenizer, opts.seqLen, count)) shown.push({ example, truncated: false });
  } else {
    for (const item of items) {
      if (shown.length >= count) break;
      try {
        shown.push(toExample(tokenizeRecord(item.record, tokenizer, opts.trainOnPrompt), opts.seqLen, item.source));
      } catch (e) {
        if (!(e instanceof RecordError)) throw e;
        problems.push({ where: item.source, reason: e.message });
      }
    }
  }
  return {
    file,
    format,
    records: items.length,
    examples: shown.map(({ example, truncated }) => ({
      source: example.source,
      tokens: example.ids.length,
      trainedTokens: trainedTokenCount(example),
      truncated,
      spans: previewSpans(example, tokenizer),
    })),
    problems: sortByPosition(problems),
  };
}

/**
 * The preview as terminal text: trained text green (or between «» without color), the rest as is.
 */
export function formatPreview(preview: DatasetPreview, opts: { color?: boolean } = {}): string {
  const mark = (s: PreviewSpan) => (!s.trained ? s.text : opts.color ? `\x1b[32m${s.text}\x1b[0m` : `«${s.text}»`);
  const lines = [`${preview.file}: ${preview.format} format, ${preview.records} usable records, ${preview.problems.length} bad`];
  for (const p of preview.problems.slice(0, LISTED_PROBLEMS)) lines.push(`  ${p.where}: ${oneLine(p.reason)}`);
  if (!opts.color) lines.push('(trained tokens are shown «like this»)');
  for (const e of preview.examples) {
    lines.push('', `── ${e.source}: ${e.tokens} tokens, ${e.trainedTokens} trained${e.truncated ? ', truncated' : ''}`);
    lines.push(e.spans.map(mark).join(''));
  }
  return lines.join('\n');
}
