/**
 * "Compare methods on my data" end to end in a browser (`lowrank serve` + Debian's Chromium): the
 * wizard set up on the bundled model and dataset, its last step's "Compare methods…", three
 * methods chosen, trained one after another with the same seed and budget, each at its paper
 * learning rate; then the queue, the table, the overlaid curves and the recommendation with how it
 * was chosen. Screenshots go to test-artifacts/e2e/.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { BUNDLED_MODEL_DIR } from '../../core/resources.ts';
import { getMethod } from '../../core/methods/index.ts';
import { buildRenderer, launchBrowser, screenshot, serve, SocketClient, type Served } from './harness.ts';
import { needs } from '../helpers/optional-parts.ts';
import { initBackend } from '../../core/backend/index.ts';
import { buildTinyModel } from '../fixtures/tiny-trained-model.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-e2e-bakeoff-'));
const home = path.join(root, 'home');
const modelsRoot = path.join(root, 'models');
const useBundled = fs.existsSync(path.join(BUNDLED_MODEL_DIR, 'config.json'));
const METHODS = ['lora', 'rslora', 'vera'];
const STEPS = 6;
let served: Served;
let browser: Browser;
let page: Page;

const byTestId = (id: string) => `[data-testid="${id}"]`;
const next = () => page.locator(`${byTestId('next')}:not([disabled])`).click();

describe('method comparison in a browser', needs('chromium'), () => {
  beforeAll(async () => {
    await buildRenderer();
    fs.mkdirSync(modelsRoot, { recursive: true });
    if (!useBundled) {
      await initBackend();
      await buildTinyModel(path.join(modelsRoot, 'tiny-llama'));
    }
    served = await serve(home, [modelsRoot]);
    browser = await launchBrowser();
    page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  }, 240_000);

  afterAll(async () => {
    await browser?.close();
    await served?.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('runs three methods one after another from the wizard and shows the table, curves and recommendation', async () => {
    await page.goto(`${served.url}#/new`);
    await page.locator(byTestId('model-info')).waitFor();
    if (!useBundled) await page.locator('label.choice', { hasText: 'tiny-llama' }).click();
    await page.locator(byTestId('model-info')).getByText('LlamaForCausalLM').waitFor();
    await next();
    await page.locator('label.choice', { hasText: 'review-sentiment.jsonl' }).click();
    await page.locator(byTestId('dataset-summary')).getByText('for training').waitFor();
    await next();
    // Method step: the cards show each paper's learning rate and its source.
    await page.locator(byTestId('method-lora')).click();
    expect(await page.locator(`${byTestId('method-lora')} ${byTestId('paper-lr')}`).textContent()).toMatch(/paper lr\s*0\.0002\s*\(LoRA paper Table 11/);
    await next();
    await page.locator(byTestId('steps')).fill(String(STEPS));
    await page.locator(byTestId('batch-size')).fill('4');
    await page.locator(byTestId('seq-len')).fill('64');
    await page.locator(byTestId('eval-every')).fill('3');
    await page.locator(byTestId('checkpoint-every')).fill(String(STEPS));
    await page.locator(byTestId('metric-examples')).fill('8');
    await page.locator(byTestId('seed')).fill('3');
    await page.locator(byTestId('run-name')).fill('e2e-compare');
    await next();
    await page.locator(byTestId('estimate')).waitFor({ timeout: 60_000 });
    await page.locator(`${byTestId('compare-methods')}:not([disabled])`).click();

    // Setup: the wizard's method is preselected; two more; each at its paper rate.
    await page.locator(byTestId('bakeoff-budget')).getByText(`${STEPS} steps of batch 4 × 64 tokens, seed 3`).waitFor();
    expect(await page.locator(byTestId('bakeoff-lora')).isChecked()).toBe(true);
    expect(await page.locator(byTestId('bakeoff-start')).isDisabled()).toBe(true);
    for (const id of METHODS.slice(1)) await page.locator(byTestId(`bakeoff-${id}`)).check();
    await page.locator(byTestId('lr-paper')).check();
    await screenshot(page, '20-bakeoff-setup');
    await page.locator(`${byTestId('bakeoff-start')}:not([disabled])`).click();
    await page.waitForURL(/#\/bakeoff\/[0-9a-f-]+$/, { timeout: 30_000 });
    const bakeoffId = page.url().split('#/bakeoff/')[1];

    // The queue while it trains: one running, the rest waiting.
    const queue = page.locator(byTestId('bakeoff-queue'));
    await queue.getByText('running').first().waitFor({ timeout: 120_000 });
    await screenshot(page, '21-bakeoff-queue');

    // When all three finished: the table, the curves, the recommendation and how it was chosen.
    await page.locator(byTestId('bakeoff-table')).waitFor({ timeout: 600_000 });
    for (const id of METHODS) await page.locator(byTestId(`bakeoff-row-${id}`)).waitFor();
    await page.locator(byTestId('loss-chart')).waitFor();
    const recommendation = page.locator(byTestId('bakeoff-recommendation'));
    await recommendation.waitFor();
    await screenshot(page, '22-bakeoff-results');

    const client = await SocketClient.connect(served.origin, served.token);
    try {
      const bakeoff = (await client.call('bakeoffs.get', { bakeoffId })).reply;
      expect(bakeoff.done).toBe(true);
      expect(bakeoff.entries.map((e: { method: string; status: string }) => [e.method, e.status])).toEqual(METHODS.map((m) => [m, 'completed']));
      const runs = await Promise.all(bakeoff.entries.map(async (e: { runId: string }) => (await client.call('runs.get', { runId: e.runId })).reply.run));
      // The same seed, budget and data; each at its paper learning rate.
      for (const [i, run] of runs.entries()) {
        expect(run.config).toMatchObject({ seed: 3, steps: STEPS, batchSize: 4, seqLen: 64, method: METHODS[i], lr: getMethod(METHODS[i]).paperLearningRate!.value });
        expect(run.name).toBe(`e2e-compare: ${METHODS[i]}`);
      }
      // Queued: each run started after the one before it finished.
      for (let i = 1; i < runs.length; i++) expect(runs[i].startedAt).toBeGreaterThanOrEqual(runs[i - 1].finishedAt);
      // What the page shows is what the service decided.
      const shown = (await recommendation.textContent())!;
      if (bakeoff.recommendation) {
        expect(shown).toContain(bakeoff.recommendation.perParameter.text);
        expect(shown).toContain(bakeoff.recommendation.perMegabyte.text);
        expect(shown).toContain(bakeoff.recommendation.perMinute.text);
        expect(await page.locator(byTestId('bakeoff-how')).textContent()).toContain(bakeoff.recommendation.explanation);
      } else {
        // Six steps may teach none of them an answer: the page must then say why, not pick one.
        expect(shown).toMatch(/No recommendation: no method answered/);
      }
      expect(bakeoff.comparison.runs).toHaveLength(3);
      for (const run of bakeoff.comparison.runs) expect(bakeoff.comparison.curves[run.id].train.length).toBeGreaterThan(0);
    } finally {
      client.close();
    }
  }, 900_000);
});
