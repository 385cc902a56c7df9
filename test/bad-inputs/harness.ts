/**
 * The bad-input catalogue's harness: runs the real `lowrank` command (node bin/lowrank.js, as a user
 * does) with LOWRANK_HOME in a scratch folder, checks the refusal is exit code 2 and one line naming
 * the file and the place at fault, checks the same input through the service call the app makes
 * (or the engine call behind the command) gives a LowrankError `{code, message}`, and records each
 * case for docs/reliability.md (test/helpers/reliability-record.ts).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { expect } from 'vitest';
import WebSocket from 'ws';
import { isLowrankError, type ErrorCode } from '../../core/errors.ts';
import { startServer, type RunningServer } from '../../core/serve/server.ts';
import { recordOutcome } from '../helpers/reliability-record.ts';

const CLI = path.resolve(import.meta.dirname, '..', '..', 'bin', 'lowrank.js');
/**
 * Each case starts a `lowrank` process (~2.5 CPU-seconds of start-up on this 2-core machine), so
 * `npm test` runs the core catalogue and leaves out the `extended` variants (another wrong type,
 * another missing file of the same reader path); LOWRANK_BAD_INPUTS=all runs every case, as
 * `npm run reliability-report` does for docs/reliability.md.
 */
export const ALL_CASES = process.env.LOWRANK_BAD_INPUTS === 'all';

export function selectCases<T extends { extended?: boolean }>(cases: T[]): T[] {
  return ALL_CASES ? cases : cases.filter((c) => !c.extended);
}
/** A refusal reads a few files; a minute means it hangs (start-up alone takes ~3 s on 2 busy cores). */
const HANG_MS = 60_000;
/** Processes at once per test file; vitest runs two files at once on the 2-core machine. */
const CONCURRENCY = Number(process.env.LOWRANK_BAD_INPUT_CONCURRENCY ?? 2);

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

let running = 0;
const waiting: Array<() => void> = [];

async function slot<T>(work: () => Promise<T>): Promise<T> {
  if (running >= CONCURRENCY) await new Promise<void>((resolve) => waiting.push(resolve));
  running++;
  try {
    return await work();
  } finally {
    running--;
    waiting.shift()?.();
  }
}

