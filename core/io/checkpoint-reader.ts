/**
 * The weights of a Hugging Face model folder: `model.safetensors`, or shards listed by
 * `model.safetensors.index.json`. PyTorch pickles are refused, never loaded: unpickling executes
 * whatever code the file carries, and a model folder is often a download from a stranger.
 * Re-exported from safetensors.ts, which is where callers import it from.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { isJsonObject, readJsonFile, requireModelFolder } from './hf-folder.ts';
import { SafetensorsFile, type TensorInfo } from './safetensors.ts';

const SINGLE_FILE = 'model.safetensors';
const INDEX_FILE = 'model.safetensors.index.json';
const PICKLE_REASON = 'Lowrank Studio does not load PyTorch pickles because unpickling runs arbitrary code';
/** Pickles a training folder holds besides weights; on their own they are not "a model in pickle format". */
const NOT_WEIGHTS = /^(training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth)$/;

/** True for a file name PyTorch writes with pickle (`torch.save`): .bin, .pt, .pth, .ckpt. */
export function isPickleFile(file: string): boolean {
  return /\.(bin|pt|pth|ckpt)$/i.test(file);
}

function pythonString(text: string): string {
  return JSON.stringify(text); // a JSON string literal is a valid Python one (quotes and backslashes escaped)
}

/** For a user who points straight at a pickle file: always throws PICKLE_REFUSED with the conversion. */
export function refusePickle(file: string): never {
  const stem = file.replace(/\.[^./\\]+$/, '');
  const out = stem + (file.endsWith('.safetensors') ? '.converted.safetensors' : '.safetensors');
  throw new LowrankError(
    'PICKLE_REFUSED',
    `${file} is a PyTorch pickle; ${PICKLE_REASON}. Convert it to safetensors in Python: ` +
      `import torch; from safetensors.torch import save_file; ` +
      `save_file({k: v.contiguous() for k, v in torch.load(${pythonString(file)}, map_location="cpu", weights_only=True).items()}, ${pythonString(out)})`,
  );
}

function refusePickleFolder(dir: string, pickles: string[]): never {
  const shown = pickles.length > 3 ? `${pickles.slice(0, 3).join(', ')}, …` : pickles.join(', ');
  const trimmed = dir.replace(/[\\/]+$/, '');
  throw new LowrankError(
    'PICKLE_REFUSED',
    `${dir} holds only PyTorch pickle weights (${shown}); ${PICKLE_REASON}. Convert the folder to safetensors in Python: ` +
      `from transformers import AutoModelForCausalLM; ` +
      `AutoModelForCausalLM.from_pretrained(${pythonString(trimmed)}).save_pretrained(${pythonString(trimmed + '-safetensors')}, safe_serialization=True)`,
  );
}

export class CheckpointReader {
  readonly dir: string;
  /** The index file for a sharded checkpoint, else null. */
  readonly indexPath: string | null;
  /** Tensor name -> shard path, in index (or file) order. */
  private readonly shardOf: Map<string, string>;
  private readonly opened = new Map<string, SafetensorsFile>();

  private constructor(dir: string, indexPath: string | null, shardOf: Map<string, string>) {
    this.dir = dir;
    this.indexPath = indexPath;
    this.shardOf = shardOf;
  }

  /**
   * Opens the weights of a model folder. A sharded checkpoint's index is validated up front (it is
   * well formed, every shard file exists); each shard's header is read on first use, and that is when
   * its tensors are checked against the index, so a 30-shard model starts without touching 30 files.
   */
  static open(dir: string): CheckpointReader {
    if (isPickleFile(dir) && fs.statSync(dir, { throwIfNoEntry: false })?.isFile()) refusePickle(dir);
    requireModelFolder(dir);
    const entries = fs.readdirSync(dir);
    // transformers prefers the single file when both exist; so do we.
    if (entries.includes(SINGLE_FILE)) {
      const file = SafetensorsFile.open(path.join(dir, SINGLE_FILE));
      const reader = new CheckpointReader(dir, null, new Map([...file.tensors.keys()].map((name) => [name, file.path])));
      reader.opened.set(file.path, file);
      return reader;
    }
    if (entries.includes(INDEX_FILE)) return CheckpointReader.openSharded(dir, path.join(dir, INDEX_FILE));

    const pickles = entries.filter((name) => (isPickleFile(name) && !NOT_WEIGHTS.test(name)) || name === 'pytorch_model.bin.index.json');
    if (pickles.length > 0) refusePickleFolder(dir, pickles.sort());
    const others = entries.filter((name) => name.endsWith('.safetensors'));
    const hint = entries.includes('adapter_model.safetensors')
      ? 'this is a PEFT adapter folder; pick the base model folder it was trained on'
      : others.length > 0
        ? `found ${others.slice(0, 3).join(', ')}${others.length > 3 ? ', …' : ''} but no ${INDEX_FILE} to say which tensors they hold; re-download the model`
        : 'point at a Hugging Face model folder';
    throw new LowrankError('FILE_NOT_FOUND', `${dir} has no model weights (no ${SINGLE_FILE} or ${INDEX_FILE}); ${hint}`);
  }

