/**
 * The threaded-SIMD build of tfjs-backend-wasm 4.22 in Node (PERFORMANCE.md §1).
 *
 * The stock package never uses it in Node: `WASM_HAS_MULTITHREAD_SUPPORT` is false whenever
 * `IS_NODE` (tfjs#3830), and forcing the flag fails because `init()` hands `new Worker` a `blob:`
 * URL. So we do what `init()` does for browsers, with files instead of Blobs:
 *  1. call the Emscripten factory `wasm-out/tfjs-backend-wasm-threaded-simd.js` ourselves;
 *  2. write the pthread worker script (`wasmWorkerContents`) to a real .cjs file, newlines
 *     re-escaped exactly as tfjs does before it makes its Blob (the contents are a template
 *     literal, so its `"\n"` arrived as real newlines inside string literals);
 *  3. `locateFile` returns that worker file and the threaded .wasm; `mainScriptUrlOrBlob` is the
 *     factory's own path, which each worker evaluates (`importScripts`);
 *  4. the same `module.tfjs = {cwrap…}` shim `init()` builds, then `new BackendWasm(module)`.
 *
 * Thread cap: backend.cc allows at most `emscripten_num_logical_cores() / 2` threads, and in Node
 * that is `require('os').cpus().length`, so a 2-core machine always gets 1 thread. `os.cpus()` is
 * padded while the backend creates its XNNPACK threadpool (the `BackendWasm` constructor).
 *
 * Exit: Emscripten `ref()`s a worker while it runs a pthread, and XNNPACK's threadpool threads run
 * for the life of the module, so the process would never exit on its own. We `unref()` every
 * worker once the pool exists; Node then ends them when the main thread is done, and
 * `tf.removeBackend('wasm')` still terminates them explicitly.
 *
 * Depends on 4.22's `wasm-out` internals (PThread, the worker file's export); tfjs is pinned.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { BackendWasm, setThreadsCount } from '@tensorflow/tfjs-backend-wasm';
import type { KernelBackend } from '../../tf.ts';

const require = createRequire(import.meta.url);

/**
 * Threads when LOWRANK_THREADS is unset: one per core, up to 4. Measured on the idle 2-core build
 * machine, `npm run bench` (4-layer 256-wide Llama, batch 8 × 128, AdamW): LoRA r=8 1,326
 * tokens/s with 2 threads against 1,230 with 1, full fine-tuning 933 against 826, A·B 23.4 against
 * 14.5 GFLOP/s. Only XNNPACK's GEMMs use the pool, so the gain per step is smaller than per matmul;
 * and when the cores are busy with other work the second thread mostly waits (the same bench under
 * load 2-7 ran 30 % slower with 2 threads), which is why the test suite, which runs two files at
 * once, sets LOWRANK_THREADS=1.
 */
export const DEFAULT_WASM_THREADS = Math.max(1, Math.min(4, os.cpus().length));
/** backend.cc's own upper limit. */
export const MAX_WASM_THREADS = 8;

export interface ThreadRequest {
  threads: number;
  by: 'option' | 'LOWRANK_THREADS' | 'default';
}

/** The thread count asked for: an explicit option, else LOWRANK_THREADS, else the default. */
export function requestedWasmThreads(option?: number): ThreadRequest {
  if (option != null) return { threads: checkThreads(option, 'the threads option'), by: 'option' };
  const env = process.env.LOWRANK_THREADS?.trim();
  if (env == null || env === '') return { threads: DEFAULT_WASM_THREADS, by: 'default' };
  return { threads: checkThreads(Number(env), `LOWRANK_THREADS='${env}'`), by: 'LOWRANK_THREADS' };
}

function checkThreads(n: number, where: string): number {
  if (!Number.isInteger(n) || n < 1 || n > MAX_WASM_THREADS) {
    throw new Error(`${where} must be a whole number from 1 to ${MAX_WASM_THREADS} (1 = the non-threaded build)`);
  }
  return n;
}

/** The parts of the Emscripten module this file touches. */
interface ThreadedModule {
  cwrap(name: string, returnType: null | 'number', argTypes: string[]): (...args: number[]) => unknown;
  PThread: {
    unusedWorkers: NodeWorker[];
    runningWorkers: NodeWorker[];
    allocateUnusedWorker(): void;
    terminateAllThreads(): void;
  };
  tfjs?: unknown;
}
interface NodeWorker {
  unref(): void;
  ref(): void;
}
interface FactoryConfig {
  locateFile(file: string, prefix: string): string;
  mainScriptUrlOrBlob: string;
  onAbort(msg: unknown): void;
}
type Factory = (config: FactoryConfig) => Promise<ThreadedModule>;

