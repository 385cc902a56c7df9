/**
 * Bad dataset files, as `lowrank train` meets them: each case writes one broken file and runs a
 * one-step LoRA train on a tiny Llama, expecting exit 2 with one line naming the file and, for a bad
 * record, `file:line: reason`. The engine call behind it (loadDataset) must give the same message with
 * the expected code, and the app's dataset preview (datasets.preview over the WebSocket bridge) must
 * either list the bad records by file:line or refuse the file as `{code, message}`, never crash.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ErrorCode } from '../../core/errors.ts';
import { loadDataset, type OnBadLine } from '../../core/data/dataset.ts';
import type { DatasetFormat } from '../../core/data/formats.ts';
import { writeTinyLlama } from '../../core/export/test-models.ts';
import { loadTokenizer, type Tokenizer } from '../../core/tokenize/tokenizer.ts';
import { deeplyNestedJson } from './broken-files.ts';
import { AppBridge, describeExpectation, expectOneLineRefusal, expectRefusal, recorded, runLowrank, scratchRoot, selectCases } from './harness.ts';

const root = scratchRoot('datasets');
const home = path.join(root, 'home');
const model = path.join(root, 'model');
let app: AppBridge;
let tokenizer: Tokenizer;
beforeAll(async () => {
  fs.mkdirSync(model);
  await writeTinyLlama(model, { tied: true, ropeScaling: null, seed: 7 });
  tokenizer = await loadTokenizer(model);
  app = await AppBridge.start(home, root);
});
afterAll(async () => {
  await app?.close();
  fs.rmSync(root, { recursive: true, force: true });
});

/** How the app's preview should treat the file. */
type InApp =
  | 'same-error' // refuses it with the CLI's message as {code, message}
  | { problems: number[] } // lists these lines as bad records (and shows the rest)
  | 'upload-refused' // the upload itself is refused as {code: BAD_ARGUMENT, message}
  | 'no-path'; // the app cannot send this input (a CLI flag)

interface DatasetCase {
  /** Left out of `npm test` (see selectCases). */
  extended?: boolean;
  name: string;
  /** File name inside the case folder; the extension picks the reader. */
  file: string;
  content: string | Buffer;
  code: ErrorCode;
  /** Besides the file's path; `@:N` stands for `<file>:N`. */
  mentions: Array<string | RegExp>;
  inApp: InApp;
  seqLen?: number;
  onBadLine?: OnBadLine;
  format?: DatasetFormat;
  /** Extra flags that make the CLI refuse before reading (no engine call to compare). */
  flags?: string[];
}

const pair = (prompt: unknown, completion: unknown) => JSON.stringify({ prompt, completion });
const chat = (...messages: Array<[string, string]>) => JSON.stringify({ messages: messages.map(([role, content]) => ({ role, content })) });
const lines = (...l: string[]) => `${l.join('\n')}\n`;
const GOOD = pair('The quick brown', ' fox jumps');

