/**
 * Running a fast-check property for the reliability record: bounded runs and wall time, a seed
 * that is printed and recorded (set LOWRANK_FUZZ_SEED to replay one), the slowest single input
 * timed (a reader that takes a second on a few hundred bytes is as good as hung), and one summary
 * outcome per property in docs/reliability.md.
 */
import fc from 'fast-check';
import { isLowrankError, type ErrorCode } from '../../core/errors.ts';
import { recordOutcome } from '../helpers/reliability-record.ts';

/** One seed per test file run; fixed by LOWRANK_FUZZ_SEED to reproduce a failure. */
export const FUZZ_SEED = process.env.LOWRANK_FUZZ_SEED !== undefined ? Number(process.env.LOWRANK_FUZZ_SEED) : Date.now() % 2 ** 31;

/** LOWRANK_FUZZ_SCALE=10 runs ten times the inputs, with ten times the time budget, for a deeper search. */
const SCALE = Number(process.env.LOWRANK_FUZZ_SCALE ?? 1);

/** The vitest timeout of a property's test: its time budget and then some, as the "never hangs" bound. */
export const FUZZ_TEST_TIMEOUT_MS = 60_000 * SCALE;

/** No single input may take longer than this. */
export const SLOWEST_INPUT_MS = 1000;

export interface FuzzStats {
  /** Inputs the reader accepted (and whose result passed the checks). */
  accepted: number;
  /** Inputs refused with a LowrankError, by code. */
  refused: Map<string, number>;
  slowestMs: number;
}

export function newStats(): FuzzStats {
  return { accepted: 0, refused: new Map(), slowestMs: 0 };
}

/**
 * Times `attempt` on one input: it returns normally (accepted), or throws a LowrankError whose code is
 * in `allowed` (refused). Any other exception, a code not allowed, a message on more than one line, or
 * a run slower than SLOWEST_INPUT_MS fails the property.
 */
export async function classify(stats: FuzzStats, allowed: readonly ErrorCode[], attempt: () => unknown): Promise<void> {
  const started = performance.now();
  let outcome: 'accepted' | unknown = 'accepted';
  try {
    await attempt();
  } catch (e) {
    outcome = e;
  }
  const ms = performance.now() - started;
  stats.slowestMs = Math.max(stats.slowestMs, ms);
  if (ms > SLOWEST_INPUT_MS) throw new Error(`one input took ${ms.toFixed(0)} ms (limit ${SLOWEST_INPUT_MS} ms)`);
  if (outcome === 'accepted') {
    stats.accepted++;
    return;
  }
  if (!isLowrankError(outcome)) throw new Error(`not a LowrankError: ${String(outcome instanceof Error ? `${outcome.name}: ${outcome.message}` : outcome)}`);
  if (!allowed.includes(outcome.code)) throw new Error(`LowrankError code ${outcome.code} not in ${allowed.join('/')}: ${outcome.message}`);
  if (/[\r\n]/.test(outcome.message)) throw new Error(`message spans lines: ${JSON.stringify(outcome.message)}`);
  stats.refused.set(outcome.code, (stats.refused.get(outcome.code) ?? 0) + 1);
}

export interface FuzzCase {
  group: string;
  name: string;
  expected: string;
  numRuns: number;
  /** Wall-time budget; fast-check stops starting new runs after it (the runs so far count). */
  timeLimitMs: number;
}

/** Checks `property`, records the summary (runs, seed, time, accepted/refused), throws fast-check's report on failure. */
export async function checkProperty<T>(c: FuzzCase, property: fc.IAsyncProperty<T> | fc.IProperty<T>, stats: FuzzStats): Promise<void> {
  const started = performance.now();
  const details = await fc.check(property as fc.IAsyncProperty<T>, {
    numRuns: Math.round(c.numRuns * SCALE),
    seed: FUZZ_SEED,
    plugins: [fc.interruptAfterTimeLimit(c.timeLimitMs * SCALE)],
  });
  const seconds = (performance.now() - started) / 1000;
  const refused = [...stats.refused].map(([code, n]) => `${n} ${code}`).join(', ') || 'none';
  const summary =
    `${details.numRuns} runs in ${seconds.toFixed(1)} s (seed ${details.seed}${details.interrupted ? ', stopped at the time limit' : ''}): ` +
    `${stats.accepted} accepted, refused ${refused}; slowest input ${stats.slowestMs.toFixed(1)} ms`;
  const failure = details.failed ? fc.defaultReportMessage(details) : undefined;
  recordOutcome({
    suite: 'fuzz',
    group: c.group,
    name: c.name,
    expected: c.expected,
    outcome: failure ? `FAILED after ${details.numRuns} runs (seed ${details.seed}, path ${details.counterexamplePath}): ${String(details.errorInstance ?? '').split('\n')[0]}` : summary,
    passed: !failure,
  });
  if (failure) throw new Error(`${failure}\nError: ${String(details.errorInstance instanceof Error ? details.errorInstance.message : details.errorInstance)}`);
  if (details.numRuns < Math.min(50, c.numRuns)) throw new Error(`only ${details.numRuns} runs within ${c.timeLimitMs} ms: ${summary}`);
  console.log(`${c.group} / ${c.name}: ${summary}`);
}
