// LOWRANK_BACKEND forces a backend that is available (own file: a fresh engine per test file).
import * as tf from '../tf.ts';
import { expect, it } from 'vitest';
import { initBackend } from './index.ts';

it('LOWRANK_BACKEND=cpu starts cpu, without project kernels', async () => {
  const saved = process.env.LOWRANK_BACKEND;
  process.env.LOWRANK_BACKEND = ' CPU ';
  try {
    const info = await initBackend();
    expect(info).toMatchObject({ backend: 'cpu', kernels: [] });
    expect(info.skipped).toBeUndefined();
    expect(tf.getBackend()).toBe('cpu');
  } finally {
    if (saved == null) delete process.env.LOWRANK_BACKEND;
    else process.env.LOWRANK_BACKEND = saved;
  }
});
