/**
 * Liveness that does not depend on the main thread: while it is blocked (a long synchronous training
 * step), the background heartbeat keeps the run's heartbeat fresh, so the store does not take a live
 * run for an interrupted one; without it the same block gets the run marked interrupted.
 */
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openStore } from './index.ts';
import { startBackgroundHeartbeat } from './heartbeat.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-heartbeat-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** Blocks this thread, as a synchronous training step does. */
function blockFor(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** A running run, the main thread blocked past the stale limit, then another connection's recovery pass. */
async function blockedRun(withBackground: boolean): Promise<{ status: string; heartbeatAdvancedMs: number }> {
  const home = path.join(root, withBackground ? 'with' : 'without');
  const store = openStore(home);
  const run = store.createRun({ method: 'lora', kind: 'finetune', config: {}, baseModelPath: home, datasetPath: home });
  store.startRun(run.id);
  const started = store.getRun(run.id).heartbeatAt!;
  const beat = withBackground ? startBackgroundHeartbeat(store.layout.databasePath, run.id, 100) : null;
  // Let the worker start (a real run spends far longer loading the model first).
  await new Promise((resolve) => setTimeout(resolve, 300));
  blockFor(1500);
  const observer = openStore(home, { staleHeartbeatMs: 800 });
  const status = observer.getRun(run.id).status;
  const heartbeatAdvancedMs = observer.getRun(run.id).heartbeatAt! - started;
  observer.close();
  await beat?.stop();
  store.close();
  return { status, heartbeatAdvancedMs };
}

describe('background heartbeat', () => {
  it('keeps a run whose main thread is blocked for longer than the stale limit running', async () => {
    const { status, heartbeatAdvancedMs } = await blockedRun(true);
    expect(status).toBe('running');
    expect(heartbeatAdvancedMs).toBeGreaterThan(1200);
  });

  it('without it, the same block gets the live run marked interrupted (what the background heartbeat prevents)', async () => {
    const { status } = await blockedRun(false);
    expect(status).toBe('interrupted');
  });
});
