/**
 * Fused kernels for the parts of a transformer block that tfjs otherwise runs as chains of small
 * elementwise ops: RMSNorm, LayerNorm and rotary embeddings, forward and backward.
 *
 * Why: profiling a LoRA step of the bench model on wasm (core/cli/bench.ts) put about a third of
 * the time outside matmuls, much of it in ops that each read and write a whole activation once:
 * RMSNorm's square/mean/rsqrt/mul and their gradients, and RoPE's split/neg/concat/mul/add, whose
 * SplitV and Concat over a 16-wide inner axis are slow on wasm. Each op is also a kernel call, an
 * allocation, and, for the tape, a copy of every input it saves. One pass in plain JS over the same
 * data does the work of the whole chain (PERFORMANCE.md, recommendation 5).
 *
 * What is here is backend-neutral: each kernel is its arithmetic over Float32Arrays plus its output
 * shapes. `cpuFusedKernelConfigs` binds them to the cpu backend; wasm/fused-kernels.ts binds the
 * same definitions to zero-copy views of the wasm heap. The ops the models call, with the
 * gradients and the composite fallback for other backends, are in core/models/fused-ops.ts.
 * Sums are accumulated in doubles (JS numbers), so the kernels are at least as accurate as the
 * float32 composite ops they replace; the tests hold them to 1e-5 relative of those.
 */
import { getKernel, registerKernel, util } from '../tf.ts';
import { activeNative } from './native/addon.ts';
import type { KernelConfig, KernelFunc, NamedAttrMap, TensorInfo } from '../tf.ts';

/** Kernel names, registered per backend; tf.getKernel(name, backend) tells whether one is fused. */
export const FUSED_KERNEL_NAMES = {
  rmsNorm: 'LowrankRmsNorm',
  rmsNormGrad: 'LowrankRmsNormGrad',
  rmsNormWeightGrad: 'LowrankRmsNormWeightGrad',
  layerNorm: 'LowrankLayerNorm',
  layerNormGrad: 'LowrankLayerNormGrad',
  layerNormWeightGrad: 'LowrankLayerNormWeightGrad',
  rope: 'LowrankRope',
  ropeGrad: 'LowrankRopeGrad',
} as const;

/** One fused kernel: named float32 inputs in, float32 outputs of the given shapes out. */
export interface FusedKernelDefinition {
  kernelName: string;
  /** The names of the inputs in the order `compute` receives them. */
  inputNames: readonly string[];
  outputShapes(inputs: readonly TensorInfo[], attrs: NamedAttrMap): number[][];
  /** Fills `outputs` (fresh, uninitialised) from `inputs`; shapes as the TensorInfos had them. */
  compute(inputs: Float32Array[], outputs: Float32Array[], inputShapes: number[][], attrs: NamedAttrMap): void;
}

/** [rows, C] of a 2-D input and its eps attr. */
function rowsAndWidth(shape: number[]): [number, number] {
  util.assert(shape.length === 2, () => `fused norm kernels take [rows, C], got [${shape}]`);
  return [shape[0], shape[1]];
}

const epsOf = (attrs: NamedAttrMap): number => attrs.eps as number;

// ---------------------------------------------------------------------------------------------
// RMSNorm (Zhang & Sennrich, arXiv:1910.07467): y = x·r·w, r = 1/√(mean(x²) + eps) per row.
// With g = dy·w:  dx = r·(g − x·r²·mean(g·x)),  dw = Σ_rows dy·x·r.

/**
 * 1/√(mean(x²) + eps) of row `base`..`base+C`. Four partial sums: a single one makes every add wait
 * for the previous (a latency chain), which made this pass several times slower in V8.
 */
function rmsInverse(x: Float32Array, base: number, C: number, eps: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let j = base;
  const end = base + C;
  for (; j + 3 < end; j += 4) {
    s0 += x[j] * x[j];
    s1 += x[j + 1] * x[j + 1];
    s2 += x[j + 2] * x[j + 2];
    s3 += x[j + 3] * x[j + 3];
  }
  for (; j < end; j++) s0 += x[j] * x[j];
  return 1 / Math.sqrt((s0 + s1 + s2 + s3) / C + eps);
}

