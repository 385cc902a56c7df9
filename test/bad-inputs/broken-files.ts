/**
 * Breaking valid files on purpose: the bad-input catalogue starts from a tiny model, tokenizer or
 * adapter that loads, then damages one thing. The safetensors bytes are taken apart and put back
 * by hand (8-byte little-endian header length, header text, data), not through writeSafetensors,
 * so a header can say whatever a corrupt or hostile file says.
 */
import * as fs from 'node:fs';

export interface SafetensorsParts {
  header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;
  data: Buffer;
}

export function readSafetensorsParts(file: string): SafetensorsParts {
  const bytes = fs.readFileSync(file);
  const length = Number(bytes.readBigUInt64LE(0));
  return { header: JSON.parse(bytes.subarray(8, 8 + length).toString('utf8')), data: bytes.subarray(8 + length) };
}

/** Writes `header` (an object, or text exactly as given) and `data` as a safetensors file. */
export function writeSafetensorsParts(file: string, header: object | string, data: Buffer | Uint8Array = Buffer.alloc(0)): void {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length), 0);
  fs.writeFileSync(file, Buffer.concat([length, json, data]));
}

/** Rewrites a safetensors header in place (the data bytes stay as they are). */
export function patchSafetensorsHeader(file: string, change: (header: Record<string, any>) => void): void {
  const { header, data } = readSafetensorsParts(file);
  change(header);
  writeSafetensorsParts(file, header, data);
}

export function patchJson(file: string, change: (value: Record<string, any>) => void): void {
  const value = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, any>;
  change(value);
  fs.writeFileSync(file, `${JSON.stringify(value, null, 2)}\n`);
}

/** JSON that opens `depth` arrays and never closes them: a parser that recurses per level overflows its stack. */
export function deeplyNestedJson(depth: number): string {
  return `{"a": ${'['.repeat(depth)}`;
}
