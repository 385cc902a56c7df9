/**
 * Bad safetensors in a model folder: truncated, empty, a header length that lies, a header that is
 * not JSON or nests without end, unknown dtypes, offsets that disagree with shapes or overlap, a
 * hostile tensor name, PyTorch pickles under either name, sharded checkpoints with a missing or
 * escaping shard. Run by model-folder-cases.ts: `lowrank inspect` (or `logits`) exits 2 with one line
 * naming the file, and the app's models.inspect gives the same `{code, message}`.
 */
import { describe, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SafetensorsFile } from '../../core/io/safetensors.ts';
import { deeplyNestedJson, patchSafetensorsHeader, readSafetensorsParts, writeSafetensorsParts } from './broken-files.ts';
import { expectRefusal, recorded } from './harness.ts';
import { describeFolderCases, weightsFile, type FolderCase } from './model-folder-cases.ts';

/** Shards the folder's weights in two and writes the index; `index` may change the weight map first. */
function shard(dir: string, index: (weightMap: Record<string, string>) => void = () => {}): string {
  const { header, data } = readSafetensorsParts(weightsFile(dir));
  const names = Object.keys(header).filter((n) => n !== '__metadata__');
  const halves = [names.slice(0, names.length / 2), names.slice(names.length / 2)];
  const weightMap: Record<string, string> = {};
  halves.forEach((part, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    const shardHeader: Record<string, unknown> = {};
    const chunks: Buffer[] = [];
    let offset = 0;
    for (const name of part) {
      const info = header[name] as { dtype: string; shape: number[]; data_offsets: [number, number] };
      const bytes = data.subarray(info.data_offsets[0], info.data_offsets[1]);
      shardHeader[name] = { dtype: info.dtype, shape: info.shape, data_offsets: [offset, offset + bytes.length] };
      chunks.push(bytes);
      offset += bytes.length;
      weightMap[name] = file;
    }
    writeSafetensorsParts(path.join(dir, file), shardHeader, Buffer.concat(chunks));
  });
  fs.rmSync(weightsFile(dir));
  index(weightMap);
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  fs.writeFileSync(indexFile, JSON.stringify({ metadata: { total_size: data.length }, weight_map: weightMap }, null, 2));
  return indexFile;
}

