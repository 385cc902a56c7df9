import { defineConfig } from 'vitest/config';
import { OPTIONAL_PARTS } from './test/helpers/optional-parts.ts';

export default defineConfig({
  test: {
    include: ['core/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // tfjs keeps one global engine per process; forks keep test files isolated from each other.
    pool: 'forks',
    // Two test files run at once on 2 cores: one wasm thread each (core/backend/wasm/threads.ts).
    env: { LOWRANK_THREADS: '1' },
    fileParallelism: true,
    maxWorkers: 2,
    // Tests that need an optional part carry its tag (test/helpers/optional-parts.ts `needs`); the
    // second reporter prints one line at the end naming what skipped for a missing part and how to install it.
    tags: Object.entries(OPTIONAL_PARTS).map(([name, part]) => ({ name, description: `needs ${part.description}` })),
    reporters: ['default', './test/helpers/skipped-parts-reporter.ts'],
  },
});
