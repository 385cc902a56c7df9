/**
 * Reading a dataset file into raw records, each tagged with where it came from (`file:line`), so
 * every later complaint about a record can point at it. Four file types:
 *  - .jsonl: one JSON object per line (blank lines ignored);
 *  - .json:  an array of objects, or an object whose "data" field is that array;
 *  - .csv:   RFC 4180 (comma separator, double-quoted fields that may hold commas, quotes written
 *            as "", and newlines), a header row naming the columns; every value is a string;
 *  - .txt:   plain text for pre-training, documents separated by blank lines (as text-corpus.ts).
 * A record that cannot be read (bad JSON on a line, a CSV row with the wrong number of fields)
 * becomes a problem entry in file order instead of stopping the read, so the caller can list
 * them all or skip them. Only a file that cannot be read at all throws.
 */
import { readFile, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { locateJsonError } from '../io/json-error.ts';

export type FileKind = 'jsonl' | 'json' | 'csv' | 'txt';

/** One entry of a file in file order: a record, or the reason it could not be read. */
export type RawEntry =
  | { where: string; record: Record<string, unknown>; problem?: undefined }
  | { where: string; record?: undefined; problem: string };

export interface RawFile {
  file: string;
  kind: FileKind;
  entries: RawEntry[];
}

const KINDS: Record<string, FileKind> = { '.jsonl': 'jsonl', '.json': 'json', '.csv': 'csv', '.txt': 'txt' };

export function fileKindOf(file: string): FileKind {
  const ext = path.extname(file).toLowerCase();
  const kind = KINDS[ext];
  if (!kind) {
    const shown = ext ? `extension "${ext}"` : 'no extension';
    throw new LowrankError('BAD_DATA', `${file}: ${shown}; a dataset must be a .jsonl, .json, .csv or .txt file`);
  }
  return kind;
}

export async function readDatasetFile(file: string): Promise<RawFile> {
  const kind = fileKindOf(file);
  let bytes: Buffer;
  try {
    if ((await stat(file)).isDirectory()) throw new LowrankError('BAD_DATA', `${file} is a folder; pass one dataset file`);
    bytes = await readFile(file);
  } catch (e) {
    if (e instanceof LowrankError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new LowrankError('FILE_NOT_FOUND', `${file}: no such file`);
    throw new LowrankError('BAD_DATA', `${file}: cannot read (${code ?? String(e)})`);
  }
  const { text, invalid } = decodeLines(bytes);
  if (invalid.length === 0) return { file, kind, entries: parseDatasetText(file, kind, text) };
  // A .json file is one document: a bad byte anywhere spoils it. Line formats lose just that line,
  // reported like any bad record (under --on-bad-line).
  if (kind === 'json') throw new LowrankError('BAD_DATA', `${file}:${invalid[0].line}: not valid UTF-8 at byte ${invalid[0].byte}`);
  const problems: RawEntry[] = invalid.map(({ line, byte }) => ({ where: `${file}:${line}`, problem: `not valid UTF-8 at byte ${byte}` }));
  const entries = text.trim() === '' ? [] : parseDatasetText(file, kind, text);
  const lineOf = (where: string) => Number(/^:(\d+)/.exec(where.slice(file.length))?.[1] ?? 0);
  return { file, kind, entries: [...entries, ...problems].sort((a, b) => lineOf(a.where) - lineOf(b.where)) };
}

/**
 * The file as text, line by line: a line that is not valid UTF-8 is blanked (so every other line
 * keeps its number) and reported with its 1-based line number and the 1-based position of its first
 * bad byte within the line. Replacing bad bytes with U+FFFD, as a lenient decoder does, would train
 * on mojibake without a word.
 */
export function decodeLines(bytes: Uint8Array): { text: string; invalid: Array<{ line: number; byte: number }> } {
  const strict = new TextDecoder('utf-8', { fatal: true });
  try {
    return { text: strict.decode(bytes), invalid: [] };
  } catch {
    // Fall through to the line-by-line pass that finds the places.
  }
  const invalid: Array<{ line: number; byte: number }> = [];
  const lines: string[] = [];
  let start = 0;
  let line = 1;
  while (start <= bytes.length) {
    let end = bytes.indexOf(0x0a, start);
    if (end < 0) end = bytes.length;
    const raw = bytes.subarray(start, end);
    try {
      lines.push(strict.decode(raw));
    } catch {
      invalid.push({ line, byte: firstInvalidByte(raw) + 1 });
      lines.push('');
    }
    start = end + 1;
    line++;
  }
  return { text: lines.join('\n'), invalid };
}

/** Index of the first byte that starts no valid UTF-8 sequence (RFC 3629: no overlongs, surrogates or values above U+10FFFF). */
function firstInvalidByte(b: Uint8Array): number {
  for (let i = 0; i < b.length; ) {
    const c = b[i];
    let n = 0;
    let min = 0;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) [n, min] = [1, 0x80];
    else if (c >= 0xe0 && c <= 0xef) [n, min] = [2, 0x800];
    else if (c >= 0xf0 && c <= 0xf4) [n, min] = [3, 0x10000];
    else return i;
    let value = c & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const d = b[i + k];
      if (d === undefined || (d & 0xc0) !== 0x80) return i;
      value = (value << 6) | (d & 0x3f);
    }
    if (value < min || value > 0x10ffff || (value >= 0xd800 && value <= 0xdfff)) return i;
    i += n + 1;
  }
  return b.length;
}