function wasmOutDir(): string {
  return path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'wasm-out');
}

/**
 * A directory only this user can write to, for the worker file: a shared /tmp would let another
 * user put code in our worker threads. Falls back to a fresh private directory per process.
 */
function privateDir(): string {
  const uid = process.getuid?.();
  const dir = path.join(os.tmpdir(), `lowrank-wasm-${uid ?? 'user'}`);
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = fs.lstatSync(dir);
    if (st.isDirectory() && (uid == null || st.uid === uid) && (process.platform === 'win32' || (st.mode & 0o022) === 0)) return dir;
  } catch {
    // fall through
  }
  return fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-wasm-'));
}

/**
 * The worker script as a file. Named by a hash of its contents, written atomically (tmp + rename),
 * so concurrent processes and package upgrades never see a half-written or stale file.
 */
function workerFile(dir: string): string {
  const { wasmWorkerContents } = require(path.join(dir, 'tfjs-backend-wasm-threaded-simd.worker.js')) as { wasmWorkerContents: string };
  const contents = wasmWorkerContents.replace(/\n/g, '\\n');
  const hash = createHash('sha256').update(contents).digest('hex').slice(0, 16);
  const file = path.join(privateDir(), `tfjs-wasm-worker-${hash}.cjs`);
  if (!fs.existsSync(file) || fs.readFileSync(file, 'utf8') !== contents) {
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, contents, { mode: 0o600 });
    fs.renameSync(tmp, file);
  }
  return file;
}

/**
 * Runs `fn` (async) while `os.cpus()` reports at least `count` entries (see the thread cap above).
 * backend.cc reads the core count in a static initialiser, i.e. while the factory instantiates the
 * module, so the padding has to last until the factory's promise settles.
 */
async function withPaddedCpus<T>(count: number, fn: () => Promise<T>): Promise<T> {
  // The CommonJS object, which `require("os")` in the Emscripten module also gets (the ESM
  // namespace is read-only).
  const osObject = require('os') as { cpus: typeof os.cpus };
  const real = osObject.cpus;
  const list = real();
  if (list.length >= count) return fn();
  const padded = Array.from({ length: count }, (_, i) => list[i % Math.max(list.length, 1)]);
  osObject.cpus = () => padded;
  try {
    return await fn();
  } finally {
    osObject.cpus = real;
  }
}

/**
 * Lets the process exit while workers live. `ref` is disabled too: a worker that finishes loading
 * after this point starts its queued pthread through `runPthread`, which would `ref()` it again.
 */
function unrefAll(module: ThreadedModule): void {
  for (const w of [...module.PThread.unusedWorkers, ...module.PThread.runningWorkers]) {
    w.unref();
    w.ref = () => undefined;
  }
}

/** A 'wasm' backend on the threaded-SIMD module with `threads` XNNPACK threads. */
export async function threadedWasmFactory(threads: number): Promise<KernelBackend> {
  const dir = wasmOutDir();
  const factoryPath = path.join(dir, 'tfjs-backend-wasm-threaded-simd.js');
  const worker = workerFile(dir);
  const factory = require(factoryPath) as Factory;
  let abort: unknown = null;
  // backend.cc: min(threads, 8, cores / 2); pad so that `threads` is what we get.
  const module = await withPaddedCpus(2 * threads, () => factory({
    locateFile: (file, prefix) => {
      if (file.endsWith('.worker.js')) return worker;
      if (file.endsWith('.wasm')) return path.join(dir, 'tfjs-backend-wasm-threaded-simd.wasm');
      return prefix + file;
    },
    mainScriptUrlOrBlob: factoryPath,
    onAbort: (msg) => {
      abort ??= msg;
    },
  }));
  if (abort != null) throw new Error(`the threaded wasm module aborted: ${String(abort)}`);
  // The shim tfjs-backend-wasm's init() puts on the module (4.22, backend_wasm.ts).
  module.tfjs = {
    init: module.cwrap('init', null, []),
    initWithThreadsCount: module.cwrap('init_with_threads_count', null, ['number']),
    getThreadsCount: module.cwrap('get_threads_count', 'number', []),
    registerTensor: module.cwrap('register_tensor', null, ['number', 'number', 'number']),
    disposeData: module.cwrap('dispose_data', null, ['number']),
    dispose: module.cwrap('dispose', null, []),
  };
  setThreadsCount(threads);
  const backend = new BackendWasm(module as never);
  unrefAll(module);
  // Workers created later (more pthreads than the pool of 8) must not hold the process either.
  const allocate = module.PThread.allocateUnusedWorker.bind(module.PThread);
  module.PThread.allocateUnusedWorker = () => {
    allocate();
    unrefAll(module);
  };
  return backend as unknown as KernelBackend;
}
