/**
 * The wizard's field checks, in the person's words, shown next to each field before Review (the
 * service's own checks name the contract's field paths, which are for programs).
 */
import type { SchemaField } from '../../../core/methods/method.ts';

type Value = number | string | boolean | null | undefined;

/** A whole number in [min, max], or the message saying what is wrong. */
export function checkInteger(v: Value, min: number, max = Number.MAX_SAFE_INTEGER): string | null {
  if (v === '' || v === null || v === undefined || typeof v !== 'number' || Number.isNaN(v)) return 'enter a number';
  if (!Number.isInteger(v)) return 'enter a whole number';
  if (v < min) return `at least ${min}`;
  if (v > max) return `at most ${max.toLocaleString('en-US')}`;
  return null;
}

export function checkNumber(v: Value, min: number, max = Infinity, exclusiveMin = false): string | null {
  if (v === '' || v === null || v === undefined || typeof v !== 'number' || Number.isNaN(v)) return 'enter a number';
  if (exclusiveMin ? v <= min : v < min) return exclusiveMin ? `more than ${min}` : `at least ${min}`;
  if (v > max) return `at most ${max}`;
  return null;
}

export interface TrainingFields {
  steps: number | null;
  epochs: number | null;
  batchSize: number;
  seqLen: number;
  lr: number;
  warmupSteps: number;
  gradientAccumulation: number;
  weightDecay: number;
  clipNorm: number;
  evalEvery: number;
  checkpointEvery: number;
  earlyStoppingPatience: number;
  metricExamples: number;
  seed: number;
}

/** Field name -> message, for the fields that are not usable; empty when all are. */
export function trainingProblems(t: TrainingFields, useSteps: boolean, contextLength: number | null): Record<string, string> {
  const problems: Record<string, string | null> = {
    steps: useSteps ? checkInteger(t.steps, 1, 10_000_000) : null,
    epochs: useSteps ? null : checkNumber(t.epochs, 0.01, 10_000),
    batchSize: checkInteger(t.batchSize, 1, 4096),
    seqLen: checkInteger(t.seqLen, 2, 1 << 20),
    lr: checkNumber(t.lr, 0, 1, true),
    warmupSteps: checkInteger(t.warmupSteps, 0),
    gradientAccumulation: checkInteger(t.gradientAccumulation, 1, 4096),
    weightDecay: checkNumber(t.weightDecay, 0),
    clipNorm: checkNumber(t.clipNorm, 0),
    evalEvery: checkInteger(t.evalEvery, 1),
    checkpointEvery: checkInteger(t.checkpointEvery, 1),
    earlyStoppingPatience: checkInteger(t.earlyStoppingPatience, 0),
    metricExamples: checkInteger(t.metricExamples, 0),
    seed: checkInteger(t.seed, 0, 2 ** 31),
  };
  if (!problems.seqLen && contextLength !== null && t.seqLen > contextLength) problems.seqLen = `at most ${contextLength}, this model's context length`;
  return Object.fromEntries(Object.entries(problems).filter((e): e is [string, string] => e[1] !== null));
}

/** A method parameter's problem against its schema (the form holds what the person typed). */
export function parameterProblem(field: SchemaField, v: Value): string | null {
  if (field.type === 'integer') return checkInteger(v, field.min ?? -Number.MAX_SAFE_INTEGER, field.max ?? Number.MAX_SAFE_INTEGER);
  if (field.type === 'number') return checkNumber(v, field.min ?? -Infinity, field.max ?? Infinity);
  return null;
}
