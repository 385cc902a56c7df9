/**
 * Saved tensor values handed to `attach` (AttachContext.initial) so a saved adapter can be trained
 * further. Keys are the exported names with or without peft's `base_model.model.` prefix; every
 * key must be used, so an adapter saved for other modules is refused rather than half-loaded.
 */
import { LowrankError } from '../errors.ts';

export const PEFT_KEY_PREFIX = 'base_model.model.';

export class InitialValues {
  private readonly values = new Map<string, Float32Array>();
  private readonly used = new Set<string>();

  constructor(initial: Map<string, Float32Array>) {
    for (const [key, value] of initial) {
      this.values.set(key.startsWith(PEFT_KEY_PREFIX) ? key.slice(PEFT_KEY_PREFIX.length) : key, value);
    }
  }

  static from(initial: Map<string, Float32Array> | undefined): InitialValues | undefined {
    return initial ? new InitialValues(initial) : undefined;
  }

  /** The values under `key`, if any, without checking their size. */
  peek(key: string): Float32Array | undefined {
    return this.values.get(key);
  }

  /** The values under `key`, which must exist and hold exactly prod(shape) numbers. */
  take(key: string, shape: number[]): Float32Array {
    const value = this.values.get(key);
    if (!value) {
      throw new LowrankError('MISSING_WEIGHT', `saved adapter has no tensor "${key}" [${shape.join(', ')}]; it was saved for other modules or another method`);
    }
    const size = shape.reduce((a, b) => a * b, 1);
    if (value.length !== size) {
      throw new LowrankError(
        'SHAPE_MISMATCH',
        `saved adapter tensor "${key}" has ${value.length} values but [${shape.join(', ')}] = ${size} are needed; check the rank and the base model`,
      );
    }
    this.used.add(key);
    return value;
  }

  /** Throws when a saved tensor matched nothing the method attached. */
  assertAllUsed(): void {
    const unused = [...this.values.keys()].filter((k) => !this.used.has(k));
    if (unused.length > 0) {
      throw new LowrankError(
        'BAD_ARGUMENT',
        `saved adapter tensors ${unused.slice(0, 5).join(', ')}${unused.length > 5 ? ` (and ${unused.length - 5} more)` : ''} match no module the method was attached to; check --target`,
      );
    }
  }
}
