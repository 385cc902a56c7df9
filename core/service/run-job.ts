/**
 * One engine job, wherever it runs: a forked Node process (engine-worker.ts) or the desktop
 * app's engine window (engine-window/renderer.ts). Training, export, playground generation and
 * estimates; progress goes out through `send`, and `shouldStop` is polled between steps.
 */
import { openStore } from '../store/index.ts';
import { runFinetune, type FinetuneConfig } from '../train/finetune.ts';
import { exportRun } from '../export/run-export.ts';
import { playgroundAnswer } from './playground.ts';
import { isLowrankError } from '../errors.ts';
import type { JobRequest, WorkerMessage } from './jobs.ts';
import { estimateMethods, estimateMethodsForRun, estimateRun } from './estimates.ts';
import { checkpointFromAdapter } from '../elsewhere/import-adapter.ts';
import { exportJob } from '../elsewhere/export-job.ts';

export interface JobIo {
  send(m: WorkerMessage): void;
  shouldStop(): boolean;
}

export async function runJob(job: JobRequest, io: JobIo): Promise<unknown> {
  if (job.kind === 'estimate-methods') return estimateMethodsForRun(job.config);
  if (job.kind === 'estimate-model-methods') return estimateMethods(job.model, job.batchSize, job.seqLen, job.targets);
  if (job.kind === 'estimate-run') return estimateRun(job.config);
  const store = openStore(job.home);
  try {
    switch (job.kind) {
      case 'train':
        return await runFinetune(store, job.config as FinetuneConfig, (event) => io.send({ type: 'event', event }), { shouldStop: io.shouldStop, priorStepSeconds: job.priorStepSeconds }, job.resumeRunId);
      case 'export':
        return await exportRun(store, job.request, (message) => io.send({ type: 'progress', message }));
      case 'checkpoint-adapter':
        return await checkpointFromAdapter(store, job.runId, job.config as FinetuneConfig, job.step);
      case 'export-job':
        return await exportJob(store, { engine: job.engine, out: job.out, runId: job.runId, config: job.config as FinetuneConfig | undefined }, (message) => io.send({ type: 'progress', message }));
      case 'generate':
        return await playgroundAnswer(store, job.request, { stream: (source, text) => io.send({ type: 'stream', source, text }), shouldStop: io.shouldStop });
    }
  } finally {
    store.close();
  }
}

/** A job's failure as it crosses a process boundary. */
export function jobError(e: unknown): { code: string; message: string } {
  return { code: isLowrankError(e) ? e.code : 'INTERNAL', message: e instanceof Error ? e.message : String(e) };
}
