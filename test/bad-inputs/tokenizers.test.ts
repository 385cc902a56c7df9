/**
 * Bad tokenizer folders: tokenizer.json, tokenizer_config.json and chat templates. Each case breaks
 * one thing in a small valid byte-level BPE tokenizer folder and runs `lowrank data preview` (which
 * loads the tokenizer before anything else; `train` where the fault only shows on the data), expecting
 * exit 2 with one line naming the file and the field; the app's dataset preview (datasets.preview over
 * the WebSocket bridge) must give the same message as `{code, message}`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ErrorCode } from '../../core/errors.ts';
import { trainByteLevelBpe, writeTokenizerFolder, type ByteLevelBpeTokenizerJson } from '../../core/tokenize/bpe-trainer.ts';
import { DEFAULT_CHATML_TEMPLATE } from '../../core/tokenize/tokenizer.ts';
import { patchJson } from './broken-files.ts';
import { AppBridge, describeExpectation, expectOneLineRefusal, expectRefusal, recorded, runLowrank, scratchRoot, selectCases } from './harness.ts';

const root = scratchRoot('tokenizers');
const home = path.join(root, 'home');
const data = path.join(root, 'pairs.jsonl');
const chatData = path.join(root, 'chat.jsonl');
let app: AppBridge;
let tokenizerJson: ByteLevelBpeTokenizerJson;
beforeAll(async () => {
  tokenizerJson = trainByteLevelBpe(['The quick brown fox jumps over the lazy dog.', 'Hello world, says the model.'], {
    vocabSize: 300,
    specialTokens: ['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
  });
  fs.writeFileSync(data, `${JSON.stringify({ prompt: 'Hello', completion: ' world' })}\n`);
  const chat = { messages: [{ role: 'user', content: 'Hello' }, { role: 'assistant', content: 'world' }] };
  fs.writeFileSync(chatData, `${JSON.stringify(chat)}\n${JSON.stringify(chat)}\n`);
  app = await AppBridge.start(home, root);
});
afterAll(async () => {
  await app?.close();
  fs.rmSync(root, { recursive: true, force: true });
});

interface TokenizerCase {
  /** Left out of `npm test` (see selectCases). */
  extended?: boolean;
  name: string;
  group: 'tokenizer.json' | 'tokenizer_config.json' | 'chat template';
  /** Damages the tokenizer folder `dir`; returns the file the message must name. */
  damage(dir: string): string;
  code: ErrorCode;
  mentions: Array<string | RegExp>;
  /** 'train' where the tokenizer loads and the fault shows on the data (a template that raises). */
  command?: 'data preview' | 'train';
}

const tokenizerFile = (dir: string) => path.join(dir, 'tokenizer.json');
const configFile = (dir: string) => path.join(dir, 'tokenizer_config.json');
const changeTokenizer = (change: (t: Record<string, any>) => void) => (dir: string) => (patchJson(tokenizerFile(dir), change), tokenizerFile(dir));
const changeConfig = (change: (c: Record<string, any>) => void) => (dir: string) => (patchJson(configFile(dir), change), configFile(dir));

