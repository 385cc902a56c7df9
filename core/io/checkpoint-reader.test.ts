import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CheckpointReader, refusePickle, writeSafetensors } from './safetensors.ts';
import { expectLowrankError, scratchFolder } from './test-helpers.ts';

const root = scratchFolder('checkpoint');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function folder(name: string, files: Record<string, string | Buffer> = {}): string {
  const dir = path.join(root, name);
  fs.mkdirSync(dir, { recursive: true });
  for (const [file, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, file), content);
  return dir;
}

function withReader<T>(dir: string, use: (r: CheckpointReader) => T): T {
  const reader = CheckpointReader.open(dir);
  try {
    return use(reader);
  } finally {
    reader.close();
  }
}

/** Two shards and an index, the way transformers' save_pretrained(max_shard_size=...) lays them out. */
function shardedFolder(name: string, weightMap?: Record<string, string>): string {
  const dir = folder(name);
  writeSafetensors(path.join(dir, 'model-00001-of-00002.safetensors'), [
    { name: 'embed.weight', shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) },
    { name: 'layers.0.weight', shape: [2], data: new Float32Array([5, 6]), dtype: 'BF16' },
  ]);
  writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), [
    { name: 'lm_head.weight', shape: [1, 2], data: new Float32Array([7, 8]), dtype: 'F16' },
    { name: 'position_ids', shape: [3], data: new Int32Array([0, 1, 2]) },
  ]);
  const index = {
    metadata: { total_size: 36 },
    weight_map: weightMap ?? {
      'embed.weight': 'model-00001-of-00002.safetensors',
      'layers.0.weight': 'model-00001-of-00002.safetensors',
      'lm_head.weight': 'model-00002-of-00002.safetensors',
      position_ids: 'model-00002-of-00002.safetensors',
    },
  };
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index, null, 2));
  return dir;
}

