/**
 * E2E harness: builds the renderer, starts `lowrank serve` in a child process on a temporary
 * LOWRANK_HOME, and drives Debian's Chromium with playwright-core. Screenshots go to
 * test-artifacts/e2e/ (ignored by git, kept by CI as artifacts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import WebSocket from 'ws';
import type { ServerFrame, StudioEvent } from '../../core/contract.ts';
// Where Chromium is: one definition for the tests that skip without it and the end-of-run summary.
import { chromiumPath } from '../helpers/optional-parts.ts';

export const REPO = path.resolve(import.meta.dirname, '..', '..');
export const ARTIFACTS = path.join(REPO, 'test-artifacts', 'e2e');

export async function buildRenderer(): Promise<void> {
  const { build } = await import('vite');
  await build({ configFile: path.join(REPO, 'renderer', 'vite.config.ts'), logLevel: 'warn' });
}

export interface Served {
  url: string;
  origin: string;
  token: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

export async function serve(home: string, allow: string[]): Promise<Served> {
  const child = spawn(process.execPath, [path.join(REPO, 'bin', 'lowrank.js'), 'serve', '--port', '0', '--allow', allow.join(',')], {
    env: { ...process.env, LOWRANK_HOME: home },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += String(d)));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`lowrank serve printed no URL in 60 s: ${out} ${stderr}`)), 60_000);
    child.stdout!.on('data', (d) => {
      out += String(d);
      const m = /(http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('exit', (code) => reject(new Error(`lowrank serve exited (${code}): ${stderr}`)));
  });
  const parsed = new URL(url);
  return {
    url,
    origin: parsed.origin,
    token: parsed.searchParams.get('token')!,
    child,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
        setTimeout(() => child.kill('SIGKILL'), 5000).unref();
      }),
  };
}

export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: chromiumPath(),
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
}

/** Every screen is shot at a desktop and a small laptop window. */
export const VIEWPORTS = [
  { width: 1440, height: 900 },
  { width: 1024, height: 700 },
] as const;

export async function screenshot(page: Page, name: string, fullPage = true): Promise<string[]> {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const original = page.viewportSize();
  const files: string[] = [];
  for (const viewport of VIEWPORTS) {
    await page.setViewportSize(viewport);
    // chart.js and the grid re-lay out on the next frames.
    await page.waitForTimeout(150);
    const file = path.join(ARTIFACTS, `${name}-${viewport.width}x${viewport.height}.png`);
    await page.screenshot({ path: file, fullPage });
    files.push(file);
  }
  if (original) await page.setViewportSize(original);
  return files;
}

/** A raw WebSocket client of the service, for the contract checks. */
export class SocketClient {
  private nextId = 1;
  readonly events: StudioEvent[] = [];
  /** When each event arrived (performance.now()), index for index with `events`. */
  readonly eventTimes: number[] = [];
  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data)) as ServerFrame;
      if ('event' in frame) {
        this.events.push(frame.event);
        this.eventTimes.push(performance.now());
      }
    });
  }

  static connect(origin: string, token: string | null): Promise<SocketClient> {
    const ws = new WebSocket(`${origin.replace('http', 'ws')}/ws${token === null ? '' : `?token=${token}`}`);
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new SocketClient(ws)));
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    });
  }

  call(call: string, request: unknown): Promise<{ ok: boolean; reply?: any; error?: { code: string; message: string } }> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      const onMessage = (data: WebSocket.RawData) => {
        const frame = JSON.parse(String(data)) as ServerFrame;
        if ('id' in frame && frame.id === id) {
          this.ws.off('message', onMessage);
          resolve(frame.ok ? { ok: true, reply: frame.reply } : { ok: false, error: frame.error });
        }
      };
      this.ws.on('message', onMessage);
      this.ws.send(JSON.stringify({ id, call, request }));
    });
  }

  close(): void {
    this.ws.close();
  }
}
