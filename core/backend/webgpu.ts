/**
 * The webgpu backend (DESIGN.md "Backends" 1, PERFORMANCE.md §4): @tensorflow/tfjs-backend-webgpu
 * on the renderer's built-in WebGPU (Electron), or in Node (CLI, `lowrank serve`) on Dawn from the
 * `webgpu` npm package (an optionalDependency; binaries inside its tarball).
 *
 * Order matters: `navigator.gpu` and the WebGPU globals (GPUBufferUsage, …) must exist *before*
 * tfjs-backend-webgpu is imported, because it decides at import time whether to register the
 * backend (`base.ts`, tfjs#8066). Its own factory then asks for a default high-performance adapter,
 * which cannot reach Mesa's GLES driver (that needs a `compatibility` adapter from a Dawn instance
 * made with `backend=opengles`), so we replace that factory with one that uses the adapter chosen
 * here, and requests the device the same way `base.ts` does.
 *
 * Adapters, in the order tried:
 *  1. Dawn's default backend (Vulkan on Linux, Metal, D3D12), high-performance;
 *  2. `backend=opengles` + `featureLevel: 'compatibility'` (Linux: Mesa EGL; this is how CI runs on
 *     llvmpipe). Headless (no DISPLAY/WAYLAND_DISPLAY), EGL_PLATFORM=surfaceless is set unless the
 *     user chose one: Mesa's default x11 platform fails with EGL_NOT_INITIALIZED there.
 * Synchronous reads (`dataSync`, which training uses throughout): tfjs-backend-webgpu's readSync
 * copies through an OffscreenCanvas, which Node does not have. Dawn for Node resolves mapAsync
 * from a "tick" it queues with the global `setImmediate` (dawn/node AsyncRunner), so it needs the
 * event loop, which a synchronous read cannot give back. We pass Dawn's (native) tick callbacks
 * through a wrapper of `setImmediate` that also lets us run them on the spot: readSync copies the
 * tensor into a MAP_READ staging buffer, calls mapAsync, and runs the ticks until it is mapped.
 * That is the async `read()` path of the backend, completed synchronously.
 *
 * In a page (the desktop app's hidden engine window, core/service/engine-window/), navigator.gpu
 * is the page's own WebGPU and reads go through tfjs-backend-webgpu's stock readSync (it has
 * OffscreenCanvas there). A bundle for such a page imports tfjs-backend-webgpu itself and hands it
 * over with `provideWebgpuModule`, since a dynamic import of a bare package name cannot resolve in
 * a page.
 *
 * A software adapter (llvmpipe, lavapipe, SwiftShader, WARP) is far slower than wasm, so when
 * webgpu is tried automatically (`{requireHardware: true}`) one is refused; forcing webgpu
 * (LOWRANK_BACKEND=webgpu) accepts it, which is what the CI tests do.
 */
import * as fs from 'node:fs';
import * as tf from '../tf.ts';
import { packageInstalled, tryImport, type Attempt } from './optional-packages.ts';
import { installWebgpuKernels } from './webgpu-kernels.ts';

const TFJS_WEBGPU = '@tensorflow/tfjs-backend-webgpu';
/** tfjs-backend-webgpu's own registration priority (base.ts). */
const WEBGPU_PRIORITY = 3;