describe('CheckpointReader', () => {
  it('reads a single model.safetensors', () => {
    const dir = folder('single', { 'config.json': '{}' });
    writeSafetensors(path.join(dir, 'model.safetensors'), [
      { name: 'w', shape: [3], data: new Float32Array([1, 2, 3]), dtype: 'F16' },
      { name: 'ids', shape: [2], data: new Int32Array([4, 5]) },
    ]);
    withReader(dir, (r) => {
      expect(r.names().sort()).toEqual(['ids', 'w']);
      expect(r.has('w')).toBe(true);
      expect(r.has('v')).toBe(false);
      expect(r.info('w')).toMatchObject({ dtype: 'F16', shape: [3] });
      expect([...r.readFloat32('w')]).toEqual([1, 2, 3]);
      expect([...r.readInt32('ids')]).toEqual([4, 5]);
      expectLowrankError(() => r.readFloat32('v'), 'MISSING_WEIGHT', dir, '"v"');
    });
  });

  it('reads a sharded checkpoint through model.safetensors.index.json', () => {
    const dir = shardedFolder('sharded');
    withReader(dir, (r) => {
      expect(r.indexPath).toBe(path.join(dir, 'model.safetensors.index.json'));
      expect(r.names()).toEqual(['embed.weight', 'layers.0.weight', 'lm_head.weight', 'position_ids']);
      expect(r.info('lm_head.weight')).toMatchObject({ dtype: 'F16', shape: [1, 2] });
      expect([...r.readFloat32('embed.weight')]).toEqual([1, 2, 3, 4]);
      expect([...r.readFloat32('layers.0.weight')]).toEqual([5, 6]);
      expect([...r.readFloat32('lm_head.weight')]).toEqual([7, 8]);
      expect([...r.readInt32('position_ids')]).toEqual([0, 1, 2]);
    });
  });

  it('opens shards lazily: a broken second shard does not stop reads from the first', () => {
    const dir = shardedFolder('lazy');
    fs.writeFileSync(path.join(dir, 'model-00002-of-00002.safetensors'), 'garbage!');
    withReader(dir, (r) => {
      expect([...r.readFloat32('embed.weight')]).toEqual([1, 2, 3, 4]);
      expectLowrankError(() => r.readFloat32('lm_head.weight'), 'BAD_SAFETENSORS', 'model-00002-of-00002.safetensors');
    });
  });

  it('prefers model.safetensors when an index is also present', () => {
    const dir = shardedFolder('both');
    writeSafetensors(path.join(dir, 'model.safetensors'), [{ name: 'only', shape: [1], data: new Float32Array([9]) }]);
    withReader(dir, (r) => expect(r.names()).toEqual(['only']));
  });

  it('index naming a shard that is not there', () => {
    const dir = shardedFolder('missing-shard');
    fs.rmSync(path.join(dir, 'model-00002-of-00002.safetensors'));
    expectLowrankError(() => CheckpointReader.open(dir), 'FILE_NOT_FOUND', 'model.safetensors.index.json', 'model-00002-of-00002.safetensors', 're-download');
  });

  it('index placing a tensor in a shard that does not hold it', () => {
    const dir = shardedFolder('wrong-shard', {
      'embed.weight': 'model-00001-of-00002.safetensors',
      'lm_head.weight': 'model-00001-of-00002.safetensors',
    });
    withReader(dir, (r) => {
      expectLowrankError(() => r.readFloat32('embed.weight'), 'MISSING_WEIGHT', '"lm_head.weight"', 'model-00001-of-00002.safetensors');
    });
  });

  it('malformed index files', () => {
    const noMap = folder('no-map', { 'model.safetensors.index.json': '{"metadata": {}}' });
    expectLowrankError(() => CheckpointReader.open(noMap), 'BAD_SAFETENSORS', path.join(noMap, 'model.safetensors.index.json'), 'weight_map');
    const badJson = folder('bad-index-json', { 'model.safetensors.index.json': '{"weight_map": {"a": }' });
    expectLowrankError(() => CheckpointReader.open(badJson), 'BAD_CONFIG', path.join(badJson, 'model.safetensors.index.json'), 'line 1 column 22');
    const escape = folder('escape', { 'model.safetensors.index.json': '{"weight_map": {"a": "../secret.safetensors"}}' });
    expectLowrankError(() => CheckpointReader.open(escape), 'BAD_SAFETENSORS', '../secret.safetensors');
  });

  it('refuses a folder of PyTorch pickles, explaining why and how to convert', () => {
    const dir = folder('pickles', { 'config.json': '{}', 'pytorch_model.bin': 'PK\u0003\u0004', 'training_args.bin': 'x' });
    const error = expectLowrankError(() => CheckpointReader.open(dir), 'PICKLE_REFUSED', dir, 'pytorch_model.bin', 'arbitrary code', 'safe_serialization=True');
    expect(error.message).not.toContain('training_args.bin');
    const sharded = folder('pickle-shards', {
      'pytorch_model.bin.index.json': '{}',
      'pytorch_model-00001-of-00002.bin': '',
      'pytorch_model-00002-of-00002.bin': '',
    });
    expectLowrankError(() => CheckpointReader.open(sharded), 'PICKLE_REFUSED', sharded, 'from_pretrained');
    const pt = folder('pt', { 'consolidated.pth': '' });
    expectLowrankError(() => CheckpointReader.open(pt), 'PICKLE_REFUSED', 'consolidated.pth');
  });

  it('refuses a pickle file given directly', () => {
    const dir = folder('pickle-file', { 'weights.pt': '' });
    const file = path.join(dir, 'weights.pt');
    expectLowrankError(() => refusePickle(file), 'PICKLE_REFUSED', file, 'arbitrary code', 'weights.safetensors');
    expectLowrankError(() => CheckpointReader.open(file), 'PICKLE_REFUSED', file);
  });

  it('missing folder, and folders without weights', () => {
    const missing = path.join(root, 'does-not-exist');
    expectLowrankError(() => CheckpointReader.open(missing), 'FILE_NOT_FOUND', missing);
    const empty = folder('empty', { 'config.json': '{}', 'training_args.bin': '' });
    expectLowrankError(() => CheckpointReader.open(empty), 'FILE_NOT_FOUND', empty, 'model.safetensors');
    const adapter = folder('adapter', { 'adapter_config.json': '{}', 'adapter_model.safetensors': '' });
    expectLowrankError(() => CheckpointReader.open(adapter), 'FILE_NOT_FOUND', adapter, 'PEFT adapter');
    const orphanShards = folder('orphans', { 'model-00001-of-00002.safetensors': '' });
    expectLowrankError(() => CheckpointReader.open(orphanShards), 'FILE_NOT_FOUND', 'model-00001-of-00002.safetensors', 'index');
  });
});
