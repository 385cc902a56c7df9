/**
 * Training a GPT-2-style byte-level BPE tokenizer (Sennrich et al. 2016, "Neural Machine
 * Translation of Rare Words with Subword Units", https://arxiv.org/abs/1508.07909; byte-level
 * variant from Radford et al. 2019, GPT-2) and emitting it as a Hugging Face tokenizer.json.
 *
 * The algorithm is the classic word-count one the Rust `tokenizers` BpeTrainer uses:
 *  1. split every text with the GPT-2 regex and count the distinct pre-tokens ("words");
 *  2. spell each word as bytes (256 base symbols, so any string is encodable: no unk token);
 *  3. repeatedly merge the most frequent adjacent symbol pair, updating pair counts only in the
 *     words that contain it, with a lazy max-heap: a merge can only lower the counts of pairs
 *     already in the heap, so a popped entry whose count is stale is re-pushed with its current
 *     count, and pairs that gain count (those with the new symbol) are pushed afresh.
 */
import { LowrankError } from '../errors.ts';

export { writeTokenizerFolder } from './tokenizer-folder.ts';
export type { TokenizerFolderConfig } from './tokenizer-folder.ts';

export interface BpeTrainingOptions {
  /** Final vocabulary size, special tokens and the 256 byte symbols included. */
  vocabSize: number;
  /**
   * Pairs seen fewer times than this are not merged (default 2: a pair seen once describes one
   * word, not a regularity, and only burns a vocabulary slot). Training may stop below vocabSize.
   */
  minFrequency?: number;
  /** Added as special tokens with ids 0..n-1, in this order (as the Rust trainer does). */
  specialTokens: string[];
}

export interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** The tokenizer.json layout the Rust crate serializes for a GPT-2 style tokenizer. */
export interface ByteLevelBpeTokenizerJson {
  version: '1.0';
  truncation: null;
  padding: null;
  added_tokens: AddedTokenJson[];
  normalizer: null;
  pre_tokenizer: { type: 'ByteLevel'; add_prefix_space: boolean; trim_offsets: boolean; use_regex: boolean };
  post_processor: { type: 'ByteLevel'; add_prefix_space: boolean; trim_offsets: boolean; use_regex: boolean };
  decoder: { type: 'ByteLevel'; add_prefix_space: boolean; trim_offsets: boolean; use_regex: boolean };
  model: {
    type: 'BPE';
    dropout: null;
    unk_token: null;
    continuing_subword_prefix: null;
    end_of_word_suffix: null;
    fuse_unk: boolean;
    byte_fallback: boolean;
    ignore_merges: boolean;
    vocab: Record<string, number>;
    /** "left right" strings: byte-level symbols never contain a space, and every tokenizers version reads this form. */
    merges: string[];
  };
}

/** GPT-2's pre-tokenizer regex, the one the ByteLevel pre-tokenizer (use_regex: true) applies. */
export const GPT2_SPLIT_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/**
 * GPT-2's byte -> printable character table: bytes that are printable Latin-1 map to themselves,
 * the other 68 to U+0100.. in order, so every token is a visible, whitespace-free string.
 */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const chars: string[] = new Array(256);
  let shifted = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars[b] = String.fromCharCode(printable ? b : 256 + shifted++);
  }
  return chars;
})();

// Pair keys pack two symbol ids into one safe integer; 2^21 symbols is far above any vocabulary.
const PAIR_BASE = 2 ** 21;
const pairKey = (left: number, right: number): number => left * PAIR_BASE + right;

