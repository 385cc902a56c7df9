/**
 * What the fault-injection suite (test/faults) shares: a seeded random source (a failing kill
 * plan is reproduced by its seed), the `lowrank` CLI as a child process whose `--json` events
 * arrive as they are printed and that can be SIGKILLed on any of them, and the checks every
 * fault ends with: the store's integrity, and a checkpoint folder that is complete or absent.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { expect } from 'vitest';
import { SafetensorsFile } from '../../core/io/safetensors.ts';
import type { RunStore } from '../../core/store/store.ts';

export const CLI = path.resolve(import.meta.dirname, '..', '..', 'bin', 'lowrank.js');

/** The seed of every random choice in the suite; LOWRANK_FAULT_SEED replays another plan. */
export const FAULT_SEED = Number(process.env.LOWRANK_FAULT_SEED ?? 20261206);

/** mulberry32: a small, fast, seedable generator of floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface CliEvent {
  event: string;
  run_id?: string;
  step?: number;
  [key: string]: unknown;
}

export interface CliExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Milliseconds from spawn to exit. */
  wallMs: number;
}

/** A `lowrank` child whose stdout lines (one JSON event each, with --json) are parsed as they come. */
export class CliProcess {
  readonly events: CliEvent[] = [];
  /** performance.now() at which each event arrived. */
  readonly arrivals: number[] = [];
  readonly spawnedAt = performance.now();
  /** Date.now() at spawn: files with an older mtime were left by someone else. */
  readonly spawnedWall = Date.now();
  stderr = '';
  /** Milliseconds after spawn at which the test sent SIGKILL, or null. */
  killedAfterMs: number | null = null;
  readonly exited: Promise<CliExit>;
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly listeners: Array<(e: CliEvent) => void> = [];
  private buffered = '';
  private polls: NodeJS.Timeout[] = [];

  constructor(args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } });
    this.child.stdout.on('data', (chunk: Buffer) => {
      this.buffered += chunk.toString();
      const lines = this.buffered.split('\n');
      this.buffered = lines.pop()!;
      for (const line of lines.filter(Boolean)) {
        const event = JSON.parse(line) as CliEvent;
        this.events.push(event);
        this.arrivals.push(performance.now());
        for (const listener of this.listeners) listener(event);
      }
    });
    this.child.stderr.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    // 'exit' comes after the child is reaped: its pid is dead for the store's recovery from then on.
    this.exited = new Promise((resolve, reject) => {
      this.child.on('error', reject);
      this.child.on('exit', (code, signal) => {
        for (const timer of this.polls) clearInterval(timer);
        resolve({ code, signal, wallMs: performance.now() - this.spawnedAt });
      });
    });
  }

  /** Milliseconds from spawn to the first event named `name`, or null. */
  msUntil(name: string): number | null {
    const i = this.events.findIndex((e) => e.event === name);
    return i < 0 ? null : this.arrivals[i] - this.spawnedAt;
  }

  get pid(): number {
    return this.child.pid!;
  }

  onEvent(listener: (e: CliEvent) => void): void {
    this.listeners.push(listener);
  }

  kill(): void {
    if (this.killedAfterMs !== null || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.killedAfterMs = performance.now() - this.spawnedAt;
    this.child.kill('SIGKILL');
  }

  killAfter(ms: number): void {
    const timer = setTimeout(() => this.kill(), ms);
    void this.exited.then(() => clearTimeout(timer));
  }

  /** Polls every 2 ms (a fault pause holds the moment open for tens of ms) and kills once `condition()` holds. */
  killWhen(condition: () => boolean): void {
    const timer = setInterval(() => {
      if (condition()) {
        clearInterval(timer);
        this.kill();
      }
    }, 2);
    this.polls.push(timer);
  }
}

/** The store passes SQLite's own checks and has no run left 'running' (it was opened after the kill). */
export function expectStoreSound(store: RunStore, context: string): void {
  expect(store.db.pragma('integrity_check', { simple: true }), context).toBe('ok');
  expect(store.db.pragma('foreign_key_check'), context).toEqual([]);
  expect(store.listRuns({ status: 'running' }).map((r) => r.id), context).toEqual([]);
}

export interface CheckpointContents {
  step: number;
  /** Tensor names of trainable.safetensors and optimizer.safetensors. */
  trainable: string[];
  optimizer: string[];
  /** Every value of both files is finite. */
  finite: boolean;
}

/** Reads a checkpoint folder whole (manifest and every tensor); throws if any part is missing or cut short. */
export function readCheckpoint(dir: string): CheckpointContents {
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as { step: number };
  const read = (file: string) => {
    const st = SafetensorsFile.open(path.join(dir, file));
    try {
      let finite = true;
      for (const name of st.tensors.keys()) finite &&= st.readFloat32(name).every(Number.isFinite);
      return { names: [...st.tensors.keys()].sort(), finite };
    } finally {
      st.close();
    }
  };
  const trainable = read('trainable.safetensors');
  const optimizer = read('optimizer.safetensors');
  return { step: manifest.step, trainable: trainable.names, optimizer: optimizer.names, finite: trainable.finite && optimizer.finite };
}

/** Every file in a folder tree, relative path -> bytes: two exports are the same if these are equal. */
export function folderContents(dir: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  const walk = (sub: string) => {
    for (const entry of fs.readdirSync(path.join(dir, sub), { withFileTypes: true })) {
      const relative = path.join(sub, entry.name);
      if (entry.isDirectory()) walk(relative);
      else files.set(relative, fs.readFileSync(path.join(dir, relative)));
    }
  };
  walk('');
  return files;
}

/** Runs `check`, records its outcome (passed or not) with `record`, and rethrows a failure. */
export function checked(record: (passed: boolean, outcome: string) => void, outcome: () => string, check: () => void): void {
  try {
    check();
  } catch (e) {
    record(false, `${outcome()}; FAILED: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}`);
    throw e;
  }
  record(true, outcome());
}

/**
 * Distance of two losses in float32 units in the last place (of the larger). Runs of one config agree
 * bitwise when they run on the same kernels (40 of 40 `lowrank train` processes on the build machine).
 * But a process that does not load the native addon falls back to the wasm kernels without a word, and
 * those differ by 1-2 ulps on some steps (measured: LOWRANK_NATIVE=0, 52 runs, all alike; 1 of 40
 * native runs while other work shared the tree matched them). So a resume is compared within
 * MAX_LOSS_ULPS; a lost optimizer state or dropout seed moves the loss by 1e4× that.
 */
export function float32Ulps(a: number, b: number): number {
  if (a === b) return 0;
  if (!Number.isFinite(a) || !Number.isFinite(b)) return Infinity;
  const ulp = 2 ** (Math.floor(Math.log2(Math.max(Math.abs(a), Math.abs(b)))) - 23);
  return Math.abs(a - b) / ulp;
}

export const MAX_LOSS_ULPS = 4;
