/**
 * Property-based fuzzing of the dataset readers (fast-check): parseDatasetText on random and
 * format-shaped text for .jsonl, .json, .csv and .txt, and readDatasetFile on random bytes (invalid
 * UTF-8 included). Every input gives entries or a LowrankError BAD_DATA, never another exception, and
 * the entries keep their promises: each is a record (a plain object; for CSV, exactly the header's
 * columns as strings; for text, a non-empty "text") or a one-line problem, each tagged `file:line` with
 * a line inside the file, in file order.
 */
import { afterAll, describe, it } from 'vitest';
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseDatasetText, readDatasetFile, type FileKind, type RawEntry } from '../../core/data/readers.ts';
import { checkProperty, classify, FUZZ_TEST_TIMEOUT_MS, newStats } from './fuzz-harness.ts';
import { scratchRoot } from './harness.ts';

const root = scratchRoot('fuzz-data');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
const KINDS: FileKind[] = ['jsonl', 'json', 'csv', 'txt'];
const EXPECTED = 'entries (records or one-line problems, each file:line inside the file, in file order) or LowrankError BAD_DATA; nothing else; no input over 1 s';

/** The line an entry's `where` names: `file:N`, `file:N (record k)`; `file:record k` has none (0). */
function lineOf(file: string, where: string): number {
  if (!where.startsWith(`${file}:`)) throw new Error(`where ${JSON.stringify(where)} does not start with the file`);
  const rest = where.slice(file.length + 1);
  const m = /^(\d+)(?: \(record \d+\))?$/.exec(rest);
  if (m) return Number(m[1]);
  if (/^record \d+$/.test(rest)) return 0;
  throw new Error(`where ${JSON.stringify(where)} is not file:line`);
}

/** Throws a plain Error (failing the property) where the entries break a promise of readers.ts. */
function checkEntries(file: string, kind: FileKind, text: string, entries: RawEntry[]): void {
  const lines = text.split('\n').length;
  let previous = 0;
  let columns: string[] | undefined;
  for (const e of entries) {
    const line = lineOf(file, e.where);
    if (line > lines) throw new Error(`${e.where}: line past the end of the ${lines}-line file`);
    if (line !== 0 && line < previous) throw new Error(`${e.where} comes after line ${previous}: not in file order`);
    if (line !== 0) previous = line;
    if ((e.record === undefined) === (e.problem === undefined)) throw new Error(`${e.where}: needs exactly one of record and problem`);
    if (e.problem !== undefined) {
      if (e.problem === '' || /[\r\n]/.test(e.problem)) throw new Error(`${e.where}: problem ${JSON.stringify(e.problem)} is empty or spans lines`);
      continue;
    }
    const r = e.record!;
    if (typeof r !== 'object' || r === null || Array.isArray(r)) throw new Error(`${e.where}: record is not a plain object`);
    if (kind === 'txt' && (typeof r.text !== 'string' || r.text.trim() === '')) throw new Error(`${e.where}: a text document with no text`);
    if (kind === 'csv') {
      columns ??= Object.keys(r);
      if (JSON.stringify(Object.keys(r)) !== JSON.stringify(columns)) throw new Error(`${e.where}: columns ${Object.keys(r).join(',')} differ from ${columns.join(',')}`);
      if (!Object.values(r).every((v) => typeof v === 'string')) throw new Error(`${e.where}: a CSV value that is not a string`);
    }
  }
}

