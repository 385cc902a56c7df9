/**
 * The engine window's side of protocol.ts, over any transport: renderer.ts wires it to Electron's
 * ipcRenderer; the tests wire it to a forked process's channel. It says hello (adapter, and what
 * keeps the job code from loading, if anything), runs the one job main sends with the same code
 * as a forked job (run-job.ts) after starting its backend, and stops after the current step when
 * asked.
 */
import type { Attempt } from '../../backend/optional-packages.ts';
import type { WebgpuAdapterReport } from '../../backend/webgpu.ts';
import type { WorkerMessage } from '../jobs.ts';
import { jobError, runJob } from '../run-job.ts';
import type { MainToWindow, WindowToMain } from './protocol.ts';

export interface WindowTransport {
  send(m: WindowToMain): void;
  onMessage(listener: (m: MainToWindow) => void): void;
}

export interface WindowEnvironment {
  /** This renderer's process id (signals for pause / kill go there). */
  pid: number;
  adapter(): Promise<Attempt<WebgpuAdapterReport>>;
  /** What keeps the job code from running here (a native module built for another ABI), or null. */
  jobCodeProblem(): string | null;
  /** Starts the tfjs backend before the job (renderer.ts: webgpu on navigator.gpu). */
  startBackend(): Promise<unknown>;
}

export function serveEngineWindow(transport: WindowTransport, env: WindowEnvironment): void {
  let stopRequested = false;
  let running = false;
  const io = { send: (message: WorkerMessage) => transport.send({ type: 'message', message }), shouldStop: () => stopRequested };
  transport.onMessage((m) => {
    if (m.type === 'stop') {
      stopRequested = true;
      return;
    }
    if (running) return;
    running = true;
    env
      .startBackend()
      .then(() => runJob(m.request, io))
      .then(
        (result) => io.send({ type: 'result', result }),
        (e: unknown) => io.send({ type: 'error', error: jobError(e) }),
      );
  });
  void env
    .adapter()
    .catch((e: unknown) => ({ ok: false as const, reason: e instanceof Error ? e.message : String(e) }))
    .then((gpu) => transport.send({ type: 'hello', pid: env.pid, gpu, problem: env.jobCodeProblem() }));
}