/** The part of the WebGPU API used here (the project does not depend on @webgpu/types). */
interface AdapterInfoLike {
  vendor?: string;
  architecture?: string;
  device?: string;
  description?: string;
  isFallbackAdapter?: boolean;
}
interface AdapterLike {
  info?: AdapterInfoLike;
  features: { has(name: string): boolean };
  limits: Record<string, number>;
  requestDevice(descriptor: { requiredFeatures: string[]; requiredLimits: Record<string, number> }): Promise<unknown>;
}
interface GpuLike {
  requestAdapter(options?: Record<string, string>): Promise<AdapterLike | null>;
}
interface DawnModule {
  create(flags: string[]): GpuLike;
  globals: object;
}
interface TfjsWebgpuModule {
  WebGPUBackend: {
    new (device: unknown, adapterInfo?: unknown): tf.KernelBackend;
    prototype: WebgpuBackendInternals;
  };
}
/** The members of tfjs-backend-webgpu 4.22's WebGPUBackend that the synchronous read uses. */
interface WebgpuBackendInternals {
  readSync(dataId: object): tf.backend_util.BackendValues;
  tensorMap: { get(dataId: object): { values?: tf.backend_util.BackendValues | null; dtype: tf.DataType; resource: BufferLike } };
  bufferManager: { acquireBuffer(size: number, usage: number): BufferLike; releaseBuffer(b: BufferLike): void };
  commandEncoder: { copyBufferToBuffer(src: BufferLike, so: number, dst: BufferLike, doff: number, size: number): void };
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  convertAndCacheOnCPU(dataId: object, values: tf.backend_util.BackendValues): tf.backend_util.BackendValues;
}
interface BufferLike {
  size: number;
  mapState: 'unmapped' | 'pending' | 'mapped';
  mapAsync(mode: number): Promise<void>;
  getMappedRange(): ArrayBuffer;
  unmap(): void;
}
interface WebgpuGlobals {
  GPUBufferUsage: { COPY_DST: number; MAP_READ: number };
  GPUMapMode: { READ: number };
}

export interface WebgpuStartOptions {
  /** Refuse software adapters (automatic choice); a forced webgpu accepts them. */
  requireHardware?: boolean;
  /**
   * With requireHardware on Linux, give up without loading Dawn when there is no GPU device node
   * (default true). Tests turn it off to check that Dawn's software adapter is refused.
   */
  checkDeviceNodes?: boolean;
}

export interface WebgpuStart {
  adapter: string;
  software: boolean;
  kernels: string[];
}

const SOFTWARE = /llvmpipe|lavapipe|softpipe|swiftshader|microsoft basic render|\bwarp\b/i;

export function describeAdapter(info: AdapterInfoLike | undefined): string {
  const parts = [info?.vendor, info?.architecture, info?.device, info?.description]
    .map((s) => s?.trim().replace(/-+$/, ''))
    .filter((s): s is string => s != null && s !== '');
  return [...new Set(parts)].join(', ') || 'unnamed adapter';
}

export function isSoftwareAdapter(info: AdapterInfoLike | undefined): boolean {
  return info?.isFallbackAdapter === true || SOFTWARE.test(describeAdapter(info));
}

/**
 * Linux without a GPU device node has nothing for Dawn to find but software renderers; checking
 * first keeps an automatic start from loading Dawn (and printing its warnings) on every CPU box.
 */
function linuxHasGpuDevice(): boolean {
  if (process.platform !== 'linux') return true;
  const exists = (p: string) => fs.existsSync(p);
  const dri = exists('/dev/dri') && fs.readdirSync('/dev/dri').some((f) => f.startsWith('renderD') || f.startsWith('card'));
  return dri || exists('/dev/nvidia0') || exists('/dev/dxg');
}

let chosen: { adapter: AdapterLike; software: boolean; dawn: boolean } | null = null;
/** tfjs-backend-webgpu as imported by a bundle (provideWebgpuModule); null: import it by name. */
let providedModule: TfjsWebgpuModule | null = null;

/**
 * For bundles that run in a page (the engine window): the bundle's own static import of
 * tfjs-backend-webgpu, used instead of a dynamic import by package name. It must be imported
 * after the page's navigator.gpu exists, which it does from the start in a page.
 */
export function provideWebgpuModule(module: unknown): void {
  const m = module as Partial<TfjsWebgpuModule> | null;
  if (typeof m?.WebGPUBackend !== 'function') throw new Error('provideWebgpuModule: not @tensorflow/tfjs-backend-webgpu (no WebGPUBackend export)');
  providedModule = m as TfjsWebgpuModule;
}

/** What the app and `lowrank info` say about a WebGPU adapter. */
export interface WebgpuAdapterReport {
  /** vendor, architecture, device, description: the ones the adapter fills in. */
  adapter: string;
  vendor: string;
  architecture: string;
  description: string;
  software: boolean;
}

export function adapterReport(info: AdapterInfoLike | undefined): WebgpuAdapterReport {
  return {
    adapter: describeAdapter(info),
    vendor: info?.vendor ?? '',
    architecture: info?.architecture ?? '',
    description: info?.description ?? '',
    software: isSoftwareAdapter(info),
  };
}

