/**
 * The weights an export writes: every weight of the base model folder, read one at a time in the
 * order the base stored them, with some replaced by new values (a method's merged weights). Shared
 * by the merged Hugging Face folder and the GGUF writer, so both check overrides the same way.
 */
import type * as tf from '../tf.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import { LowrankError } from '../errors.ts';
import { expectedWeights, type ModelConfig } from '../models/config.ts';
import { canonicalWeightName, openCheckpoint } from '../models/load.ts';
import type { SafetensorsDtype } from '../io/safetensors.ts';

/** A tensor in host memory: row-major float32 values and their shape. */
export interface HostTensor {
  shape: number[];
  data: Float32Array;
}

/** What callers may hand an export: a tfjs tensor (read, never disposed here) or host values. */
export type WeightValue = tf.Tensor | HostTensor;

export function toHostTensor(value: WeightValue, what: string): HostTensor {
  if ('dataSync' in value) {
    if (value.dtype !== 'float32') throw new LowrankError('BAD_ARGUMENT', `${what}: expected a float32 tensor, got ${value.dtype}`);
    return { shape: [...value.shape], data: value.dataSync() as Float32Array };
  }
  const count = value.shape.reduce((a, b) => a * b, 1);
  if (!(value.data instanceof Float32Array) || value.data.length !== count) {
    throw new LowrankError('BAD_ARGUMENT', `${what}: shape [${value.shape.join(', ')}] does not hold ${value.data.length} float32 values`);
  }
  return value;
}

export interface ExportWeight {
  /** The project's name (GPT-2 with `transformer.`), as expectedWeights lists it. */
  canonical: string;
  /** The name the base checkpoint stores it under. */
  stored: string;
  shape: number[];
  /** Storage dtype in the base checkpoint. */
  baseDtype: SafetensorsDtype;
  /** True when an override replaces the base value. */
  replaced: boolean;
  read(): Float32Array;
}

export interface ExportWeights {
  config: ModelConfig;
  /** Every weight the config implies, in the base checkpoint's order. */
  weights: ExportWeight[];
  close(): void;
}

/**
 * Opens `baseDir` (checked against its config.json) and lines up its weights with `overrides`,
 * keyed by either the project's or the stored name. An override for a weight the base does not
 * have, or with another shape, is an error: it means the weights belong to a different model.
 */
export function openExportWeights(baseDir: string, overrides: Map<string, WeightValue> = new Map()): ExportWeights {
  const { config, reader, storedName } = openCheckpoint(baseDir);
  try {
    const expected = expectedWeights(config);
    const byCanonical = new Map<string, HostTensor>();
    for (const [name, value] of overrides) {
      const canonical = canonicalWeightName(config, name);
      const shape = expected.get(canonical);
      if (!shape) {
        throw new LowrankError(
          'MISSING_WEIGHT',
          `merged weight "${name}" is not a weight of the base model ${baseDir} (${config.architecture}); export with the base the method was trained on`,
        );
      }
      const host = toHostTensor(value, `merged weight "${name}"`);
      if (host.shape.length !== shape.length || host.shape.some((d, i) => d !== shape[i])) {
        throw new LowrankError(
          'SHAPE_MISMATCH',
          `merged weight "${name}" has shape [${host.shape.join(', ')}] but the base model ${baseDir} stores [${shape.join(', ')}]`,
        );
      }
      if (byCanonical.has(canonical)) throw new LowrankError('BAD_ARGUMENT', `merged weight "${name}" is given twice (as "${canonical}" too)`);
      byCanonical.set(canonical, host);
    }

    const storedOrder = new Map(reader.names().map((name, i) => [name, i]));
    const weights: ExportWeight[] = [...expected].map(([canonical, shape]) => {
      const stored = storedName.get(canonical)!;
      const override = byCanonical.get(canonical);
      return {
        canonical,
        stored,
        shape,
        baseDtype: reader.info(stored).dtype,
        replaced: override !== undefined,
        read: () => (override ? override.data : reader.readFloat32(stored)),
      };
    });
    weights.sort((a, b) => storedOrder.get(a.stored)! - storedOrder.get(b.stored)!);
    return { config, weights, close: () => reader.close() };
  } catch (e) {
    reader.close();
    throw e;
  }
}

/**
 * A method's merged weights with a frozen base that was stored lossily (int8, NF4, or converted to
 * another precision on load) moved onto the original-precision weights: W_orig + (merged − W_frozen),
 * the update read exactly as the run trained it and added to the weights as the base file stores
 * them. So a QLoRA-style run exports what a float base plus its adapter computes, not the quantized
 * base. Weights held as tensors, or frozen in their own precision, pass through unchanged.
 */
export function mergedOntoOriginal(model: CausalLM, merged: Map<string, tf.Tensor>, baseDir: string): Map<string, WeightValue> {
  const out = new Map<string, WeightValue>(merged);
  const lossy = [...merged.keys()].filter((name) => model.isFrozen(name));
  if (lossy.length === 0) return out;
  const { reader, storedName } = openCheckpoint(baseDir);
  try {
    for (const name of lossy) {
      const frozen = model.frozen.get(name)!;
      const stored = storedName.get(name)!;
      const storedKind = { F32: 'f32', F16: 'f16', BF16: 'bf16' }[reader.info(stored).dtype as 'F32' | 'F16' | 'BF16'];
      if (frozen.kind === storedKind) continue;
      const original = reader.readFloat32(stored);
      const trained = merged.get(name)!.dataSync() as Float32Array;
      const base = frozen.readRows(0, frozen.shape[0]);
      const data = new Float32Array(original.length);
      for (let i = 0; i < data.length; i++) data[i] = original[i] + (trained[i] - base[i]);
      out.set(name, { shape: [...frozen.shape], data });
    }
    return out;
  } finally {
    reader.close();
  }
}
