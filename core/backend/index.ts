/**
 * Chooses and starts the tfjs backend (DESIGN.md "Backends").
 *
 * Order when nothing is forced: tensorflow (tfjs-node-gpu, then tfjs-node; both optional native
 * packages that only work where someone rebuilt them) > webgpu on a hardware adapter > wasm (with
 * the project's kernels, PERFORMANCE.md §0-§2; LOWRANK_THREADS threads) > cpu. Automatically,
 * webgpu never takes a software adapter (llvmpipe, SwiftShader: far slower than wasm,
 * PERFORMANCE.md §4); LOWRANK_BACKEND=webgpu does, which is how CI tests it on Mesa.
 *
 * What forces a backend, strongest first: `initBackend({backend})` (a CLI flag), then the
 * `LOWRANK_BACKEND` environment variable. A forced backend that cannot start is a
 * BACKEND_UNAVAILABLE error that names it and says why; it never silently falls back.
 */
import '@tensorflow/tfjs-backend-cpu';
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { startWasmBackend } from './wasm/install.ts';
import { requestedWasmThreads } from './wasm/threads.ts';
import { nativeAddonProblem, packageInstalled, tryImport, type Attempt } from './optional-packages.ts';
import { startWebgpuBackend } from './webgpu.ts';
import { nativeAddon, setNativeThreads } from './native/addon.ts';

export const BACKEND_NAMES = ['tensorflow', 'wasm', 'cpu', 'webgpu'] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];

export interface BackendInfo {
  backend: BackendName;
  /** tfjs-core's version; all tfjs packages are pinned to it. */
  tfjsVersion: string;
  wasmSimd?: boolean;
  wasmThreads?: number;
  /** Where the wasm thread count came from: LOWRANK_THREADS or the default. */
  wasmThreadsBy?: string;
  /** Names of the project's own kernels that are active on this backend. */
  kernels: string[];
  /** wasm: the native BLAS the matmul kernels use ("OpenBLAS …, 2 threads"), or why there is none. */
  nativeAddon?: { library: string; threads: number } | { unavailable: string };
  /** GPU adapter or native library in use, where the backend reports one. */
  adapter?: string;
  /** webgpu: the adapter is a software renderer (only used when webgpu was forced). */
  softwareAdapter?: boolean;
  /** Backends tried before this one and why each could not start (for `lowrank info`). */
  skipped?: Array<{ backend: BackendName; reason: string }>;
}

export interface InitBackendOptions {
  backend?: BackendName;
}

const AUTO_ORDER: BackendName[] = ['tensorflow', 'webgpu', 'wasm', 'cpu'];

let started: Promise<BackendInfo> | null = null;

/**
 * Starts the backend once per process; later calls return the same info. A later call that
 * forces a different backend than the one running is an error rather than a silent no-op.
 */
export function initBackend(opts: InitBackendOptions = {}): Promise<BackendInfo> {
  let forced: { name: BackendName; by: string } | undefined;
  try {
    forced = forcedBackend(opts);
    // A bad LOWRANK_THREADS is the user's mistake to fix, not a reason to fall back to cpu.
    try {
      requestedWasmThreads();
    } catch (e) {
      throw new LowrankError('BAD_ARGUMENT', e instanceof Error ? e.message : String(e));
    }
  } catch (e) {
    return Promise.reject(e);
  }
  if (started == null) {
    started = start(forced).catch((e: unknown) => {
      started = null; // let the caller retry, e.g. with another backend
      throw e;
    });
    return started;
  }
  return started.then((info) => {
    if (forced != null && forced.name !== info.backend) {
      throw new LowrankError(
        'BAD_ARGUMENT',
        `backend '${forced.name}' (${forced.by}) was requested after '${info.backend}' had already started; ` +
          'choose the backend before the first computation.',
      );
    }
    return info;
  });
}

function forcedBackend(opts: InitBackendOptions): { name: BackendName; by: string } | undefined {
  if (opts.backend != null) {
    if (!isBackendName(opts.backend)) throw badName(String(opts.backend), 'the backend option');
    return { name: opts.backend, by: 'requested' };
  }
  const env = process.env.LOWRANK_BACKEND?.trim().toLowerCase();
  if (env == null || env === '' || env === 'auto') return undefined;
  if (!isBackendName(env)) throw badName(env, 'LOWRANK_BACKEND');
  return { name: env, by: 'forced by LOWRANK_BACKEND' };
}

function isBackendName(s: string): s is BackendName {
  return (BACKEND_NAMES as readonly string[]).includes(s);
}

function badName(value: string, where: string): LowrankError {
  return new LowrankError(
    'BAD_ARGUMENT',
    `${where}='${value}' is not a backend; use one of ${BACKEND_NAMES.join(', ')}` +
      (where === 'LOWRANK_BACKEND' ? ', or unset it to choose automatically.' : '.'),
  );
}

async function start(forced: { name: BackendName; by: string } | undefined): Promise<BackendInfo> {
  if (forced != null) {
    const attempt = await tryBackend(forced.name, true);
    if (!attempt.ok) {
      throw new LowrankError(
        'BACKEND_UNAVAILABLE',
        `backend '${forced.name}' (${forced.by}) is unavailable: ${attempt.reason}`,
      );
    }
    return attempt.value;
  }
  const skipped: Array<{ backend: BackendName; reason: string }> = [];
  for (const name of AUTO_ORDER) {
    const attempt = await tryBackend(name, false);
    if (attempt.ok) return skipped.length > 0 ? { ...attempt.value, skipped } : attempt.value;
    skipped.push({ backend: name, reason: attempt.reason });
  }
  throw new LowrankError(
    'BACKEND_UNAVAILABLE',
    `no tfjs backend could start: ${skipped.map((s) => `${s.backend}: ${s.reason}`).join('; ')}`,
  );
}

