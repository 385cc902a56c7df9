/**
 * The playground and the Export dialog in a browser (`lowrank serve` + Chromium, the harness of
 * studio.test.ts), on two short runs of the bundled model started over the socket: a LoRA run (an
 * adapter) and a full fine-tune (no adapter). A 3-turn chat streams its answers, which equal what
 * the engine answers for the same conversation; an answer can be stopped; a too-large setting is
 * refused next to its field and the answer it would replace is cleared; a full run is a "fine-tuned
 * model". Export shows why a format is unavailable, keeps the base's dtype, offers the files as
 * download links in browser mode (and nothing outside exports/), and asks before writing a copy.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { BUNDLED_MODEL_DIR, RESOURCES_DIR } from '../../core/resources.ts';
import { buildRenderer, launchBrowser, screenshot, serve, SocketClient, type Served } from './harness.ts';
import { needs } from '../helpers/optional-parts.ts';
import { initBackend } from '../../core/backend/index.ts';
import { buildTinyModel } from '../fixtures/tiny-trained-model.ts';
import { SafetensorsFile } from '../../core/io/safetensors.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-e2e-playground-'));
const home = path.join(root, 'home');
const modelsRoot = path.join(root, 'models');
const useBundled = fs.existsSync(path.join(BUNDLED_MODEL_DIR, 'config.json'));
let served: Served;
let browser: Browser;
let page: Page;
let client: SocketClient;
const runs = { lora: '', full: '' };

const byTestId = (id: string) => `[data-testid="${id}"]`;

async function train(method: string, name: string, model: string): Promise<string> {
  const info = (await client.call('app.info', {})).reply;
  const config = {
    ...info.finetuneDefaults,
    model,
    data: path.join(RESOURCES_DIR, 'datasets', 'review-sentiment.jsonl'),
    method,
    params: method === 'lora' ? { rank: 4 } : {},
    targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj'],
    steps: 6,
    epochs: null,
    batchSize: 4,
    seqLen: 64,
    lr: method === 'lora' ? 3e-3 : 1e-4,
    evalEvery: 6,
    checkpointEvery: 6,
    metricExamples: 0,
    name,
  };
  const started = await client.call('runs.start', { config });
  expect(started.ok, started.error?.message).toBe(true);
  const runId = started.reply.runId as string;
  // beforeAll cannot use expect.poll: wait for the run by hand.
  const deadline = Date.now() + 180_000;
  for (;;) {
    const status = (await client.call('runs.get', { runId })).reply.run.status as string;
    if (status === 'completed') return runId;
    if (['failed', 'cancelled'].includes(status) || Date.now() > deadline) throw new Error(`run ${name} is ${status}`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** The settings fields of the playground. */
async function setSetting(name: string, value: string): Promise<void> {
  await page.locator(byTestId(`setting-${name}`)).fill(value);
}

