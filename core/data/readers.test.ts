/** Dataset readers: each file type, with source locations worked out by hand from the fixtures. */
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { parseCsvRows, parseDatasetText, readDatasetFile } from './readers.ts';
import { writeFixtures } from './test-tokenizers.ts';

const fixtures = writeFixtures({
  'a.jsonl': '{"text": "one"}\n\n{"text": "two"}\r\n',
  'empty.jsonl': '\n  \n',
  'notes.md': '# hi',
});
afterAll(() => fixtures.remove());

describe('jsonl', () => {
  it('keeps line numbers, skipping blank lines, and reports bad lines in place', () => {
    const text = '{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": }\n[1, 2]\n{"prompt": "e", "completion": "f"}\n';
    const entries = parseDatasetText('d.jsonl', 'jsonl', text);
    expect(entries.map((e) => e.where)).toEqual(['d.jsonl:1', 'd.jsonl:3', 'd.jsonl:4', 'd.jsonl:5']);
    expect(entries[0]!.record).toEqual({ prompt: 'a', completion: 'b' });
    expect(entries[1]!.problem).toBe("not valid JSON: unexpected \"}\", expected a value at column 31");
    expect(entries[2]!.problem).toBe('expected a JSON object, got an array');
    expect(entries[3]!.record).toEqual({ prompt: 'e', completion: 'f' });
  });

  it('reads a file from disk (CRLF line ends too)', async () => {
    const raw = await readDatasetFile(fixtures.at('a.jsonl'));
    expect(raw.kind).toBe('jsonl');
    expect(raw.entries.map((e) => [e.where.split('/').pop(), e.record])).toEqual([
      ['a.jsonl:1', { text: 'one' }],
      ['a.jsonl:3', { text: 'two' }],
    ]);
  });
});

describe('json', () => {
  it('gives each array element the line it starts on and its record number', () => {
    const text = '[\n  {"text": "a, [b]"},\n  "oops",\n  {\n    "text": "c \\" ]"\n  }\n]\n';
    const entries = parseDatasetText('d.json', 'json', text);
    expect(entries.map((e) => e.where)).toEqual(['d.json:2 (record 1)', 'd.json:3 (record 2)', 'd.json:4 (record 3)']);
    expect(entries[1]!.problem).toBe('expected a JSON object, got a string');
    expect(entries[2]!.record).toEqual({ text: 'c " ]' });
  });

  it('reads {"data": [...]} and skips other keys before it', () => {
    const text = '{"version": [1, 2], "name": "data",\n "data": [{"text": "x"},\n{"text": "y"}]}';
    const entries = parseDatasetText('d.json', 'json', text);
    expect(entries.map((e) => e.where)).toEqual(['d.json:2 (record 1)', 'd.json:3 (record 2)']);
    expect(entries.map((e) => e.record)).toEqual([{ text: 'x' }, { text: 'y' }]);
  });

  it('refuses invalid JSON with the line at fault, and hints at .jsonl for one object per line', () => {
    expect(() => parseDatasetText('d.json', 'json', '[\n{"text": "a"},\n{"text" "b"}\n]')).toThrow(
      'd.json:3: not valid JSON: unexpected "\\"", expected \':\' at column 9',
    );
    expect(() => parseDatasetText('d.json', 'json', '{"text": "a"}\n{"text": "b"}\n')).toThrow(/name the file \.jsonl/);
    expect(() => parseDatasetText('d.json', 'json', '{"rows": []}')).toThrow('d.json: expected an array of records or an object with a "data" array, got an object with keys rows');
  });
});

