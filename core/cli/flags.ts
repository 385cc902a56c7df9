/** Reading typed values out of parsed CLI flags, with errors that name the flag and the fix. */
import { LowrankError } from '../errors.ts';
import type { Flags } from '../cli.ts';

export function requireString(flags: Flags, name: string, hint: string): string {
  const v = flags[name];
  if (typeof v !== 'string' || v === '') throw new LowrankError('BAD_ARGUMENT', `--${name} is required (${hint})`);
  return v;
}

export function numberFlag(flags: Flags, name: string, fallback: number, opts: { integer?: boolean; min?: number; max?: number } = {}): number {
  const raw = flags[name];
  if (raw === undefined) return fallback;
  const v = Number(raw);
  const ok = typeof raw === 'string' && raw.trim() !== '' && Number.isFinite(v) && (!opts.integer || Number.isInteger(v));
  const inRange = ok && (opts.min === undefined || v >= opts.min) && (opts.max === undefined || v <= opts.max);
  if (!inRange) {
    const range = [opts.min !== undefined ? `>= ${opts.min}` : '', opts.max !== undefined ? `<= ${opts.max}` : ''].filter(Boolean).join(' and ');
    throw new LowrankError('BAD_ARGUMENT', `--${name} must be ${opts.integer ? 'an integer' : 'a number'}${range ? ` ${range}` : ''}, got "${String(raw)}"`);
  }
  return v;
}

/** A flag whose value is one of `choices`. */
export function choiceFlag<T extends string>(flags: Flags, name: string, choices: readonly T[], fallback: T): T {
  const raw = flags[name];
  if (raw === undefined) return fallback;
  if (typeof raw !== 'string' || !choices.includes(raw as T)) {
    throw new LowrankError('BAD_ARGUMENT', `--${name} must be one of ${choices.join(', ')}, got "${String(raw)}"`);
  }
  return raw as T;
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}