export function trainByteLevelBpe(texts: Iterable<string>, opts: BpeTrainingOptions): ByteLevelBpeTokenizerJson {
  const { vocabSize, specialTokens } = opts;
  const minFrequency = Math.max(1, opts.minFrequency ?? 2);
  if (new Set(specialTokens).size !== specialTokens.length || specialTokens.includes('')) {
    throw new LowrankError('BAD_ARGUMENT', `specialTokens has duplicates or an empty string: ${JSON.stringify(specialTokens)}`);
  }
  const special = new Set(specialTokens);
  const clash = specialTokens.find((t) => BYTE_TO_CHAR.includes(t));
  if (clash !== undefined) {
    throw new LowrankError('BAD_ARGUMENT', `special token ${JSON.stringify(clash)} is also a byte symbol; use a longer marker`);
  }
  const baseSize = specialTokens.length + 256;
  if (!Number.isInteger(vocabSize) || vocabSize < baseSize || vocabSize >= PAIR_BASE) {
    throw new LowrankError(
      'BAD_ARGUMENT',
      `vocabSize ${vocabSize} must be an integer from ${baseSize} (256 bytes + ${specialTokens.length} special tokens) to ${PAIR_BASE - 1}`,
    );
  }

  const { words, counts } = countWords(texts, specialTokens);

  // Symbols 0..255 are bytes; merged symbols follow. `symbolText` is the byte-level spelling.
  const symbolText: string[] = BYTE_TO_CHAR.slice();
  const symbolOfText = new Map<string, number>(symbolText.map((t, i) => [t, i]));
  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  for (let w = 0; w < words.length; w++) {
    const word = words[w]!;
    for (let i = 0; i + 1 < word.length; i++) {
      const key = pairKey(word[i]!, word[i + 1]!);
      pairCount.set(key, (pairCount.get(key) ?? 0) + counts[w]!);
      let set = pairWords.get(key);
      if (!set) pairWords.set(key, (set = new Set()));
      set.add(w);
    }
  }
  const heap = new PairHeap();
  for (const [key, count] of pairCount) heap.push(key, count);

  const merges: string[] = [];
  let newSymbols = 0;
  while (specialTokens.length + 256 + newSymbols < vocabSize) {
    const top = heap.pop();
    if (!top) break;
    const current = pairCount.get(top.key) ?? 0;
    if (current !== top.count) {
      if (current > 0) heap.push(top.key, current);
      continue;
    }
    if (current < minFrequency) break;

    const left = Math.floor(top.key / PAIR_BASE);
    const right = top.key % PAIR_BASE;
    const text = symbolText[left]! + symbolText[right]!;
    if (special.has(text)) {
      // A special token's string must keep a single id; texts never contain it, so skip the pair.
      pairCount.delete(top.key);
      pairWords.delete(top.key);
      continue;
    }
    // Two different merge paths can spell the same string ("ab"+"c", "a"+"bc"); like the Rust
    // trainer we record both merges but keep one symbol, so vocab ids stay unique.
    let merged = symbolOfText.get(text);
    if (merged === undefined) {
      merged = symbolText.length;
      symbolText.push(text);
      symbolOfText.set(text, merged);
      newSymbols++;
    }
    merges.push(`${symbolText[left]} ${symbolText[right]}`);

    const touched = new Set<number>();
    for (const w of pairWords.get(top.key) ?? []) {
      const before = words[w]!;
      const after = mergeInWord(before, left, right, merged);
      if (after === before) continue; // stale entry: an earlier merge already consumed the pair here
      words[w] = after;
      const count = counts[w]!;
      // Remove every pair of the old spelling and add every pair of the new one; pairs away from
      // the merge site cancel out, which is simpler than tracking neighbours and as cheap.
      for (let i = 0; i + 1 < before.length; i++) {
        const key = pairKey(before[i]!, before[i + 1]!);
        pairCount.set(key, pairCount.get(key)! - count);
      }
      for (let i = 0; i + 1 < after.length; i++) {
        const key = pairKey(after[i]!, after[i + 1]!);
        pairCount.set(key, (pairCount.get(key) ?? 0) + count);
        if (after[i] === merged || after[i + 1] === merged) {
          touched.add(key);
          let set = pairWords.get(key);
          if (!set) pairWords.set(key, (set = new Set()));
          set.add(w);
        }
      }
    }
    pairCount.delete(top.key);
    pairWords.delete(top.key);
    for (const key of touched) {
      const count = pairCount.get(key) ?? 0;
      if (count > 0) heap.push(key, count);
    }
  }

  return buildTokenizerJson(specialTokens, symbolText, merges);
}

