/**
 * Fingerprints that let a run say exactly which base model and dataset it trained on.
 *
 * A model fingerprint hashes config.json and the *header* of every safetensors file (names,
 * dtypes, shapes, offsets; a few KB) rather than the gigabytes of weights: cheap enough to
 * compute on every run start, and it changes whenever the architecture, the set of tensors or
 * their layout changes. It does not see an in-place edit of weight values that keeps every
 * shape — the dataset, small and easily edited in place, is hashed in full instead.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';

export interface FileFingerprint {
  path: string;
  bytes: number;
  /** `sha256:<hex>` of the whole file. */
  sha256: string;
}

export interface ModelFingerprint {
  path: string;
  /** `sha256:<hex>` over config.json and each weight file's name and header, in name order. */
  sha256: string;
  weightFiles: string[];
}

/** Safetensors headers are JSON of a few KB to a few MB; anything past this is not one. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export async function fingerprintFile(file: string): Promise<FileFingerprint> {
  const absolute = path.resolve(file);
  const hash = createHash('sha256');
  let bytes = 0;
  try {
    for await (const chunk of fs.createReadStream(absolute, { highWaterMark: 1 << 20 })) {
      const buffer = chunk as Buffer;
      bytes += buffer.length;
      hash.update(buffer);
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new LowrankError('FILE_NOT_FOUND', `${absolute}: no such file`);
    throw e;
  }
  return { path: absolute, bytes, sha256: `sha256:${hash.digest('hex')}` };
}

/** The 8-byte little-endian length followed by the JSON header, exactly as stored. */
async function safetensorsHeaderBytes(file: string): Promise<Buffer> {
  const handle = await fs.promises.open(file, 'r');
  try {
    const lengthBytes = Buffer.alloc(8);
    const { bytesRead } = await handle.read(lengthBytes, 0, 8, 0);
    const length = bytesRead === 8 ? lengthBytes.readBigUInt64LE(0) : -1n;
    const size = (await handle.stat()).size;
    if (length < 0n || length > BigInt(Math.min(MAX_HEADER_BYTES, size - 8))) {
      throw new LowrankError('BAD_SAFETENSORS', `${file}: not a safetensors file (header length ${length} of a ${size}-byte file); re-download or re-export it`);
    }
    const header = Buffer.alloc(8 + Number(length));
    lengthBytes.copy(header);
    await handle.read(header, 8, Number(length), 8);
    return header;
  } finally {
    await handle.close();
  }
}

export async function fingerprintModel(dir: string): Promise<ModelFingerprint> {
  const absolute = path.resolve(dir);
  const configPath = path.join(absolute, 'config.json');
  if (!fs.existsSync(configPath)) {
    throw new LowrankError('FILE_NOT_FOUND', `${configPath}: no such file; a base model is a Hugging Face folder with config.json and *.safetensors`);
  }
  const weightFiles = fs.readdirSync(absolute).filter((f) => f.endsWith('.safetensors')).sort();
  if (weightFiles.length === 0) {
    throw new LowrankError('FILE_NOT_FOUND', `${absolute}: no *.safetensors weights in the model folder`);
  }
  const hash = createHash('sha256');
  // Each part is length-prefixed so that no two different folders hash the same byte stream.
  const part = (bytes: Buffer) => {
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(bytes.length));
    hash.update(length).update(bytes);
  };
  part(Buffer.from('config.json'));
  part(fs.readFileSync(configPath));
  for (const file of weightFiles) {
    part(Buffer.from(file));
    part(await safetensorsHeaderBytes(path.join(absolute, file)));
  }
  return { path: absolute, sha256: `sha256:${hash.digest('hex')}`, weightFiles };
}
