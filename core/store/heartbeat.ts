/**
 * A training process's proof of life that does not depend on how long a step takes. A step runs
 * synchronously on the main thread (a first step of a 0.5 B model can take minutes), so a heartbeat
 * written between steps goes quiet exactly when a person looks at a slow run, and the store then
 * takes the run for dead (`recoverInterrupted`'s stale-heartbeat rule, which guards against a pid
 * reused after a reboot). This beats from a worker thread with its own connection to the same
 * SQLite file (WAL), every few seconds, until stopped. It only refreshes `heartbeat_at` of a run that
 * this process still owns (same pid, running); whether to go on training stays the main thread's
 * call (RunStore.heartbeat between steps).
 */
import { Worker } from 'node:worker_threads';
import { createRequire } from 'node:module';

export const HEARTBEAT_INTERVAL_MS = 5000;

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.sqlite);
const db = new Database(workerData.databasePath, { timeout: 5000 });
const beat = db.prepare("UPDATE runs SET heartbeat_at = ? WHERE id = ? AND pid = ? AND status = 'running'");
const tick = () => {
  try { beat.run(Date.now(), workerData.runId, workerData.pid); } catch { /* busy or closed: the next tick tries again */ }
};
tick();
const timer = setInterval(tick, workerData.intervalMs);
parentPort.on('message', () => { clearInterval(timer); db.close(); parentPort.close(); });
`;

export interface BackgroundHeartbeat {
  stop(): Promise<void>;
}

/** Starts beating for `runId` (owned by this process) in a worker thread. */
export function startBackgroundHeartbeat(databasePath: string, runId: string, intervalMs = HEARTBEAT_INTERVAL_MS): BackgroundHeartbeat {
  const sqlite = createRequire(import.meta.url).resolve('better-sqlite3');
  const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { sqlite, databasePath, runId, pid: process.pid, intervalMs } });
  // It must never keep the process alive, nor bring it down.
  worker.unref();
  worker.on('error', () => undefined);
  let stopped: Promise<void> | null = null;
  return {
    stop() {
      // Held (ref) while it stops, so the event loop waits for it rather than ending with the promise pending.
      stopped ??= new Promise<void>((resolve) => {
        worker.ref();
        const timer = setTimeout(() => void worker.terminate(), 2000);
        worker.once('exit', () => {
          clearTimeout(timer);
          resolve();
        });
        worker.postMessage('stop');
      });
      return stopped;
    },
  };
}