/** Counts GPT-2 pre-tokens over all texts, splitting out special-token strings so they are never merged into. */
function countWords(texts: Iterable<string>, specialTokens: string[]): { words: Uint32Array[]; counts: number[] } {
  const specialSplit =
    specialTokens.length > 0
      ? new RegExp(specialTokens.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'u')
      : null;
  const wordCounts = new Map<string, number>();
  for (const text of texts) {
    const pieces = specialSplit ? text.split(specialSplit) : [text];
    for (const piece of pieces) {
      for (const match of piece.matchAll(GPT2_SPLIT_PATTERN)) {
        wordCounts.set(match[0], (wordCounts.get(match[0]) ?? 0) + 1);
      }
    }
  }
  const encoder = new TextEncoder();
  const words: Uint32Array[] = [];
  const counts: number[] = [];
  for (const [word, count] of wordCounts) {
    words.push(Uint32Array.from(encoder.encode(word)));
    counts.push(count);
  }
  return { words, counts };
}

/**
 * Replaces each left-to-right, non-overlapping occurrence of (left, right) by `merged`, the
 * same order the BPE model applies a merge at encode time ("aaa" with a+a -> "aa a").
 * Returns `word` itself when the pair does not occur.
 */
function mergeInWord(word: Uint32Array, left: number, right: number, merged: number): Uint32Array {
  let out: Uint32Array | null = null;
  let n = 0;
  for (let i = 0; i < word.length; i++) {
    if (i + 1 < word.length && word[i] === left && word[i + 1] === right) {
      if (!out) {
        out = new Uint32Array(word.length - 1);
        out.set(word.subarray(0, i));
        n = i;
      }
      out[n++] = merged;
      i++;
    } else if (out) {
      out[n++] = word[i]!;
    }
  }
  return out ? out.subarray(0, n) : word;
}

function buildTokenizerJson(
  specialTokens: string[],
  symbolText: string[],
  merges: string[],
): ByteLevelBpeTokenizerJson {
  const vocab: Record<string, number> = {};
  const addedTokens: AddedTokenJson[] = specialTokens.map((content, id) => {
    vocab[content] = id;
    return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
  });
  // Byte symbols take ids in byte order after the specials (id = specials + byte), then merges.
  symbolText.forEach((text, i) => {
    vocab[text] = specialTokens.length + i;
  });
  const byteLevel = { add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', ...byteLevel },
    post_processor: { type: 'ByteLevel', ...byteLevel, trim_offsets: false },
    decoder: { type: 'ByteLevel', ...byteLevel },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

/**
 * Binary max-heap of (pair, count). Ties go to the smaller pair key (lower left symbol id, then
 * lower right), so training is deterministic and, for equal counts, prefers older symbols.
 */
class PairHeap {
  private keys: number[] = [];
  private counts: number[] = [];

  push(key: number, count: number): void {
    this.keys.push(key);
    this.counts.push(count);
    let i = this.keys.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  pop(): { key: number; count: number } | undefined {
    if (this.keys.length === 0) return undefined;
    const top = { key: this.keys[0]!, count: this.counts[0]! };
    const lastKey = this.keys.pop()!;
    const lastCount = this.counts.pop()!;
    if (this.keys.length > 0) {
      this.keys[0] = lastKey;
      this.counts[0] = lastCount;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < this.keys.length && this.before(l, best)) best = l;
        if (r < this.keys.length && this.before(r, best)) best = r;
        if (best === i) break;
        this.swap(i, best);
        i = best;
      }
    }
    return top;
  }

  private before(a: number, b: number): boolean {
    const ca = this.counts[a]!;
    const cb = this.counts[b]!;
    return ca > cb || (ca === cb && this.keys[a]! < this.keys[b]!);
  }

  private swap(a: number, b: number): void {
    [this.keys[a], this.keys[b]] = [this.keys[b]!, this.keys[a]!];
    [this.counts[a], this.counts[b]] = [this.counts[b]!, this.counts[a]!];
  }
}
