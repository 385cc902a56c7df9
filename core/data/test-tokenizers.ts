/**
 * Small byte-level BPE tokenizers for the data tests, trained on the spot (the bundled model may
 * not be there), in three chat-template situations:
 *  - 'chatml':  no template in the folder, <|im_start|>/<|im_end|> in the vocabulary -> the default ChatML;
 *  - 'llama3':  a Llama-3-style template in tokenizer_config.json (it trims contents and writes bos);
 *  - 'plain':   no template and no ChatML tokens -> the plain `role: content` default;
 *  - 'strict':  ChatML written out as the folder's template, raising when roles do not alternate.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { trainByteLevelBpe, writeTokenizerFolder } from '../tokenize/bpe-trainer.ts';
import { loadTokenizer, type Tokenizer } from '../tokenize/tokenizer.ts';

export type TestTokenizerKind = 'chatml' | 'llama3' | 'plain' | 'strict';

const CORPUS = [
  'The quick brown fox jumps over the lazy dog. What is the sentiment of this review?',
  'Below is an instruction that describes a task. Write a response that appropriately completes the request.',
  'user assistant system: Hello there, how are you? I am fine, thank you. Sure thing!',
  'Translate to French: cheese. fromage. Instruction Input Response',
];

export const LLAMA3_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

export const STRICT_CHATML_TEMPLATE =
  "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const cache = new Map<TestTokenizerKind, Promise<Tokenizer>>();
const dirs: string[] = [];

async function build(kind: TestTokenizerKind): Promise<Tokenizer> {
  const dir = mkdtempSync(path.join(tmpdir(), `lowrank-data-${kind}-`));
  dirs.push(dir);
  const specials =
    kind === 'chatml' || kind === 'strict'
      ? ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|pad|>']
      : kind === 'llama3'
        ? ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>']
        : ['<|endoftext|>'];
  const json = trainByteLevelBpe(CORPUS, { vocabSize: 400, specialTokens: specials });
  if (kind === 'llama3') {
    await writeTokenizerFolder(dir, json, { bos: '<|begin_of_text|>', eos: '<|end_of_text|>', chatTemplate: LLAMA3_TEMPLATE });
  } else if (kind === 'strict') {
    await writeTokenizerFolder(dir, json, { bos: '<|endoftext|>', eos: '<|endoftext|>', chatTemplate: STRICT_CHATML_TEMPLATE });
  } else {
    await writeTokenizerFolder(dir, json, { bos: '<|endoftext|>', eos: '<|endoftext|>', pad: kind === 'chatml' ? '<|pad|>' : undefined });
  }
  return loadTokenizer(dir);
}

export function testTokenizer(kind: TestTokenizerKind): Promise<Tokenizer> {
  let t = cache.get(kind);
  if (!t) cache.set(kind, (t = build(kind)));
  return t;
}

export function removeTestTokenizers(): void {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

/** A fresh temp folder with the given files written into it; returns path -> full path. */
export function writeFixtures(files: Record<string, string>): { dir: string; at: (name: string) => string; remove: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'lowrank-data-files-'));
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, name), text);
  return { dir, at: (name) => path.join(dir, name), remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** JSON Lines from objects. */
export function jsonl(...records: unknown[]): string {
  return records.map((r) => JSON.stringify(r)).join('\n') + '\n';
}