const cases: FolderCase[] = [
  {
    name: 'truncated: the last 100 bytes missing',
    damage: (dir) => (fs.truncateSync(weightsFile(dir), fs.statSync(weightsFile(dir)).size - 100), weightsFile(dir)),
    code: 'BAD_SAFETENSORS',
    mentions: ['truncated', /expected \d+ bytes, has \d+/, 're-download'],
  },
  {
    name: 'empty file (0 bytes)',
    damage: (dir) => (fs.writeFileSync(weightsFile(dir), ''), weightsFile(dir)),
    code: 'BAD_SAFETENSORS',
    mentions: ['only 0 bytes'],
  },
  {
    name: 'header length larger than the file',
    extended: true,
    damage: (dir) => {
      const bytes = fs.readFileSync(weightsFile(dir));
      bytes.writeBigUInt64LE(BigInt(bytes.length * 10), 0);
      fs.writeFileSync(weightsFile(dir), bytes);
      return weightsFile(dir);
    },
    code: 'BAD_SAFETENSORS',
    mentions: ['header longer than the file'],
  },
  {
    name: 'header length over the 100 MB limit (200 MB sparse file)',
    damage: (dir) => {
      const length = Buffer.alloc(8);
      length.writeBigUInt64LE(150_000_000n, 0);
      fs.writeFileSync(weightsFile(dir), length);
      fs.truncateSync(weightsFile(dir), 200_000_000);
      return weightsFile(dir);
    },
    code: 'BAD_SAFETENSORS',
    mentions: ['150000000', '100 MB limit'],
  },
  {
    name: 'header is not JSON',
    damage: (dir) => {
      const bytes = fs.readFileSync(weightsFile(dir));
      bytes.write('{"x": #', 8);
      fs.writeFileSync(weightsFile(dir), bytes);
      return weightsFile(dir);
    },
    code: 'BAD_SAFETENSORS',
    mentions: ['not valid JSON', 'line 1 column 7'],
  },
  {
    name: 'header JSON nested 100,000 levels deep',
    damage: (dir) => (writeSafetensorsParts(weightsFile(dir), deeplyNestedJson(100_000)), weightsFile(dir)),
    code: 'BAD_SAFETENSORS',
    mentions: ['not valid JSON', 'nested deeper than'],
  },
  {
    name: 'unknown dtype (F8_E4M3)',
    damage: (dir) => (patchSafetensorsHeader(weightsFile(dir), (h) => (h['model.norm.weight'].dtype = 'F8_E4M3')), weightsFile(dir)),
    code: 'BAD_SAFETENSORS',
    mentions: ['"model.norm.weight"', 'F8_E4M3', 'F32, F16 or BF16'],
  },
  {
    name: 'data_offsets span disagrees with the shape',
    damage: (dir) => (patchSafetensorsHeader(weightsFile(dir), (h) => (h['model.norm.weight'].shape = [33])), weightsFile(dir)),
    code: 'BAD_SAFETENSORS',
    mentions: ['"model.norm.weight"', 'span 128 bytes', 'shape [33] of F32 needs 132'],
  },
  {
    name: 'overlapping data_offsets',
    damage: (dir) => {
      patchSafetensorsHeader(weightsFile(dir), (h) => {
        const [begin, end] = h['model.norm.weight'].data_offsets as [number, number];
        h['model.norm.weight'].data_offsets = [begin - 64, end - 64];
      });
      return weightsFile(dir);
    },
    code: 'BAD_SAFETENSORS',
    mentions: ['"model.norm.weight"', 'overlap'],
  },
  {
    name: 'a tensor name holding a newline, with an unknown dtype',
    damage: (dir) => {
      patchSafetensorsHeader(weightsFile(dir), (h) => {
        h['evil\nname'] = { dtype: 'Q4_K', shape: [0], data_offsets: [0, 0] };
      });
      return weightsFile(dir);
    },
    code: 'BAD_SAFETENSORS',
    mentions: ['"evil\\nname"', 'Q4_K'],
  },
  {
    name: 'a PyTorch zip renamed to model.safetensors',
    damage: (dir) => (fs.writeFileSync(weightsFile(dir), Buffer.from('PK\x03\x04\x14\0\0\0archive/data.pkl', 'latin1')), weightsFile(dir)),
    code: 'PICKLE_REFUSED',
    mentions: ['PyTorch pickle', 'arbitrary code', 'save_file('],
  },
  {
    name: 'only pytorch_model.bin in the folder',
    damage: (dir) => {
      fs.renameSync(weightsFile(dir), path.join(dir, 'pytorch_model.bin'));
    },
    code: 'PICKLE_REFUSED',
    mentions: ['pytorch_model.bin', 'arbitrary code', 'safe_serialization=True'],
  },
  {
    name: 'no weights file at all',
    extended: true,
    damage: (dir) => {
      fs.rmSync(weightsFile(dir));
    },
    code: 'FILE_NOT_FOUND',
    mentions: ['no model weights', 'model.safetensors'],
  },
  {
    name: 'a weight config.json needs is missing',
    extended: true,
    damage: (dir) => {
      patchSafetensorsHeader(weightsFile(dir), (h) => delete h['model.norm.weight']);
    },
    code: 'MISSING_WEIGHT',
    mentions: ['"model.norm.weight"', 'missing'],
  },
  {
    name: 'an I64 tensor where a float weight belongs',
    command: 'logits',
    damage: (dir) => {
      const { header, data } = readSafetensorsParts(weightsFile(dir));
      const norm = header['model.norm.weight'] as { dtype: string; shape: number[]; data_offsets: [number, number] };
      // Same shape, 8 bytes per value, appended at the end where nothing else lives.
      norm.dtype = 'I64';
      norm.data_offsets = [data.length, data.length + 8 * norm.shape[0]!];
      writeSafetensorsParts(weightsFile(dir), header, Buffer.concat([data, Buffer.alloc(8 * norm.shape[0]!)]));
      return weightsFile(dir);
    },
    code: 'SHAPE_MISMATCH',
    mentions: ['"model.norm.weight"', 'is I64', 'expected a float tensor'],
  },
  {
    name: 'sharded: the index lists a shard that is missing',
    damage: (dir) => {
      const index = shard(dir);
      fs.rmSync(path.join(dir, 'model-00002-of-00002.safetensors'));
      return index;
    },
    code: 'FILE_NOT_FOUND',
    mentions: ['model-00002-of-00002.safetensors', 'missing', 'incomplete'],
  },
  {
    name: 'sharded: the index points outside the folder (../)',
    damage: (dir) => shard(dir, (map) => (map['model.norm.weight'] = '../../etc/passwd')),
    code: 'BAD_SAFETENSORS',
    mentions: ['"model.norm.weight"', '../../etc/passwd', 'inside the folder'],
  },
  {
    name: 'sharded: the index puts a tensor in a shard that lacks it',
    extended: true,
    damage: (dir) => shard(dir, (map) => (map['model.norm.weight'] = 'model-00001-of-00002.safetensors')),
    code: 'MISSING_WEIGHT',
    mentions: ['"model.norm.weight"', 'model-00001-of-00002.safetensors', 'does not hold it'],
  },
];

const { root } = describeFolderCases('safetensors', cases);

describe('safetensors damage no command reaches (engine call)', () => {
  it('an I64 value outside the int32 range is refused, never wrapped', async () => {
    const c = { group: 'safetensors', name: 'I64 overflow read as int32 (engine call, no CLI path)' };
    const mentions = ['"ids"', 'element 1', '4294967296', 'outside the int32 range'];
    await recorded({ ...c, expected: `BAD_SAFETENSORS; mentions ${mentions.map((m) => JSON.stringify(m)).join(', ')}` }, async () => {
      const file = path.join(root, 'i64-overflow.safetensors');
      const data = Buffer.alloc(16);
      data.writeBigInt64LE(7n, 0);
      data.writeBigInt64LE(4294967296n, 8);
      writeSafetensorsParts(file, { ids: { dtype: 'I64', shape: [2], data_offsets: [0, 16] } }, data);
      const st = SafetensorsFile.open(file);
      try {
        const refusal = await expectRefusal(() => st.readInt32('ids'), 'BAD_SAFETENSORS', [file, ...mentions]);
        return `BAD_SAFETENSORS: ${refusal.message}`;
      } finally {
        st.close();
      }
    });
  });
});

