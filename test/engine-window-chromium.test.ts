/**
 * The engine window's compute in a real browser: Debian's Chromium, headless, with WebGPU on
 * SwiftShader (its software Vulkan). The page is the engine-window bundle's browser half
 * (test/browser/engine-window-page.ts, built by core/service/engine-window/bundle.ts), which
 * starts tfjs-backend-webgpu on the page's own navigator.gpu exactly as the engine window does
 * (startWindowBackend), and compares it with the cpu backend in the same page: synchronous and
 * asynchronous reads, forward/backward parity of two tiny architectures (Llama-family with biases, GPT-2), and LoRA training
 * steps. The nearest this machine gets to Electron (whose binary cannot be downloaded here).
 *
 * Flags: `--enable-features=Vulkan --use-vulkan=swiftshader --use-webgpu-adapter=swiftshader`.
 * Without the Vulkan feature (only `--enable-unsafe-swiftshader`) the adapter appears, but
 * tfjs' synchronous read (copy through an OffscreenCanvas) fails to create its shared image and
 * the device is lost ("Device was destroyed"): Electron gets the same `enable-features=Vulkan`
 * switch on Linux (core/service/engine-window/host.ts webgpuSwitches).
 */
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';
import { buildEngineWindowBundle } from '../core/service/engine-window/bundle.ts';
import { chromiumPath, needs } from './helpers/optional-parts.ts';

// Skipped without Chromium on a developer's machine; CI installs it (.ci/run), so there a missing one fails (needs).
const CHROMIUM = chromiumPath() ?? '/usr/bin/chromium';
/** The architectures the page compares; each must come back with its own parity entry. */
const KINDS = ['qwen2', 'gpt2'] as const;
const FLAGS = ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader', '--use-webgpu-adapter=swiftshader', '--use-angle=swiftshader'];
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-chromium-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** Same tolerance and reasoning as test/backend-webgpu.test.ts (GPU summation order, shader math). */
const PARITY_TOLERANCE = 3e-5;

interface PageResult {
  info: { backend: string; adapter?: string; softwareAdapter?: boolean; kernels: string[] };
  reads: { sync: number[]; async: number[] };
  bigWrong: number;
  parities: Record<string, { logits: number; grads: number; worstGrad: string }>;
  webgpu: { losses: number[]; tensorsBefore: number; tensorsAfter: number };
  cpu: { losses: number[]; tensorsBefore: number; tensorsAfter: number };
  gpuErrors: string[];
}

describe(`engine window compute in Chromium (${CHROMIUM}, WebGPU on SwiftShader)`, needs('chromium'), () => {
  it('webgpu on the page\'s navigator.gpu matches cpu: reads, forward/backward, LoRA steps', async () => {
    const bundle = await buildEngineWindowBundle({ outDir: root, entry: path.join(import.meta.dirname, 'browser', 'engine-window-page.ts'), nodeBuiltins: 'unavailable' });
    const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
    try {
      const page = await browser.newPage();
      const pageErrors: string[] = [];
      page.on('pageerror', (e) => pageErrors.push(e.message));
      await page.goto(pathToFileURL(bundle.html).href); // file: is a secure context; about:blank has no navigator.gpu
      const hasGpu = await page.evaluate(() => 'gpu' in navigator);
      expect(hasGpu, 'Chromium exposes no navigator.gpu with these flags').toBe(true);
      const r = (await page.evaluate(
        ([kinds, steps]) => (globalThis as unknown as { runEngineWindowCheck(k: unknown, s: unknown): Promise<unknown> }).runEngineWindowCheck(kinds, steps),
        [KINDS, 3] as const,
      )) as PageResult;
      expect(pageErrors).toEqual([]);
      expect(r.info).toMatchObject({ backend: 'webgpu', softwareAdapter: true });
      expect(r.info.adapter).toMatch(/swiftshader/i);
      expect(r.reads.sync).toEqual([3, -4, 6.5, 2e-7].map(Math.fround));
      expect(r.reads.async).toEqual([1.5, -2, 3.25, 1e-7].map(Math.fround));
      expect(r.bigWrong).toBe(0);
      expect(Object.keys(r.parities)).toEqual([...KINDS]);
      for (const [kind, p] of Object.entries(r.parities)) {
        expect(p.logits, `${kind} logits`).toBeLessThanOrEqual(PARITY_TOLERANCE);
        expect(p.grads, `${kind} worst gradient ${p.worstGrad}`).toBeLessThanOrEqual(PARITY_TOLERANCE);
      }
      expect(r.webgpu.losses).toHaveLength(3);
      r.webgpu.losses.forEach((loss, i) => expect(Math.abs(loss - r.cpu.losses[i]) / r.cpu.losses[i], `step ${i + 1}`).toBeLessThanOrEqual(1e-4));
      expect(r.webgpu.losses.at(-1)!).toBeLessThan(r.webgpu.losses[0]);
      expect(r.webgpu.tensorsAfter).toBe(r.webgpu.tensorsBefore); // no tensor leaks per step on webgpu
      expect(r.gpuErrors).toEqual([]);
    } finally {
      await browser.close();
    }
  }, 90_000);
});
