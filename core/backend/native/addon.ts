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
  /**
   * out = softmax(scale·scores + bias) by rows: scores and out [B, H, T, S], bias [1 or B, T, S]
   * (the attention layer's additive mask, shared by its heads).
   */
  maskedSoftmax(scores: Float32Array, bias: Float32Array, out: Float32Array, B: number, H: number, T: number, S: number, scale: number): void;
  /** out = scale·y·(dy − Σ_row dy·y), rows of S. */
  maskedSoftmaxGrad(probs: Float32Array, dy: Float32Array, out: Float32Array, S: number, scale: number): void;
  /** One AdamW step into new arrays; constants as adamw-kernels.ts's adamWConstants builds them. */
  adamw(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, pOut: Float32Array, mOut: Float32Array,
    vOut: Float32Array, constants: Float32Array): void;
  /**
   * Frozen weights in native memory (native/frozen.c): a [rows, cols] weight copied from `source`
   * (float32 values, or f16/bf16 bits in a Uint16Array) into `kind`'s storage, quantized for int8/nf4.
   */
  frozenCreate(source: Float32Array | Uint16Array, sourceKind: FrozenSourceKind, rows: number, cols: number, kind: FrozenKind): FrozenHandle;
  /** Frees the memory now; the handle refuses every later use. */
  frozenFree(handle: FrozenHandle): void;
  /** [rows, cols, bytes held, kind] */
  frozenInfo(handle: FrozenHandle): [number, number, number, FrozenKind];
  /** Rows [first, first+count) dequantised to float32 into `out`. */
  frozenRows(handle: FrozenHandle, first: number, count: number, out: Float32Array): void;
  /** mode 0: out [n, rows] = x [n, cols]·Wᵀ; mode 1: out [n, cols] = x [n, rows]·W; offsets are element indices into `heap`. */
  frozenMatmul(handle: FrozenHandle, heap: Float32Array, xOffset: number, n: number, outOffset: number, mode: 0 | 1): void;
  /**
   * GGUF K-quant blocks of `values` (whole 256-value blocks) into `out`: type 4 = Q4_K (144 B a
   * block), 6 = Q6_K (210 B), byte for byte what core/export/gguf-quants.ts writes (native/quants.c).
   */
  quantizeKQuant(values: Float32Array, out: Uint8Array, type: 4 | 6): void;
  /** out [ids, cols] = W[ids] */
  frozenGather(handle: FrozenHandle, ids: Int32Array, heap: Float32Array, outOffset: number): void;
  /**
   * Σᵢ wᵢ·(lseᵢ − (h·Wᵀ)ᵢ[tᵢ]) by vocabulary tiles; writes lse (0 where wᵢ = 0), and with gradOffset >= 0
   * the gradient w.r.t. h for dy = 1 at that offset (same pass, two products over W).
   */
  frozenLinearCrossEntropy(handle: FrozenHandle, heap: Float32Array, hOffset: number, n: number, targets: Int32Array,
    weights: Float32Array, lse: Float32Array, gradOffset: number): number;
  /** dh [n, cols] of that loss times dy, written at dhOffset. */
  frozenLinearCrossEntropyGrad(handle: FrozenHandle, heap: Float32Array, hOffset: number, n: number, targets: Int32Array,
    weights: Float32Array, lse: Float32Array, dy: number, dhOffset: number): void;
  /** RMSNorm over rows of x [rows, C] with weight [C]: out = x·r·w, r = 1/√(mean(x²) + eps). */
  rmsNorm(x: Float32Array, w: Float32Array, out: Float32Array, eps: number): void;
  /** dx = r·(g − x·r²·mean(g·x)), g = dy·w */
  rmsNormGradX(dy: Float32Array, x: Float32Array, w: Float32Array, dx: Float32Array, eps: number): void;
  /** dw = Σ_rows dy·x·r */
  rmsNormGradW(dy: Float32Array, x: Float32Array, dw: Float32Array, eps: number): void;
  setThreads(n: number): void;
  threads(): number;
  /** e.g. "OpenBLAS 0.3.21 … Haswell kernels" */
  library(): string;
}

/** How a frozen weight is stored natively. */
export type FrozenKind = 'f32' | 'f16' | 'bf16' | 'int8' | 'nf4';
export type FrozenSourceKind = 'f32' | 'f16' | 'bf16';
/** An opaque native handle (a Node-API external); its memory is freed by frozenFree or when it is garbage-collected. */
export type FrozenHandle = { readonly __frozenHandle: unique symbol };

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
      rmsNorm: raw.rmsNorm.bind(raw),
      rmsNormGradX: raw.rmsNormGradX.bind(raw),
      rmsNormGradW: raw.rmsNormGradW.bind(raw),
      maskedSoftmax: raw.maskedSoftmax.bind(raw),
      maskedSoftmaxGrad: raw.maskedSoftmaxGrad.bind(raw),
      quantizeKQuant: raw.quantizeKQuant.bind(raw),
      frozenCreate: raw.frozenCreate.bind(raw),
      frozenFree: raw.frozenFree.bind(raw),
      frozenInfo: raw.frozenInfo.bind(raw),
      frozenRows: raw.frozenRows.bind(raw),
      frozenMatmul: raw.frozenMatmul.bind(raw),
      frozenGather: raw.frozenGather.bind(raw),
      frozenLinearCrossEntropy: raw.frozenLinearCrossEntropy.bind(raw),
      frozenLinearCrossEntropyGrad: raw.frozenLinearCrossEntropyGrad.bind(raw),
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