/**
 * The adapter of this page's own WebGPU (navigator.gpu of a browser or an Electron renderer),
 * without starting a backend: the engine window reports it before any job is sent to it.
 */
export async function builtInWebgpuAdapter(): Promise<Attempt<WebgpuAdapterReport>> {
  const gpu = (globalThis as { navigator?: { gpu?: GpuLike } }).navigator?.gpu;
  if (gpu == null) return { ok: false, reason: 'this page has no navigator.gpu (WebGPU is disabled or unsupported here)' };
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (adapter == null) return { ok: false, reason: 'navigator.gpu.requestAdapter() found no adapter' };
  return { ok: true, value: adapterReport(adapter.info) };
}

/**
 * Dawn's pending event-processing ticks (see the header). Installed before Dawn is created;
 * only native functions (the ones napi hands to setImmediate) are tracked, everything else goes
 * straight to the real setImmediate. A tick run here early is skipped when its turn comes.
 */
const dawnTicks = new Set<() => void>();
let ticksIntercepted = false;

function interceptDawnTicks(): void {
  if (ticksIntercepted) return;
  ticksIntercepted = true;
  const real = globalThis.setImmediate;
  const isNative = (fn: unknown) => typeof fn === 'function' && /\{\s*\[native code\]\s*\}\s*$/.test(Function.prototype.toString.call(fn));
  const wrapped = function (this: unknown, fn: (...args: unknown[]) => void, ...args: unknown[]) {
    if (!isNative(fn)) return real(fn, ...args);
    const tick = () => fn(...args);
    dawnTicks.add(tick);
    return real(() => {
      if (dawnTicks.delete(tick)) tick();
    });
  };
  Object.assign(wrapped, real); // keeps setImmediate[util.promisify.custom]
  globalThis.setImmediate = wrapped as typeof globalThis.setImmediate;
}

/** Runs Dawn's ticks until `done()`; throws if Dawn has nothing left to run or it takes too long. */
function runDawnTicksUntil(done: () => boolean, what: string, timeoutMs = 120_000): void {
  const t0 = performance.now();
  while (!done()) {
    if (dawnTicks.size === 0) throw new Error(`webgpu: ${what} cannot complete synchronously (Dawn queued no event processing)`);
    if (performance.now() - t0 > timeoutMs) throw new Error(`webgpu: ${what} did not complete within ${timeoutMs / 1000} s`);
    const ticks = [...dawnTicks];
    dawnTicks.clear();
    for (const tick of ticks) tick();
  }
}

/** readSync through a MAP_READ staging buffer (the backend's async read, completed on the spot). */
function installSyncRead(Backend: TfjsWebgpuModule['WebGPUBackend']): void {
  const proto = Backend.prototype;
  if ((proto as { lowrankSyncRead?: boolean }).lowrankSyncRead) return;
  const original = proto.readSync;
  const g = globalThis as unknown as WebgpuGlobals;
  proto.readSync = function (this: WebgpuBackendInternals, dataId: object) {
    const data = this.tensorMap.get(dataId);
    // Cached values, strings, and complex64 (which reads its parts through this method).
    if (data.values != null || data.dtype === 'string' || data.dtype === 'complex64') return original.call(this, dataId);
    const source = data.resource;
    const staging = this.bufferManager.acquireBuffer(source.size, g.GPUBufferUsage.COPY_DST | g.GPUBufferUsage.MAP_READ);
    this.ensureCommandEncoderReady();
    this.endComputePassEncoder();
    this.commandEncoder.copyBufferToBuffer(source, 0, staging, 0, source.size);
    this.submitQueue();
    let failure: unknown = null;
    staging.mapAsync(g.GPUMapMode.READ).catch((e: unknown) => {
      failure = e;
    });
    try {
      runDawnTicksUntil(() => staging.mapState !== 'pending', 'a synchronous read (dataSync)');
      if (staging.mapState !== 'mapped') {
        throw new Error(`webgpu: mapping the read-back buffer failed${failure != null ? `: ${String(failure)}` : ''}`);
      }
      const bytes = staging.getMappedRange().slice(0);
      staging.unmap();
      const values = tf.util.convertBackendValuesAndArrayBuffer(bytes, data.dtype);
      return this.convertAndCacheOnCPU(dataId, values);
    } finally {
      this.bufferManager.releaseBuffer(staging);
    }
  };
  (proto as { lowrankSyncRead?: boolean }).lowrankSyncRead = true;
}

