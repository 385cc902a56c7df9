/**
 * The byte-level BPE trainer: a hand-worked corpus, parity with a naive trainer that recounts
 * every pair at every step, parity of encoding with a naive rank-order merger, exact round trips
 * through @huggingface/tokenizers, and the folder transformers reads.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LowrankError } from '../errors.ts';
import { BYTE_TO_CHAR, trainByteLevelBpe, writeTokenizerFolder } from './bpe-trainer.ts';
import { loadTokenizer } from './tokenizer.ts';

const root = mkdtempSync(path.join(tmpdir(), 'lowrank-bpe-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'];
// Written out again (not imported) so the references below share no code with the trainer.
const SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

const corpus = [
  'The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs!',
  'Café, naïve, résumé, façade — accents everywhere: àéîõü ÀÉÎÕÜ.',
  'Numbers 1234 5678 and 2024-06-01, prices $3.50 €4,20.',
  "She's here, they're there, we've gone, I'm done, you'll see, he'd know.",
  'Emoji 👋🏽 🚀🚀 ❤️ and CJK 日本語のテキスト 中文 한국어.',
  '    indented code:\n\tif (x) {\n\t\treturn y;\n\t}\n',
].flatMap((line) => [line, line.toLowerCase(), line.toUpperCase()]);

/** Trainer reference: recount all pairs each step; same tie rule (smaller left id, then right id). */
function naiveMerges(texts: string[], vocabSize: number, minFrequency: number, specials: string[]): string[] {
  const counts = new Map<string, number>();
  for (const text of texts) for (const m of text.matchAll(SPLIT)) counts.set(m[0], (counts.get(m[0]) ?? 0) + 1);
  const words = [...counts.keys()].map((w) => [...new TextEncoder().encode(w)]);
  const freq = [...counts.values()];
  const text: string[] = BYTE_TO_CHAR.slice();
  const merges: string[] = [];
  while (specials.length + text.length < vocabSize) {
    const pairs = new Map<string, number>();
    words.forEach((w, i) => {
      for (let j = 0; j + 1 < w.length; j++) pairs.set(`${w[j]},${w[j + 1]}`, (pairs.get(`${w[j]},${w[j + 1]}`) ?? 0) + freq[i]!);
    });
    let best: [number, number] | null = null;
    let bestCount = 0;
    for (const [key, count] of pairs) {
      const [a, b] = key.split(',').map(Number) as [number, number];
      if (count > bestCount || (count === bestCount && best && (a < best[0] || (a === best[0] && b < best[1])))) {
        best = [a, b];
        bestCount = count;
      }
    }
    if (!best || bestCount < minFrequency) break;
    const [a, b] = best;
    merges.push(`${text[a]} ${text[b]}`);
    const id = text.length;
    text.push(text[a]! + text[b]!);
    for (const w of words) {
      for (let j = 0; j + 1 < w.length; j++) if (w[j] === a && w[j + 1] === b) w.splice(j, 2, id);
    }
  }
  return merges;
}

/** Encoder reference: per pre-token, repeatedly apply the lowest-ranked merge present, leftmost first. */
function naiveEncode(json: ReturnType<typeof trainByteLevelBpe>, s: string): number[] {
  const rank = new Map(json.model.merges.map((m, i) => [m, i]));
  const ids: number[] = [];
  for (const m of s.matchAll(SPLIT)) {
    let parts = [...new TextEncoder().encode(m[0])].map((b) => BYTE_TO_CHAR[b]!);
    for (;;) {
      let best = -1;
      let bestRank = Infinity;
      for (let j = 0; j + 1 < parts.length; j++) {
        const r = rank.get(`${parts[j]} ${parts[j + 1]}`);
        if (r !== undefined && r < bestRank) [best, bestRank] = [j, r];
      }
      if (best < 0) break;
      parts = [...parts.slice(0, best), parts[best]! + parts[best + 1]!, ...parts.slice(best + 2)];
    }
    ids.push(...parts.map((p) => json.model.vocab[p]!));
  }
  return ids;
}

