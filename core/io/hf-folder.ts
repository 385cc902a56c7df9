/**
 * Reading the JSON files of a Hugging Face model folder (config.json, the shard index, tokenizer
 * configs) with errors a user can act on. Only file-level checks live here: whether config.json
 * describes a supported architecture is core/models' business.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { describeJsonError } from './json-error.ts';

/**
 * Reads and parses a JSON file. `what` says what the file is for ("model config", "shard index"),
 * `fixIfMissing` what to do when it is absent. Returns the parsed value unchecked: callers validate
 * its shape. A leading UTF-8 byte-order mark is tolerated because Windows editors add one.
 */
export function readJsonFile(file: string, what: string, fixIfMissing?: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      const fix = fixIfMissing ?? `the ${what} is missing; check the path or restore the file`;
      throw new LowrankError('FILE_NOT_FOUND', `${file} not found: ${fix}`);
    }
    if (code === 'EISDIR') throw new LowrankError('BAD_CONFIG', `${file} is a folder, expected the ${what} JSON file`);
    throw new LowrankError('BAD_CONFIG', `${file}: cannot read the ${what} (${code ?? String(e)})`);
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new LowrankError(
      'BAD_CONFIG',
      `${file}: the ${what} is not valid JSON (${describeJsonError(text)}); fix or re-download the file`,
    );
  }
}

/** True for a plain JSON object (not null, not an array). */
export function isJsonObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Throws FILE_NOT_FOUND (naming the folder) unless `dir` is an existing folder. */
export function requireModelFolder(dir: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch {
    throw new LowrankError('FILE_NOT_FOUND', `model folder ${dir} not found; check the path`);
  }
  if (!stat.isDirectory()) {
    throw new LowrankError(
      'BAD_ARGUMENT',
      `${dir} is a file, not a model folder; point at the folder that holds config.json and the weights`,
    );
  }
}

/**
 * The raw `config.json` of a model folder as a JSON object. Field meaning and architecture support
 * are checked by core/models/config.ts.
 */
export function readModelConfig(dir: string): Record<string, unknown> {
  requireModelFolder(dir);
  const file = path.join(dir, 'config.json');
  const config = readJsonFile(
    file,
    'model config',
    'a Hugging Face model folder needs config.json next to the weights',
  );
  if (!isJsonObject(config)) {
    throw new LowrankError('BAD_CONFIG', `${file}: expected a JSON object ({...}) at the top level`);
  }
  return config;
}