const cases: TokenizerCase[] = [
  {
    name: 'tokenizer.json missing',
    group: 'tokenizer.json',
    damage: (dir) => (fs.rmSync(tokenizerFile(dir)), tokenizerFile(dir)),
    code: 'FILE_NOT_FOUND',
    mentions: ['not found', 'save_pretrained'],
  },
  {
    name: 'not JSON (a comma where a key belongs, line 2)',
    group: 'tokenizer.json',
    damage: (dir) => (fs.writeFileSync(tokenizerFile(dir), '{\n  "model": {,\n}'), tokenizerFile(dir)),
    code: 'BAD_TOKENIZER',
    mentions: ['not valid JSON', 'line 2 column 13'],
  },
  {
    name: 'no "model" section',
    extended: true,
    group: 'tokenizer.json',
    damage: changeTokenizer((t) => delete t.model),
    code: 'BAD_TOKENIZER',
    mentions: ['no "model" object'],
  },
  {
    name: 'unknown model type (SentencePiece)',
    group: 'tokenizer.json',
    damage: changeTokenizer((t) => (t.model.type = 'SentencePiece')),
    code: 'BAD_TOKENIZER',
    mentions: ['model type "SentencePiece" is not supported', 'BPE, Unigram'],
  },
  {
    name: 'BPE vocabulary a list instead of an object',
    group: 'tokenizer.json',
    damage: changeTokenizer((t) => (t.model.vocab = Object.keys(t.model.vocab))),
    code: 'BAD_TOKENIZER',
    mentions: ['"model.vocab"', 'object mapping tokens to ids'],
  },
  {
    name: 'a merge that is a number',
    extended: true,
    group: 'tokenizer.json',
    damage: changeTokenizer((t) => (t.model.merges[3] = 42)),
    code: 'BAD_TOKENIZER',
    mentions: ['"model.merges"[3] is 42'],
  },
  {
    name: 'two tokens given the same id',
    group: 'tokenizer.json',
    damage: changeTokenizer((t) => {
      const [a, b] = Object.keys(t.model.vocab).slice(-2) as [string, string];
      t.model.vocab[a] = t.model.vocab[b];
    }),
    code: 'BAD_TOKENIZER',
    mentions: ['"model.vocab" gives id', 'to both'],
  },
  {
    name: 'a byte-level symbol missing from the vocabulary',
    group: 'tokenizer.json',
    damage: changeTokenizer((t) => delete t.model.vocab['Ġ']),
    code: 'BAD_TOKENIZER',
    mentions: ['lacks the byte-level symbol "Ġ" (byte 0x20)', 'dropped'],
  },
  {
    name: 'unknown pre-tokenizer type',
    extended: true,
    group: 'tokenizer.json',
    damage: changeTokenizer((t) => (t.pre_tokenizer = { type: 'Bogus' })),
    code: 'BAD_TOKENIZER',
    mentions: ['cannot build the tokenizer', 'PreTokenizer type: Bogus'],
  },
  {
    name: 'tokenizer_config.json not JSON',
    group: 'tokenizer_config.json',
    damage: (dir) => (fs.writeFileSync(configFile(dir), '{"bos_token": '), configFile(dir)),
    code: 'BAD_TOKENIZER',
    mentions: ['not valid JSON', 'line 1 column 15'],
  },
  {
    name: 'bos_token a number',
    extended: true,
    group: 'tokenizer_config.json',
    damage: (dir) => {
      fs.rmSync(path.join(dir, 'special_tokens_map.json'));
      return changeConfig((c) => (c.bos_token = 5))(dir);
    },
    code: 'BAD_TOKENIZER',
    mentions: ['field "bos_token"', 'token string'],
  },
  {
    name: 'eos_token not in the vocabulary',
    group: 'tokenizer_config.json',
    damage: (dir) => {
      fs.rmSync(path.join(dir, 'special_tokens_map.json'));
      return changeConfig((c) => (c.eos_token = '</s>'))(dir);
    },
    code: 'BAD_TOKENIZER',
    mentions: ['eos_token "</s>" is not in the vocabulary'],
  },
  {
    name: 'Llama tokenizer class that adds a bos token, with none set',
    extended: true,
    group: 'tokenizer_config.json',
    damage: (dir) => {
      fs.rmSync(path.join(dir, 'special_tokens_map.json'));
      return changeConfig((c) => {
        c.tokenizer_class = 'LlamaTokenizerFast';
        c.bos_token = null;
      })(dir);
    },
    code: 'BAD_TOKENIZER',
    mentions: ['add_bos_token is true but no bos_token is set'],
  },
  {
    name: 'chat template that does not parse',
    group: 'chat template',
    damage: changeConfig((c) => (c.chat_template = '{% for m in messages %}{{ m.content }')),
    code: 'BAD_TOKENIZER',
    mentions: ['chat template does not parse'],
  },
  {
    name: 'a list of chat templates, none named "default"',
    extended: true,
    group: 'chat template',
    damage: changeConfig((c) => (c.chat_template = [{ name: 'tool_use', template: '{{ messages }}' }])),
    code: 'BAD_TOKENIZER',
    mentions: ['chat_template lists [tool_use]', 'none is named "default"'],
  },
  {
    name: 'chat template that raises on every conversation (train)',
    group: 'chat template',
    command: 'train',
    damage: changeConfig((c) => (c.chat_template = "{{ raise_exception('Conversation roles must alternate system/user/assistant') }}")),
    code: 'BAD_DATA',
    mentions: [`${chatData}:1:`, `${chatData}:2:`, 'rejected the conversation', 'roles must alternate', '2 bad records', '--on-bad-line skip'],
  },
];

function slug(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

describe.concurrent('bad tokenizer folders: exit 2, one line naming the file and field; the app gets {code, message}', () => {
  it.each(selectCases(cases))('$group: $name', async (c) => {
    await recorded({ group: c.group, name: c.name, expected: describeExpectation(c.code, c.mentions) }, async () => {
      const dir = path.join(root, slug(c.name));
      await writeTokenizerFolder(dir, tokenizerJson, { bos: '<|endoftext|>', eos: '<|endoftext|>', chatTemplate: DEFAULT_CHATML_TEMPLATE });
      const named = c.damage(dir);
      const command = c.command ?? 'data preview';
      if (command === 'data preview') {
        const mentions = [named, ...c.mentions];
        const message = expectOneLineRefusal(await runLowrank(home, ['data', 'preview', '--model', dir, '--data', data]), 'data', mentions);
        // The app's dataset preview loads the same tokenizer: same message, as {code, message}.
        const preview = { model: dir, data, seqLen: 64, format: 'auto', count: 1, validation: 0 };
        const refusal = await expectRefusal(() => app.call('datasets.preview', preview), c.code, mentions);
        expect(refusal.message).toBe(message);
        return `exit 2: ${message}`;
      }
      // The template raises only when a conversation is rendered: train refuses the records, naming
      // each file:line; the app's preview lists them as problems instead of failing.
      const mentions = [chatData, named, ...c.mentions];
      const args = ['train', '--model', dir, '--data', chatData, '--method', 'lora', '--steps', '1'];
      const message = expectOneLineRefusal(await runLowrank(home, args), 'train', mentions);
      const preview = (await app.call('datasets.preview', { model: dir, data: chatData, seqLen: 64, format: 'auto', count: 2, validation: 0 })) as {
        problems: Array<{ where: string; reason: string }>;
      };
      expect(preview.problems.map((p) => p.where)).toEqual([`${chatData}:1`, `${chatData}:2`]);
      expect(preview.problems[0]!.reason).toContain('roles must alternate');
      return `exit 2: ${message}`;
    });
  });
});
