/**
 * Electron main's side of the engine windows (protocol.ts), without Electron: electron/main.ts
 * hands it a function that opens a hidden BrowserWindow and reports what the window says and
 * when its renderer process is gone; tests hand it a fake.
 *
 * For every job the engine host asks it to run, it opens a window, waits for the window's hello
 * (its WebGPU adapter, and whether the job code loads there), and then either sends the job or
 * declines it with the reason, after which the engine host forks a Node process as before. Once
 * declined for a reason that will not change (no adapter, a software adapter, a module that does
 * not load), every later job is declined at once with the same reason.
 */
import type { EngineToMain, MainToEngine, MainToWindow, WindowToMain } from './protocol.ts';

export interface EngineWindowHandle {
  send(m: MainToWindow): void;
  /** Closes the window (destroys it: no unload handlers, no prompts). */
  close(): void;
}

export interface EngineWindowListener {
  message(m: WindowToMain): void;
  /** The renderer process is gone (Electron's render-process-gone) or the page failed to load. */
  gone(details: { reason: string; exitCode?: number }): void;
}

export type OpenEngineWindow = (listener: EngineWindowListener) => EngineWindowHandle;

export interface EngineWindowHostOptions {
  open: OpenEngineWindow;
  toEngine(m: MainToEngine): void;
  /** LOWRANK_BACKEND is read from here (default process.env). */
  env?: Record<string, string | undefined>;
  /** How long a window may take to load its bundle and say hello (default 60 s). */
  helloTimeoutMs?: number;
}

/**
 * Chromium switches for WebGPU that Electron must get before `app.ready`: on Linux WebGPU is
 * behind `enable-unsafe-webgpu` and needs the Vulkan backend (electron#41763, PERFORMANCE.md §4).
 * Elsewhere (Metal, D3D12) it is on by default.
 */
export function webgpuSwitches(platform: NodeJS.Platform): Array<{ name: string; value?: string }> {
  return platform === 'linux' ? [{ name: 'enable-unsafe-webgpu' }, { name: 'enable-features', value: 'Vulkan' }] : [];
}

type Decision = { ok: true; adapter: string } | { ok: false; reason: string };

/** Whether a window that said `hello` may run jobs, given LOWRANK_BACKEND. */
export function acceptWindow(hello: Extract<WindowToMain, { type: 'hello' }>, forcedBackend: string | undefined): Decision {
  if (hello.problem != null) return { ok: false, reason: `the engine window cannot load the job code: ${hello.problem}` };
  if (!hello.gpu.ok) return { ok: false, reason: `no WebGPU in the engine window: ${hello.gpu.reason}` };
  const { adapter, software } = hello.gpu.value;
  if (software && forcedBackend !== 'webgpu') {
    return { ok: false, reason: `the engine window's only WebGPU adapter is the software renderer '${adapter}' (slower than wasm; set LOWRANK_BACKEND=webgpu to use it anyway)` };
  }
  return { ok: true, adapter };
}

/** LOWRANK_BACKEND as initBackend reads it: undefined when unset or 'auto'. */
export function forcedBackendOf(env: Record<string, string | undefined>): string | undefined {
  const value = env.LOWRANK_BACKEND?.trim().toLowerCase();
  return value == null || value === '' || value === 'auto' ? undefined : value;
}

/** Says what a window's death without a result most likely means, and the fix. */
export function describeWindowCrash(details: { reason: string; exitCode?: number }): string {
  const code = details.exitCode != null ? `, exit code ${details.exitCode}` : '';
  if (details.reason === 'oom') {
    return 'the engine window ran out of memory; lower the batch size or the sequence length, or pick a method with less state, and start again';
  }
  if (details.reason === 'killed') return `the engine window's process was killed${code}; start the run again`;
  return `the engine window stopped unexpectedly (${details.reason}${code}); see the logs, then start the run again`;
}