const rmsNorm: FusedKernelDefinition = {
  kernelName: FUSED_KERNEL_NAMES.rmsNorm,
  inputNames: ['x', 'weight'],
  outputShapes: ([x]) => [x.shape],
  compute([x, w], [y], [shape], attrs) {
    const [rows, C] = rowsAndWidth(shape);
    const eps = epsOf(attrs);
    const native = activeNative();
    if (native) return native.rmsNorm(x, w, y, eps);
    for (let i = 0, base = 0; i < rows; i++, base += C) {
      const r = rmsInverse(x, base, C, eps);
      for (let j = 0; j < C; j++) y[base + j] = x[base + j] * r * w[j];
    }
  },
};

const rmsNormGrad: FusedKernelDefinition = {
  kernelName: FUSED_KERNEL_NAMES.rmsNormGrad,
  inputNames: ['dy', 'x', 'weight'],
  outputShapes: ([, x]) => [x.shape],
  compute([dy, x, w], [dx], [shape], attrs) {
    const [rows, C] = rowsAndWidth(shape);
    const eps = epsOf(attrs);
    const native = activeNative();
    if (native) return native.rmsNormGradX(dy, x, w, dx, eps);
    for (let i = 0, base = 0; i < rows; i++, base += C) {
      // Σ x² and Σ g·x in one pass, two partial sums each (see rmsInverse).
      let ss0 = 0;
      let ss1 = 0;
      let dot0 = 0;
      let dot1 = 0;
      let j = 0;
      for (; j + 1 < C; j += 2) {
        const x0 = x[base + j];
        const x1 = x[base + j + 1];
        ss0 += x0 * x0;
        ss1 += x1 * x1;
        dot0 += dy[base + j] * w[j] * x0;
        dot1 += dy[base + j + 1] * w[j + 1] * x1;
      }
      if (j < C) {
        ss0 += x[base + j] * x[base + j];
        dot0 += dy[base + j] * w[j] * x[base + j];
      }
      const r = 1 / Math.sqrt((ss0 + ss1) / C + eps);
      const c = (r * r * (dot0 + dot1)) / C;
      for (let j = 0; j < C; j++) dx[base + j] = r * (dy[base + j] * w[j] - x[base + j] * c);
    }
  },
};

const rmsNormWeightGrad: FusedKernelDefinition = {
  kernelName: FUSED_KERNEL_NAMES.rmsNormWeightGrad,
  inputNames: ['dy', 'x'],
  outputShapes: ([, x]) => [[x.shape[1]]],
  compute([dy, x], [dw], [, shape], attrs) {
    const [rows, C] = rowsAndWidth(shape);
    const eps = epsOf(attrs);
    const native = activeNative();
    if (native) return native.rmsNormGradW(dy, x, dw, eps);
    const sum = new Float64Array(C);
    for (let i = 0, base = 0; i < rows; i++, base += C) {
      const r = rmsInverse(x, base, C, eps);
      for (let j = 0; j < C; j++) sum[j] += dy[base + j] * x[base + j] * r;
    }
    dw.set(sum);
  },
};

// ---------------------------------------------------------------------------------------------
// LayerNorm (Ba et al., arXiv:1607.06450), biased variance as torch: y = x̂·w + b, x̂ = (x − μ)·r,
// r = 1/√(var + eps). With g = dy·w:  dx = r·(g − mean(g) − x̂·mean(g·x̂)),  dw = Σ_rows dy·x̂
// (db = Σ_rows dy is a plain column sum, left to the backend's Sum).

/** Mean and 1/√(var + eps) of one row, two passes for accuracy. */
function rowMoments(x: Float32Array, base: number, C: number, eps: number): [number, number] {
  let sum = 0;
  for (let j = 0; j < C; j++) sum += x[base + j];
  const mean = sum / C;
  let squares = 0;
  for (let j = 0; j < C; j++) {
    const d = x[base + j] - mean;
    squares += d * d;
  }
  return [mean, 1 / Math.sqrt(squares / C + eps)];
}

