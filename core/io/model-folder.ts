/**
 * Writes a model as a Hugging Face folder (config.json + model.safetensors, sharded above a size
 * limit with model.safetensors.index.json as transformers does) and copies the tokenizer files, so
 * the result loads in `transformers` and back in Lowrank Studio unchanged.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeSafetensors, type TensorToWrite, type WritableDtype } from './safetensors.ts';

export type StorageDtype = 'float32' | 'float16' | 'bfloat16';

const SAFETENSORS_DTYPE: Record<StorageDtype, WritableDtype> = { float32: 'F32', float16: 'F16', bfloat16: 'BF16' };
const BYTES: Record<StorageDtype, number> = { float32: 4, float16: 2, bfloat16: 2 };

export const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'chat_template.jinja',
  'generation_config.json',
];

export interface NamedTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

export function writeJsonFile(file: string, value: unknown): void {
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, `${JSON.stringify(value, null, 2)}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

/**
 * Writes config + weights into `dir` (created if missing). Shards hold at most `maxShardBytes`
 * (transformers' default is 5 GB; 2 GB keeps every shard under 32-bit file APIs' limits).
 */
export function writeModelFolder(
  dir: string,
  config: Record<string, unknown>,
  tensors: NamedTensor[],
  opts: { dtype?: StorageDtype; maxShardBytes?: number; tokenizerFrom?: string } = {},
): void {
  const dtype = opts.dtype ?? 'float32';
  const maxShardBytes = opts.maxShardBytes ?? 2 * 1024 ** 3;
  fs.mkdirSync(dir, { recursive: true });
  writeJsonFile(path.join(dir, 'config.json'), { ...config, torch_dtype: dtype });

  const shards: TensorToWrite[][] = [[]];
  let shardBytes = 0;
  let totalBytes = 0;
  for (const t of tensors) {
    const bytes = t.data.length * BYTES[dtype];
    if (shardBytes > 0 && shardBytes + bytes > maxShardBytes) {
      shards.push([]);
      shardBytes = 0;
    }
    shards[shards.length - 1].push({ name: t.name, shape: t.shape, data: t.data, dtype: SAFETENSORS_DTYPE[dtype] });
    shardBytes += bytes;
    totalBytes += bytes;
  }
  const metadata = { format: 'pt' };
  if (shards.length === 1) {
    writeSafetensors(path.join(dir, 'model.safetensors'), shards[0], metadata);
  } else {
    const weightMap: Record<string, string> = {};
    shards.forEach((shard, i) => {
      const file = `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;
      writeSafetensors(path.join(dir, file), shard, metadata);
      for (const t of shard) weightMap[t.name] = file;
    });
    writeJsonFile(path.join(dir, 'model.safetensors.index.json'), { metadata: { total_size: totalBytes }, weight_map: weightMap });
  }
  if (opts.tokenizerFrom) copyTokenizerFiles(opts.tokenizerFrom, dir);
}

export function copyTokenizerFiles(from: string, to: string): void {
  for (const file of TOKENIZER_FILES) {
    const src = path.join(from, file);
    if (fs.existsSync(src)) fs.copyFileSync(src, path.join(to, file));
  }
}
