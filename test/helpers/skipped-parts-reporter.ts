/**
 * One line at the end of `npm test` when tests skipped because an optional part is missing
 * (test/helpers/optional-parts.ts): how many, under which part and why, and the apt line that
 * enables them. It counts the skipped tests by their part's tag, so it says what really skipped.
 * A tagged test counts when its part is missing here, or when it skipped itself with a note
 * (`ctx.skip(reason)`, for parts known only by loading them); tests a -t filter left out do not.
 * On CI, which installs every part (.ci/run), such a skip fails the run (exit code 1).
 */
import type { Reporter, TestModule } from 'vitest/node';
import { ENABLE_OPTIONAL_PARTS, mesaEglMissing, onCI, OPTIONAL_PARTS, type OptionalPart } from './optional-parts.ts';

export default class SkippedPartsReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    const summary = skippedParts(testModules);
    if (summary == null) return;
    if (onCI() && summary.skipped > 0) {
      // needs() throws on CI before anything can skip; this catches a skip that went around it.
      process.stderr.write(`\n${summary.line}\nCI installs every optional part, so nothing may skip for one: failing the run.\n`);
      process.exitCode = 1;
      return;
    }
    process.stdout.write(`\n${summary.line}\n`);
  }
}

export function skippedParts(testModules: ReadonlyArray<TestModule>): { skipped: number; line: string } | null {
  const skipped = new Map<OptionalPart, { count: number; reason: string }>();
  const parts = Object.keys(OPTIONAL_PARTS) as OptionalPart[];
  const missing = new Map(parts.map((part) => [part, OPTIONAL_PARTS[part].missing()]));
  for (const module of testModules) {
    for (const test of module.children.allTests('skipped')) {
      const result = test.result();
      const note = result.state === 'skipped' ? result.note : undefined;
      for (const part of parts) {
        if (!test.tags.includes(part)) continue;
        const reason = missing.get(part) ?? note;
        if (reason == null) continue;
        const entry = skipped.get(part) ?? { count: 0, reason };
        entry.count++;
        skipped.set(part, entry);
      }
    }
  }
  const mesa = mesaEglMissing();
  if (skipped.size === 0 && mesa == null) return null;
  const groups = [...skipped].map(([part, { count, reason }]) => `${count} ${count === 1 ? 'needs' : 'need'} ${OPTIONAL_PARTS[part].description} (${reason})`);
  if (mesa != null) groups.push(mesa);
  const total = [...skipped.values()].reduce((sum, { count }) => sum + count, 0);
  const otherwise = [...skipped.keys()].map((part) => (OPTIONAL_PARTS[part] as { otherwise?: string }).otherwise).filter((s) => s != null);
  return { skipped: total, line: `lowrank: ${total} test${total === 1 ? '' : 's'} skipped for missing optional parts: ${groups.join('; ')}. To run them: ${[ENABLE_OPTIONAL_PARTS, ...otherwise].join('; ')}.` };
}