const cases: DatasetCase[] = [
  { name: 'empty file', file: 'empty.jsonl', content: '', code: 'BAD_DATA', mentions: ['the file is empty'], inApp: 'same-error' },
  {
    name: 'wrong extension (.parquet)',
    file: 'train.parquet',
    content: GOOD,
    code: 'BAD_DATA',
    mentions: ['extension ".parquet"', '.jsonl, .json, .csv or .txt'],
    inApp: 'upload-refused',
  },
  {
    name: 'bad JSON on line 3',
    file: 'bad-line.jsonl',
    content: lines(GOOD, GOOD, '{"prompt": "x", completion: "y"}'),
    code: 'BAD_DATA',
    mentions: ['1 bad record', '@:3: not valid JSON', 'column 17', '--on-bad-line skip'],
    inApp: { problems: [3] },
  },
  {
    name: 'a JSON line that is an array',
    extended: true,
    file: 'array-line.jsonl',
    content: lines(GOOD, '["The quick", "fox"]'),
    code: 'BAD_DATA',
    mentions: ['@:2: expected a JSON object, got an array'],
    inApp: { problems: [2] },
  },
  {
    name: 'a field of the wrong type (completion: 5)',
    file: 'wrong-type.jsonl',
    content: lines(GOOD, pair('The lazy', 5)),
    code: 'BAD_DATA',
    mentions: ['@:2: "completion" must be a string, got number 5'],
    inApp: { problems: [2] },
  },
  {
    name: 'unknown format (keys question/answer)',
    file: 'unknown.jsonl',
    content: lines(JSON.stringify({ question: 'a', answer: 'b' })),
    code: 'BAD_DATA',
    mentions: ['cannot tell the dataset format', '"question"', '"answer"', /--format|the Format setting/], // the CLI names its flag, the app its Format field
    inApp: 'same-error',
  },
  {
    name: '--format chat forced on prompt/completion records',
    file: 'forced-chat.jsonl',
    content: lines(GOOD),
    format: 'chat',
    code: 'BAD_DATA',
    mentions: ['@:1: missing "messages"'],
    inApp: 'no-path',
  },
  {
    name: 'invalid UTF-8 on line 2 (.jsonl)',
    file: 'latin1.jsonl',
    content: Buffer.concat([Buffer.from(`${GOOD}\n{"prompt": "caf`), Buffer.from([0xe9]), Buffer.from('", "completion": " au lait"}\n')]),
    code: 'BAD_DATA',
    mentions: ['@:2: not valid UTF-8 at byte 16'],
    inApp: { problems: [2] },
  },
  {
    name: 'invalid UTF-8 in a .json file',
    extended: true,
    file: 'latin1.json',
    content: Buffer.concat([Buffer.from('[\n  {"text": "caf'), Buffer.from([0xe9]), Buffer.from('"}\n]\n')]),
    code: 'BAD_DATA',
    mentions: ['@:2: not valid UTF-8 at byte 16'],
    inApp: 'same-error',
  },
  {
    name: 'CSV with an unbalanced quote',
    file: 'unbalanced.csv',
    content: 'prompt,completion\n"The quick, brown\nfox,jumps\n',
    code: 'BAD_DATA',
    mentions: ['@:2: quoted field opened on line 2 is never closed'],
    inApp: 'same-error',
  },
  {
    name: 'CSV row missing a column',
    extended: true,
    file: 'short-row.csv',
    content: 'prompt,completion\nThe quick, brown fox\nThe lazy\n',
    code: 'BAD_DATA',
    mentions: ['@:3: missing column "completion"', 'the header has 2'],
    inApp: { problems: [3] },
  },
  {
    name: 'CSV header with a carriage return inside a quoted column name',
    file: 'cr-header.csv',
    content: '"pro\rmpt",completion\nThe quick,brown,fox\n',
    code: 'BAD_DATA',
    mentions: ['@:2: more fields than columns', '("pro\\rmpt", completion)'],
    inApp: 'same-error',
  },
  {
    name: 'CSV header naming a column twice',
    extended: true,
    file: 'dup-header.csv',
    content: 'prompt,prompt\na,b\n',
    code: 'BAD_DATA',
    mentions: ['@:1: column "prompt" appears twice'],
    inApp: 'same-error',
  },
  {
    name: 'CSV with a header row and no records',
    file: 'header-only.csv',
    content: 'prompt,completion\n',
    code: 'BAD_DATA',
    mentions: ['no records', 'header row'],
    inApp: 'same-error',
  },
  {
    name: '.json with a syntax error on line 3',
    file: 'syntax.json',
    content: '[\n  {"text": "The quick brown fox"},\n  {"text": }\n]\n',
    code: 'BAD_DATA',
    mentions: ['@:3: not valid JSON', 'column 12'],
    inApp: 'same-error',
  },
  {
    name: '.json holding JSON lines',
    extended: true,
    file: 'lines.json',
    content: lines(GOOD, GOOD),
    code: 'BAD_DATA',
    mentions: ['@:2: not valid JSON', 'name the file .jsonl'],
    inApp: 'same-error',
  },
  {
    name: 'a JSON line nested 100,000 levels deep',
    file: 'deep.jsonl',
    content: lines(GOOD, deeplyNestedJson(100_000)),
    code: 'BAD_DATA',
    mentions: ['@:2: not valid JSON', 'nested deeper than'],
    inApp: { problems: [2] },
  },
  {
    name: 'every prompt longer than --seq-len',
    file: 'long.jsonl',
    content: lines(pair('The quick brown fox jumps over the lazy dog. '.repeat(4), ' ok'), pair('Low rank adapters train a small update. '.repeat(4), ' ok')),
    seqLen: 16,
    code: 'BAD_DATA',
    mentions: ["every record's prompt is longer than seqLen 16", 'raise --seq-len'],
    inApp: 'same-error',
  },
  {
    name: 'all records bad, with --on-bad-line skip',
    file: 'all-bad.jsonl',
    content: lines(pair(1, 2), pair(3, 4), pair(5, 6)),
    onBadLine: 'skip',
    code: 'BAD_DATA',
    mentions: ['no usable records (3 bad records skipped)'],
    inApp: { problems: [1, 2, 3] },
  },
  {
    name: 'a chat message with an unknown role',
    extended: true,
    file: 'role.jsonl',
    content: lines(chat(['user', 'hi'], ['assistant', 'hello']), chat(['user', 'hi'], ['bot', 'hello'])),
    code: 'BAD_DATA',
    mentions: ['@:2: "messages"[1].role must be one of system/user/assistant, got string "bot"'],
    inApp: { problems: [2] },
  },
  {
    name: '12 bad records: the first 10 listed',
    file: 'twelve.jsonl',
    content: lines(GOOD, ...Array.from({ length: 12 }, () => pair('x', null))),
    code: 'BAD_DATA',
    mentions: ['12 bad records, the first 10', '@:2:', '@:11:', /^(?!.*twelve\.jsonl:12:).*$/],
    inApp: { problems: [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13] },
  },
  {
    name: '--on-bad-line with an unknown value',
    extended: true,
    file: 'flag.jsonl',
    content: lines(GOOD),
    flags: ['--on-bad-line', 'ignore'],
    code: 'BAD_ARGUMENT',
    mentions: ['--on-bad-line must be skip or fail', 'got "ignore"'],
    inApp: 'no-path',
  },
];