interface WindowJob {
  state: 'hello' | 'running' | 'done';
  window: EngineWindowHandle;
  stopRequested: boolean;
  timer: ReturnType<typeof setTimeout> | null;
}

export class EngineWindowHost {
  private readonly jobs = new Map<number, WindowJob>();
  /** Why windows cannot run jobs in this session, once found out. */
  private unavailable: string | null = null;
  private readonly env: Record<string, string | undefined>;

  constructor(private readonly options: EngineWindowHostOptions) {
    this.env = options.env ?? process.env;
  }

  /** Why jobs run in forked processes instead, when that is already known. */
  get unavailableReason(): string | null {
    return this.unavailable;
  }

  fromEngine(m: EngineToMain): void {
    if (m.type === 'stop') {
      const job = this.jobs.get(m.id);
      if (job == null) return;
      job.stopRequested = true;
      if (job.state === 'running') job.window.send({ type: 'stop' });
      return;
    }
    const forced = forcedBackendOf(this.env);
    if (forced != null && forced !== 'webgpu') return this.decline(m.id, `LOWRANK_BACKEND=${forced} forces the ${forced} backend`);
    if (this.unavailable != null) return this.decline(m.id, this.unavailable);
    this.open(m.id, m.request, forced);
  }

  /** The engine process is gone: its jobs' windows go too (their runs are failed by its successor). */
  closeAll(): void {
    for (const [id, job] of this.jobs) this.finish(id, job);
  }

  private open(id: number, request: Extract<EngineToMain, { type: 'run' }>['request'], forced: string | undefined): void {
    let job: WindowJob | undefined;
    const window = this.options.open({
      message: (m) => {
        if (job == null || job.state === 'done') return;
        if (job.state === 'hello') {
          if (m.type === 'hello') {
            const decision = acceptWindow(m, forced);
            if (!decision.ok) return this.refuse(id, job, decision.reason);
            job.state = 'running';
            if (job.timer != null) clearTimeout(job.timer);
            job.window.send({ type: 'job', request });
            if (job.stopRequested) job.window.send({ type: 'stop' });
            this.options.toEngine({ type: 'started', id, pid: m.pid, adapter: decision.adapter });
          } else if (m.type === 'fatal') {
            this.refuse(id, job, `the engine window failed to load: ${m.message}`);
          }
          return;
        }
        if (m.type === 'message') {
          this.options.toEngine({ type: 'message', id, message: m.message });
          if (m.message.type === 'result' || m.message.type === 'error') {
            this.finish(id, job);
            this.options.toEngine({ type: 'exit', id, crash: null });
          }
        } else if (m.type === 'fatal') {
          this.finish(id, job);
          this.options.toEngine({ type: 'exit', id, crash: `the engine window failed: ${m.message}; start the run again` });
        }
      },
      gone: (details) => {
        if (job == null || job.state === 'done') return;
        if (job.state === 'hello') return this.refuse(id, job, `the engine window stopped before it was ready (${details.reason})`);
        this.finish(id, job);
        this.options.toEngine({ type: 'exit', id, crash: describeWindowCrash(details) });
      },
    });
    const timeoutMs = this.options.helloTimeoutMs ?? 60_000;
    job = { state: 'hello', window, stopRequested: false, timer: null };
    job.timer = setTimeout(() => {
      if (job.state === 'hello') this.refuse(id, job, `the engine window did not start within ${timeoutMs / 1000} s`);
    }, timeoutMs);
    this.jobs.set(id, job);
  }

  /** The window cannot run jobs: remember why, close it, and let the engine host fork instead. */
  private refuse(id: number, job: WindowJob, reason: string): void {
    this.unavailable = reason;
    this.finish(id, job);
    this.decline(id, reason);
  }

  private decline(id: number, reason: string): void {
    this.options.toEngine({ type: 'declined', id, reason });
  }

  private finish(id: number, job: WindowJob): void {
    job.state = 'done';
    if (job.timer != null) clearTimeout(job.timer);
    this.jobs.delete(id);
    job.window.close();
  }
}
