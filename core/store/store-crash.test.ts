/**
 * Fault injection: a training process SIGKILLed at a random moment leaves the store readable,
 * every metric it committed present (and no half of a transaction), and its run 'interrupted'
 * at the next open. Several kills in a row hit the same store, so recovery from a WAL left by
 * one crash is exercised again by the next.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openStore } from './paths.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-store-crash-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
const writer = path.join(import.meta.dirname, 'fixtures', 'metric-writer.ts');

interface KilledChild {
  runId: string | null;
  lastReportedStep: number;
  signal: NodeJS.Signals | null;
}

/** Starts the writer; kills it `delayMs` after it reports ready (or after spawn, if `fromSpawn`). */
function runAndKill(home: string, delayMs: number, fromSpawn: boolean): Promise<KilledChild> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', writer, home], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timer: NodeJS.Timeout | undefined;
    const kill = () => (timer = setTimeout(() => child.kill('SIGKILL'), delayMs));
    const giveUp = setTimeout(() => child.kill('SIGKILL'), 60_000);
    if (fromSpawn) kill();
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (!fromSpawn && timer === undefined && stdout.includes('ready ')) kill();
    });
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    // 'exit' fires after the child is reaped, so its pid is no longer alive for the store.
    child.on('exit', (_code, signal) => {
      clearTimeout(timer);
      clearTimeout(giveUp);
      if (signal !== 'SIGKILL') return reject(new Error(`writer ended with ${signal ?? _code} before the kill: ${stderr}`));
      const runId = /ready (\S+)/.exec(stdout)?.[1] ?? null;
      const steps = [...stdout.matchAll(/^step (\d+)$/gm)].map((m) => Number(m[1]));
      resolve({ runId, lastReportedStep: steps.length ? Math.max(...steps) : -1, signal });
    });
  });
}

describe('run store under SIGKILL', () => {
  it('stays readable, keeps every committed metric, marks the run interrupted', async () => {
    const home = path.join(root, 'home');
    // The first kill lands anywhere from module loading through migration and run creation;
    // the others land in the metric loop.
    const plan = [
      { delayMs: Math.floor(Math.random() * 1500), fromSpawn: true },
      ...[0, 1, 2, 3].map(() => ({ delayMs: 20 + Math.floor(Math.random() * 300), fromSpawn: false })),
    ];
    for (const { delayMs, fromSpawn } of plan) {
      const killed = await runAndKill(home, delayMs, fromSpawn);
      const context = `kill ${delayMs} ms after ${fromSpawn ? 'spawn' : 'ready'}, run ${killed.runId}, last step ${killed.lastReportedStep}`;
      const store = openStore(home);
      try {
        expect(store.db.pragma('integrity_check', { simple: true }), context).toBe('ok');
        expect(store.db.pragma('foreign_key_check'), context).toEqual([]);
        expect(store.listRuns({ status: 'running' }), context).toEqual([]);
        if (killed.runId === null) continue;
        const run = store.getRun(killed.runId);
        expect(run.status, context).toBe('interrupted');
        expect(run.errorCode).toBe('INTERRUPTED');
        expect(run.errorMessage).toMatch(/process \d+ ended/);

        // Steps 0..N each with all twenty rows: no gap, no half-committed step, N >= last reported.
        const rowsPerStep = new Map<number, string[]>();
        for (const m of store.metrics(killed.runId)) rowsPerStep.set(m.step, [...(rowsPerStep.get(m.step) ?? []), m.name]);
        const steps = [...rowsPerStep.keys()];
        expect(steps, context).toEqual(steps.map((_, i) => i));
        const allNames = ['loss', 'lr', ...Array.from({ length: 18 }, (_, layer) => `grad_norm.${layer}`)].sort();
        for (const names of rowsPerStep.values()) expect(names.sort(), context).toEqual(allNames);
        expect(steps.length - 1, context).toBeGreaterThanOrEqual(killed.lastReportedStep);
        if (steps.length) expect(store.metrics(killed.runId, { name: 'loss' })[steps.length - 1].value).toBeCloseTo(1 / steps.length, 12);
      } finally {
        store.close();
      }
    }
  });
});