describe('Playground and export in a browser', needs('chromium'), () => {
  beforeAll(async () => {
    await buildRenderer();
    let model = BUNDLED_MODEL_DIR;
    if (!useBundled) {
      await initBackend();
      model = path.join(modelsRoot, 'tiny-llama');
      await buildTinyModel(model);
    }
    fs.mkdirSync(modelsRoot, { recursive: true });
    served = await serve(home, [modelsRoot]);
    client = await SocketClient.connect(served.origin, served.token);
    [runs.lora, runs.full] = await Promise.all([train('lora', 'e2e-chat-lora', model), train('full', 'e2e-chat-full', model)]);
    browser = await launchBrowser();
    page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  }, 300_000);

  afterAll(async () => {
    client?.close();
    await browser?.close();
    await served?.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('streams a 3-turn chat through the chat template; the page shows what the engine answers', async () => {
    await page.goto(`${served.url}#/playground?run=${runs.lora}`);
    await page.locator(`${byTestId('send')}`).waitFor();
    expect(await page.locator(byTestId('playground-run-label')).textContent()).toBe('Run (adapter)');
    await page.locator(byTestId('system-prompt')).fill('You judge movie reviews.');
    // Sampled (seeded) with a wide top-k, so answers run long enough to watch them stream.
    await setSetting('temperature', '1.5');
    await setSetting('topK', '0');
    await setSetting('topP', '1');
    await setSetting('maxNewTokens', '40');
    await setSetting('seed', '3');
    const questions = ['Is this review positive or negative? The film was wonderful.', 'And this one? A dull, tired plot.', 'Why?'];
    for (const [i, question] of questions.entries()) {
      // Record every text the answer bubble shows while it grows.
      await page.evaluate(() => {
        const w = window as unknown as { seen: string[] };
        w.seen = [];
        const transcript = document.querySelector('[data-testid="chat-transcript"]')!;
        new MutationObserver(() => {
          const answers = transcript.querySelectorAll('[data-testid="turn-assistant"] [data-testid="turn-text"]');
          const last = answers[answers.length - 1];
          if (last) w.seen.push(last.textContent ?? '');
        }).observe(transcript, { subtree: true, childList: true, characterData: true });
      });
      await page.locator(byTestId('chat-input')).fill(question);
      await page.locator(`${byTestId('send')}:not([disabled])`).click();
      await page.locator(byTestId('stop')).waitFor();
      await page.locator(`${byTestId('send')}`).waitFor({ timeout: 120_000 });
      expect(await page.locator(byTestId('turn-assistant')).count()).toBe(i + 1);
      const final = (await page.locator(`${byTestId('turn-assistant')} ${byTestId('turn-text')}`).nth(i).textContent()) ?? '';
      const seen = await page.evaluate(() => (window as unknown as { seen: string[] }).seen);
      const partial = [...new Set(seen)].filter((t) => t !== '' && t !== final && final.startsWith(t));
      console.log(`[playground] turn ${i + 1}: ${partial.length} partial texts before ${JSON.stringify(final)}`);
      expect(final.trim()).not.toBe('');
      expect(partial.length).toBeGreaterThanOrEqual(2);
    }
    await screenshot(page, '14-playground-chat');
    await page.setViewportSize({ width: 1024, height: 700 });
    await screenshot(page, '14-playground-chat-1024x700');
    await page.setViewportSize({ width: 1360, height: 900 });

    // The engine, asked directly for the third turn of the same conversation with the same settings.
    const texts = await page.locator(`${byTestId('chat-transcript')} ${byTestId('turn-text')}`).allTextContents();
    expect(texts).toHaveLength(6);
    const messages = texts.slice(0, 5).map((content, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content }));
    const engine = await client.call('playground.generate', {
      runId: runs.lora, requestId: 'e2e-check', system: 'You judge movie reviews.', messages,
      temperature: 1.5, topP: 1, topK: 0, maxNewTokens: 40, seed: 3, compareBase: false,
    });
    expect(engine.ok, engine.error?.message).toBe(true);
    expect(engine.reply.adapted).toBe(texts[5]);
    expect(engine.reply.promptTokens).toBeGreaterThan(20);
  }, 300_000);

  it('stops an answer mid-way', async () => {
    await setSetting('maxNewTokens', '512');
    await page.locator(byTestId('chat-input')).fill('Tell me about the film in detail.');
    await page.locator(`${byTestId('send')}:not([disabled])`).click();
    const answer = page.locator(`${byTestId('turn-assistant')} ${byTestId('turn-text')}`).nth(3);
    await expect.poll(async () => ((await answer.textContent()) ?? '').length, { timeout: 60_000, interval: 20 }).toBeGreaterThan(0);
    await page.locator(byTestId('stop')).click();
    await page.locator(byTestId('send')).waitFor({ timeout: 30_000 });
    expect(await page.locator(byTestId('turn-assistant')).nth(3).textContent()).toContain('stopped');
  }, 120_000);

  it('refuses a too-large value next to its field and clears the answer it would replace', async () => {
    const before = await page.locator(byTestId('turn-assistant')).count();
    await setSetting('maxNewTokens', '100000');
    const problem = page.locator(byTestId('limit-error-maxNewTokens'));
    await problem.waitFor();
    expect(await problem.textContent()).toBe('100000 is too large: at most 512');
    expect(await page.locator(byTestId('send')).isDisabled()).toBe(true);
    expect(await page.locator(byTestId('settings-blocked')).textContent()).toMatch(/Fix the settings marked in red/);
    expect(await page.locator(byTestId('turn-assistant')).count()).toBe(before - 1);
    await setSetting('temperature', '9');
    expect(await page.locator(byTestId('limit-error-temperature')).textContent()).toBe('9 is too large: at most 2');
    await screenshot(page, '14b-playground-refused');
    await setSetting('maxNewTokens', '8');
    await setSetting('temperature', '0');
    await problem.waitFor({ state: 'detached' });
    expect(await page.locator(byTestId('settings-blocked')).count()).toBe(0);
    expect(await page.locator(byTestId('send')).textContent()).toBe('Answer again');
    expect(await page.locator(byTestId('send')).isDisabled()).toBe(false);
    expect(await page.locator(byTestId('playground-error')).count()).toBe(0);
  }, 60_000);

  it('calls a full fine-tune a fine-tuned model, not an adapter', async () => {
    await page.locator(byTestId('playground-run')).selectOption(runs.full);
    expect(await page.locator(byTestId('playground-run-label')).textContent()).toBe('Run (fine-tuned model)');
    await page.locator(byTestId('chat-input')).fill('Is this review positive or negative? Great acting.');
    await page.locator(`${byTestId('send')}:not([disabled])`).click();
    await page.locator(byTestId('send')).waitFor({ timeout: 120_000 });
    expect(await page.locator(`${byTestId('turn-assistant')} .who`).first().textContent()).toMatch(/^Fine-tuned model/);
  }, 150_000);

  it('says why a format is unavailable for a method', async () => {
    await page.goto(`${served.url}#/runs/${runs.full}`);
    await page.locator(byTestId('open-export')).click();
    const reason = page.locator(byTestId('export-reason-peft'));
    await reason.waitFor();
    expect(await reason.textContent()).toMatch(/Full fine-tuning changes every weight of the model: there is no separate adapter to save/);
    expect(await page.locator(byTestId('export-peft')).isDisabled()).toBe(true);
    expect(await page.locator(byTestId('export-merged')).isChecked()).toBe(true);
    expect(await page.locator(byTestId('export-reason-merged')).count()).toBe(0);
    await screenshot(page, '12b-export-reasons', false);
    await page.locator(byTestId('export-close')).click();
  });

  it('offers download links in browser mode, keeps the base dtype, and asks before exporting a copy', async () => {
    await page.goto(`${served.url}#/runs/${runs.lora}`);
    await page.locator(byTestId('open-export')).click();
    await page.locator(byTestId('export-merged')).check();
    expect(await page.locator(`${byTestId('export-dtype')} option:checked`).textContent()).toMatch(/as the base stores them/);
    await page.locator(byTestId('export-start')).click();
    const result = page.locator(byTestId('export-result'));
    await result.waitFor({ timeout: 120_000 });
    const out = /to (\S+)$/.exec((await result.textContent())!.trim())![1]!;
    // The base's dtype by default (the bundled model is stored in F16).
    const baseDtype = [...SafetensorsFile.open(path.join(useBundled ? BUNDLED_MODEL_DIR : path.join(modelsRoot, 'tiny-llama'), 'model.safetensors')).tensors.values()][0]!.dtype;
    const exported = SafetensorsFile.open(path.join(out, fs.readdirSync(out).find((f) => f.endsWith('.safetensors'))!));
    expect(new Set([...exported.tensors.values()].map((t) => t.dtype))).toEqual(new Set([baseDtype]));
    exported.close();

    const links = page.locator(byTestId('export-download'));
    expect(await links.allTextContents()).toEqual(fs.readdirSync(out).sort());
    await screenshot(page, '13b-export-download', false);
    await page.setViewportSize({ width: 1024, height: 700 });
    await screenshot(page, '13b-export-download-1024x700', false);
    await page.setViewportSize({ width: 1360, height: 900 });
    const configLink = page.locator(`${byTestId('export-download')}[download="config.json"]`);
    const href = await configLink.getAttribute('href');
    const download = await fetch(new URL(href!, served.origin));
    expect(download.status).toBe(200);
    expect(download.headers.get('content-disposition')).toBe('attachment; filename="config.json"');
    expect(Buffer.from(await download.arrayBuffer()).equals(fs.readFileSync(path.join(out, 'config.json')))).toBe(true);
    // The page's own download works the same way (the browser saves the file).
    const [saved] = await Promise.all([page.waitForEvent('download'), configLink.click()]);
    expect(saved.suggestedFilename()).toBe('config.json');
    // Nothing but exports, and only with the token.
    const folder = path.basename(out);
    expect((await fetch(`${served.origin}/exports/${folder}/config.json?token=wrong`)).status).toBe(401);
    expect((await fetch(`${served.origin}/exports/..%2Fruns.db/x?token=${served.token}`)).status).toBe(404);
    expect((await fetch(`${served.origin}/exports/${folder}/..%2F..%2Fruns.db?token=${served.token}`)).status).toBe(404);

    // The same export again: the dialog asks first, and a copy goes to a new folder.
    await page.locator(byTestId('export-start')).click();
    const again = page.locator(byTestId('export-again'));
    await again.waitFor();
    expect(await again.textContent()).toContain(out);
    await screenshot(page, '13c-export-again', false);
    await page.locator(byTestId('export-again-cancel')).click();
    await again.waitFor({ state: 'detached' });
    await page.locator(byTestId('export-start')).click();
    await page.locator(byTestId('export-copy')).click();
    await expect.poll(async () => (await result.textContent()) ?? '', { timeout: 120_000 }).toContain(`${out}-2`);
    expect(fs.existsSync(path.join(`${out}-2`, 'config.json'))).toBe(true);
  }, 300_000);
});
