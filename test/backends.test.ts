/**
 * The wasm backend (with the project's kernels) and the cpu backend agree: logits within 1e-5
 * relative, and so do the loss gradients of a training step (the backward pass exercises the
 * transposed/batched matmul and UnsortedSegmentSum kernels). The threaded-SIMD build
 * (LOWRANK_THREADS=2) is checked the same way in a child process, which must also exit by itself.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '../core/tf.ts';
import { initBackend } from '../core/backend/index.ts';
import { writeTinyCheckpoint, type TinyCheckpointKind } from './fixtures/tiny-checkpoints.ts';
import { forwardBackward } from '../core/backend/parity-check.ts';
import { relativeError } from '../core/backend/cpu-parity.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-backends-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

beforeAll(async () => {
  const info = await initBackend({ backend: 'wasm' });
  expect(info.backend).toBe('wasm');
});

describe.each<TinyCheckpointKind>(['llama-gqa-tied', 'qwen2', 'gpt2'])('%s: wasm vs cpu', (kind) => {
  it('logits and gradients agree within 1e-5 relative', async () => {
    const dir = path.join(root, kind);
    writeTinyCheckpoint(dir, kind, 2);
    await tf.setBackend('wasm');
    const wasm = forwardBackward(dir);
    await tf.setBackend('cpu');
    const cpu = forwardBackward(dir);
    await tf.setBackend('wasm');
    expect(relativeError(wasm.logits, cpu.logits)).toBeLessThanOrEqual(1e-5);
    for (const [name, g] of cpu.grads) {
      expect(relativeError(wasm.grads.get(name)!, g), name).toBeLessThanOrEqual(1e-5);
    }
  });
});

describe('threaded wasm (LOWRANK_THREADS=2) vs cpu, in a child process', () => {
  it('starts 2 threads, the project kernels agree within 1e-5 relative, and the process exits by itself', () => {
    const kinds: TinyCheckpointKind[] = ['llama-gqa-tied', 'qwen2', 'gpt2'];
    const dirs = kinds.map((kind) => {
      const dir = path.join(root, `threads-${kind}`);
      writeTinyCheckpoint(dir, kind, 2);
      return dir;
    });
    const script = path.resolve(import.meta.dirname, '..', 'core', 'backend', 'parity-check.ts');
    const child = spawnSync(process.execPath, ['--import', 'tsx', script, ...dirs], {
      encoding: 'utf8',
      env: { ...process.env, LOWRANK_BACKEND: 'wasm', LOWRANK_THREADS: '2' },
      // A hang (pthreads keeping the event loop alive) would end here, with status null.
      timeout: 90_000,
    });
    expect(child.signal, child.stderr).toBeNull();
    expect(child.status, child.stderr).toBe(0);
    const out = JSON.parse(child.stdout.trim().split('\n').at(-1)!) as {
      info: { backend: string; wasmThreads: number; kernels: string[] };
      results: Array<{ dir: string; logits: number; grads: number; worstGrad: string }>;
      matmul: Record<string, number>;
    };
    expect(out.info.backend).toBe('wasm');
    expect(out.info.wasmThreads).toBe(2);
    expect(out.info.kernels).toContain('BatchMatMul');
    expect(out.results).toHaveLength(3);
    for (const r of out.results) {
      expect(r.logits, r.dir).toBeLessThanOrEqual(1e-5);
      expect(r.grads, `${r.dir}: ${r.worstGrad}`).toBeLessThanOrEqual(1e-5);
    }
    expect(Object.keys(out.matmul)).toHaveLength(4);
    for (const [name, e] of Object.entries(out.matmul)) expect(e, name).toBeLessThanOrEqual(1e-5);
  });
});