  private static openSharded(dir: string, indexPath: string): CheckpointReader {
    const index = readJsonFile(indexPath, 'shard index');
    const weightMap = isJsonObject(index) ? index.weight_map : undefined;
    if (!isJsonObject(weightMap)) {
      throw new LowrankError('BAD_SAFETENSORS', `${indexPath}: expected a "weight_map" object mapping tensor names to shard files; re-download the model`);
    }
    const shardOf = new Map<string, string>();
    const checked = new Set<string>();
    for (const [name, shard] of Object.entries(weightMap)) {
      // Shard names come from a downloaded file: keep them inside the folder.
      if (typeof shard !== 'string' || shard === '' || path.isAbsolute(shard) || shard.split(/[\\/]/).includes('..')) {
        throw new LowrankError('BAD_SAFETENSORS', `${indexPath}: tensor ${JSON.stringify(name)} maps to ${JSON.stringify(shard)}, expected a shard file name inside the folder`);
      }
      const shardPath = path.join(dir, shard);
      if (!checked.has(shardPath)) {
        if (!fs.statSync(shardPath, { throwIfNoEntry: false })?.isFile()) {
          throw new LowrankError('FILE_NOT_FOUND', `${indexPath} lists shard ${shard}, which is missing from ${dir}: the download is incomplete; re-download the model`);
        }
        checked.add(shardPath);
      }
      shardOf.set(name, shardPath);
    }
    if (shardOf.size === 0) throw new LowrankError('BAD_SAFETENSORS', `${indexPath}: "weight_map" lists no tensors; re-download the model`);
    return new CheckpointReader(dir, indexPath, shardOf);
  }

  /** Tensor names, in index (or file) order. */
  names(): string[] {
    return [...this.shardOf.keys()];
  }

  has(name: string): boolean {
    return this.shardOf.has(name);
  }

  info(name: string): TensorInfo {
    return this.shardFor(name).info(name);
  }

  readFloat32(name: string): Float32Array {
    return this.shardFor(name).readFloat32(name);
  }

  readInt32(name: string): Int32Array {
    return this.shardFor(name).readInt32(name);
  }

  readRaw16(name: string): Uint16Array {
    return this.shardFor(name).readRaw16(name);
  }

  close(): void {
    for (const file of this.opened.values()) file.close();
    this.opened.clear();
  }

  private shardFor(name: string): SafetensorsFile {
    const shardPath = this.shardOf.get(name);
    if (shardPath === undefined) {
      throw new LowrankError('MISSING_WEIGHT', `${this.dir}: the checkpoint has no tensor named ${JSON.stringify(name)}`);
    }
    let file = this.opened.get(shardPath);
    if (!file) {
      file = SafetensorsFile.open(shardPath);
      try {
        this.checkShardAgainstIndex(file);
      } catch (e) {
        file.close();
        throw e;
      }
      this.opened.set(shardPath, file);
    }
    return file;
  }

  /** An index from one revision with shards from another would otherwise fail halfway through a load. */
  private checkShardAgainstIndex(file: SafetensorsFile): void {
    for (const [name, shardPath] of this.shardOf) {
      if (shardPath === file.path && !file.tensors.has(name)) {
        throw new LowrankError(
          'MISSING_WEIGHT',
          `${this.indexPath} says tensor ${JSON.stringify(name)} is in ${path.basename(file.path)}, but that shard does not hold it: index and shards do not match; re-download the model`,
        );
      }
    }
  }
}