async function dawnAdapters(requireHardware: boolean): Promise<Attempt<{ adapter: AdapterLike; software: boolean }>> {
  const dawn = await tryImport<DawnModule>('webgpu');
  if (!dawn.ok) return { ok: false, reason: `no navigator.gpu, and the 'webgpu' package (Dawn for Node) did not load: ${dawn.reason}` };
  const headless = process.env.DISPLAY == null && process.env.WAYLAND_DISPLAY == null;
  if (process.platform === 'linux' && headless && process.env.EGL_PLATFORM == null) process.env.EGL_PLATFORM = 'surfaceless';
  const tries: Array<{ flags: string[]; options: Record<string, string>; label: string }> = [
    { flags: [], options: { powerPreference: 'high-performance' }, label: 'default backend' },
  ];
  if (process.platform === 'linux') {
    tries.push({ flags: ['backend=opengles'], options: { featureLevel: 'compatibility' }, label: 'OpenGL ES (compatibility)' });
  }
  const found: string[] = [];
  interceptDawnTicks();
  for (const t of tries) {
    const gpu = dawn.value.create(t.flags);
    const adapter = await gpu.requestAdapter(t.options);
    if (adapter == null) {
      found.push(`${t.label}: no adapter`);
      continue;
    }
    const software = isSoftwareAdapter(adapter.info);
    if (software && requireHardware) {
      found.push(`${t.label}: only the software adapter '${describeAdapter(adapter.info)}' (slower than wasm; set LOWRANK_BACKEND=webgpu to use it anyway)`);
      continue;
    }
    // The WebGPU classes (GPUBufferUsage, …) that tfjs-backend-webgpu expects as globals.
    Object.assign(globalThis, dawn.value.globals);
    setNavigatorGpu(gpu);
    return { ok: true, value: { adapter, software } };
  }
  return { ok: false, reason: `no usable WebGPU adapter (${found.join('; ')})` };
}

function setNavigatorGpu(gpu: GpuLike): void {
  const g = globalThis as { navigator?: { gpu?: unknown } };
  if (g.navigator != null) {
    // Node >= 21 has a global navigator (without gpu); extend it rather than replace it.
    Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true });
  } else {
    Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
  }
}

async function chooseAdapter(
  requireHardware: boolean,
  checkDeviceNodes: boolean,
): Promise<Attempt<{ adapter: AdapterLike; software: boolean; dawn: boolean }>> {
  if (chosen != null) {
    if (chosen.software && requireHardware) return { ok: false, reason: 'only a software WebGPU adapter is available' };
    return { ok: true, value: chosen };
  }
  const builtIn = (globalThis as { navigator?: { gpu?: GpuLike } }).navigator?.gpu;
  if (builtIn != null) {
    // Electron renderer or browser: its own WebGPU.
    const adapter = await builtIn.requestAdapter({ powerPreference: 'high-performance' });
    if (adapter == null) return { ok: false, reason: 'navigator.gpu.requestAdapter() found no adapter' };
    const software = isSoftwareAdapter(adapter.info);
    if (software && requireHardware) return { ok: false, reason: `only the software adapter '${describeAdapter(adapter.info)}'` };
    return { ok: true, value: { adapter, software, dawn: false } };
  }
  if (requireHardware && checkDeviceNodes && !linuxHasGpuDevice()) {
    return { ok: false, reason: 'no GPU device (/dev/dri, /dev/nvidia0, /dev/dxg) on this machine' };
  }
  const found = await dawnAdapters(requireHardware);
  return found.ok ? { ok: true, value: { ...found.value, dawn: true } } : found;
}