/** `node bin/lowrank.js ...args` with LOWRANK_HOME=home; killed (timedOut) after a minute. */
export function runLowrank(home: string, args: string[]): Promise<CliResult> {
  return slot(
    () =>
      new Promise<CliResult>((resolve, reject) => {
        const child = spawn(process.execPath, [CLI, ...args], {
          env: { ...process.env, LOWRANK_HOME: home, LOWRANK_BACKEND: 'wasm', LOWRANK_THREADS: '1' },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let stdout = '';
        let stderr = '';
        child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
        child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
        let timedOut = false;
        const timer = setTimeout(() => {
          timedOut = true;
          child.kill('SIGKILL');
        }, HANG_MS);
        child.on('error', reject);
        child.on('close', (status) => {
          clearTimeout(timer);
          resolve({ status, stdout, stderr, timedOut });
        });
      }),
  );
}

/**
 * Exit code 2, the refusal on one line of stderr (no stack, no `at ...` frame): `lowrank <command>: `
 * then a message that contains every mention. Nothing else on stderr, except lines matching
 * `progress` before it (export says "loading run ID" while it works). Returns the message.
 */
export function expectOneLineRefusal(r: CliResult, command: string, mentions: Array<string | RegExp>, progress: RegExp[] = []): string {
  expect(r.timedOut, `lowrank ${command} did not finish within ${HANG_MS / 1000} s`).toBe(false);
  expect(r.status, `exit status; stderr: ${r.stderr}`).toBe(2);
  expect(r.stderr.endsWith('\n'), 'stderr ends with a newline').toBe(true);
  const lines = r.stderr.slice(0, -1).split('\n');
  const chatter = lines.slice(0, -1).filter((line) => !progress.some((p) => p.test(line)));
  expect(chatter, 'stderr holds the refusal on one line and nothing else').toEqual([]);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.stderr).not.toMatch(/internal error/);
  const refusal = lines.at(-1)!;
  const prefix = `lowrank ${command}: `;
  expect(refusal.startsWith(prefix), refusal).toBe(true);
  const message = refusal.slice(prefix.length);
  expect(message, 'a carriage return would overwrite the line in a terminal').not.toMatch(/\r/);
  expectMentions(message, mentions);
  return message;
}

export function expectMentions(message: string, mentions: Array<string | RegExp>): void {
  for (const m of mentions) {
    if (typeof m === 'string') expect(message, `message should mention ${JSON.stringify(m)}`).toContain(m);
    else expect(message).toMatch(m);
  }
}

/** What a refused call gives back across a transport (or as a LowrankError in process). */
export interface WireRefusal {
  code: string;
  message: string;
}

/** Awaits `action`, expects a LowrankError (or a `{code, message}` reply) with `code` and a one-line message. */
export async function expectRefusal(action: () => unknown, code: ErrorCode, mentions: Array<string | RegExp>): Promise<WireRefusal> {
  let caught: unknown;
  try {
    await action();
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected a refusal').toBeDefined();
  const refusal = caught as WireRefusal;
  if (caught instanceof Error) expect(isLowrankError(caught), `${caught.name}: ${caught.message}`).toBe(true);
  expect(refusal.code, refusal.message).toBe(code);
  expect(refusal.message).not.toMatch(/[\r\n]/);
  expectMentions(refusal.message, mentions);
  return { code: refusal.code, message: refusal.message };
}

export interface CaseRecord {
  group: string;
  name: string;
  expected: string;
}

/** Runs a case and records its outcome (passed or the assertion that failed); rethrows failures. */
export async function recorded(c: CaseRecord, run: () => Promise<string>, suite = 'bad-inputs'): Promise<void> {
  try {
    const outcome = await run();
    recordOutcome({ suite, group: c.group, name: c.name, expected: c.expected, outcome, passed: true });
  } catch (e) {
    const why = e instanceof Error ? e.message.split('\n')[0]! : String(e);
    recordOutcome({ suite, group: c.group, name: c.name, expected: c.expected, outcome: `FAILED: ${why}`, passed: false });
    throw e;
  }
}

export function describeExpectation(code: ErrorCode, mentions: Array<string | RegExp>): string {
  const shown = mentions.map((m) => (typeof m === 'string' ? JSON.stringify(m) : String(m)));
  return `exit 2, one line; ${code}${shown.length ? `; mentions ${shown.join(', ')}` : ''}`;
}

export function scratchRoot(label: string): string {
  return fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), `lowrank-bad-${label}-`)));
}

/** The WebSocket bridge the browser app talks to (`lowrank serve`), with `root` as an allowed folder. */
export class AppBridge {
  private constructor(
    private readonly server: RunningServer,
    private readonly socket: WebSocket,
  ) {}

  private nextId = 1;
  private readonly pending = new Map<number, (frame: { ok: boolean; reply?: unknown; error?: WireRefusal }) => void>();

  static async start(home: string, root: string): Promise<AppBridge> {
    const server = await startServer({ port: 0, home, roots: [root], rendererDir: path.join(root, 'no-renderer') });
    const socket = new WebSocket(`ws://127.0.0.1:${server.port}/ws?token=${server.token}`);
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve());
      socket.once('error', reject);
    });
    const bridge = new AppBridge(server, socket);
    socket.on('message', (data) => {
      const frame = JSON.parse(String(data)) as { id?: number; ok: boolean; reply?: unknown; error?: WireRefusal };
      if (typeof frame.id === 'number') bridge.pending.get(frame.id)?.(frame);
    });
    return bridge;
  }

  /** Resolves with the reply, or rejects with the `{code, message}` the service sent. */
  call(name: string, request: unknown): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, (frame) => {
        this.pending.delete(id);
        if (frame.ok) resolve(frame.reply);
        else reject(frame.error);
      });
      this.socket.send(JSON.stringify({ id, call: name, request }));
    });
  }

  async close(): Promise<void> {
    this.socket.close();
    await this.server.close();
  }
}
