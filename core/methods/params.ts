/**
 * Hyper-parameters checked against a method's schema: defaults filled in, types and ranges
 * enforced, unknown names refused. The same check runs for the CLI flags and the wizard form.
 */
import { LowrankError } from '../errors.ts';
import type { MethodParams, SchemaField } from './method.ts';

export function resolveParams(methodId: string, schema: SchemaField[], given: MethodParams = {}): MethodParams {
  const known = new Map(schema.map((f) => [f.name, f]));
  for (const name of Object.keys(given)) {
    if (!known.has(name)) {
      throw new LowrankError(
        'BAD_ARGUMENT',
        `method ${methodId} has no parameter "${name}"; ${schema.length > 0 ? `its parameters are: ${schema.map((f) => f.name).join(', ')}` : 'it takes none'}`,
      );
    }
  }
  const out: MethodParams = {};
  for (const field of schema) {
    const value = given[field.name] ?? field.default;
    out[field.name] = checkField(methodId, field, value);
  }
  return out;
}

function checkField(methodId: string, field: SchemaField, value: number | boolean | string): number | boolean | string {
  const where = `method ${methodId}: parameter ${field.name}`;
  switch (field.type) {
    case 'number':
    case 'integer': {
      if (typeof value !== 'number' || !Number.isFinite(value)) {
        throw new LowrankError('BAD_ARGUMENT', `${where} must be a number, got ${JSON.stringify(value)}`);
      }
      if (field.type === 'integer' && !Number.isInteger(value)) {
        throw new LowrankError('BAD_ARGUMENT', `${where} must be an integer, got ${value}`);
      }
      if ((field.min !== undefined && value < field.min) || (field.max !== undefined && value > field.max)) {
        throw new LowrankError('BAD_ARGUMENT', `${where} must be in [${field.min ?? '-∞'}, ${field.max ?? '∞'}], got ${value}`);
      }
      return value;
    }
    case 'boolean':
      if (typeof value !== 'boolean') throw new LowrankError('BAD_ARGUMENT', `${where} must be true or false, got ${JSON.stringify(value)}`);
      return value;
    case 'enum':
      if (typeof value !== 'string' || !field.choices.includes(value)) {
        throw new LowrankError('BAD_ARGUMENT', `${where} must be one of ${field.choices.join(', ')}, got ${JSON.stringify(value)}`);
      }
      return value;
    case 'string':
      if (typeof value !== 'string') throw new LowrankError('BAD_ARGUMENT', `${where} must be a string, got ${JSON.stringify(value)}`);
      return value;
  }
}

/** The adapters' input-dropout field (peft's lora_dropout and its kin). */
export function dropoutField(rate = 0): SchemaField {
  return { name: 'dropout', type: 'number', default: rate, min: 0, max: 0.95, description: 'dropout on the adapter input while training' };
}

/** peft's projection_prng_key: the seed the shared random projections of VeRA and RandLoRA come from. */
export function projectionKeyField(what: string): SchemaField {
  return {
    name: 'projection_prng_key',
    type: 'integer',
    default: 0,
    min: 0,
    max: 2 ** 32 - 1,
    description: `seed of the shared random ${what}; the same key always regenerates the same bits`,
  };
}
