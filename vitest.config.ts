import { defineConfig } from 'vitest/config';

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
  },
});
