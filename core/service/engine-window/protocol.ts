/**
 * Messages of the desktop app's engine window (DESIGN.md "Backends" 1): jobs that train on the
 * GPU run in a hidden BrowserWindow whose tfjs uses the window's own WebGPU, because the `webgpu`
 * npm package cannot run inside Electron (PERFORMANCE.md §4).
 *
 *   engine host (service) --EngineToMain--> Electron main --MainToWindow--> engine window
 *        ^                                    (host.ts)                         |
 *        +------------ MainToEngine <------------------------ WindowToMain -----+
 *
 * A window runs one job and is closed: like a forked job process, its crash takes only that job.
 */
import type { Attempt } from '../../backend/optional-packages.ts';
import type { WebgpuAdapterReport } from '../../backend/webgpu.ts';
import type { JobRequest, WorkerMessage } from '../jobs.ts';

/** The Electron IPC channel between main and the engine windows. */
export const ENGINE_WINDOW_CHANNEL = 'lowrank:engine-window';

/** Engine host → main: run a job in a window (or decline it), or stop one after its current step. */
export type EngineToMain = { type: 'run'; id: number; request: JobRequest } | { type: 'stop'; id: number };

/** Main → engine host. */
export type MainToEngine =
  /** The job runs in a window; `pid` is its renderer process. */
  | { type: 'started'; id: number; pid: number; adapter: string }
  /** No window for this job: run it in a forked process; `reason` says why (logged). */
  | { type: 'declined'; id: number; reason: string }
  | { type: 'message'; id: number; message: WorkerMessage }
  /** The window is gone; `crash` is why, when it went without sending a result. */
  | { type: 'exit'; id: number; crash: string | null };

/** Main → window. */
export type MainToWindow = { type: 'job'; request: JobRequest } | { type: 'stop' };

/** Window → main. */
export type WindowToMain =
  /** First message of every window: its adapter, and what (if anything) keeps jobs from loading. */
  | { type: 'hello'; pid: number; gpu: Attempt<WebgpuAdapterReport>; problem: string | null }
  | { type: 'message'; message: WorkerMessage }
  /** An error the page could not report otherwise (its bundle failed to load, an uncaught error). */
  | { type: 'fatal'; message: string };