describe('csv', () => {
  it('parses RFC 4180: quoted commas, doubled quotes, newlines inside quotes, CRLF', () => {
    const rows = parseCsvRows('a,b\r\n"x, y","say ""hi"""\r\n"multi\nline",z\r\n');
    expect(rows).toEqual([
      { line: 1, fields: ['a', 'b'] },
      { line: 2, fields: ['x, y', 'say "hi"'] },
      { line: 3, fields: ['multi\nline', 'z'] },
    ]);
  });

  it('keys rows by the header and reports a short row at the line it starts on', () => {
    const text = 'instruction,input,output\n"Say\nhi",,hello\nAdd 2 and 2,4\n\nShout,"a ""b""",B!\n';
    const entries = parseDatasetText('d.csv', 'csv', text);
    expect(entries.map((e) => e.where)).toEqual(['d.csv:2', 'd.csv:4', 'd.csv:6']);
    expect(entries[0]!.record).toEqual({ instruction: 'Say\nhi', input: '', output: 'hello' });
    expect(entries[1]!.problem).toBe('missing column "output": the row has 2 fields, the header has 3 (instruction, input, output)');
    expect(entries[2]!.record).toEqual({ instruction: 'Shout', input: 'a "b"', output: 'B!' });
  });

  it('reports a text after a closing quote and an unclosed quote', () => {
    const entries = parseDatasetText('d.csv', 'csv', 'text\n"a"b\n"never closed\nmore\n');
    expect(entries.map((e) => [e.where, e.problem])).toEqual([
      ['d.csv:2', 'unexpected "b" after a closing quote (write a quote inside a quoted field as "")'],
      ['d.csv:3', 'quoted field opened on line 3 is never closed'],
    ]);
  });

  it('refuses a header with a duplicate or empty column', () => {
    expect(() => parseDatasetText('d.csv', 'csv', 'text,text\na,b\n')).toThrow('d.csv:1: column "text" appears twice in the header row');
    expect(() => parseDatasetText('d.csv', 'csv', 'text,\na,b\n')).toThrow('d.csv:1: the header row has an empty column name');
  });
});

describe('txt', () => {
  it('splits documents on blank lines and records the line each starts on', () => {
    const entries = parseDatasetText('d.txt', 'txt', '\nFirst doc\nstill first\n\n\n  \nSecond doc\n');
    expect(entries).toEqual([
      { where: 'd.txt:2', record: { text: 'First doc\nstill first' } },
      { where: 'd.txt:7', record: { text: 'Second doc' } },
    ]);
  });
});

describe('file errors', () => {
  it('names a missing file, an empty file, a folder and an unknown extension', async () => {
    await expect(readDatasetFile(fixtures.at('nope.jsonl'))).rejects.toMatchObject({ code: 'FILE_NOT_FOUND', message: `${fixtures.at('nope.jsonl')}: no such file` });
    await expect(readDatasetFile(fixtures.at('empty.jsonl'))).rejects.toThrow(`${fixtures.at('empty.jsonl')}: the file is empty`);
    await expect(readDatasetFile(fixtures.at('notes.md'))).rejects.toThrow('extension ".md"; a dataset must be a .jsonl, .json, .csv or .txt file');
    await expect(readDatasetFile(fixtures.dir + '/x.parquet')).rejects.toBeInstanceOf(LowrankError);
  });
});

describe('invalid UTF-8', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-utf8-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, ...parts: Array<string | number[]>) => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p)))));
    return file;
  };

  it('reports each bad line as file:line: not valid UTF-8 at byte N, and keeps the others with their numbers', async () => {
    // Line 2: a lone 0xff at byte 12; line 4: an overlong "/" (C0 AF); line 5: a UTF-16 surrogate (ED A0 80); "é" and "日" are fine.
    const file = write('bad.jsonl',
      '{"text": "caf\u00e9"}\n', '{"text": "a', [0xff], 'b"}\n', '{"text": "\u65e5"}\n', '{"text": "', [0xc0, 0xaf], '"}\n', '{"t": "', [0xed, 0xa0, 0x80], '"}\n');
    const raw = await readDatasetFile(file);
    expect(raw.entries.map((e) => [e.where.slice(file.length), e.problem ?? e.record])).toEqual([
      [':1', { text: 'café' }],
      [':2', 'not valid UTF-8 at byte 12'],
      [':3', { text: '日' }],
      [':4', 'not valid UTF-8 at byte 11'],
      [':5', 'not valid UTF-8 at byte 8'],
    ]);
  });

  it('a .json file with a bad byte is refused whole, at its line', async () => {
    const file = write('bad.json', '[\n {"text": "x"},\n {"text": "', [0xfe], '"}\n]\n');
    await expect(readDatasetFile(file)).rejects.toThrow(`${file}:3: not valid UTF-8 at byte 12`);
  });

  it('a truncated multi-byte sequence at the end of the file is caught too', async () => {
    const file = write('cut.txt', 'first document\n\nsecond ', [0xe6, 0x97]);
    const raw = await readDatasetFile(file);
    expect(raw.entries.find((e) => e.problem)?.problem).toBe('not valid UTF-8 at byte 8');
  });
});