async function tryBackend(name: BackendName, forced: boolean): Promise<Attempt<BackendInfo>> {
  const base = { backend: name, tfjsVersion: tf.version_core, kernels: [] as string[] };
  try {
    switch (name) {
      case 'tensorflow':
        return await startTensorflow(base);
      case 'wasm': {
        const wasm = await startWasmBackend();
        return {
          ok: true,
          value: {
            ...base, wasmSimd: wasm.simd, wasmThreads: wasm.threads, wasmThreadsBy: wasm.threadsBy, kernels: wasm.kernels,
            nativeAddon: configureNative(wasm.threads),
          },
        };
      }
      case 'cpu':
        if (!(await tf.setBackend('cpu'))) return { ok: false, reason: 'tf.setBackend("cpu") failed' };
        return { ok: true, value: base };
      case 'webgpu': {
        const gpu = await startWebgpuBackend({ requireHardware: !forced });
        return gpu.ok ? { ok: true, value: { ...base, adapter: gpu.value.adapter, softwareAdapter: gpu.value.software, kernels: gpu.value.kernels } } : gpu;
      }
    }
  } catch (e) {
    return { ok: false, reason: e instanceof Error ? e.message : String(e) };
  }
}

/**
 * Gives the native BLAS (when built) the engine's thread count: LOWRANK_THREADS means compute
 * threads, whichever library runs them. Returns what `lowrank info` reports.
 */
export function configureNative(threads: number): NonNullable<BackendInfo['nativeAddon']> {
  const gemm = nativeAddon();
  if (!gemm.ok) return { unavailable: gemm.reason };
  setNativeThreads(threads);
  return { library: gemm.library, threads: gemm.addon.threads() };
}

/** The native packages register the 'tensorflow' backend when they import successfully. */
const TENSORFLOW_PACKAGES = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'] as const;

async function startTensorflow(base: BackendInfo): Promise<Attempt<BackendInfo>> {
  const reasons: string[] = [];
  for (const pkg of TENSORFLOW_PACKAGES) {
    if (!packageInstalled(pkg)) {
      reasons.push(`${pkg} is not installed`);
      continue;
    }
    // Checked before importing: a failed import still loads all of @tensorflow/tfjs (~1 s) and
    // registers kernels under 'tensorflow' that the next package then re-registers noisily.
    const addonProblem = nativeAddonProblem(pkg);
    if (addonProblem != null) {
      reasons.push(addonProblem);
      continue;
    }
    const imported = await tryImport(pkg);
    if (!imported.ok) {
      reasons.push(`${pkg} failed to load: ${imported.reason}`);
      continue;
    }
    if (!(await tf.setBackend('tensorflow'))) {
      reasons.push(`${pkg} loaded but tf.setBackend("tensorflow") failed`);
      continue;
    }
    return { ok: true, value: { ...base, adapter: pkg === '@tensorflow/tfjs-node-gpu' ? 'libtensorflow (CUDA)' : 'libtensorflow (CPU)' } };
  }
  return { ok: false, reason: reasons.join('; ') };
}

export interface MatmulShape {
  m?: number;
  k?: number;
  n?: number;
  transposeA?: boolean;
  transposeB?: boolean;
  batch?: number;
}

export interface MeasureOptions extends MatmulShape {
  /** Time budget of the timed loop (after warm-up); at least 2 products are timed, unless one
   * product alone takes longer than this. */
  seconds?: number;
}

/**
 * GFLOP/s of tf.matMul on the active backend: 2·m·k·n·batch flops per product. Each product is
 * forced to completion with a dataSync so that asynchronous backends (webgpu) are timed fully.
 */
export async function measureMatmulGflops(opts: MeasureOptions = {}): Promise<number> {
  const { m = 1024, k = 256, n = 1024, transposeA = false, transposeB = false, batch = 1, seconds = 1 } = opts;
  const lead = batch > 1 ? [batch] : [];
  const a = tf.randomNormal([...lead, ...(transposeA ? [k, m] : [m, k])]);
  const b = tf.randomNormal([...lead, ...(transposeB ? [n, k] : [k, n])]);
  const corner = new Array<number>(lead.length + 2).fill(0);
  const once = () => {
    const c = tf.matMul(a, b, transposeA, transposeB);
    // Reading one element forces completion on asynchronous backends; reading all of c would
    // time the readback too (~20 ms for a 4 MB result on wasm, as long as the product itself).
    const probe = tf.slice(c, corner, corner.map(() => 1));
    probe.dataSync();
    tf.dispose([c, probe]);
  };
  const flops = 2 * m * k * n * batch;
  try {
    // Warm-up (XNNPACK operator creation, heap growth, JIT). A product slower than the whole
    // budget (stock wasm's scalar loop: ~5 s for the batched case) is its own measurement: its
    // one-time costs are negligible next to it, and the bench stays bounded.
    const w0 = performance.now();
    once();
    const warmSeconds = (performance.now() - w0) / 1000;
    if (warmSeconds >= seconds) return flops / warmSeconds / 1e9;
    let products = 0;
    const t0 = performance.now();
    while (products < 2 || performance.now() - t0 < seconds * 1000) {
      once();
      products++;
    }
    return (flops * products) / ((performance.now() - t0) / 1000) / 1e9;
  } finally {
    a.dispose();
    b.dispose();
  }
}
