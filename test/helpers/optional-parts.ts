/**
 * The parts of the machine some tests need and a fresh clone may lack: the native BLAS kernels
 * (built at `npm ci` when OpenBLAS and a compiler are there), Chromium for the browser tests, and
 * node-llama-cpp's prebuilt llama.cpp binary. One place decides whether each is here:
 *
 *  - a test that needs one declares it with `needs(part)` (as describe/it options: it skips where the
 *    part is missing and carries the part's tag), and on CI, which installs every part (.ci/run),
 *    a missing part throws instead of skipping;
 *  - vitest.config.ts defines the tags from OPTIONAL_PARTS, and test/helpers/skipped-parts-reporter.ts
 *    counts the tests that skipped under each tag, so the line printed at the end of `npm test` says
 *    what really skipped and how to enable it.
 *
 * Mesa EGL (what test/backend-webgpu.test.ts runs WebGPU on) is not a skip: without an adapter those
 * tests fail. The reporter names it when it is absent, since the same apt line installs it.
 */
import * as fs from 'node:fs';
import { nativeAddon } from '../../core/backend/native/addon.ts';

export const OPTIONAL_PARTS = {
  native: {
    description: 'the native BLAS kernels (build/native/lowrank_native.node)',
    missing: (): string | null => {
      const state = nativeAddon();
      return state.ok ? null : state.reason;
    },
  },
  chromium: {
    description: 'Chromium, for the browser tests (test/e2e, the engine window)',
    missing: (): string | null => {
      const found = chromiumPath();
      return found != null && fs.existsSync(found) ? null : `no Chromium at ${found ?? CHROMIUM_PATHS.join(', ')}`;
    },
  },
  'llama-cpp': {
    description: "node-llama-cpp's prebuilt llama.cpp binary (the GGUF export in llama.cpp)",
    // Not an apt package: npm ci installs node-llama-cpp's prebuilt binaries for this platform.
    otherwise: 'llama.cpp: npm ci (node-llama-cpp ships prebuilt binaries for linux-x64, darwin and win32)',
    // Known only by loading it (asynchronously, in the test): its skip carries the reason as the note.
    missing: (): string | null => null,
  },
} as const;

export type OptionalPart = keyof typeof OPTIONAL_PARTS;

/** What installs the parts (and Mesa EGL for the webgpu tests) on Debian/Ubuntu. */
export const ENABLE_OPTIONAL_PARTS =
  'apt-get install chromium libopenblas-dev libegl1 libegl-mesa0 libgl1-mesa-dri libgles2, then node scripts/build-native.js';

export const CHROMIUM_PATHS = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'];

/** LOWRANK_CHROMIUM or CHROMIUM_PATH where set, else the first of CHROMIUM_PATHS that exists. */
export function chromiumPath(): string | undefined {
  return process.env.LOWRANK_CHROMIUM ?? process.env.CHROMIUM_PATH ?? CHROMIUM_PATHS.find((p) => fs.existsSync(p));
}

export const onCI = (): boolean => process.env.CI != null && process.env.CI !== '';

/**
 * Options for a describe/it that needs `part`: skipped where it is missing, tagged with it. On CI a
 * missing part throws while the file is collected, so the file fails instead of skipping.
 */
export function needs(part: OptionalPart): { skip: boolean; tags: string[] } {
  const missing = OPTIONAL_PARTS[part].missing();
  if (missing != null && onCI()) throw new Error(`missing on CI, which installs it (.ci/run): ${OPTIONAL_PARTS[part].description}: ${missing}`);
  return { skip: missing != null, tags: [part] };
}

/** Mesa's EGL vendor library, through which Dawn finds llvmpipe on a machine without a GPU. */
export function mesaEglMissing(): string | null {
  const places = ['/usr/share/glvnd/egl_vendor.d/50_mesa.json', '/usr/lib/x86_64-linux-gnu/libEGL_mesa.so.0', '/usr/lib/aarch64-linux-gnu/libEGL_mesa.so.0', '/usr/lib64/libEGL_mesa.so.0'];
  if (process.platform !== 'linux' || places.some((p) => fs.existsSync(p))) return null;
  return 'no Mesa EGL (libegl-mesa0): the webgpu tests find no adapter without a GPU';
}
