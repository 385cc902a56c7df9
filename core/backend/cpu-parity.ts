/**
 * Test support: run the same computation on another backend and compare with the cpu backend,
 * tfjs's plain-JS reference implementation (CONVENTIONS.md 7: parity against an independent
 * implementation). Inputs are regenerated from a seed on each backend, so no tensor has to move
 * between backends.
 */
import * as tf from '../tf.ts';

/** Deterministic uniform values in [-1, 1) (mulberry32). */
export function seededValues(size: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) / 2 ** 31 - 1;
  }
  return out;
}

export function seededTensor(shape: number[], seed: number): tf.Tensor {
  return tf.tensor(seededValues(shape.reduce((a, b) => a * b, 1), seed), shape);
}

/** Runs `fn` with `backend` active and returns copies of its outputs' values and shapes. */
export async function runOn(
  backend: string,
  fn: () => tf.Tensor | tf.Tensor[],
): Promise<Array<{ shape: number[]; values: Float32Array }>> {
  const previous = tf.getBackend();
  await tf.setBackend(backend);
  try {
    const result = tf.tidy(fn);
    const list = Array.isArray(result) ? result : [result];
    const copies = list.map((t) => ({ shape: t.shape, values: Float32Array.from(t.dataSync()) }));
    tf.dispose(list);
    return copies;
  } finally {
    if (previous != null) await tf.setBackend(previous);
  }
}

/** max |x - ref| / max |ref|: error relative to the tensor's scale, robust to entries near 0. */
export function relativeError(x: Float32Array, ref: Float32Array): number {
  if (x.length !== ref.length) return Infinity;
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < ref.length; i++) {
    if (Number.isNaN(x[i]) !== Number.isNaN(ref[i])) return Infinity;
    if (Number.isNaN(ref[i])) continue;
    diff = Math.max(diff, Math.abs(x[i] - ref[i]));
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  return scale === 0 ? diff : diff / scale;
}

/**
 * Worst relative error of `fn` on `backend` against `reference` (default: the same `fn`) on cpu,
 * over all outputs; throws on a shape mismatch. A separate reference is for what the cpu backend
 * itself gets wrong, e.g. its BatchMatMul ignores multi-dim batch broadcasting ([2,1]·[3]).
 */
export async function errorVsCpu(
  backend: string,
  fn: () => tf.Tensor | tf.Tensor[],
  reference: () => tf.Tensor | tf.Tensor[] = fn,
): Promise<number> {
  const got = await runOn(backend, fn);
  const want = await runOn('cpu', reference);
  let worst = 0;
  got.forEach((g, i) => {
    if (g.shape.join() !== want[i].shape.join()) {
      throw new Error(`output ${i}: shape ${g.shape} on ${backend}, ${want[i].shape} on cpu`);
    }
    worst = Math.max(worst, relativeError(g.values, want[i].values));
  });
  return worst;
}
