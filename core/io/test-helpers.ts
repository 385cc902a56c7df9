/**
 * Shared by the core/io tests: scratch folders and a hand-built safetensors writer that does not
 * go through writeSafetensors, so reader tests do not depend on the code they check against.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { expect } from 'vitest';
import { LowrankError, type ErrorCode } from '../errors.ts';

export function scratchFolder(label: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `lowrank-io-${label}-`));
}

/** 8-byte little-endian length, the header text exactly as given, then the data bytes. */
export function handWrittenSafetensors(header: string, data: number[]): Buffer {
  const json = Buffer.from(header, 'utf8');
  const length = Buffer.alloc(8);
  length.writeUInt32LE(json.length, 0); // high word stays 0
  return Buffer.concat([length, json, Buffer.from(data)]);
}

/** Little-endian bytes of float32 values, from their bit patterns. */
export function float32Bytes(...bits: number[]): number[] {
  return bits.flatMap((b) => [b & 0xff, (b >>> 8) & 0xff, (b >>> 16) & 0xff, b >>> 24]);
}

/** Runs `action`, expects a LowrankError with `code` whose message is one line and mentions `mentions`. */
export function expectLowrankError(action: () => unknown, code: ErrorCode, ...mentions: Array<string | RegExp>): LowrankError {
  let caught: unknown;
  try {
    action();
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected a LowrankError').toBeInstanceOf(LowrankError);
  const error = caught as LowrankError;
  expect(error.code, error.message).toBe(code);
  expect(error.message).not.toMatch(/[\r\n]/);
  for (const m of mentions) {
    if (typeof m === 'string') expect(error.message).toContain(m);
    else expect(error.message).toMatch(m);
  }
  return error;
}
