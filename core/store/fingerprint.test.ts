/**
 * Fingerprints: a file's equals sha256sum of its bytes (checked against the `sha256sum` tool
 * where present, else against node:crypto on the whole buffer); a model's follows config.json
 * and the safetensors headers and ignores where the folder lives and the weight values.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { fingerprintFile, fingerprintModel } from './fingerprint.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-fingerprint-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** A minimal safetensors file: one F32 tensor of `values`, written by hand from the format spec. */
function safetensors(values: number[], name = 'w'): Buffer {
  const header = Buffer.from(JSON.stringify({ [name]: { dtype: 'F32', shape: [values.length], data_offsets: [0, 4 * values.length] } }));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([length, header, Buffer.from(new Float32Array(values).buffer)]);
}

function modelFolder(name: string, config: object, shards: Record<string, Buffer>): string {
  const dir = path.join(root, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  for (const [file, bytes] of Object.entries(shards)) fs.writeFileSync(path.join(dir, file), bytes);
  return dir;
}

async function rejectsWith(promise: Promise<unknown>, code: string, fragment: string): Promise<void> {
  const error = await promise.then(() => null, (e: unknown) => e);
  expect(error).toBeInstanceOf(LowrankError);
  expect((error as LowrankError).code).toBe(code);
  expect((error as LowrankError).message).toContain(fragment);
}

describe('fingerprintFile', () => {
  it('is the sha256 of the whole file, streamed across chunks', async () => {
    const file = path.join(root, 'data.jsonl');
    const bytes = Buffer.alloc(3 * (1 << 20) + 123);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 2654435761) >>> 24;
    fs.writeFileSync(file, bytes);
    const sum = spawnSync('sha256sum', [file], { encoding: 'utf8' });
    const want = sum.status === 0 ? sum.stdout.split(' ')[0] : createHash('sha256').update(bytes).digest('hex');
    expect(await fingerprintFile(file)).toEqual({ path: file, bytes: bytes.length, sha256: `sha256:${want}` });
    await rejectsWith(fingerprintFile(path.join(root, 'missing.jsonl')), 'FILE_NOT_FOUND', 'missing.jsonl');
  });
});

describe('fingerprintModel', () => {
  const config = { architectures: ['LlamaForCausalLM'], hidden_size: 4 };

  it('follows config and headers, not the folder location or the weight values', async () => {
    const base = await fingerprintModel(modelFolder('base', config, { 'model.safetensors': safetensors([1, 2, 3]) }));
    expect(base.sha256).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(base.weightFiles).toEqual(['model.safetensors']);
    expect(base.path).toBe(path.join(root, 'base'));
    const moved = await fingerprintModel(modelFolder('moved', config, { 'model.safetensors': safetensors([1, 2, 3]) }));
    expect(moved.sha256).toBe(base.sha256);
    const sameShapes = await fingerprintModel(modelFolder('values', config, { 'model.safetensors': safetensors([7, 8, 9]) }));
    expect(sameShapes.sha256).toBe(base.sha256);
    const otherConfig = await fingerprintModel(modelFolder('config', { ...config, hidden_size: 8 }, { 'model.safetensors': safetensors([1, 2, 3]) }));
    expect(otherConfig.sha256).not.toBe(base.sha256);
    const otherShape = await fingerprintModel(modelFolder('shape', config, { 'model.safetensors': safetensors([1, 2, 3, 4]) }));
    expect(otherShape.sha256).not.toBe(base.sha256);
    const renamed = await fingerprintModel(modelFolder('renamed', config, { 'model.safetensors': safetensors([1, 2, 3], 'v') }));
    expect(renamed.sha256).not.toBe(base.sha256);
  });

  it('covers every shard, in name order', async () => {
    const shards = { 'model-00002-of-00002.safetensors': safetensors([1]), 'model-00001-of-00002.safetensors': safetensors([1, 2]) };
    const sharded = await fingerprintModel(modelFolder('sharded', config, shards));
    expect(sharded.weightFiles).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    const oneShardChanged = await fingerprintModel(modelFolder('sharded2', config, { ...shards, 'model-00002-of-00002.safetensors': safetensors([1, 2]) }));
    expect(oneShardChanged.sha256).not.toBe(sharded.sha256);
  });

  it('says what is missing or broken', async () => {
    const noConfig = path.join(root, 'no-config');
    fs.mkdirSync(noConfig);
    await rejectsWith(fingerprintModel(noConfig), 'FILE_NOT_FOUND', 'config.json');
    await rejectsWith(fingerprintModel(modelFolder('no-weights', config, {})), 'FILE_NOT_FOUND', 'no *.safetensors');
    const garbage = Buffer.concat([Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), Buffer.from('{}')]);
    await rejectsWith(fingerprintModel(modelFolder('garbage', config, { 'model.safetensors': garbage })), 'BAD_SAFETENSORS', 'model.safetensors');
    await rejectsWith(fingerprintModel(modelFolder('short', config, { 'model.safetensors': Buffer.from([1, 2]) })), 'BAD_SAFETENSORS', 'not a safetensors file');
  });
});
