import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readJsonFile, readModelConfig } from './hf-folder.ts';
import { locateJsonError } from './json-error.ts';
import { expectLowrankError, scratchFolder } from './test-helpers.ts';

const root = scratchFolder('hf-folder');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function folder(name: string, files: Record<string, string> = {}): string {
  const dir = path.join(root, name);
  fs.mkdirSync(dir, { recursive: true });
  for (const [file, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, file), content);
  return dir;
}

describe('readModelConfig', () => {
  it('returns config.json as an object, tolerating a byte-order mark', () => {
    const dir = folder('ok', { 'config.json': '\uFEFF{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}' });
    expect(readModelConfig(dir)).toEqual({ architectures: ['LlamaForCausalLM'], hidden_size: 64 });
  });

  it('missing config.json says what a model folder needs', () => {
    const dir = folder('no-config', { 'model.safetensors': '' });
    const file = path.join(dir, 'config.json');
    const error = expectLowrankError(() => readModelConfig(dir), 'FILE_NOT_FOUND', file);
    expect(error.message).toBe(`${file} not found: a Hugging Face model folder needs config.json next to the weights`);
  });

  it('missing folder names the folder', () => {
    const dir = path.join(root, 'nowhere');
    expectLowrankError(() => readModelConfig(dir), 'FILE_NOT_FOUND', dir);
  });

  it('bad JSON gives the line and column', () => {
    const dir = folder('bad', { 'config.json': '{\n  "hidden_size": 64,\n  "vocab_size": 32000,\n}\n' });
    expectLowrankError(() => readModelConfig(dir), 'BAD_CONFIG', path.join(dir, 'config.json'), 'not valid JSON', 'line 4 column 1');
  });

  it('a top level that is not an object', () => {
    const dir = folder('array', { 'config.json': '[1, 2]' });
    expectLowrankError(() => readModelConfig(dir), 'BAD_CONFIG', path.join(dir, 'config.json'), 'JSON object');
  });
});

describe('readJsonFile', () => {
  it('uses the given fix when the file is missing, and a generic one otherwise', () => {
    const file = path.join(root, 'tokenizer.json');
    expectLowrankError(() => readJsonFile(file, 'tokenizer', 'copy tokenizer.json from the base model'), 'FILE_NOT_FOUND', file, 'copy tokenizer.json');
    expectLowrankError(() => readJsonFile(file, 'tokenizer'), 'FILE_NOT_FOUND', file, 'tokenizer is missing');
  });

  it('a folder where a file was expected', () => {
    expectLowrankError(() => readJsonFile(root, 'model config'), 'BAD_CONFIG', root, 'folder');
  });

  it('keeps multi-line input out of the one-line message', () => {
    const dir = folder('multiline', { 'x.json': '{"a": "one\ntwo"}' });
    expectLowrankError(() => readJsonFile(path.join(dir, 'x.json'), 'settings'), 'BAD_CONFIG', 'control character', 'line 1 column 11');
  });
});

describe('locateJsonError', () => {
  it.each([
    ['{"a":1}', null],
    [' [1, -2.5e3, true, null, "x\\u00e9"] ', null],
    ['{"a":}', [1, 6]],
    ['{"a":1', [1, 7]],
    ['{"a":1,}', [1, 8]],
    ["{'a':1}", [1, 2]],
    ['{"a":tru}', [1, 6]],
    ['[01]', [1, 3]],
    ['{"a":1} x', [1, 9]],
    ['', [1, 1]],
    ['{\n"a":\n  nope}', [3, 3]],
    ['"bad \\x escape"', [1, 6]],
  ] as Array<[string, [number, number] | null]>)('%j', (text, where) => {
    // Cross-check the validity verdict against the real parser.
    let valid = true;
    try {
      JSON.parse(text);
    } catch {
      valid = false;
    }
    const found = locateJsonError(text);
    expect(found === null).toBe(valid);
    if (where) expect([found!.line, found!.column]).toEqual(where);
  });
});