describe('trainByteLevelBpe', () => {
  it('learns the textbook merges of "aaabdaaabac"', () => {
    // Pairs: aa x4 (overlapping), ab x2, others x1 -> merge "a a". The word becomes aa a b d aa a b a c:
    // (aa,a) x2 and (a,b) x2 tie, (a,b) has the smaller left id -> "a b". Then (aa,ab) x2 -> "aa ab".
    // Everything left occurs once, below minFrequency 2.
    const json = trainByteLevelBpe(['aaabdaaabac'], { vocabSize: 1000, minFrequency: 2, specialTokens: ['<|endoftext|>'] });
    expect(json.model.merges).toEqual(['a a', 'a b', 'aa ab']);
    expect(json.model.vocab['<|endoftext|>']).toBe(0);
    expect(json.model.vocab['a']).toBe(1 + 97);
    expect(json.model.vocab['aaab']).toBe(259);
    expect(Object.keys(json.model.vocab)).toHaveLength(1 + 256 + 3);
  });

  it('uses GPT-2 byte symbols', () => {
    expect(BYTE_TO_CHAR[0x20]).toBe('Ġ');
    expect(BYTE_TO_CHAR[0x0a]).toBe('Ċ');
    expect(BYTE_TO_CHAR[0x41]).toBe('A');
    expect(BYTE_TO_CHAR[0xad]).toBe('Ń');
    expect(new Set(BYTE_TO_CHAR).size).toBe(256);
  });

  it('matches a naive trainer that recounts every pair', () => {
    const json = trainByteLevelBpe(corpus, { vocabSize: 256 + 3 + 150, minFrequency: 2, specialTokens: SPECIALS });
    expect(json.model.merges).toEqual(naiveMerges(corpus, 256 + 3 + 150, 2, SPECIALS));
  });

  it('fills the vocabulary exactly, with dense unique ids', () => {
    const json = trainByteLevelBpe(corpus, { vocabSize: 400, minFrequency: 1, specialTokens: SPECIALS });
    const ids = Object.values(json.model.vocab).sort((a, b) => a - b);
    expect(ids).toEqual(Array.from({ length: 400 }, (_, i) => i));
    expect(json.added_tokens.map((t) => [t.id, t.content, t.special])).toEqual(SPECIALS.map((s, i) => [i, s, true]));
    // No merge ever spans a special token's text.
    expect(json.model.merges.some((m) => m.includes('<|'))).toBe(false);
  });

  it('round-trips any text through @huggingface/tokenizers, applying merges in rank order', async () => {
    const json = trainByteLevelBpe(corpus, { vocabSize: 420, minFrequency: 2, specialTokens: SPECIALS });
    const dir = path.join(root, 'roundtrip');
    await writeTokenizerFolder(dir, json, { bos: '<|endoftext|>', eos: '<|endoftext|>' });
    const tok = await loadTokenizer(dir);
    expect(tok.vocabSize).toBe(json.added_tokens.length + 256 + new Set(json.model.merges.map((m) => m.replace(' ', ''))).size);
    const samples = [
      'The quick brown fox.',
      'Zürich façade naïve Ångström — “quotes” and ‘single’',
      '👋🏽👨‍👩‍👧‍👦🇫🇷 emoji sequences',
      'mixed 日本語 and 한국어 text',
      '  leading and trailing spaces  ',
      '\n\n\ttabs\r\nand CRLF\u00a0nbsp\u200bzwsp',
      "don't can't I'll we're it's",
      '\u{10FFFF}\u{1D11E} astral',
      'unseen words: xylophone quizzical',
      '',
    ];
    for (const s of samples) {
      const ids = tok.encode(s);
      expect(ids).toEqual(naiveEncode(json, s));
      expect(tok.decode(ids)).toBe(s);
    }
    const chat = '<|im_start|>user\nhi<|im_end|>';
    const ids = tok.encode(chat);
    expect(ids[0]).toBe(1);
    expect(ids.at(-1)).toBe(2);
    expect(tok.decode(ids)).toBe(chat);
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('user\nhi');
    // Learned merges shorten the text: fewer tokens than bytes on in-domain text.
    const line = corpus[0]!;
    expect(tok.encode(line).length).toBeLessThan(new TextEncoder().encode(line).length * 0.7);
  });

  it('rejects a vocabulary too small for the bytes and specials', () => {
    expect(() => trainByteLevelBpe(corpus, { vocabSize: 258, specialTokens: SPECIALS })).toThrow(LowrankError);
    expect(() => trainByteLevelBpe(corpus, { vocabSize: 500, specialTokens: ['x', 'x'] })).toThrow(/duplicates/);
  });
});

describe('writeTokenizerFolder', () => {
  it('writes the files transformers reads, and loadTokenizer reads them back', async () => {
    const json = trainByteLevelBpe(corpus, { vocabSize: 300, specialTokens: SPECIALS });
    const dir = path.join(root, 'folder');
    const chatTemplate = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}";
    await writeTokenizerFolder(dir, json, { bos: '<|endoftext|>', eos: '<|im_end|>', pad: '<|endoftext|>', chatTemplate });
    const config = JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    expect(config).toMatchObject({
      tokenizer_class: 'PreTrainedTokenizerFast',
      bos_token: '<|endoftext|>',
      eos_token: '<|im_end|>',
      pad_token: '<|endoftext|>',
      clean_up_tokenization_spaces: false,
      chat_template: chatTemplate,
    });
    expect(config.added_tokens_decoder['2']).toEqual({
      content: '<|im_end|>', lstrip: false, normalized: false, rstrip: false, single_word: false, special: true,
    });
    expect(JSON.parse(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'))).toEqual(json);
    const tok = await loadTokenizer(dir);
    expect([tok.bosTokenId, tok.eosTokenId, tok.padTokenId]).toEqual([0, 2, 0]);
    expect(tok.hasChatTemplate).toBe(true);
    expect(tok.applyChatTemplate([{ role: 'user', content: 'hi' }])).toBe('<|im_start|>user\nhi<|im_end|>\n');
  });

  it('refuses special tokens the tokenizer does not have', async () => {
    const json = trainByteLevelBpe(['abc'], { vocabSize: 300, specialTokens: ['<|endoftext|>'] });
    await expect(writeTokenizerFolder(path.join(root, 'bad'), json, { bos: '<s>', eos: '<|endoftext|>' })).rejects.toThrow(
      /bos token "<s>" is not in the tokenizer/,
    );
  });
});
