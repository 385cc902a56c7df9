/**
 * A merged model: the base's Hugging Face folder with a method's update folded into the weights,
 * so `transformers` (and Lowrank Studio) load it as a plain model. Same config.json, same tokenizer
 * files, every weight under the name the base stored it (GPT-2 with or without `transformer.`), in
 * the base's order; sharded above 2 GB as transformers does.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { writeModelFolder, type NamedTensor, type StorageDtype } from '../io/model-folder.ts';
import type { SafetensorsDtype } from '../io/safetensors.ts';
import { withFreshDestination } from './destination.ts';
import { openExportWeights, type WeightValue } from './weights.ts';

export interface MergedExportOptions {
  /** 'float32', or 'base' to store in the base's dtype (F16/BF16 checkpoints stay half size). */
  dtype: 'float32' | 'base';
  /** Largest shard; default 2 GB (writeModelFolder's default). */
  maxShardBytes?: number;
  /** The model card, written as README.md inside the folder before it appears under its name. */
  modelCard?: string;
}

/** Tokenizer files transformers may need besides the ones writeModelFolder copies. */
const EXTRA_TOKENIZER_FILES = ['tokenizer.model', 'vocab.json', 'merges.txt', 'added_tokens.json', 'chat_template.json'];

const STORAGE_OF: Partial<Record<SafetensorsDtype, StorageDtype>> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };

/**
 * Writes `out` (must not exist): base config + tokenizer, and every base weight with the ones in
 * `mergedWeights` (keyed by the project's or the stored name) replaced. Values are not disposed.
 */
export async function exportMerged(
  out: string,
  baseDir: string,
  mergedWeights: Map<string, WeightValue>,
  opts: MergedExportOptions,
): Promise<{ dtype: StorageDtype; tensors: number; replaced: number }> {
  const source = openExportWeights(baseDir, mergedWeights);
  try {
    const dtype = opts.dtype === 'float32' ? 'float32' : baseStorageDtype(source.weights.map((w) => w.baseDtype), source.config.torchDtype);
    const tensors: NamedTensor[] = source.weights.map((w) => ({ name: w.stored, shape: w.shape, data: w.read() }));
    await withFreshDestination(out, (dir) => {
      writeModelFolder(dir, source.config.raw, tensors, { dtype, maxShardBytes: opts.maxShardBytes, tokenizerFrom: baseDir });
      for (const file of EXTRA_TOKENIZER_FILES) {
        const from = path.join(baseDir, file);
        if (fs.existsSync(from)) fs.copyFileSync(from, path.join(dir, file));
      }
      if (opts.modelCard !== undefined) fs.writeFileSync(path.join(dir, 'README.md'), opts.modelCard);
    });
    return { dtype, tensors: tensors.length, replaced: source.weights.filter((w) => w.replaced).length };
  } finally {
    source.close();
  }
}

/** The dtype the base stores its weights in; a mixed checkpoint follows config.json's torch_dtype. */
function baseStorageDtype(dtypes: SafetensorsDtype[], torchDtype: string): StorageDtype {
  const distinct = [...new Set(dtypes)];
  if (distinct.length === 1) {
    const single = STORAGE_OF[distinct[0]!];
    if (single) return single;
  }
  if (torchDtype === 'float32' || torchDtype === 'float16' || torchDtype === 'bfloat16') return torchDtype;
  throw new LowrankError(
    'BAD_ARGUMENT',
    `cannot tell the base model's storage dtype (weights are ${distinct.join(', ')}, torch_dtype "${torchDtype}"); export with dtype float32`,
  );
}
