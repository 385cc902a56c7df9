/**
 * The reliability suites' record of what they tried (test/faults, test/bad-inputs): with
 * LOWRANK_RELIABILITY_REPORT=<dir> set, each case writes one JSON file there, and
 * scripts/reliability-report.ts renders them as docs/reliability.md. Without it, nothing is written.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export const RELIABILITY_REPORT_ENV = 'LOWRANK_RELIABILITY_REPORT';

export interface ReliabilityOutcome {
  /** 'faults' | 'bad-inputs' | 'fuzz' */
  suite: string;
  /** Group within the suite, e.g. 'SIGKILL', 'safetensors', 'datasets'. */
  group: string;
  /** What was tried, in a few words. */
  name: string;
  /** What should happen (the error code and message fragment, or the state after the fault). */
  expected: string;
  /** What happened: the message printed, the exit status, the store state. */
  outcome: string;
  passed: boolean;
}

let counter = 0;

export function recordOutcome(o: ReliabilityOutcome): void {
  const dir = process.env[RELIABILITY_REPORT_ENV];
  if (!dir) return;
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${o.suite}-${process.pid}-${counter++}.json`);
  fs.writeFileSync(file, JSON.stringify(o));
}
