/**
 * Starts the wasm backend with the project's kernels in place of, or next to, the stock ones.
 *
 * Kernels are swapped with `unregisterKernel` + `registerKernel` (plain `registerKernel` only
 * warns and overwrites; PERFORMANCE.md §2) and before `tf.setBackend('wasm')`, whose
 * `setupRegisteredKernels` runs their setupFuncs. The stock configs are kept so benchmarks can put
 * them back and measure the difference.
 */
// Side effect first: registers the stock 'wasm' backend factory and its kernels, which we capture.
import { getThreadsCount } from '@tensorflow/tfjs-backend-wasm';
import * as tf from '../../tf.ts';
import { threadedWasmFactory, requestedWasmThreads, type ThreadRequest } from './threads.ts';
import { getKernel, registerKernel, unregisterKernel } from '../../tf.ts';
import type { KernelConfig } from '../../tf.ts';
import { createMatMulKernels } from './batch-matmul.ts';
import { unsortedSegmentSumConfig } from './unsorted-segment-sum.ts';
import { fusedKernelConfigs } from './fused-kernels.ts';
import { crossEntropyWasmConfigs } from '../cross-entropy-kernels.ts';
import { identityConfig } from './identity.ts';
import { swigluWasmConfigs } from '../swiglu-kernels.ts';
import { maskedSoftmaxWasmConfigs } from '../softmax-kernels.ts';
import { adamWWasmConfig } from '../adamw-kernels.ts';
import { frozenWasmConfigs } from '../frozen-kernels.ts';
import { createSliceConfig } from './slice.ts';

/** tfjs-backend-wasm registers itself with priority 2 (above cpu's 1); the wrapper keeps that. */
const WASM_PRIORITY = 2;

interface Installed {
  configs: KernelConfig[];
  /** What each name was bound to before: the stock kernel, or nothing (UnsortedSegmentSum, fused ops). */
  stock: Map<string, KernelConfig | undefined>;
}
let installed: Installed | null = null;

/** Replaces/adds the project's wasm kernels; idempotent. Returns their names. */
export function installWasmKernels(): string[] {
  if (installed != null) return installed.configs.map((c) => c.kernelName);
  const batchMatMul = getKernel('BatchMatMul', 'wasm');
  const fusedMatMul = getKernel('_FusedMatMul', 'wasm');
  const slice = getKernel('Slice', 'wasm');
  if (batchMatMul == null || fusedMatMul == null || slice == null) {
    throw new Error('tfjs-backend-wasm registered no BatchMatMul/_FusedMatMul/Slice kernels; is it 4.22?');
  }
  const configs = [...createMatMulKernels({ batchMatMul, fusedMatMul }), unsortedSegmentSumConfig, ...fusedKernelConfigs, ...crossEntropyWasmConfigs, ...swigluWasmConfigs, ...maskedSoftmaxWasmConfigs, adamWWasmConfig, ...frozenWasmConfigs, identityConfig,
    createSliceConfig(slice)];
  const stock = new Map<string, KernelConfig | undefined>();
  for (const config of configs) {
    const previous = getKernel(config.kernelName, 'wasm');
    stock.set(config.kernelName, previous);
    if (previous != null) unregisterKernel(config.kernelName, 'wasm');
    registerKernel(config);
  }
  installed = { configs, stock };
  return configs.map((c) => c.kernelName);
}

/** Puts the stock kernels back (UnsortedSegmentSum and the fused ops disappear again). For before/after benchmarks. */
export function uninstallWasmKernels(): void {
  if (installed == null) return;
  for (const config of installed.configs) {
    unregisterKernel(config.kernelName, 'wasm');
    const previous = installed.stock.get(config.kernelName);
    if (previous != null) registerKernel(previous);
  }
  installed = null;
}

export function activeWasmKernels(): string[] {
  return installed == null ? [] : installed.configs.map((c) => c.kernelName);
}

let lastInitError: unknown = null;
/** The factory 'wasm' is registered with now: the stock one, or ours around it. */
let wrappedFor: number | null = null;
let stockFactory: (() => tf.KernelBackend | Promise<tf.KernelBackend>) | null = null;

/**
 * Replaces the stock backend factory with one that (a) for more than one thread, starts the
 * threaded-SIMD build through the custom init of PERFORMANCE.md §1 (threads.ts), and (b) keeps the
 * reason `tf.setBackend('wasm')` fails, which the engine only logs, so it can be reported.
 */
function wrapBackendFactory(threads: number): void {
  if (tf.findBackend('wasm') != null) return; // already running: its thread count is fixed
  if (wrappedFor === threads) return;
  stockFactory ??= tf.findBackendFactory('wasm');
  const stock = stockFactory;
  if (stock == null) return;
  tf.removeBackend('wasm');
  tf.registerBackend('wasm', async () => {
    try {
      return threads > 1 ? await threadedWasmFactory(threads) : await stock();
    } catch (e) {
      lastInitError = e;
      throw e;
    }
  }, WASM_PRIORITY);
  wrappedFor = threads;
}

const PROCESS_EVENTS = ['uncaughtException', 'unhandledRejection'] as const;
type Listener = (...args: unknown[]) => void;
// Through the plain EventEmitter signature: process's typed overloads differ per event.
const processEvents: NodeJS.EventEmitter = process;

function processListeners(): Map<string, Listener[]> {
  return new Map(PROCESS_EVENTS.map((e) => [e, processEvents.listeners(e) as Listener[]]));
}

/**
 * The emscripten module adds process handlers that rethrow every uncaught error from inside its
 * own minified source, so Node prints a 10 kB line of it above the real stack. Dropping them
 * restores Node's default handling, which is the same crash with a readable report.
 */
function dropHandlersAddedSince(before: Map<string, Listener[]>): void {
  for (const event of PROCESS_EVENTS) {
    const old = new Set(before.get(event));
    for (const listener of processEvents.listeners(event) as Listener[]) {
      if (!old.has(listener)) processEvents.removeListener(event, listener);
    }
  }
}

export interface WasmStart {
  simd: boolean;
  threads: number;
  /** Where the requested thread count came from (LOWRANK_THREADS or the default). */
  threadsBy: ThreadRequest['by'];
  kernels: string[];
}

/**
 * Installs the kernels and makes wasm the active backend. Throws with the reason when it cannot.
 * `threads` overrides LOWRANK_THREADS / the default; 1 is the non-threaded SIMD build.
 */
export async function startWasmBackend(opts: { threads?: number } = {}): Promise<WasmStart> {
  const request = requestedWasmThreads(opts.threads);
  const kernels = installWasmKernels();
  const firstInit = tf.findBackend('wasm') == null;
  wrapBackendFactory(request.threads);
  const before = processListeners();
  const ok = await tf.setBackend('wasm');
  if (firstInit) dropHandlersAddedSince(before);
  if (!ok) {
    const why = lastInitError instanceof Error ? lastInitError.message : String(lastInitError ?? 'unknown');
    throw new Error(`the wasm module did not initialise: ${why}`);
  }
  const simd = (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) as boolean;
  return { simd, threads: getThreadsCount(), threadsBy: request.by, kernels };
}
