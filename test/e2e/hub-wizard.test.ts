/**
 * The wizard's model step in a browser (`lowrank serve` + Chromium) with a seeded Hugging Face
 * cache and the local Hub stand-in (test/helpers/hub-stand-in.ts) as HF_ENDPOINT: a cached model is
 * listed with its architecture, parameters and size and picked, with the estimator's memory
 * figure; a second model is downloaded by id with its progress (bytes, rate, time left) visible,
 * lands in the cache layout and is selected; a missing repo's refusal shows in the step.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { BUNDLED_MODEL_DIR } from '../../core/resources.ts';
import { seedHubCache } from '../../core/hub/cache.test-helpers.ts';
import { buildRenderer, launchBrowser, screenshot, serve, type Served } from './harness.ts';
import { needs } from '../helpers/optional-parts.ts';
import { repoFromFolder, startHubStandIn, type HubStandIn } from '../helpers/hub-stand-in.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-e2e-hub-'));
const cacheDir = path.join(root, 'hf-cache');
const COMMIT = '5eed'.padEnd(40, '0');
const byTestId = (id: string) => `[data-testid="${id}"]`;
const saved = { HF_HUB_CACHE: process.env.HF_HUB_CACHE, HF_ENDPOINT: process.env.HF_ENDPOINT };
let hub: HubStandIn;
let served: Served;
let browser: Browser;
let page: Page;

describe('the wizard\'s model step with the Hugging Face cache and Hub', needs('chromium'), () => {
  beforeAll(async () => {
    seedHubCache(cacheDir, 'lowrank-test/cached-llama', BUNDLED_MODEL_DIR, { commit: COMMIT, refs: ['main'], links: true });
    hub = await startHubStandIn({ 'lowrank-test/hub-llama': repoFromFolder(BUNDLED_MODEL_DIR) });
    // ~2.5 s for the 7.9 MB of weights: long enough to see the progress, short for the suite.
    hub.bytesPerSecond = 3 * 1024 * 1024;
    await buildRenderer();
    // `serve` hands the child this process's environment.
    Object.assign(process.env, { HF_HUB_CACHE: cacheDir, HF_ENDPOINT: hub.endpoint });
    fs.mkdirSync(path.join(root, 'models'));
    served = await serve(path.join(root, 'home'), [path.join(root, 'models')]);
    browser = await launchBrowser();
    page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  }, 240_000);

  afterAll(async () => {
    await browser?.close();
    await served?.stop();
    await hub?.close();
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('picks a cached model, downloads another with visible progress, and shows a refused id', async () => {
    await page.goto(`${served.url}#/`);
    await page.locator(byTestId('new-run')).click();
    const cached = page.locator(byTestId('model-lowrank-test/cached-llama'));
    await cached.waitFor();
    expect(await cached.textContent()).toMatch(/HF cache\s*LlamaForCausalLM · [\d.]+ M parameters · 7\.\d MiB/);
    await cached.click();
    await page.locator(byTestId('model-info')).getByText('Hugging Face cache: lowrank-test/cached-llama').waitFor();
    // The estimator's figure for the chosen method on this model, against this machine's budget.
    await page.locator(byTestId('model-fit')).getByText(/fits this machine's budget/).waitFor({ timeout: 60_000 });
    await screenshot(page, 'hub-01-cached-model');

    await page.locator(byTestId('hub-id')).fill('lowrank-test/hub-llama');
    await page.locator(byTestId('hub-download')).click();
    // Mid-transfer: bytes of the total, a rate and the time left.
    await page.locator(byTestId('pull-figures')).getByText(/[\d.]+ (KiB|MiB) of 7\.\d MiB · [\d.]+ (KiB|MiB)\/s, \d/).waitFor({ timeout: 30_000 });
    await screenshot(page, 'hub-02-downloading');
    await page.locator(byTestId('pull-figures')).getByText(/^downloaded 7\.\d MiB$/).waitFor({ timeout: 60_000 });
    const pulled = page.locator(byTestId('model-lowrank-test/hub-llama'));
    await pulled.waitFor();
    expect(await pulled.locator('input').isChecked()).toBe(true);
    await page.locator(byTestId('model-info')).getByText('Hugging Face cache: lowrank-test/hub-llama').waitFor();
    await screenshot(page, 'hub-03-downloaded');
    const snapshot = path.join(cacheDir, 'models--lowrank-test--hub-llama', 'snapshots', hub.commitOf('lowrank-test/hub-llama'));
    expect(fs.readFileSync(path.join(snapshot, 'model.safetensors')).equals(fs.readFileSync(path.join(BUNDLED_MODEL_DIR, 'model.safetensors')))).toBe(true);

    await page.locator(byTestId('hub-id')).fill('lowrank-test/no-such-model');
    await page.locator(byTestId('hub-download')).click();
    await page.locator(byTestId('pull-error')).getByText(/no such model or revision .* \(404/).waitFor({ timeout: 30_000 });
  });
});