const layerNorm: FusedKernelDefinition = {
  kernelName: FUSED_KERNEL_NAMES.layerNorm,
  inputNames: ['x', 'weight', 'bias'],
  outputShapes: ([x]) => [x.shape],
  compute([x, w, b], [y], [shape], attrs) {
    const [rows, C] = rowsAndWidth(shape);
    const eps = epsOf(attrs);
    for (let i = 0, base = 0; i < rows; i++, base += C) {
      const [mean, r] = rowMoments(x, base, C, eps);
      for (let j = 0; j < C; j++) y[base + j] = (x[base + j] - mean) * r * w[j] + b[j];
    }
  },
};

const layerNormGrad: FusedKernelDefinition = {
  kernelName: FUSED_KERNEL_NAMES.layerNormGrad,
  inputNames: ['dy', 'x', 'weight'],
  outputShapes: ([, x]) => [x.shape],
  compute([dy, x, w], [dx], [shape], attrs) {
    const [rows, C] = rowsAndWidth(shape);
    const eps = epsOf(attrs);
    for (let i = 0, base = 0; i < rows; i++, base += C) {
      const [mean, r] = rowMoments(x, base, C, eps);
      let sumG = 0;
      let sumGXhat = 0;
      for (let j = 0; j < C; j++) {
        const g = dy[base + j] * w[j];
        sumG += g;
        sumGXhat += g * (x[base + j] - mean) * r;
      }
      const meanG = sumG / C;
      const meanGXhat = sumGXhat / C;
      for (let j = 0; j < C; j++) {
        const xhat = (x[base + j] - mean) * r;
        dx[base + j] = r * (dy[base + j] * w[j] - meanG - xhat * meanGXhat);
      }
    }
  },
};

const layerNormWeightGrad: FusedKernelDefinition = {
  kernelName: FUSED_KERNEL_NAMES.layerNormWeightGrad,
  inputNames: ['dy', 'x'],
  outputShapes: ([, x]) => [[x.shape[1]]],
  compute([dy, x], [dw], [, shape], attrs) {
    const [rows, C] = rowsAndWidth(shape);
    const eps = epsOf(attrs);
    const sum = new Float64Array(C);
    for (let i = 0, base = 0; i < rows; i++, base += C) {
      const [mean, r] = rowMoments(x, base, C, eps);
      for (let j = 0; j < C; j++) sum[j] += dy[base + j] * (x[base + j] - mean) * r;
    }
    dw.set(sum);
  },
};

// ---------------------------------------------------------------------------------------------
// RoPE in the rotate_half layout (core/models/rope.ts): x [B, H, T, D], cos and sin [T, D],
// h = D/2:  y[j] = x[j]·cos[j] − x[j+h]·sin[j]   (j < h)
//           y[j] = x[j]·cos[j] + x[j−h]·sin[j]   (j ≥ h)
// Its transpose, the gradient:
//          dx[j] = dy[j]·cos[j] + dy[j+h]·sin[j+h]   (j < h)
//          dx[j] = dy[j]·cos[j] − dy[j−h]·sin[j−h]   (j ≥ h)

function ropeDims(x: number[], table: number[]): { rows: number; T: number; D: number } {
  util.assert(x.length === 4 && table.length === 2, () => `fused RoPE takes x [B, H, T, D] and tables [T, D], got [${x}] and [${table}]`);
  const [B, H, T, D] = x;
  util.assert(table[0] === T && table[1] === D && D % 2 === 0, () => `fused RoPE: tables [${table}] do not fit x [${x}]`);
  return { rows: B * H, T, D };
}

