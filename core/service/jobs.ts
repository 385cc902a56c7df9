/**
 * Engine jobs in child processes (child_process.fork of engine-worker.js): training, export and
 * generation never run in the service's process, so its socket / IPC stays responsive and a crash
 * or OOM kill of a job is reported instead of taking the app down.
 */
import { fork } from 'node:child_process';
import * as path from 'node:path';
import type { FinetuneEvent } from '../train/finetune.ts';
import type { ExportRequest } from '../export/run-export.ts';
import type { FinetuneConfigInput, Request, WireError } from '../contract.ts';
import { LowrankError, type ErrorCode } from '../errors.ts';

export type JobRequest =
  | { kind: 'train'; home: string; config: FinetuneConfigInput; resumeRunId?: string; priorStepSeconds?: number[] }
  | { kind: 'export'; home: string; request: ExportRequest }
  | { kind: 'generate'; home: string; request: Request<'playground.generate'> }
  | { kind: 'estimate-methods'; home: string; config: FinetuneConfigInput }
  | { kind: 'estimate-model-methods'; home: string; model: string; batchSize: number; seqLen: number; targets: string[] | 'all-linear' }
  | { kind: 'estimate-run'; home: string; config: FinetuneConfigInput }
  /** An adapter trained elsewhere written as a run's checkpoint (core/elsewhere/import-adapter.ts); replies its trainable count. */
  | { kind: 'checkpoint-adapter'; home: string; runId: string; config: FinetuneConfigInput; step: number }
  /** A run written as a job folder for another engine (core/elsewhere/export-job.ts). */
  | { kind: 'export-job'; home: string; runId?: string; config?: FinetuneConfigInput; engine: 'llamafactory' | 'axolotl'; out: string };

export type WorkerMessage =
  | { type: 'event'; event: FinetuneEvent }
  | { type: 'progress'; message: string }
  /** A playground answer so far (core/service/playground.ts). */
  | { type: 'stream'; source: 'adapted' | 'base'; text: string }
  | { type: 'result'; result: unknown }
  | { type: 'error'; error: WireError };

export interface JobHandlers {
  onEvent?(event: FinetuneEvent): void;
  onProgress?(message: string): void;
  onStream?(source: 'adapted' | 'base', text: string): void;
}

/** Signals the service sends a job's process: pause, continue, and kill on close. */
export type JobSignal = 'SIGSTOP' | 'SIGCONT' | 'SIGKILL';

export interface Job<T> {
  result: Promise<T>;
  /** Asks the job to stop after the current step (a checkpoint is written first). */
  stop(): void;
  /** The job's process (a forked Node process, or the engine window's renderer); undefined until it runs. */
  readonly pid: number | undefined;
  signal(signal: JobSignal): void;
  /** Settles once the job's process is gone. */
  readonly exited: Promise<void>;
}

/** Starts engine jobs: `startJob` (forked processes), or the desktop app's engine-window runner. */
export type JobRunner = <T>(request: JobRequest, handlers?: JobHandlers) => Job<T>;

const WORKER = path.join(import.meta.dirname, 'engine-worker.js');

/** Says what a job's death without a reply most likely means, and the fix. */
export function describeCrash(code: number | null, signal: NodeJS.Signals | null): string {
  if (signal === 'SIGKILL' || code === 137) {
    return 'the engine process was killed (SIGKILL), most often because the system ran out of memory; lower the batch size or the sequence length, or pick a method with less state, and start again';
  }
  return `the engine process exited unexpectedly (${signal ?? `exit code ${code}`}); see the logs, then start the run again`;
}

export function startJob<T>(request: JobRequest, handlers: JobHandlers = {}): Job<T> {
  const child = fork(WORKER, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
  const result = new Promise<T>((resolve, reject) => {
    let settled = false;
    child.on('message', (m: WorkerMessage) => {
      if (m.type === 'event') handlers.onEvent?.(m.event);
      else if (m.type === 'progress') handlers.onProgress?.(m.message);
      else if (m.type === 'stream') handlers.onStream?.(m.source, m.text);
      else if (m.type === 'result') {
        settled = true;
        resolve(m.result as T);
      } else if (m.type === 'error') {
        settled = true;
        reject(new LowrankError(m.error.code as ErrorCode, m.error.message));
      }
    });
    child.on('exit', (code, signal) => {
      if (!settled) reject(Object.assign(new LowrankError('INTERNAL' as ErrorCode, describeCrash(code, signal)), { crashed: true }));
    });
    child.on('error', (e) => {
      if (!settled) reject(e);
    });
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.send(request);
  return {
    result,
    get pid() {
      return child.pid;
    },
    exited,
    signal: (signal) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    stop: () => {
      if (child.connected) child.send({ kind: 'stop' });
    },
  };
}