// Text shaped like each format, so the fuzzing gets past "not JSON" into the readers' record logic.
const csvField = fc.string({ unit: fc.constantFrom('a', 'b', ' ', ',', '"', '\n', '\r', 'é'), maxLength: 8 });
const csvText = fc.array(fc.array(csvField, { minLength: 1, maxLength: 4 }), { maxLength: 6 }).map((rows) => rows.map((r) => r.join(',')).join('\n'));
const jsonlText = fc.array(fc.oneof(fc.json({ maxDepth: 2 }), fc.string({ maxLength: 20 })), { maxLength: 6 }).map((l) => l.join('\n'));
const jsonText = fc.oneof(
  fc.json({ maxDepth: 3 }),
  fc.array(fc.json({ maxDepth: 2 }), { maxLength: 5 }).map((items) => `[\n${items.join(',\n')}\n]`),
  fc.array(fc.json({ maxDepth: 2 }), { maxLength: 5 }).map((items) => `{"data": [${items.join(', ')}]}`),
);
const anyText = fc.string({ unit: 'binary', maxLength: 200 });
const shaped: Record<FileKind, fc.Arbitrary<string>> = { jsonl: jsonlText, json: jsonText, csv: csvText, txt: anyText };

const stats = { text: newStats(), shaped: newStats(), bytes: newStats() };

describe('fuzzing the dataset readers', () => {
  it('parseDatasetText on random text, every format: entries or BAD_DATA', async () => {
    const property = fc.asyncProperty(fc.constantFrom(...KINDS), anyText, async (kind, text) => {
      const file = `random.${kind}`;
      await classify(stats.text, ['BAD_DATA'], () => checkEntries(file, kind, text, parseDatasetText(file, kind, text)));
    });
    await checkProperty({ group: 'datasets', name: 'parseDatasetText: random text (any code point, 0-200) as jsonl/json/csv/txt', expected: EXPECTED, numRuns: 20000, timeLimitMs: 6000 }, property, stats.text);
  }, FUZZ_TEST_TIMEOUT_MS);

  it('parseDatasetText on format-shaped text: entries or BAD_DATA', async () => {
    const property = fc.asyncProperty(
      fc.constantFrom(...KINDS).chain((kind) => fc.tuple(fc.constant(kind), shaped[kind])),
      async ([kind, text]) => {
        const file = `shaped.${kind}`;
        await classify(stats.shaped, ['BAD_DATA'], () => checkEntries(file, kind, text, parseDatasetText(file, kind, text)));
      },
    );
    await checkProperty(
      { group: 'datasets', name: 'parseDatasetText: format-shaped text (JSON lines, JSON arrays and {"data"}, CSV with quotes/commas/newlines)', expected: EXPECTED, numRuns: 20000, timeLimitMs: 6000 },
      property,
      stats.shaped,
    );
  }, FUZZ_TEST_TIMEOUT_MS);

  it('readDatasetFile on random bytes (invalid UTF-8 included): entries or BAD_DATA', async () => {
    let n = 0;
    const bytesLike = fc.oneof(
      fc.uint8Array({ maxLength: 200 }),
      // Mostly valid UTF-8 text with a few bytes that cannot start or continue a sequence.
      fc.tuple(jsonlText, fc.array(fc.tuple(fc.nat(), fc.constantFrom(0x80, 0xbf, 0xc0, 0xc3, 0xe9, 0xed, 0xf5, 0xff)), { maxLength: 3 })).map(([text, bad]) => {
        const b = Buffer.from(text, 'utf8');
        for (const [at, value] of bad) if (b.length) b[at % b.length] = value;
        return new Uint8Array(b);
      }),
    );
    const property = fc.asyncProperty(fc.constantFrom(...KINDS), bytesLike, async (kind, bytes) => {
      const file = path.join(root, `bytes-${n++}.${kind}`);
      fs.writeFileSync(file, bytes);
      try {
        await classify(stats.bytes, ['BAD_DATA'], async () => {
          const raw = await readDatasetFile(file);
          checkEntries(file, kind, Buffer.from(bytes).toString('latin1'), raw.entries);
        });
      } finally {
        fs.rmSync(file);
      }
    });
    await checkProperty(
      { group: 'datasets', name: 'readDatasetFile: random bytes and UTF-8 text with invalid bytes, as jsonl/json/csv/txt files', expected: EXPECTED, numRuns: 3000, timeLimitMs: 8000 },
      property,
      stats.bytes,
    );
  }, FUZZ_TEST_TIMEOUT_MS);
});