const rope: FusedKernelDefinition = {
  kernelName: FUSED_KERNEL_NAMES.rope,
  inputNames: ['x', 'cos', 'sin'],
  outputShapes: ([x]) => [x.shape],
  compute([x, cos, sin], [y], [xShape, tableShape]) {
    const { rows, T, D } = ropeDims(xShape, tableShape);
    const h = D / 2;
    for (let r = 0, base = 0; r < rows; r++) {
      for (let t = 0, tb = 0; t < T; t++, tb += D, base += D) {
        for (let j = 0; j < h; j++) {
          const a = x[base + j];
          const b = x[base + j + h];
          y[base + j] = a * cos[tb + j] - b * sin[tb + j];
          y[base + j + h] = b * cos[tb + j + h] + a * sin[tb + j + h];
        }
      }
    }
  },
};

const ropeGrad: FusedKernelDefinition = {
  kernelName: FUSED_KERNEL_NAMES.ropeGrad,
  inputNames: ['dy', 'cos', 'sin'],
  outputShapes: ([dy]) => [dy.shape],
  compute([dy, cos, sin], [dx], [dyShape, tableShape]) {
    const { rows, T, D } = ropeDims(dyShape, tableShape);
    const h = D / 2;
    for (let r = 0, base = 0; r < rows; r++) {
      for (let t = 0, tb = 0; t < T; t++, tb += D, base += D) {
        for (let j = 0; j < h; j++) {
          const a = dy[base + j];
          const b = dy[base + j + h];
          dx[base + j] = a * cos[tb + j] + b * sin[tb + j + h];
          dx[base + j + h] = b * cos[tb + j + h] - a * sin[tb + j];
        }
      }
    }
  },
};

export const FUSED_KERNELS: readonly FusedKernelDefinition[] = [
  rmsNorm,
  rmsNormGrad,
  rmsNormWeightGrad,
  layerNorm,
  layerNormGrad,
  layerNormWeightGrad,
  rope,
  ropeGrad,
];

export function checkFloat32(def: FusedKernelDefinition, inputs: readonly TensorInfo[]): void {
  for (const [i, t] of inputs.entries()) {
    util.assert(t != null, () => `${def.kernelName}: missing input '${def.inputNames[i]}'`);
    util.assert(t.dtype === 'float32', () => `${def.kernelName}: input '${def.inputNames[i]}' must be float32, got ${t.dtype}`);
  }
}

/** The part of tfjs-backend-cpu's MathBackendCPU used here (its typings are not exported). */
interface CpuBackendLike {
  /** The tensor's own values array, not a copy. */
  readSync(dataId: object): unknown;
  /** Adopts `values` as the new tensor's storage. */
  makeTensorInfo(shape: number[], dtype: 'float32', values: Float32Array): TensorInfo;
}

function cpuKernelFunc(def: FusedKernelDefinition): KernelFunc {
  return ({ inputs, backend: backendArg, attrs = {} }) => {
    const backend = backendArg as unknown as CpuBackendLike;
    const named = inputs as Record<string, TensorInfo>;
    const ins = def.inputNames.map((n) => named[n]);
    checkFloat32(def, ins);
    const shapes = def.outputShapes(ins, attrs);
    const outs = shapes.map((s) => new Float32Array(util.sizeFromShape(s)));
    def.compute(ins.map((t) => backend.readSync(t.dataId) as Float32Array), outs, ins.map((t) => t.shape), attrs);
    const infos = shapes.map((s, i) => backend.makeTensorInfo(s, 'float32', outs[i]));
    return infos.length === 1 ? infos[0] : infos;
  };
}

export function cpuFusedKernelConfigs(): KernelConfig[] {
  return FUSED_KERNELS.map((def) => ({ kernelName: def.kernelName, backendName: 'cpu', kernelFunc: cpuKernelFunc(def) }));
}

/** Registers the cpu kernels once per process (the cpu backend has no install step of its own). */
export function registerCpuFusedKernels(): void {
  for (const config of cpuFusedKernelConfigs()) {
    if (getKernel(config.kernelName, 'cpu') == null) registerKernel(config);
  }
}
