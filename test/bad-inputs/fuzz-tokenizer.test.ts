/**
 * Property-based fuzzing of the tokenizer loader (fast-check): a valid byte-level BPE tokenizer.json
 * with random damage, either to its structure (a value anywhere replaced by random JSON, a key removed,
 * a list entry dropped or repeated) or to its text (cut short, a character overwritten). loadTokenizer
 * must refuse it with a LowrankError, or give a tokenizer that works: decode(encode(s)) === s for
 * random printable ASCII (or encode refuses with BAD_TOKENIZER); never another exception.
 */
import { afterAll, beforeAll, describe, it } from 'vitest';
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { trainByteLevelBpe, writeTokenizerFolder } from '../../core/tokenize/bpe-trainer.ts';
import { DEFAULT_CHATML_TEMPLATE, loadTokenizer } from '../../core/tokenize/tokenizer.ts';
import { checkProperty, classify, FUZZ_TEST_TIMEOUT_MS, newStats } from './fuzz-harness.ts';
import { scratchRoot } from './harness.ts';

const root = scratchRoot('fuzz-tok');
const dir = path.join(root, 'tokenizer');
const tokenizerFile = path.join(dir, 'tokenizer.json');
let valid: Record<string, unknown>;
beforeAll(async () => {
  const json = trainByteLevelBpe(['The quick brown fox jumps over the lazy dog.', 'Hello world, says the model: 1234!'], {
    vocabSize: 290,
    specialTokens: ['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
  });
  await writeTokenizerFolder(dir, json, { bos: '<|endoftext|>', eos: '<|endoftext|>', chatTemplate: DEFAULT_CHATML_TEMPLATE });
  valid = JSON.parse(fs.readFileSync(tokenizerFile, 'utf8')) as Record<string, unknown>;
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

type Json = unknown;
/**
 * Where damage lands: the tokenizer's data (vocabulary, merges, model type, added tokens), and the
 * pipeline sections replaced by a value that is not a valid section. Options that have other legal
 * values (a decoder removed, a different continuing_subword_prefix) describe a different tokenizer,
 * not a damaged one, so they are not fuzzed: no loader could tell them from the real thing.
 */
const TARGETS = ['model.vocab', 'model.merges', 'model.type', 'added_tokens'] as const;
const SECTIONS = ['normalizer', 'pre_tokenizer', 'post_processor', 'decoder'] as const;
type StructuralDamage =
  | { kind: 'replace' | 'remove' | 'repeat'; target: (typeof TARGETS)[number]; walk: number[]; value: Json }
  | { kind: 'section'; section: (typeof SECTIONS)[number]; value: Json };
type TextDamage = { kind: 'cut'; at: number } | { kind: 'char'; at: number; char: string };

/** Follows `walk` (child indices, modulo the child count) down from `start`; returns the container and key reached. */
function locate(start: Json, walk: number[]): { parent: Record<string, Json> | Json[]; key: string | number } | null {
  let parent: Record<string, Json> | Json[] | null = null;
  let key: string | number = '';
  let current = start;
  for (const step of walk) {
    if (Array.isArray(current) && current.length) {
      parent = current;
      key = step % current.length;
    } else if (typeof current === 'object' && current !== null && Object.keys(current).length) {
      const keys = Object.keys(current);
      parent = current as Record<string, Json>;
      key = keys[step % keys.length]!;
    } else break;
    current = (parent as Record<string | number, Json>)[key];
  }
  return parent === null ? null : { parent, key };
}

function damageStructure(value: Record<string, unknown>, d: StructuralDamage): Record<string, unknown> {
  const copy = structuredClone(value);
  if (d.kind === 'section') {
    copy[d.section] = d.value;
    return copy;
  }
  // The walk starts at the target's parent, so its first step can pick the target itself.
  const [head, tail] = d.target.split('.') as [string, string | undefined];
  const container = (tail ? copy[head] : copy) as Record<string, Json>;
  const start = tail ?? head;
  const at = d.walk.length > 1 ? locate(container[start], d.walk.slice(1)) : { parent: container, key: start };
  if (!at) return copy;
  const { parent, key } = at;
  if (d.kind === 'replace') (parent as Record<string | number, Json>)[key] = d.value;
  else if (Array.isArray(parent)) parent.splice(key as number, d.kind === 'remove' ? 1 : 0, ...(d.kind === 'repeat' ? [parent[key as number]] : []));
  else if (d.kind === 'remove') delete parent[key as string];
  return copy;
}

function damageText(text: string, d: TextDamage): string {
  const at = d.at % (text.length + 1);
  return d.kind === 'cut' ? text.slice(0, at) : text.slice(0, at) + d.char + text.slice(at + 1);
}

const structural: fc.Arbitrary<StructuralDamage> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constantFrom('replace' as const, 'remove' as const, 'repeat' as const),
      target: fc.constantFrom(...TARGETS),
      walk: fc.array(fc.nat(), { minLength: 1, maxLength: 3 }),
      value: fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.integer({ min: -1, max: 300 })),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('section' as const), section: fc.constantFrom(...SECTIONS), value: fc.jsonValue({ maxDepth: 2 }).filter((v) => v !== null) }) },
);
const textual: fc.Arbitrary<TextDamage> = fc.oneof(
  fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('char' as const), at: fc.nat(), char: fc.constantFrom('{', '}', '"', ',', ':', '[', 'x', '0', '\\', ' ') }),
);
const PRINTABLE = Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i));
const ascii = fc.array(fc.string({ unit: fc.constantFrom(...PRINTABLE), minLength: 1, maxLength: 30 }), { minLength: 1, maxLength: 3 });

const stats = newStats();

describe('fuzzing the tokenizer loader', () => {
  it('damaged tokenizer.json: LowrankError, or a tokenizer whose encode/decode round-trips ASCII', async () => {
    const property = fc.asyncProperty(fc.oneof(structural, structural, textual), ascii, async (d, samples) => {
      const text = d.kind === 'cut' || d.kind === 'char' ? damageText(JSON.stringify(valid, null, 2), d) : JSON.stringify(damageStructure(valid, d), null, 2);
      fs.writeFileSync(tokenizerFile, text);
      await classify(stats, ['BAD_TOKENIZER'], async () => {
        const tokenizer = await loadTokenizer(dir);
        for (const s of samples) {
          const ids = tokenizer.encode(s, { addSpecialTokens: false });
          const back = tokenizer.decode(ids);
          if (back !== s) throw new Error(`loaded, but decode(encode(${JSON.stringify(s)})) = ${JSON.stringify(back)}`);
        }
      });
    });
    await checkProperty(
      {
        group: 'tokenizer',
        name: 'tokenizer.json with one random damage (in model.vocab/merges/type or added_tokens: a value replaced by random JSON, an entry removed or repeated; a pipeline section replaced by non-null junk; the text cut or a character overwritten)',
        expected: 'LowrankError BAD_TOKENIZER, one line; or a tokenizer with decode(encode(s)) === s for random printable ASCII; nothing else; no input over 1 s',
        numRuns: 2000,
        timeLimitMs: 10_000,
      },
      property,
      stats,
    );
  }, FUZZ_TEST_TIMEOUT_MS);
});
