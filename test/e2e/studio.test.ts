/**
 * The app end to end in a browser: `lowrank serve` + Debian's Chromium (playwright-core).
 * The whole wizard on the bundled model (or, until it is in git, a tiny model pre-trained here)
 * and the bundled sample dataset → the run completes → a second run → Compare → export merged;
 * a bad dataset's line-numbered error in the wizard; no Node APIs in the renderer; the UI
 * answers an input within 100 ms while a run trains; the contract rejects wrong types and extra
 * fields; the socket refuses a connection without the token and binds 127.0.0.1 only; a killed
 * engine process marks its run failed while the UI lives on. Screenshots of every screen go to
 * test-artifacts/e2e/.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as net from 'node:net';
import type { Browser, Page } from 'playwright-core';
import { BUNDLED_MODEL_DIR } from '../../core/resources.ts';
import { buildRenderer, launchBrowser, screenshot, serve, SocketClient, type Served } from './harness.ts';
import type { StudioEvent } from '../../core/contract.ts';
import { needs } from '../helpers/optional-parts.ts';
import { initBackend } from '../../core/backend/index.ts';
import { buildTinyModel } from '../fixtures/tiny-trained-model.ts';


const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-e2e-'));
const home = path.join(root, 'home');
const modelsRoot = path.join(root, 'models');
const useBundled = fs.existsSync(path.join(BUNDLED_MODEL_DIR, 'config.json'));
let served: Served;
let browser: Browser;
let page: Page;
const runIds: string[] = [];

const byTestId = (id: string) => `[data-testid="${id}"]`;

async function next(): Promise<void> {
  await page.locator(`${byTestId('next')}:not([disabled])`).click();
}

/** Drives the wizard from Home to Start with the settings of one short run. */
async function runWizard(name: string, method: string, lr: string, shots: boolean): Promise<string> {
  await page.goto(`${served.url}#/`);
  await page.locator(byTestId('new-run')).click();
  // 1. Base model: the bundled model is preselected; otherwise pick the tiny one.
  await page.locator(byTestId('model-info')).waitFor();
  if (!useBundled) await page.locator('label.choice', { hasText: 'tiny-llama' }).click();
  await page.locator(byTestId('model-info')).getByText('LlamaForCausalLM').waitFor();
  if (shots) await screenshot(page, '02-wizard-model');
  await next();
  // 2. Dataset: the bundled sample, detected as chat, previewed with trained spans.
  await page.locator('label.choice', { hasText: 'review-sentiment.jsonl' }).click();
  await page.locator(byTestId('dataset-summary')).getByText('for training').waitFor();
  await page.locator(byTestId('detected-format')).getByText('chat').waitFor();
  await page.locator(`${byTestId('preview-example')} .trained`).first().waitFor();
  expect(await page.locator(`${byTestId('preview-example')}`).first().textContent()).toContain('review-sentiment.jsonl:1');
  if (shots) await screenshot(page, '03-wizard-dataset');
  await next();
  // 3. Method: cards with trainable parameters and memory for this model; the form from the schema.
  await page.locator(byTestId(`method-${method}`)).click();
  // Every method's figures come from one job that loads the model (and times nothing): up to a minute on a busy machine.
  await page.locator(`${byTestId(`method-${method}`)} .figures`).getByText('trainable').waitFor({ timeout: 120_000 });
  await page.locator(byTestId('param-rank')).fill('4');
  if (shots) await screenshot(page, '04-wizard-method');
  await next();
  // 4. Training: a short run.
  await page.locator(byTestId('steps')).fill('8');
  await page.locator(byTestId('batch-size')).fill('4');
  await page.locator(byTestId('seq-len')).fill('64');
  await page.locator(byTestId('lr')).fill(lr);
  await page.locator(byTestId('eval-every')).fill('4');
  await page.locator(byTestId('checkpoint-every')).fill('4');
  await page.locator(byTestId('metric-examples')).fill('4');
  await page.locator(byTestId('run-name')).fill(name);
  if (shots) await screenshot(page, '05-wizard-training');
  await next();
  // 5. Review: the estimate against this machine's memory, then Start.
  await page.locator(byTestId('estimate')).waitFor({ timeout: 60_000 });
  if (shots) await screenshot(page, '06-wizard-review');
  await page.locator(`${byTestId('start')}:not([disabled])`).click();
  await page.waitForURL(/#\/runs\/.+/, { timeout: 90_000 });
  return decodeURIComponent(page.url().split('#/runs/')[1]);
}

async function waitForStatus(status: string, timeout = 180_000): Promise<void> {
  await page.locator(byTestId('status')).first().getByText(status, { exact: true }).waitFor({ timeout });
}

// Skipped without Chromium off CI; on CI (which installs it) a missing one fails the file (needs).
describe('Lowrank Studio in a browser', needs('chromium'), () => {
  beforeAll(async () => {
    await buildRenderer();
    if (!useBundled) {
      await initBackend();
      await buildTinyModel(path.join(modelsRoot, 'tiny-llama'));
    }
    fs.mkdirSync(modelsRoot, { recursive: true });
    served = await serve(home, [modelsRoot]);
    browser = await launchBrowser();
    page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  }, 240_000);

  afterAll(async () => {
    await browser?.close();
    await served?.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('serves on 127.0.0.1 only and refuses a socket without the token', async () => {
    expect(new URL(served.url).hostname).toBe('127.0.0.1');
    await expect(SocketClient.connect(served.origin, null)).rejects.toThrow(/401/);
    await expect(SocketClient.connect(served.origin, 'wrong-token')).rejects.toThrow(/401/);
    const port = Number(new URL(served.url).port);
    const external = Object.values(os.networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal);
    if (external) {
      const reached = await new Promise<boolean>((resolve) => {
        const s = net.connect({ host: external.address, port }, () => (s.destroy(), resolve(true)));
        s.on('error', () => resolve(false));
      });
      expect(reached).toBe(false);
    }
  });

  it('rejects requests with wrong types or extra fields', async () => {
    const client = await SocketClient.connect(served.origin, served.token);
    try {
      const wrongType = await client.call('runs.list', { limit: 'ten' });
      expect(wrongType.ok).toBe(false);
      expect(wrongType.error?.code).toBe('BAD_ARGUMENT');
      expect(wrongType.error?.message).toMatch(/limit/);
      const extra = await client.call('models.list', { path: '/etc' });
      expect(extra.ok).toBe(false);
      expect(extra.error?.message).toMatch(/path|unrecognized/i);
      const outside = await client.call('models.inspect', { path: '/etc' });
      expect(outside.ok).toBe(false);
      expect(outside.error?.message).toMatch(/file picker/);
      const unknown = await client.call('fs.readFile', { path: '/etc/passwd' });
      expect(unknown.ok).toBe(false);
      expect((await client.call('models.list', {})).ok).toBe(true);
    } finally {
      client.close();
    }
  });

  it('gives the renderer no Node APIs', async () => {
    await page.goto(served.url);
    await page.locator(byTestId('new-run')).waitFor();
    const globals = await page.evaluate(() => {
      const w = window as unknown as Record<string, unknown>;
      return { require: typeof w.require, process: typeof w.process, module: typeof w.module, Buffer: typeof w.Buffer, studio: typeof w.studio };
    });
    expect(globals).toEqual({ require: 'undefined', process: 'undefined', module: 'undefined', Buffer: 'undefined', studio: 'undefined' });
    await screenshot(page, '01-home-empty');
  });

  it('shows a bad dataset\'s problems with line numbers in the wizard', async () => {
    await page.goto(`${served.url}#/new`);
    await page.locator(byTestId('model-info')).waitFor();
    if (!useBundled) await page.locator('label.choice', { hasText: 'tiny-llama' }).click();
    // Serve mode's picker shows only the server's allowed folders.
    await page.locator(byTestId('browse-models')).click();
    await page.locator('.browser-list li').first().waitFor();
    await screenshot(page, '02b-wizard-model-browser');
    await next();
    const bad = [
      '{"messages":[{"role":"user","content":"Is this good?"},{"role":"assistant","content":"positive"}]}',
      '{"messages":[{"role":"user","content":"Is this bad?"},{"role":"assistant","content":"negative"}]}',
      '{"messages": [ broken json',
      '{"messages":[{"role":"user","content":"ok?"},{"role":"assistant","content":"positive"}]}',
      '{"messages":[{"role":"wizard","content":"?"}]}',
    ].join('\n');
    await page.locator(byTestId('dataset-upload')).setInputFiles({ name: 'bad-reviews.jsonl', mimeType: 'application/jsonl', buffer: Buffer.from(bad) });
    const problems = page.locator(byTestId('dataset-problems'));
    await problems.waitFor();
    await expect.poll(() => problems.textContent()).toMatch(/bad-reviews\.jsonl:3/);
    expect(await problems.textContent()).toMatch(/bad-reviews\.jsonl:5/);
    expect(await page.locator(byTestId('next')).isDisabled()).toBe(true);
    // The lines name the file as the person uploaded it, not the server's upload folder.
    expect(await problems.textContent()).not.toContain(path.join(home, 'uploads'));
    // The upload control takes keyboard focus (it is not display:none).
    expect(await page.locator(byTestId('dataset-upload')).evaluate((el) => (el.focus(), document.activeElement === el))).toBe(true);
    await screenshot(page, '07-wizard-bad-dataset');
    // A slower preview of the file chosen before must not have replaced this one's (a race once seen here).
    expect(await problems.isVisible()).toBe(true);
    expect(await page.locator(byTestId('next')).isDisabled()).toBe(true);
    // Deleting the upload asks first, then removes the file.
    const uploaded = path.join(home, 'uploads', 'bad-reviews.jsonl');
    expect(fs.existsSync(uploaded)).toBe(true);
    await page.locator(byTestId('delete-upload-bad-reviews.jsonl')).click();
    expect(fs.existsSync(uploaded)).toBe(true);
    await page.locator(byTestId('delete-upload-bad-reviews.jsonl-confirm')).click();
    await page.locator(byTestId('delete-upload-bad-reviews.jsonl')).waitFor({ state: 'detached' });
    expect(fs.existsSync(uploaded)).toBe(false);
  });

  it('checks each field where it is typed, before Review, and moves focus with the steps', async () => {
    await page.goto(`${served.url}#/new`);
    await page.reload();
    // A skip link is the first thing the keyboard reaches.
    await page.keyboard.press('Tab');
    expect(await page.evaluate(() => document.activeElement?.getAttribute('data-testid'))).toBe('skip-link');
    await page.locator(byTestId('model-info')).waitFor();
    if (!useBundled) await page.locator('label.choice', { hasText: 'tiny-llama' }).click();
    await next();
    await page.locator(byTestId('dataset-summary')).getByText('for training').waitFor();
    await page.locator(byTestId('validation')).fill('-1');
    await page.locator(byTestId('error-validation')).getByText('at least 0').waitFor();
    expect(await page.locator(byTestId('next')).isDisabled()).toBe(true);
    await page.locator(byTestId('validation')).fill('0.1');
    await page.locator(byTestId('dataset-summary')).getByText('for training').waitFor();
    await next();
    // Focus lands on the new step's first field; the chosen card says so to assistive tech.
    expect(await page.evaluate(() => document.activeElement?.getAttribute('data-testid'))).toMatch(/^method-/);
    expect(await page.locator(byTestId('method-lora')).getAttribute('aria-pressed')).toBe('true');
    expect(await page.locator(byTestId('method-dora')).getAttribute('aria-pressed')).toBe('false');
    await page.locator(byTestId('param-rank')).fill('0');
    await page.locator(byTestId('error-param-rank')).getByText('at least 1').waitFor();
    expect(await page.locator(byTestId('next')).isDisabled()).toBe(true);
    await page.locator(byTestId('param-rank')).fill('8');
    await next();
    expect(await page.evaluate(() => document.activeElement?.getAttribute('data-testid'))).toBe('steps');
    const context = useBundled ? 512 : null;
    await page.locator(byTestId('seq-len')).fill('100000');
    const seqError = page.locator(byTestId('error-seq-len'));
    await seqError.waitFor();
    if (context) expect(await seqError.textContent()).toBe(`at most ${context}, this model's context length`);
    await page.locator(byTestId('steps')).fill('0');
    await page.locator(byTestId('error-steps')).getByText('at least 1').waitFor();
    await page.locator(byTestId('lr')).fill('');
    await page.locator(byTestId('error-lr')).getByText('enter a number').waitFor();
    expect(await page.locator(byTestId('next')).isDisabled()).toBe(true);
    // Still on the Training step: nothing was sent to the service.
    expect(await page.locator('h2').first().textContent()).toBe('Training');
    await screenshot(page, '05b-wizard-inline-errors');
    // The stepper's finished steps are links that work; the later ones are not in the tab order.
    expect(await page.locator(byTestId('stepper-4')).count()).toBe(0);
    await page.locator(byTestId('stepper-2')).click();
    expect(await page.locator('h2').first().textContent()).toBe('Method');
  });

  it('trains the default LoRA run past 70 % accuracy, with the card\'s estimate in Review and an ETA that holds', async () => {
    const client = await SocketClient.connect(served.origin, served.token);
    try {
      // A fresh page: the wizard's draft of the previous test is gone.
      await page.goto(`${served.url}#/`);
      await page.reload();
      await page.locator(byTestId('new-run')).click();
      await page.locator(byTestId('model-info')).waitFor();
      if (!useBundled) await page.locator('label.choice', { hasText: 'tiny-llama' }).click();
      await next();
      await page.locator('label.choice', { hasText: 'review-sentiment.jsonl' }).click();
      await page.locator(byTestId('dataset-summary')).getByText('for training').waitFor();
      await next();
      // The defaults, untouched: LoRA, recommended for this model, its figure on the card.
      await page.locator(`${byTestId('method-lora')} ${byTestId('recommended')}`).waitFor();
      await page.locator(byTestId('estimates-loading')).waitFor({ state: 'detached' });
      const card = (await page.locator(`${byTestId('method-lora')} ${byTestId('card-memory')}`).textContent())!;
      await screenshot(page, '04b-wizard-method-defaults');
      await next();
      await next();
      await page.locator(byTestId('estimate')).waitFor({ timeout: 120_000 });
      expect(await page.locator(byTestId('review-memory')).textContent()).toBe(card);
      // The breakdown's parts add up to the total.
      const bytes = await page.locator(`${byTestId('memory-breakdown')} dd`).evaluateAll((dds) => dds.map((d) => Number(d.getAttribute('data-bytes'))));
      const total = bytes.pop()!;
      expect(Math.abs(bytes.reduce((a, b) => a + b, 0) - total)).toBeLessThan(1);
      const estimatedSeconds = await page.locator(byTestId('review-time')).textContent();
      await screenshot(page, '06b-wizard-review-defaults');
      await page.locator(`${byTestId('start')}:not([disabled])`).click();
      await page.waitForURL(/#\/runs\/.+/, { timeout: 90_000 });
      const runId = decodeURIComponent(page.url().split('#/runs/')[1]);
      await waitForStatus('completed', 600_000);
      const steps = client.events
        .map((e, i) => ({ e, at: client.eventTimes[i] }))
        .filter((x): x is { e: Extract<StudioEvent, { type: 'step' }>; at: number } => x.e.type === 'step' && x.e.runId === runId);
      // The ETA against the time the last step really took to come, after 5 steps and after the first
      // evaluation. Measured on the 2-core build machine with the run page open beside the run: 1-12 %
      // after 5 steps (lower quartile of the recent and Review's timed steps, trainer.ts), 1-4 % after
      // the first evaluation; with the median it was 12-41 % after 5 steps.
      const last = steps.at(-1)!;
      expect(last.e.step).toBe(last.e.totalSteps);
      const etaError = (x: (typeof steps)[number]) => Math.abs(x.e.etaSeconds - (last.at - x.at) / 1000) / ((last.at - x.at) / 1000);
      const fifth = steps.find((x) => x.e.step >= 5)!;
      const afterEval = steps.find((x) => x.e.step > 25)!;
      console.log(`[default run] ETA at step ${fifth.e.step}: ${fifth.e.etaSeconds.toFixed(1)} s, really ${((last.at - fifth.at) / 1000).toFixed(1)} s (${(100 * etaError(fifth)).toFixed(0)} % off); at step ${afterEval.e.step}: ${(100 * etaError(afterEval)).toFixed(0)} % off`);
      for (const x of steps.filter((_, i) => i < 8 || i % 10 === 0)) console.log(`  step ${x.e.step}: ${((x.at - steps[0].at) / 1000).toFixed(1)} s after step 1, ETA ${x.e.etaSeconds.toFixed(1)} s`);
      expect(fifth.e.step).toBeLessThanOrEqual(6); // step events are sent at most every 100 ms
      expect(etaError(fifth)).toBeLessThan(0.3);
      expect(etaError(afterEval)).toBeLessThan(0.3);
      const run = (await client.call('runs.get', { runId })).reply.run;
      console.log(`[default run] ${last.e.totalSteps} steps, accuracy ${(100 * run.taskMetricValue).toFixed(1)} %, wall ${run.wallSeconds.toFixed(1)} s (Review estimated ${estimatedSeconds}), peak ${run.measuredPeakRss} vs estimated ${run.estimatedPeakBytes}`);
      if (useBundled) expect(run.taskMetricValue).toBeGreaterThanOrEqual(0.7);
      expect(await page.locator(byTestId('task-metric')).textContent()).toBe(`${(100 * run.taskMetricValue).toFixed(1)} %`);
      // After the run: the measured peak beside the estimate.
      expect(await page.locator(byTestId('peak-estimated')).textContent()).toMatch(/^measured; estimated /);
      // Samples: held-out prompts with their expected answer, the base model's answer at step 0.
      await page.locator(byTestId('tab-samples')).click();
      await page.locator(`${byTestId('samples')} .expected`).first().waitFor();
      expect(await page.locator(byTestId('samples')).textContent()).toContain('step 0: the base model before training');
      await screenshot(page, '09b-run-default-completed');
    } finally {
      client.close();
    }
  }, 900_000);


  it('runs the whole wizard, trains to completion and stays responsive while training', async () => {
    const runId = await runWizard('e2e-lora', 'lora', '0.01', true);
    runIds.push(runId);
    await page.locator(byTestId('step-count')).waitFor();
    // While it trains: an input is answered within 100 ms (tab switch → the logs are on screen),
    // and a round trip to the service is too (training runs in its own process).
    const latencies: number[] = [];
    const roundTrips: number[] = [];
    const client = await SocketClient.connect(served.origin, served.token);
    for (let i = 0; i < 5; i++) {
      const training = (await client.call('runs.get', { runId })).reply.run.status === 'running';
      if (!training && i > 0) break;
      const t0 = performance.now();
      await client.call('runs.list', { limit: 5 });
      roundTrips.push(performance.now() - t0);
      latencies.push(
        await page.evaluate(async (tab) => {
          const start = performance.now();
          (document.querySelector(`[data-testid="${tab}"]`) as HTMLButtonElement).click();
          await new Promise<void>((resolve) => {
            const check = () => (document.querySelector('[data-testid="logs"], [data-testid="samples"]') && document.querySelector(`[data-testid="${tab}"].active`) ? resolve() : requestAnimationFrame(check));
            check();
          });
          return performance.now() - start;
        }, i % 2 === 0 ? 'tab-logs' : 'tab-samples'),
      );
    }
    client.close();
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    console.log(`while training: UI input → screen ${latencies.map((l) => l.toFixed(1)).join(', ')} ms; service round trip ${roundTrips.map((l) => l.toFixed(1)).join(', ')} ms`);
    // The median, so one scheduling hiccup of a loaded CI machine does not decide the test.
    expect(median(latencies)).toBeLessThan(100);
    expect(median(roundTrips)).toBeLessThan(100);
    // The screenshot once the first steps are on the chart (a fast machine may finish first: then as it is).
    await page.locator(byTestId('step-count')).getByText(/step [2-7] \/ 8/).waitFor({ timeout: 60_000 }).catch(() => {});
    await screenshot(page, '08-run-training');
    await waitForStatus('completed');
    await page.locator(byTestId('tab-samples')).click();
    await page.locator(`${byTestId('samples')} .sample`).first().waitFor();
    expect(await page.locator(byTestId('step-count')).textContent()).toContain('step 8 / 8');
    await screenshot(page, '09-run-completed');
  }, 300_000);

  it('runs a second method and compares the two runs', async () => {
    const runId = await runWizard('e2e-dora', 'dora', '0.005', false);
    runIds.push(runId);
    await waitForStatus('completed');
    await page.locator(byTestId('nav-runs')).click();
    for (const id of runIds) await page.locator(byTestId(`select-${id}`)).check();
    await screenshot(page, '10-runs-list');
    await page.locator(byTestId('compare')).click();
    const table = page.locator(byTestId('compare-table'));
    await table.waitFor();
    expect(await table.textContent()).toContain('e2e-lora');
    expect(await table.textContent()).toContain('e2e-dora');
    expect(await page.locator(byTestId('config-diff')).textContent()).toContain('method');
    await screenshot(page, '11-compare');
    // Deleting the second run (after a confirmation) removes its files and its row.
    const doomed = runIds.pop()!;
    const files = path.join(home, 'runs', doomed);
    expect(fs.existsSync(path.join(files, 'checkpoint'))).toBe(true);
    await page.goto(`${served.url}#/runs/${doomed}`);
    await page.locator(byTestId('delete-run')).click();
    await screenshot(page, '11b-run-delete-confirm');
    expect(fs.existsSync(files)).toBe(true);
    await page.locator(byTestId('delete-run-confirm')).click();
    await page.waitForURL(/#\/runs$/);
    await page.locator(byTestId(`run-row-${runIds[0]}`)).waitFor();
    expect(await page.locator(byTestId(`run-row-${doomed}`)).count()).toBe(0);
    expect(fs.existsSync(files)).toBe(false);
  }, 300_000);

  it('shows a banner when the server is unreachable or the page\'s token is stale', async () => {
    const other = await browser.newPage({ viewport: { width: 1440, height: 900 } });
    try {
      await other.goto(`${served.origin}/?token=stale-token-from-an-earlier-server#/`);
      await other.locator(byTestId('banner-stale-token')).waitFor({ timeout: 10_000 });
      expect(await other.locator(byTestId('banner-stale-token')).textContent()).toMatch(/lowrank serve/);
      await screenshot(other, '18-banner-stale-token', false);
      // A server that goes away: the banner says so, and the page keeps trying.
      const doomedHome = path.join(root, 'home-gone');
      const gone = await serve(doomedHome, [modelsRoot]);
      await other.goto(gone.url);
      await other.locator(byTestId('new-run')).waitFor();
      expect(await other.locator(byTestId('banner-unreachable')).count()).toBe(0);
      await gone.stop();
      await other.locator(byTestId('banner-unreachable')).waitFor({ timeout: 15_000 });
      await screenshot(other, '19-banner-unreachable', false);
    } finally {
      await other.close();
    }
  }, 120_000);

  it('exports the first run as a merged Hugging Face folder', async () => {
    await page.goto(`${served.url}#/runs/${runIds[0]}`);
    await page.locator(byTestId('open-export')).click();
    await page.locator(byTestId('export-merged')).check();
    await screenshot(page, '12-export-dialog', false);
    await page.locator(byTestId('export-start')).click();
    const result = page.locator(byTestId('export-result'));
    await result.waitFor({ timeout: 120_000 });
    const out = /to (\S+)$/.exec((await result.textContent())!.trim())![1];
    expect(out.startsWith(path.join(home, 'exports'))).toBe(true);
    expect(fs.existsSync(path.join(out, 'config.json'))).toBe(true);
    expect(fs.readdirSync(out).some((f) => f.endsWith('.safetensors'))).toBe(true);
    await screenshot(page, '13-export-done', false);
    // GGUF with q8_0 quantisation from the same dialog.
    await page.locator(byTestId('export-gguf')).check();
    await page.locator(byTestId('export-quant')).selectOption('q8_0');
    await page.locator(byTestId('export-start')).click();
    await page.locator(byTestId('export-result')).getByText('gguf').waitFor({ timeout: 120_000 });
    const gguf = /to (\S+)$/.exec((await page.locator(byTestId('export-result')).textContent())!.trim())![1];
    expect(gguf).toMatch(/q8_0/);
    expect(fs.readdirSync(gguf).some((f) => f.endsWith('.gguf'))).toBe(true);
    // An export can be deleted from the run, after a confirmation: its folder goes.
    await page.goto(`${served.url}#/runs/${runIds[0]}`);
    await page.reload();
    const client = await SocketClient.connect(served.origin, served.token);
    const artifacts = (await client.call('runs.get', { runId: runIds[0] })).reply.artifacts as Array<{ id: number; path: string }>;
    client.close();
    const merged = artifacts.find((a) => a.path === out)!;
    await page.locator(byTestId(`delete-export-${merged.id}`)).click();
    await page.locator(byTestId(`delete-export-${merged.id}-confirm`)).click();
    await page.locator(byTestId(`export-${merged.id}`)).waitFor({ state: 'detached' });
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.existsSync(gguf)).toBe(true);
  }, 240_000);

  // The playground's chat (streaming, stop, limits, labels) is tested in playground-export.test.ts.
  it('lists both runs on Home', async () => {
    await page.goto(`${served.url}#/`);
    await page.locator(`${byTestId('recent-runs')} .run-card`).nth(1).waitFor();
    await screenshot(page, '15-home-runs');
  });

  it('marks a run failed when its engine process is killed, and the UI lives on', async () => {
    const client = await SocketClient.connect(served.origin, served.token);
    try {
      const config = (await client.call('runs.get', { runId: runIds[0] })).reply.run.config;
      const started = await client.call('runs.start', { config: { ...config, steps: 2000, name: 'e2e-killed', evalEvery: 1000, checkpointEvery: 1000 } });
      expect(started.ok).toBe(true);
      const runId = started.reply.runId as string;
      let pid: number | null = null;
      await expect.poll(async () => (pid = (await client.call('runs.get', { runId })).reply.run.pid), { timeout: 60_000 }).toBeTruthy();
      // Pause and resume from the run view first, then kill the engine process mid-run.
      await page.goto(`${served.url}#/runs/${runId}`);
      await waitForStatus('running', 60_000);
      await page.locator(byTestId('pause')).click();
      await waitForStatus('paused', 30_000);
      await screenshot(page, '16-run-paused');
      await page.locator(byTestId('resume')).click();
      await waitForStatus('running', 30_000);
      process.kill(pid!, 'SIGKILL');
      await waitForStatus('failed', 30_000);
      const error = page.locator(byTestId('run-error'));
      expect(await error.textContent()).toMatch(/ENGINE_CRASHED/);
      expect(await error.textContent()).toMatch(/Fix:/);
      await screenshot(page, '17-run-failed');
      expect((await client.call('runs.list', {})).ok).toBe(true);
    } finally {
      client.close();
    }
  }, 120_000);
});
