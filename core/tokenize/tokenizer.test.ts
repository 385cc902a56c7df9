/**
 * loadTokenizer against tokenizer.json files written by hand, with ids worked out by hand from
 * the vocabularies and merge ranks below (never recorded from the code's own output).
 */
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LowrankError } from '../errors.ts';
import { loadTokenizer } from './tokenizer.ts';

const root = mkdtempSync(path.join(tmpdir(), 'lowrank-tokenizer-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let folderCount = 0;
/** Writes each entry as a file (objects as JSON, strings verbatim) into a fresh folder. */
function folder(files: Record<string, unknown>): string {
  const dir = path.join(root, `t${folderCount++}`);
  mkdirSync(dir);
  for (const [name, content] of Object.entries(files)) {
    writeFileSync(path.join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
  }
  return dir;
}

/** GPT-2's bytes_to_unicode, transcribed from openai/gpt-2 encoder.py. */
function bytesToUnicode(): Map<number, string> {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  return new Map(bs.map((b, i) => [b, String.fromCharCode(cs[i]!)]));
}

const addedToken = (id: number, content: string) => ({
  id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
});

/**
 * (a) GPT-2 style: ids 0..255 are the bytes (id = byte value), then six merges and one special.
 * Merge ranks: 0 "h e", 1 "l l", 2 "Ġ t", 3 "Ġt he", 4 "he ll", 5 "o r".
 */
function byteLevelJson(extraSpecials: string[] = []): object {
  const vocab: Record<string, number> = {};
  for (const [b, ch] of bytesToUnicode()) vocab[ch] = b;
  const merged = ['he', 'll', 'Ġt', 'Ġthe', 'hell', 'or'];
  merged.forEach((t, i) => (vocab[t] = 256 + i));
  const specials = ['<|endoftext|>', ...extraSpecials];
  const byteLevel = { add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    added_tokens: specials.map((s, i) => addedToken(262 + i, s)),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', ...byteLevel },
    post_processor: { type: 'ByteLevel', ...byteLevel },
    decoder: { type: 'ByteLevel', ...byteLevel },
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '',
      fuse_unk: false, byte_fallback: false, vocab,
      merges: ['h e', 'l l', 'Ġ t', 'Ġt he', 'he ll', 'o r'],
    },
  };
}

/**
 * (b) Llama 2 style sentencepiece BPE: <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF> at
 * ids 3..258 (id = 3 + byte), then pieces from 259. Merge ranks: 0 "▁ h", 1 "l l", 2 "▁h e",
 * 3 "ll o", 4 "▁he llo", 5 "▁ w", 6 "o r", 7 "▁w or", 8 "l d".
 */
function sentencePieceJson(style: 'normalizer' | 'metaspace' = 'normalizer'): object {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  const pieces = ['▁', 'h', 'e', 'l', 'o', 'w', 'r', 'd', '▁h', 'll', '▁he', 'llo', '▁hello', '▁w', 'or', '▁wor', 'ld'];
  pieces.forEach((p, i) => (vocab[p] = 259 + i));
  const bos = { id: '<s>', type_id: 0 };
  return {
    version: '1.0',
    added_tokens: [addedToken(0, '<unk>'), addedToken(1, '<s>'), addedToken(2, '</s>')],
    normalizer:
      style === 'normalizer'
        ? { type: 'Sequence', normalizers: [
            { type: 'Prepend', prepend: '▁' },
            { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
          ] }
        : null,
    pre_tokenizer:
      style === 'metaspace' ? { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false } : null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: bos }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: bos }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: { type: 'Sequence', decoders: [
      { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
      { type: 'ByteFallback' },
      { type: 'Fuse' },
      { type: 'Strip', content: ' ', start: 1, stop: 0 },
    ] },
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: true, vocab,
      merges: ['▁ h', 'l l', '▁h e', 'll o', '▁he llo', '▁ w', 'o r', '▁w or', 'l d'],
    },
  };
}

const llamaConfig = (extra: Record<string, unknown> = {}) => ({
  tokenizer_class: 'LlamaTokenizer',
  // Llama 2 checkpoints store special tokens as serialized AddedToken objects.
  bos_token: { __type: 'AddedToken', content: '<s>', lstrip: false, normalized: false, rstrip: false, single_word: false },
  eos_token: '</s>',
  unk_token: '<unk>',
  pad_token: null,
  add_bos_token: true,
  add_eos_token: false,
  ...extra,
});

async function expectLowrankError(p: Promise<unknown> | (() => unknown), code: string, ...fragments: string[]) {
  let error: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(LowrankError);
  expect((error as LowrankError).code).toBe(code);
  for (const fragment of fragments) expect((error as LowrankError).message).toContain(fragment);
}

describe('byte-level BPE (GPT-2 style)', () => {
  const dir = folder({ 'tokenizer.json': byteLevelJson(), 'tokenizer_config.json': { eos_token: '<|endoftext|>', bos_token: '<|endoftext|>' } });

  it('encodes with merges applied by rank', async () => {
    const tok = await loadTokenizer(dir);
    // "hello" -> h e l l o -> he l l o -> he ll o -> hell o = [260, 'o'=111]
    // " the"  -> Ġ t h e -> Ġ t he -> Ġt he -> Ġthe = [259]
    // " world" -> Ġ w o r l d -> Ġ w or l d = [32, 119, 261, 108, 100]
    expect(tok.encode('hello the world')).toEqual([260, 111, 259, 32, 119, 261, 108, 100]);
    // "é" is the UTF-8 bytes C3 A9, spelled "Ã©" byte-level: ids 195, 169; "!" is its own pre-token.
    expect(tok.encode('é!')).toEqual([195, 169, 33]);
    expect(tok.vocabSize).toBe(263);
    expect(tok.tokenToId('Ġthe')).toBe(259);
    expect(tok.idToToken(260)).toBe('hell');
  });

  it('keeps special tokens whole and decodes back', async () => {
    const tok = await loadTokenizer(dir);
    expect(tok.eosTokenId).toBe(262);
    expect(tok.bosTokenId).toBe(262);
    expect(tok.padTokenId).toBeUndefined();
    const ids = tok.encode('hi<|endoftext|>');
    expect(ids).toEqual([104, 105, 262]);
    expect(tok.decode(ids)).toBe('hi<|endoftext|>');
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('hi');
    // No cleanup of " ." or " 's": decode is the exact inverse of encode.
    const text = "it 's here . 👋🏽 naïve";
    expect(tok.decode(tok.encode(text))).toBe(text);
    expect(tok.decode([])).toBe('');
  });
});

describe('sentencepiece-style BPE (Llama 2 / Mistral)', () => {
  it('prepends ▁, merges, adds <s>, and falls back to bytes', async () => {
    const tok = await loadTokenizer(folder({ 'tokenizer.json': sentencePieceJson(), 'tokenizer_config.json': llamaConfig() }));
    expect(tok.bosTokenId).toBe(1);
    expect(tok.eosTokenId).toBe(2);
    // "▁hello▁world": ▁h, ll, ▁he, llo, ▁hello, ▁w, or, ▁wor, ld -> ▁hello ▁wor ld
    expect(tok.encode('hello world')).toEqual([1, 271, 274, 275]);
    expect(tok.encode('hello world', { addSpecialTokens: false })).toEqual([271, 274, 275]);
    // "▁hé": ▁h then é is not a piece -> <0xC3> <0xA9> = 3 + 0xC3, 3 + 0xA9
    const ids = tok.encode('hé');
    expect(ids).toEqual([1, 267, 198, 172]);
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('hé');
    expect(tok.decode(ids)).toBe('<s> hé');
    // 😀 = F0 9F 98 80, no merge with ▁
    expect(tok.encode('😀')).toEqual([1, 259, 243, 162, 155, 131]);
  });

  it('follows add_bos_token / add_eos_token from tokenizer_config.json', async () => {
    const json = sentencePieceJson();
    const noBos = await loadTokenizer(folder({ 'tokenizer.json': json, 'tokenizer_config.json': llamaConfig({ add_bos_token: false }) }));
    expect(noBos.encode('hello')).toEqual([271]);
    const withEos = await loadTokenizer(folder({ 'tokenizer.json': json, 'tokenizer_config.json': llamaConfig({ add_eos_token: true }) }));
    expect(withEos.encode('hello')).toEqual([1, 271, 2]);
    // Without tokenizer_config.json the stored post-processor applies as is.
    const bare = await loadTokenizer(folder({ 'tokenizer.json': json }));
    expect(bare.encode('hello')).toEqual([1, 271]);
    expect(bare.bosTokenId).toBeUndefined();
  });

  it('gives the same ids with a Metaspace pre-tokenizer instead of the normalizer', async () => {
    const tok = await loadTokenizer(folder({ 'tokenizer.json': sentencePieceJson('metaspace'), 'tokenizer_config.json': llamaConfig() }));
    expect(tok.encode('hello world')).toEqual([1, 271, 274, 275]);
  });

  it('lets special_tokens_map.json override tokenizer_config.json', async () => {
    const tok = await loadTokenizer(folder({
      'tokenizer.json': sentencePieceJson(),
      'tokenizer_config.json': llamaConfig(),
      'special_tokens_map.json': { eos_token: '<unk>', pad_token: { content: '</s>' } },
    }));
    expect(tok.eosTokenId).toBe(0);
    expect(tok.padTokenId).toBe(2);
  });
});

describe('chat templates', () => {
  const messages = [
    { role: 'system', content: 'You are helpful.' },
    { role: 'user', content: 'Hi!' },
  ];
  const llama3Specials = ['<|begin_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'];
  // Meta-Llama-3-8B-Instruct's template, verbatim.
  const llama3Template =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

  it('renders a Llama-3 template from tokenizer_config.json', async () => {
    const tok = await loadTokenizer(folder({
      'tokenizer.json': byteLevelJson(llama3Specials),
      'tokenizer_config.json': { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>', chat_template: llama3Template },
    }));
    expect(tok.hasChatTemplate).toBe(true);
    const text = tok.applyChatTemplate(messages, { addGenerationPrompt: true });
    expect(text).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    expect(tok.applyChatTemplate(messages)).not.toContain('assistant');
    // The markers encode as single special ids (263..266), bos first.
    const ids = tok.encode(text, { addSpecialTokens: false });
    expect(ids[0]).toBe(263);
    expect(ids.filter((id) => id === 266)).toHaveLength(2);
  });

  it('prefers chat_template.jinja and picks "default" from a list', async () => {
    const fromFile = await loadTokenizer(folder({
      'tokenizer.json': byteLevelJson(),
      'tokenizer_config.json': { chat_template: 'config' },
      'chat_template.jinja': '{{ messages[0].content }} from file',
    }));
    expect(fromFile.applyChatTemplate(messages)).toBe('You are helpful. from file');
    const fromList = await loadTokenizer(folder({
      'tokenizer.json': byteLevelJson(),
      'tokenizer_config.json': { chat_template: [{ name: 'tool_use', template: 'tools' }, { name: 'default', template: '{{ messages | length }}' }] },
    }));
    expect(fromList.applyChatTemplate(messages)).toBe('2');
  });

  it('falls back to ChatML when <|im_start|>/<|im_end|> exist, else to plain text', async () => {
    const chatml = await loadTokenizer(folder({ 'tokenizer.json': byteLevelJson(['<|im_start|>', '<|im_end|>']) }));
    expect(chatml.hasChatTemplate).toBe(false);
    expect(chatml.applyChatTemplate(messages, { addGenerationPrompt: true })).toBe(
      '<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n',
    );
    const plain = await loadTokenizer(folder({ 'tokenizer.json': byteLevelJson() }));
    expect(plain.applyChatTemplate(messages, { addGenerationPrompt: true })).toBe(
      'system: You are helpful.\nuser: Hi!\nassistant:',
    );
  });

  it('turns raise_exception into a BAD_DATA error', async () => {
    const tok = await loadTokenizer(folder({
      'tokenizer.json': byteLevelJson(),
      'tokenizer_config.json': {
        chat_template: "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}ok",
      },
    }));
    await expectLowrankError(() => tok.applyChatTemplate(messages), 'BAD_DATA', 'Conversation must start with a user message');
    expect(tok.applyChatTemplate([{ role: 'user', content: 'x' }])).toBe('ok');
  });
});

describe('errors', () => {
  it('names the missing tokenizer.json', async () => {
    const missing = path.join(root, 'nope');
    await expectLowrankError(loadTokenizer(missing), 'FILE_NOT_FOUND', path.join(missing, 'tokenizer.json'));
    const empty = folder({});
    await expectLowrankError(loadTokenizer(empty), 'FILE_NOT_FOUND', path.join(empty, 'tokenizer.json'));
  });

  it('names the file that does not parse or is not a tokenizer', async () => {
    const bad = folder({ 'tokenizer.json': '{"model": {' });
    await expectLowrankError(loadTokenizer(bad), 'BAD_TOKENIZER', path.join(bad, 'tokenizer.json'), 'not valid JSON');
    const notTokenizer = folder({ 'tokenizer.json': { vocab: {} } });
    await expectLowrankError(loadTokenizer(notTokenizer), 'BAD_TOKENIZER', 'tokenizer.json', '"model"');
    const unknownModel = folder({ 'tokenizer.json': { model: { type: 'Mystery' } } });
    await expectLowrankError(loadTokenizer(unknownModel), 'BAD_TOKENIZER', 'tokenizer.json', 'Mystery');
    const badConfig = folder({ 'tokenizer.json': byteLevelJson(), 'tokenizer_config.json': '{bos_token: 1}' });
    await expectLowrankError(loadTokenizer(badConfig), 'BAD_TOKENIZER', path.join(badConfig, 'tokenizer_config.json'));
  });

  it('rejects config fields of the wrong type or naming unknown tokens', async () => {
    const wrongType = folder({ 'tokenizer.json': byteLevelJson(), 'tokenizer_config.json': { eos_token: 5 } });
    await expectLowrankError(loadTokenizer(wrongType), 'BAD_TOKENIZER', 'tokenizer_config.json', 'eos_token');
    const unknownEos = folder({ 'tokenizer.json': byteLevelJson(), 'tokenizer_config.json': { eos_token: '</s>' } });
    await expectLowrankError(loadTokenizer(unknownEos), 'BAD_TOKENIZER', 'eos_token "</s>" is not in the vocabulary');
    const llamaNoBos = folder({ 'tokenizer.json': sentencePieceJson(), 'tokenizer_config.json': llamaConfig({ bos_token: null }) });
    await expectLowrankError(loadTokenizer(llamaNoBos), 'BAD_TOKENIZER', 'add_bos_token');
  });

  it('rejects a chat template that does not parse, and ids outside the vocabulary', async () => {
    const dir = folder({ 'tokenizer.json': byteLevelJson(), 'tokenizer_config.json': { chat_template: '{% for %}' } });
    await expectLowrankError(loadTokenizer(dir), 'BAD_TOKENIZER', 'tokenizer_config.json', 'chat template');
    const tok = await loadTokenizer(folder({ 'tokenizer.json': byteLevelJson() }));
    await expectLowrankError(() => tok.decode([5, 263]), 'BAD_ARGUMENT', '263');
    await expectLowrankError(() => tok.decode([1.5]), 'BAD_ARGUMENT');
  });
});
