/**
 * The method registry (peft's `register_peft_method`): every method file registers itself on
 * import (core/methods/index.ts imports them all). Ids are unique, and no two methods may own
 * overlapping trainable-name prefixes unless one is a variant of the other (`dora` shares `lora_`).
 */
import { LowrankError } from '../errors.ts';
import type { Method } from './method.ts';

export class MethodRegistry {
  private readonly methods = new Map<string, Method>();

  register(method: Method): void {
    if (!/^[a-z][a-z0-9-]*$/.test(method.id)) {
      throw new LowrankError('BAD_ARGUMENT', `method id "${method.id}" must be lower-case letters, digits and dashes`);
    }
    if (this.methods.has(method.id)) {
      throw new LowrankError('BAD_ARGUMENT', `a method with id "${method.id}" is already registered`);
    }
    if (method.variantOf !== undefined) {
      const base = this.methods.get(method.variantOf);
      if (!base) {
        throw new LowrankError('BAD_ARGUMENT', `method ${method.id} is a variant of "${method.variantOf}", which is not registered (register it first)`);
      }
      if (base.parameterPrefix !== method.parameterPrefix) {
        throw new LowrankError(
          'BAD_ARGUMENT',
          `method ${method.id} is a variant of ${base.id} but its parameter prefix "${method.parameterPrefix}" differs from "${base.parameterPrefix}"`,
        );
      }
    }
    // An empty prefix means the method trains the base weights themselves and owns no names.
    if (method.parameterPrefix !== '') {
      const owner = prefixOwner(method);
      for (const other of this.methods.values()) {
        if (other.parameterPrefix === '' || prefixOwner(other) === owner) continue;
        const a = method.parameterPrefix;
        const b = other.parameterPrefix;
        if (a.startsWith(b) || b.startsWith(a)) {
          throw new LowrankError(
            'BAD_ARGUMENT',
            `method ${method.id}'s parameter prefix "${a}" clashes with "${b}" of method ${other.id}; choose a prefix that neither starts nor is started by another`,
          );
        }
      }
    }
    this.methods.set(method.id, method);
  }

  get(id: string): Method {
    const method = this.methods.get(id);
    if (!method) {
      throw new LowrankError('BAD_ARGUMENT', `unknown method "${id}"; known methods: ${[...this.methods.keys()].join(', ')}`);
    }
    return method;
  }

  has(id: string): boolean {
    return this.methods.has(id);
  }

  /** In registration order. */
  list(): Method[] {
    return [...this.methods.values()];
  }
}

/** The id whose prefix a method uses: variants share their base's. */
function prefixOwner(method: Method): string {
  return method.variantOf ?? method.id;
}

/** The process-wide registry the method files register into. */
export const methodRegistry = new MethodRegistry();

export function registerMethod(method: Method): void {
  methodRegistry.register(method);
}

export function getMethod(id: string): Method {
  return methodRegistry.get(id);
}

export function listMethods(): Method[] {
  return methodRegistry.list();
}