/** Parses file contents already in memory (the tests and the UI's drag-and-drop use this). */
export function parseDatasetText(file: string, kind: FileKind, text: string): RawEntry[] {
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1); // Windows editors' byte-order mark
  if (text.trim() === '') throw new LowrankError('BAD_DATA', `${file}: the file is empty`);
  switch (kind) {
    case 'jsonl':
      return readJsonLines(file, text);
    case 'json':
      return readJsonArray(file, text);
    case 'csv':
      return readCsv(file, text);
    case 'txt':
      return readTextDocuments(file, text);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function typeName(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

function readJsonLines(file: string, text: string): RawEntry[] {
  const entries: RawEntry[] = [];
  text.split('\n').forEach((rawLine, i) => {
    const line = rawLine.endsWith('\r') ? rawLine.slice(0, -1) : rawLine;
    if (line.trim() === '') return;
    const where = `${file}:${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      const at = locateJsonError(line);
      const reason = at ? `${at.reason} at column ${at.column}` : 'cannot parse';
      entries.push({ where, problem: `not valid JSON: ${reason}` });
      return;
    }
    if (isObject(value)) entries.push({ where, record: value });
    else entries.push({ where, problem: `expected a JSON object, got ${typeName(value)}` });
  });
  return entries;
}

function readJsonArray(file: string, text: string): RawEntry[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    // A broken .json file has no records to salvage: everything after the error is unreadable.
    const at = locateJsonError(text);
    const where = at ? `${file}:${at.line}` : file;
    const hint = text.trimStart().startsWith('{') && text.includes('}\n{') ? ' (one object per line? name the file .jsonl)' : '';
    throw new LowrankError('BAD_DATA', `${where}: not valid JSON: ${at ? `${at.reason} at column ${at.column}` : 'cannot parse'}${hint}`);
  }
  let items: unknown[];
  let inData = false;
  if (Array.isArray(value)) items = value;
  else if (isObject(value) && Array.isArray(value.data)) {
    items = value.data;
    inData = true;
  } else {
    throw new LowrankError('BAD_DATA', `${file}: expected an array of records or an object with a "data" array, got ${typeName(value)}${isObject(value) ? ` with keys ${Object.keys(value).join(', ')}` : ''}`);
  }
  const lines = arrayElementLines(text, inData);
  return items.map((item, i) => {
    // The line is what an editor jumps to; the record number is what a script indexes by.
    const line = lines[i];
    const where = line !== undefined ? `${file}:${line} (record ${i + 1})` : `${file}:record ${i + 1}`;
    return isObject(item) ? { where, record: item } : { where, problem: `expected a JSON object, got ${typeName(item)}` };
  });
}

/**
 * The 1-based line on which each element of the records array starts. `text` is known to be valid
 * JSON, so a shallow scan suffices: skip strings, track nesting, and note where each element of
 * the target array (the top-level array, or the array under the top-level "data" key) begins.
 */
function arrayElementLines(text: string, inData: boolean): number[] {
  const lines: number[] = [];
  let line = 1;
  let depth = 0;
  let targetDepth = -1; // depth inside the target array, once entered
  let lastKey: string | undefined;
  let expectElement = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '\n') {
      line++;
      continue;
    }
    if (c === ' ' || c === '\t' || c === '\r') continue;
    if (expectElement && c !== ']') {
      lines.push(line);
      expectElement = false;
    }
    if (c === '"') {
      const start = i;
      for (i++; text[i] !== '"'; i++) if (text[i] === '\\') i++;
      if (depth === 1) lastKey = JSON.parse(text.slice(start, i + 1)) as string;
    } else if (c === '[' || c === '{') {
      depth++;
      if (c === '[' && targetDepth < 0 && (inData ? depth === 2 && lastKey === 'data' : depth === 1)) {
        targetDepth = depth;
        expectElement = true;
      }
    } else if (c === ']' || c === '}') {
      if (depth === targetDepth) return lines;
      depth--;
    } else if (c === ',' && depth === targetDepth) {
      expectElement = true;
    }
  }
  return lines;
}

interface CsvRow {
  line: number;
  fields: string[];
  problem?: string;
}

/** RFC 4180 rows; a row is reported at the line it starts on, even when quoted newlines follow. */
export function parseCsvRows(text: string): CsvRow[] {
  const rows: CsvRow[] = [];
  let line = 1;
  let i = 0;
  while (i < text.length) {
    const row: CsvRow = { line, fields: [] };
    let field = '';
    for (;;) {
      if (text[i] === '"') {
        const openedOn = line;
        let closed = false;
        for (i++; i < text.length; i++) {
          if (text[i] === '"') {
            if (text[i + 1] === '"') {
              field += '"';
              i++;
            } else {
              closed = true;
              i++;
              break;
            }
          } else {
            if (text[i] === '\n') line++;
            field += text[i];
          }
        }
        if (!closed) {
          row.problem ??= `quoted field opened on line ${openedOn} is never closed`;
        } else if (i < text.length && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') {
          row.problem ??= `unexpected ${JSON.stringify(text[i])} after a closing quote (write a quote inside a quoted field as "")`;
        }
      }
      // Unquoted text (or stray text after a closing quote, kept as Python's csv module does).
      while (i < text.length && text[i] !== ',' && text[i] !== '\n' && !(text[i] === '\r' && text[i + 1] === '\n')) {
        field += text[i++];
      }
      row.fields.push(field);
      field = '';
      if (text[i] === ',') {
        i++;
        continue;
      }
      if (text[i] === '\r') i++;
      if (text[i] === '\n') {
        i++;
        line++;
      }
      break;
    }
    const blank = row.fields.length === 1 && row.fields[0] === '' && !row.problem;
    if (!blank) rows.push(row);
  }
  return rows;
}

function readCsv(file: string, text: string): RawEntry[] {
  const [header, ...rows] = parseCsvRows(text);
  if (!header) throw new LowrankError('BAD_DATA', `${file}: the file is empty`);
  const columns = header.fields.map((f) => f.trim());
  if (header.problem) throw new LowrankError('BAD_DATA', `${file}:${header.line}: header row: ${header.problem}`);
  const seen = new Set<string>();
  for (const name of columns) {
    if (name === '') throw new LowrankError('BAD_DATA', `${file}:${header.line}: the header row has an empty column name`);
    if (seen.has(name)) throw new LowrankError('BAD_DATA', `${file}:${header.line}: column ${JSON.stringify(name)} appears twice in the header row`);
    seen.add(name);
  }
  // A quoted header field may hold a newline or a carriage return; messages stay on one line.
  const listed = columns.map((name) => (/[\u0000-\u001f"]/.test(name) ? JSON.stringify(name) : name)).join(', ');
  return rows.map((row) => {
    const where = `${file}:${row.line}`;
    if (row.problem) return { where, problem: row.problem };
    if (row.fields.length !== columns.length) {
      const what = row.fields.length < columns.length ? `missing column ${JSON.stringify(columns[row.fields.length])}` : 'more fields than columns';
      return { where, problem: `${what}: the row has ${row.fields.length} fields, the header has ${columns.length} (${listed})` };
    }
    const record: Record<string, unknown> = {};
    columns.forEach((name, c) => (record[name] = row.fields[c]));
    return { where, record };
  });
}

/** Documents separated by one or more blank lines; each becomes a {"text"} record. */
function readTextDocuments(file: string, text: string): RawEntry[] {
  const entries: RawEntry[] = [];
  let current: string[] = [];
  let startLine = 0;
  const flush = () => {
    if (current.length) entries.push({ where: `${file}:${startLine}`, record: { text: current.join('\n') } });
    current = [];
  };
  text.split('\n').forEach((rawLine, i) => {
    const line = rawLine.endsWith('\r') ? rawLine.slice(0, -1) : rawLine;
    if (line.trim() === '') return flush();
    if (!current.length) startLine = i + 1;
    current.push(line);
  });
  flush();
  return entries;
}
