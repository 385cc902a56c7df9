/**
 * `UnsortedSegmentSum` for the wasm backend, which 4.22 lacks (PERFORMANCE.md §1). tf.gather's
 * gradient is built on it, so without it an embedding table cannot be trained on wasm.
 *
 * out[s, ...] = Σ_{i : segmentIds[i] = s} x[i, ...]   (TensorFlow's definition; ids outside
 * [0, numSegments) are dropped, as the cpu backend does). segmentIds may have any rank r; it
 * indexes x's first r dims. A plain JS loop over zero-copy heap views: this is a scatter-add,
 * memory-bound, and the gradient of an embedding lookup touches only B·T rows.
 */
import { UnsortedSegmentSum, util } from '../../tf.ts';
import type { KernelConfig, KernelFunc, TensorInfo, UnsortedSegmentSumAttrs } from '../../tf.ts';
import { asWasmBackend } from './backend-internals.ts';

const unsortedSegmentSum: KernelFunc = ({ inputs, backend: backendArg, attrs }) => {
  const backend = asWasmBackend(backendArg);
  const { x, segmentIds } = inputs as { x: TensorInfo; segmentIds: TensorInfo };
  const { numSegments } = attrs as unknown as UnsortedSegmentSumAttrs;
  if (x.dtype !== 'float32' && x.dtype !== 'int32') {
    throw new Error(`UnsortedSegmentSum on wasm supports float32 and int32, got ${x.dtype}`);
  }
  util.assert(segmentIds.dtype === 'int32', () => `unsortedSegmentSum: segmentIds must be int32, got ${segmentIds.dtype}`);
  const idsRank = segmentIds.shape.length;
  util.assert(
    util.arraysEqual(x.shape.slice(0, idsRank), segmentIds.shape),
    () => `unsortedSegmentSum: segmentIds shape ${segmentIds.shape} must be a prefix of x shape ${x.shape}`,
  );
  const innerShape = x.shape.slice(idsRank);
  const inner = util.sizeFromShape(innerShape);
  const rows = util.sizeFromShape(segmentIds.shape);

  const out = backend.makeOutput([numSegments, ...innerShape], x.dtype);
  // Views only after makeOutput: its malloc can grow the heap and detach earlier views.
  const outValues = backend.typedArrayFromHeap(out);
  const xValues = backend.typedArrayFromHeap(x);
  const ids = backend.typedArrayFromHeap(segmentIds);
  outValues.fill(0);
  for (let i = 0; i < rows; i++) {
    const segment = ids[i];
    if (!(segment >= 0 && segment < numSegments)) continue;
    const src = i * inner;
    const dst = segment * inner;
    for (let j = 0; j < inner; j++) outValues[dst + j] += xValues[src + j];
  }
  return out;
};

export const unsortedSegmentSumConfig: KernelConfig = {
  kernelName: UnsortedSegmentSum,
  backendName: 'wasm',
  kernelFunc: unsortedSegmentSum,
};
