/**
 * The webgpu backend (DESIGN.md "Backends" 1, PERFORMANCE.md §4). Both packages it needs are
 * optional and are not installed by default, so every step reports why it stopped instead of
 * throwing:
 *  1. @tensorflow/tfjs-backend-webgpu must be installed;
 *  2. `navigator.gpu` must exist *before* that package is imported, because it decides at import
 *     time whether to register the backend (tfjs-backend-webgpu `base.ts`, tfjs#8066). An
 *     Electron renderer has it built in; in Node (CLI, `lowrank serve`) Dawn from the `webgpu`
 *     npm package provides it;
 *  3. `tf.setBackend('webgpu')` must then find an adapter.
 * Untested in this repository so far: no machine here has the tfjs webgpu package.
 */
import * as tf from '../tf.ts';
import { packageInstalled, tryImport, type Attempt } from './optional-packages.ts';

const TFJS_WEBGPU = '@tensorflow/tfjs-backend-webgpu';

interface DawnModule {
  create(flags: string[]): unknown;
  globals: object;
}

export async function startWebgpuBackend(): Promise<Attempt<{ adapter?: string }>> {
  if (!packageInstalled(TFJS_WEBGPU)) {
    return { ok: false, reason: `${TFJS_WEBGPU} is not installed (npm install ${TFJS_WEBGPU}@${tf.version_core})` };
  }
  const provided = await provideNavigatorGpu();
  if (!provided.ok) return provided;
  const imported = await tryImport(TFJS_WEBGPU);
  if (!imported.ok) return { ok: false, reason: `${TFJS_WEBGPU} failed to load: ${imported.reason}` };
  if (tf.findBackendFactory('webgpu') == null) {
    return { ok: false, reason: `${TFJS_WEBGPU} did not register a backend (navigator.gpu was missing when it loaded)` };
  }
  if (!(await tf.setBackend('webgpu'))) {
    return { ok: false, reason: 'tf.setBackend("webgpu") failed: no usable WebGPU adapter (see the warning above)' };
  }
  return { ok: true, value: { adapter: describeAdapter(tf.backend()) } };
}

async function provideNavigatorGpu(): Promise<Attempt<null>> {
  const g = globalThis as { navigator?: { gpu?: unknown } };
  if (g.navigator?.gpu != null) return { ok: true, value: null };
  const dawn = await tryImport<DawnModule>('webgpu');
  if (!dawn.ok) return { ok: false, reason: `no navigator.gpu, and the 'webgpu' package (Dawn for Node) did not load: ${dawn.reason}` };
  // The WebGPU classes (GPUBufferUsage, ...) that tfjs-backend-webgpu expects as globals.
  Object.assign(globalThis, dawn.value.globals);
  const gpu = dawn.value.create([]);
  if (g.navigator != null) {
    // Node >= 21 has a global navigator (without gpu); extend it rather than replace it.
    Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true });
  } else {
    Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
  }
  return { ok: true, value: null };
}

function describeAdapter(backend: unknown): string | undefined {
  const info = (backend as { adapterInfo?: { vendor?: string; architecture?: string } }).adapterInfo;
  const text = [info?.vendor, info?.architecture].filter((s) => s != null && s !== '').join(' ');
  return text === '' ? undefined : text;
}