function slug(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

describe.concurrent('bad datasets: `lowrank train` exits 2 with one line naming file:line; the app lists or refuses them', () => {
  it.each(selectCases(cases))('$name', async (c) => {
    const dir = path.join(root, slug(c.name));
    const file = path.join(dir, c.file);
    // A bad flag names the flag, not the file.
    const named = c.flags ? [] : [file];
    const mentions = [...named, ...c.mentions.map((m) => (typeof m === 'string' ? m.replace('@:', `${file}:`) : m))];
    await recorded({ group: 'datasets', name: c.name, expected: describeExpectation(c.code, c.mentions) }, async () => {
      fs.mkdirSync(dir);
      fs.writeFileSync(file, c.content);
      const args = ['train', '--model', model, '--data', file, '--method', 'lora', '--steps', '1', '--seq-len', String(c.seqLen ?? 64)];
      if (c.onBadLine) args.push('--on-bad-line', c.onBadLine);
      if (c.format) args.push('--format', c.format);
      args.push(...(c.flags ?? []));
      const message = expectOneLineRefusal(await runLowrank(home, args), 'train', mentions);

      if (!c.flags) {
        // The engine call behind `train`: same message, and the code.
        const opts = { seqLen: c.seqLen ?? 64, onBadLine: c.onBadLine, format: c.format };
        const refusal = await expectRefusal(() => loadDataset(file, tokenizer, opts), c.code, mentions);
        expect(refusal.message).toBe(message);
      }

      const preview = () => app.call('datasets.preview', { model, data: file, seqLen: c.seqLen ?? 64, format: 'auto', count: 3, validation: 0 });
      if (c.inApp === 'same-error') {
        const refusal = await expectRefusal(preview, c.code, mentions);
        // The same line, except that the app points at its Format field where the CLI names --format.
        const formatHint = (m: string) => m.replace(/(force a format with --format \S+|pick one in the Format setting \(Dataset step\))$/, '<how to choose a format>');
        expect(formatHint(refusal.message)).toBe(formatHint(message));
        if (message.includes('--format')) expect(refusal.message).toMatch(/the Format setting/);
      } else if (c.inApp === 'upload-refused') {
        await expectRefusal(() => app.call('datasets.upload', { name: c.file, content: String(c.content) }), 'BAD_ARGUMENT', [c.file, '.jsonl, .json, .csv, .txt']);
      } else if (typeof c.inApp === 'object') {
        const reply = (await preview()) as { problems: Array<{ where: string; reason: string }> };
        expect(reply.problems.map((p) => p.where)).toEqual(c.inApp.problems.map((line) => `${file}:${line}`));
        for (const p of reply.problems) expect(p.reason).not.toMatch(/[\r\n]/);
      }
      return `exit 2: ${message}`;
    });
  });
});
