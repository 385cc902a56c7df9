/**
 * Test support for the memory estimate: the peak bytes of distinct tensor buffers allocated while a
 * function runs, from the tfjs engine's buffer registry (tf.profile's peakBytes counts a buffer again
 * for every tensor that shares it, such as the clones the tape saves). Reads engine internals of the
 * pinned tfjs 4.22 and fails loudly if they change.
 */
import * as tf from '../tf.ts';

export function peakBufferBytes(fn: () => void): number {
  const registry = (tf.engine() as unknown as { state: { tensorInfo: WeakMap<object, { bytes: number }> } }).state.tensorInfo;
  if (!(registry instanceof WeakMap)) throw new Error('tfjs engine internals changed: state.tensorInfo is not a WeakMap');
  const ours = new Set<object>();
  let live = 0;
  let peak = 0;
  Object.assign(registry, {
    set(key: object, value: { bytes: number }) {
      if (!registry.has(key)) {
        ours.add(key);
        live += value.bytes;
        peak = Math.max(peak, live);
      }
      return WeakMap.prototype.set.call(registry, key, value);
    },
    delete(key: object) {
      if (ours.delete(key)) live -= registry.get(key)!.bytes;
      return WeakMap.prototype.delete.call(registry, key);
    },
  });
  try {
    fn();
  } finally {
    delete (registry as { set?: unknown }).set;
    delete (registry as { delete?: unknown }).delete;
  }
  return peak;
}
