/**
 * The engine host's side of the engine windows (protocol.ts): a JobRunner for StudioService that
 * asks Electron main to run GPU-worthy jobs (training) in a hidden engine window and runs
 * everything else, and every job main declines, in a forked Node process (jobs.ts) as before.
 * The Job it returns behaves like a forked one: the same events and result, `stop` after the
 * current step, signals to the window's renderer process (pause = SIGSTOP), and a crash of the
 * window rejects the result with the reason (the service then marks the run failed).
 */
import { LowrankError, type ErrorCode } from '../../errors.ts';
import { startJob, type Job, type JobHandlers, type JobRequest, type JobRunner, type JobSignal } from '../jobs.ts';
import type { EngineToMain, MainToEngine } from './protocol.ts';

/** Jobs worth a GPU; export, estimates and generation stay in Node processes. */
export const ENGINE_WINDOW_JOB_KINDS: ReadonlySet<JobRequest['kind']> = new Set(['train']);

export interface WindowJobRunnerOptions {
  /** Sends to Electron main (the engine host's process.send). */
  toMain(m: EngineToMain): void;
  /** Where declined and non-GPU jobs run (default: forked processes). */
  fallback?: JobRunner;
  kinds?: ReadonlySet<JobRequest['kind']>;
  /** Told once per decline reason (the engine host logs it). */
  onDeclined?(reason: string): void;
  /** Signals a window's renderer process (default process.kill). */
  kill?(pid: number, signal: JobSignal): void;
}

interface Pending {
  started(pid: number): void;
  declined(reason: string): void;
  message(m: Extract<MainToEngine, { type: 'message' }>['message']): void;
  exit(crash: string | null): void;
}

export class WindowJobRunner {
  private nextId = 1;
  private readonly jobs = new Map<number, Pending>();
  private readonly toldReasons = new Set<string>();

  constructor(private readonly options: WindowJobRunnerOptions) {}

  readonly run: JobRunner = <T>(request: JobRequest, handlers: JobHandlers = {}): Job<T> => {
    const fallback = this.options.fallback ?? startJob;
    if (!(this.options.kinds ?? ENGINE_WINDOW_JOB_KINDS).has(request.kind)) return fallback<T>(request, handlers);
    return this.windowJob<T>(request, handlers, fallback);
  };

  /** A message from main about one of this runner's jobs. */
  fromMain(m: MainToEngine): void {
    const job = this.jobs.get(m.id);
    if (job == null) return;
    if (m.type === 'started') job.started(m.pid);
    else if (m.type === 'declined') job.declined(m.reason);
    else if (m.type === 'message') job.message(m.message);
    else job.exit(m.crash);
  }

  /** Main is gone: every window job with it (their windows close with main). */
  disconnect(): void {
    for (const job of [...this.jobs.values()]) job.exit('the app\'s main process went away; start the run again');
  }

  private windowJob<T>(request: JobRequest, handlers: JobHandlers, fallback: JobRunner): Job<T> {
    const id = this.nextId++;
    const kill = this.options.kill ?? ((pid: number, signal: JobSignal) => process.kill(pid, signal));
    let pid: number | undefined;
    let delegate: Job<T> | null = null;
    let stopRequested = false;
    let killed = false;
    let settled = false;
    let resolveResult!: (value: T) => void;
    let rejectResult!: (e: unknown) => void;
    let resolveExited!: () => void;
    const result = new Promise<T>((resolve, reject) => {
      resolveResult = resolve;
      rejectResult = reject;
    });
    const exited = new Promise<void>((resolve) => (resolveExited = resolve));
    const settle = (f: () => void) => {
      if (settled) return;
      settled = true;
      f();
    };

    this.jobs.set(id, {
      started: (p) => {
        pid = p;
        if (killed) kill(p, 'SIGKILL');
      },
      declined: (reason) => {
        this.jobs.delete(id);
        if (!this.toldReasons.has(reason)) {
          this.toldReasons.add(reason);
          this.options.onDeclined?.(reason);
        }
        if (killed) {
          settle(() => rejectResult(new LowrankError('INTERNAL' as ErrorCode, 'the job was stopped before it started')));
          return resolveExited();
        }
        delegate = fallback<T>(request, handlers);
        if (stopRequested) delegate.stop();
        delegate.result.then((v) => settle(() => resolveResult(v)), (e: unknown) => settle(() => rejectResult(e)));
        void delegate.exited.then(resolveExited);
      },
      message: (m) => {
        if (m.type === 'event') handlers.onEvent?.(m.event);
        else if (m.type === 'progress') handlers.onProgress?.(m.message);
        else if (m.type === 'stream') handlers.onStream?.(m.source, m.text);
        else if (m.type === 'result') settle(() => resolveResult(m.result as T));
        else settle(() => rejectResult(new LowrankError(m.error.code as ErrorCode, m.error.message)));
      },
      exit: (crash) => {
        this.jobs.delete(id);
        // Same shape as a forked job's crash (jobs.ts): the service marks the run failed with it.
        settle(() => rejectResult(Object.assign(new LowrankError('INTERNAL' as ErrorCode, crash ?? 'the engine window closed without a result'), { crashed: true })));
        resolveExited();
      },
    });
    this.options.toMain({ type: 'run', id, request });

    return {
      result,
      exited,
      get pid() {
        return delegate != null ? delegate.pid : pid;
      },
      stop: () => {
        stopRequested = true;
        if (delegate != null) delegate.stop();
        else this.options.toMain({ type: 'stop', id });
      },
      signal: (signal) => {
        if (delegate != null) return delegate.signal(signal);
        if (signal === 'SIGKILL') killed = true;
        if (pid != null && this.jobs.has(id)) kill(pid, signal);
        // Killed: gone now, whether or not main gets to say so (it may be going away itself).
        if (signal === 'SIGKILL' && pid != null) resolveExited();
      },
    };
  }
}
