// initBackend: selection order, forcing, errors and idempotence. Vitest runs each test file in its
// own process, so this file starts from a fresh tfjs engine; the order of the tests matters
// (failed starts first: once a backend is running, asking for another is an error).
import * as tf from '../tf.ts';
import { afterEach, describe, expect, it } from 'vitest';
import { LowrankError } from '../errors.ts';
import { initBackend, measureMatmulGflops } from './index.ts';
import { FUSED_KERNELS } from './fused-kernels.ts';
import { CROSS_ENTROPY_KERNELS } from './cross-entropy-kernels.ts';
import { SWIGLU_KERNELS } from './swiglu-kernels.ts';
import { MASKED_SOFTMAX_KERNELS } from './softmax-kernels.ts';
import { FROZEN_KERNELS } from './frozen-kernels.ts';
import { ADAMW_KERNEL } from './adamw-kernels.ts';
import { describeAdapter, isSoftwareAdapter, startWebgpuBackend } from './webgpu.ts';

const savedEnv = process.env.LOWRANK_BACKEND;
afterEach(() => {
  if (savedEnv == null) delete process.env.LOWRANK_BACKEND;
  else process.env.LOWRANK_BACKEND = savedEnv;
});

async function failure(p: Promise<unknown>): Promise<LowrankError> {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(e).toBeInstanceOf(LowrankError);
  return e as LowrankError;
}

describe('initBackend', () => {
  it('rejects an unknown LOWRANK_BACKEND and names the variable', async () => {
    process.env.LOWRANK_BACKEND = 'tpu';
    const e = await failure(initBackend());
    expect(e.code).toBe('BAD_ARGUMENT');
    expect(e.message).toContain("LOWRANK_BACKEND='tpu'");
  });

  it('rejects a LOWRANK_THREADS that is not 1-8 instead of falling back', async () => {
    const saved = process.env.LOWRANK_THREADS;
    process.env.LOWRANK_THREADS = 'many';
    try {
      const e = await failure(initBackend());
      expect(e.code).toBe('BAD_ARGUMENT');
      expect(e.message).toContain("LOWRANK_THREADS='many'");
    } finally {
      if (saved == null) delete process.env.LOWRANK_THREADS;
      else process.env.LOWRANK_THREADS = saved;
    }
  });

  it('forcing tensorflow without its native addon is BACKEND_UNAVAILABLE, with the reason', async () => {
    process.env.LOWRANK_BACKEND = 'tensorflow';
    const e = await failure(initBackend());
    expect(e.code).toBe('BACKEND_UNAVAILABLE');
    expect(e.message).toMatch(/backend 'tensorflow' \(forced by LOWRANK_BACKEND\) is unavailable: .*tfjs-node/);
  });

  // Forcing webgpu (which starts on a software adapter here) is test/backend-webgpu.test.ts.
  it('chooses wasm when tensorflow and a hardware GPU are unavailable, with the project kernels and the reasons it skipped', async () => {
    delete process.env.LOWRANK_BACKEND;
    const info = await initBackend();
    expect(info.backend).toBe('wasm');
    expect(tf.getBackend()).toBe('wasm');
    expect(info.tfjsVersion).toBe(tf.version_core);
    expect(typeof info.wasmSimd).toBe('boolean');
    expect(info.wasmThreads).toBeGreaterThanOrEqual(1);
    expect(info.kernels.sort()).toEqual(['BatchMatMul', 'Identity', 'Slice', 'UnsortedSegmentSum', '_FusedMatMul', ...FUSED_KERNELS.map((k) => k.kernelName), ...Object.values(CROSS_ENTROPY_KERNELS), ...Object.values(SWIGLU_KERNELS), ...Object.values(MASKED_SOFTMAX_KERNELS), ADAMW_KERNEL, ...Object.values(FROZEN_KERNELS)].sort());
    // Automatically, webgpu never takes a software adapter (llvmpipe): it is skipped, with why.
    expect(info.skipped?.map((s) => s.backend)).toEqual(['tensorflow', 'webgpu']);
    expect(info.skipped?.[1].reason).toMatch(/no GPU device|software adapter|no usable WebGPU adapter/);
  });

  it('is idempotent', async () => {
    const first = await initBackend();
    expect(await initBackend()).toBe(first);
    expect(await initBackend({ backend: 'wasm' })).toBe(first);
  });

  it('refuses to switch to another backend once one is running', async () => {
    const e = await failure(initBackend({ backend: 'cpu' }));
    expect(e.code).toBe('BAD_ARGUMENT');
    expect(tf.getBackend()).toBe('wasm');
  });

  it('leaves uncaught errors to Node: no emscripten rethrow handlers stay installed', () => {
    const handlers = [...process.listeners('uncaughtException'), ...process.listeners('unhandledRejection')];
    expect(handlers.some((h) => String(h).includes('ExitStatus') || String(h).includes('throw reason'))).toBe(false);
  });

  it('measures matmul throughput', async () => {
    const gflops = await measureMatmulGflops({ m: 64, k: 32, n: 48, transposeA: true, batch: 2, seconds: 0.05 });
    expect(gflops).toBeGreaterThan(0);
    expect(Number.isFinite(gflops)).toBe(true);
  });
});

describe('webgpu adapters', () => {
  it('recognises software renderers, which are never chosen automatically', () => {
    expect(isSoftwareAdapter({ vendor: '', device: 'llvmpipe-llvm-15-0-6-256-bits-', description: 'OpenGL ES 3.2 Mesa 22.3.6' })).toBe(true);
    expect(isSoftwareAdapter({ vendor: 'google', architecture: 'swiftshader', device: 'Subzero' })).toBe(true);
    expect(isSoftwareAdapter({ vendor: 'mesa', device: 'llvmpipe (LLVM 15.0.6, 256 bits)', description: 'lavapipe' })).toBe(true);
    expect(isSoftwareAdapter({ vendor: 'nvidia', architecture: 'hopper', device: 'NVIDIA H200' })).toBe(false);
    expect(isSoftwareAdapter({ vendor: 'nvidia', isFallbackAdapter: true })).toBe(true);
    expect(describeAdapter({ vendor: 'nvidia', architecture: 'hopper', device: 'NVIDIA H200' })).toBe('nvidia, hopper, NVIDIA H200');
    expect(describeAdapter({ device: 'llvmpipe-llvm-15-0-6-256-bits-' })).toBe('llvmpipe-llvm-15-0-6-256-bits');
  });
});

describe('webgpu, chosen automatically', () => {
  // Last in the file: on a machine with a real GPU this switches the backend to webgpu.
  it('refuses a software adapter even when Dawn is asked (past the device-node check)', async () => {
    const r = await startWebgpuBackend({ requireHardware: true, checkDeviceNodes: false });
    if (r.ok) {
      expect(r.value.software).toBe(false); // a hardware GPU here
    } else {
      expect(r.reason).toMatch(/no usable WebGPU adapter|no navigator\.gpu/);
      expect(tf.getBackend()).toBe('wasm');
      expect(tf.findBackendFactory('webgpu')).toBeNull();
    }
  });
});
