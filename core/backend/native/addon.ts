/**
 * The optional native kernels (PERFORMANCE.md §2-§3): a small Node-API addon over the system BLAS,
 * built at install by scripts/build-native.js from native/kernels.c, with a fused softmax
 * cross-entropy, SwiGLU and the AdamW step beside the GEMM. OpenBLAS runs the products of the
 * bench model at 70-100 GFLOP/s on one core of the build machine, where XNNPACK in wasm SIMD
 * reaches ~14, and matmul is two thirds of a training step. Where the addon is absent (no BLAS or
 * compiler at install, Windows) or fails to load, the wasm kernels do the work as before; nothing
 * else changes. LOWRANK_NATIVE=0 turns it off.
 *
 * The wasm matmul kernels call it with the wasm heap itself (core/backend/wasm/batch-matmul.ts),
 * so operands are never copied.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';

export interface NativeAddon {
  /**
   * For each i: C_i = op(A_i)·op(B_i) + beta·C_i, row-major, in place in `heap`.
   * dims = [transA, transB, m, n, k, lda, ldb, ldc]; offsets are element indices into `heap`.
   * Offsets and extents are bounds-checked by the addon (a RangeError, never a stray write).
   */
  sgemmBatch(heap: Float32Array, dims: Int32Array, aOffsets: Uint32Array, bOffsets: Uint32Array,
    cOffsets: Uint32Array, beta: number): void;
  /**
   * Fused softmax cross-entropy over logits [rows, vocab] (typed arrays may be views of the wasm
   * heap): writes lse_i = log Σ_j exp(z_ij) and returns Σ_i w_i·(lse_i − z_i[t_i]).
   */
  crossEntropy(logits: Float32Array, targets: Int32Array, weights: Float32Array, lse: Float32Array): number;
  /** grad_ij = (exp(z_ij − lse_i) − [j = t_i])·w_i·dy */
  crossEntropyGrad(logits: Float32Array, targets: Int32Array, weights: Float32Array, lse: Float32Array,
    grad: Float32Array, dy: number): void;
  /** out = silu(gate)·up, elementwise (arrays of one length). */
  swiglu(gate: Float32Array, up: Float32Array, out: Float32Array): void;
  /** out = d gate = dy·up·σ(g)·(1 + g·(1 − σ(g))) for wrt 0, d up = dy·g·σ(g) for wrt 1. */
  swigluGrad(gate: Float32Array, up: Float32Array, dy: Float32Array, out: Float32Array, wrt: 0 | 1): void;
  /** One AdamW step into new arrays; constants as adamw-kernels.ts's adamWConstants builds them. */
  adamw(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, pOut: Float32Array, mOut: Float32Array,
    vOut: Float32Array, constants: Float32Array): void;
  setThreads(n: number): void;
  threads(): number;
  /** e.g. "OpenBLAS 0.3.21 … Haswell kernels" */
  library(): string;
}

export const NATIVE_ENV = 'LOWRANK_NATIVE';
export const NATIVE_ADDON_PATH = path.resolve(import.meta.dirname, '..', '..', '..', 'build', 'native', 'lowrank_native.node');

export type NativeState =
  | { ok: true; addon: NativeAddon; library: string }
  | { ok: false; reason: string };

let state: NativeState | null = null;

/** Loads the addon once per process; the reason when it is not used. */
export function nativeAddon(): NativeState {
  state ??= load();
  return state;
}

function load(): NativeState {
  try {
    if (process.env[NATIVE_ENV] === '0') return { ok: false, reason: `${NATIVE_ENV}=0` };
    if (!fs.existsSync(NATIVE_ADDON_PATH)) {
      return { ok: false, reason: 'not built (needs a C compiler and OpenBLAS at install; `node scripts/build-native.js` says what is missing)' };
    }
    const raw = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as NativeAddon;
    // A plain object over the addon's read-only exports, so tests can observe calls.
    const addon: NativeAddon = {
      sgemmBatch: raw.sgemmBatch.bind(raw),
      crossEntropy: raw.crossEntropy.bind(raw),
      crossEntropyGrad: raw.crossEntropyGrad.bind(raw),
      swiglu: raw.swiglu.bind(raw),
      swigluGrad: raw.swigluGrad.bind(raw),
      adamw: raw.adamw.bind(raw),
      setThreads: raw.setThreads.bind(raw),
      threads: raw.threads.bind(raw),
      library: raw.library.bind(raw),
    };
    return { ok: true, addon, library: addon.library() };
  } catch (e) {
    const why = (e instanceof Error ? e.message : String(e)).split('\n')[0];
    return { ok: false, reason: `${path.basename(NATIVE_ADDON_PATH)} does not load: ${why}` };
  }
}

/** Switch for benchmarks and tests: while false, every kernel runs its wasm/JS path instead. */
export const nativeSwitch = { enabled: true };

/** The addon when it is loaded and switched on, else null. */
export function activeNative(): NativeAddon | null {
  if (!nativeSwitch.enabled) return null;
  const s = nativeAddon();
  return s.ok ? s.addon : null;
}

/** BLAS threads: the engine's compute thread count (LOWRANK_THREADS or its default). */
export function setNativeThreads(threads: number): void {
  const s = nativeAddon();
  if (s.ok) s.addon.setThreads(threads);
}