/** The device request of tfjs-backend-webgpu 4.22's base.ts, on our adapter. */
async function makeBackend(module: TfjsWebgpuModule, adapter: AdapterLike): Promise<tf.KernelBackend> {
  const requiredFeatures = ['timestamp-query', 'bgra8unorm-storage'].filter((f) => adapter.features.has(f));
  const l = adapter.limits;
  const device = await adapter.requestDevice({
    requiredFeatures,
    requiredLimits: {
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
    },
  });
  // tfjs never looks at WebGPU errors; an invalid pipeline silently leaves its output unwritten.
  // Count them (tests require none) and report the first few.
  (device as { addEventListener?(type: string, fn: (e: { error?: { message?: string } }) => void): void })
    .addEventListener?.('uncapturederror', (e) => {
      gpuErrors.push(e.error?.message ?? String(e.error));
      if (gpuErrors.length <= 3) console.error(`webgpu error: ${e.error?.message ?? String(e.error)}`);
    });
  // Nor at a lost device (driver reset, GPU process crash): every later read fails or hangs.
  void (device as { lost?: Promise<{ reason?: string; message?: string }> }).lost?.then((info) => {
    gpuErrors.push(`device lost (${info.reason ?? 'unknown'}): ${info.message ?? ''}`);
    console.error(`webgpu: device lost (${info.reason ?? 'unknown'}): ${info.message ?? ''}`);
  });
  return new module.WebGPUBackend(device, adapter.info);
}

const gpuErrors: string[] = [];

/**
 * The active webgpu device's largest storage-buffer binding (maxStorageBufferBindingSize; 128 MB on
 * llvmpipe and many integrated GPUs), or null when webgpu is not the active backend. A tensor larger
 * than this cannot be an input of any kernel, so the models hold such weights in shards.
 */
export function webgpuBindingLimit(): number | null {
  if (tf.getBackend() !== 'webgpu') return null;
  const limits = (tf.backend() as unknown as { device?: { limits?: { maxStorageBufferBindingSize?: number } } }).device?.limits;
  return limits?.maxStorageBufferBindingSize ?? null;
}

/** WebGPU errors (validation, out of memory) reported by the device since the backend started. */
export function webgpuErrors(): readonly string[] {
  return gpuErrors;
}

export async function startWebgpuBackend(opts: WebgpuStartOptions = {}): Promise<Attempt<WebgpuStart>> {
  const requireHardware = opts.requireHardware ?? false;
  if (providedModule == null && !packageInstalled(TFJS_WEBGPU)) {
    return { ok: false, reason: `${TFJS_WEBGPU} is not installed (npm install ${TFJS_WEBGPU}@${tf.version_core})` };
  }
  const picked = await chooseAdapter(requireHardware, opts.checkDeviceNodes ?? true);
  if (!picked.ok) return picked;
  chosen = picked.value;
  const imported: Attempt<TfjsWebgpuModule> = providedModule != null ? { ok: true, value: providedModule } : await tryImport<TfjsWebgpuModule>(TFJS_WEBGPU);
  if (!imported.ok) return { ok: false, reason: `${TFJS_WEBGPU} failed to load: ${imported.reason}` };
  if (picked.value.dawn) installSyncRead(imported.value.WebGPUBackend);
  const kernels = installWebgpuKernels();
  if (tf.findBackend('webgpu') == null) {
    // Replace the package's factory (default adapter only) with ours (the adapter chosen above).
    if (tf.findBackendFactory('webgpu') != null) tf.removeBackend('webgpu');
    const { adapter } = picked.value;
    let initError: unknown = null;
    tf.registerBackend('webgpu', async () => {
      try {
        return await makeBackend(imported.value, adapter);
      } catch (e) {
        initError = e;
        throw e;
      }
    }, WEBGPU_PRIORITY);
    if (!(await tf.setBackend('webgpu'))) {
      const why = initError instanceof Error ? initError.message : String(initError ?? 'unknown');
      return { ok: false, reason: `tf.setBackend("webgpu") failed: ${why}` };
    }
  } else if (!(await tf.setBackend('webgpu'))) {
    return { ok: false, reason: 'tf.setBackend("webgpu") failed' };
  }
  return { ok: true, value: { adapter: describeAdapter(picked.value.adapter.info), software: picked.value.software, kernels } };
}
