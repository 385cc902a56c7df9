/**
 * One engine job, wherever it runs: a forked Node process (engine-worker.ts) or the desktop
 * app's engine window (engine-window/renderer.ts). Training, export, playground generation and
 * estimates; progress goes out through `send`, and `shouldStop` is polled between steps.
 */
import { openStore } from '../store/index.ts';
import { runFinetune, loadTrainedRun, type FinetuneConfig } from '../train/finetune.ts';
import { exportRun } from '../export/run-export.ts';
import { generate } from '../models/generate.ts';
import { stopTokenIds } from '../train/evaluate.ts';
import { isLowrankError } from '../errors.ts';
import type { JobRequest, WorkerMessage } from './jobs.ts';
import { estimateMethodsForRun, estimateRun } from './estimates.ts';

export interface JobIo {
  send(m: WorkerMessage): void;
  shouldStop(): boolean;
}

export async function runJob(job: JobRequest, io: JobIo): Promise<unknown> {
  if (job.kind === 'estimate-methods') return estimateMethodsForRun(job.config);
  if (job.kind === 'estimate-run') return estimateRun(job.config);
  const store = openStore(job.home);
  try {
    switch (job.kind) {
      case 'train':
        return await runFinetune(store, job.config as FinetuneConfig, (event) => io.send({ type: 'event', event }), { shouldStop: io.shouldStop }, job.resumeRunId);
      case 'export':
        return await exportRun(store, job.request, (message) => io.send({ type: 'progress', message }));
      case 'generate': {
        const started = performance.now();
        const prepared = await loadTrainedRun(store, job.runId);
        const { model, tokenizer, dataset } = prepared;
        try {
          // A chat-trained adapter answers a user turn; anything else continues the raw text.
          const chat = dataset.format === 'chat' || dataset.format === 'sharegpt';
          const promptIds = chat
            ? tokenizer.encode(tokenizer.applyChatTemplate([{ role: 'user', content: job.prompt }], { addGenerationPrompt: true }), { addSpecialTokens: false })
            : tokenizer.encode(job.prompt);
          const stops = stopTokenIds(tokenizer);
          const options = { maxNewTokens: job.maxNewTokens, temperature: job.temperature, seed: job.seed, topP: 1, stopTokenIds: stops };
          const decode = (ids: number[]) => tokenizer.decode(ids.filter((id) => !stops.includes(id)), { skipSpecialTokens: true });
          const adapted = decode(generate(model, promptIds, options));
          prepared.attached.detach();
          const base = decode(generate(model, promptIds, options));
          return { base, adapted, seconds: (performance.now() - started) / 1000 };
        } finally {
          model.dispose();
        }
      }
    }
  } finally {
    store.close();
  }
}

/** A job's failure as it crosses a process boundary. */
export function jobError(e: unknown): { code: string; message: string } {
  return { code: isLowrankError(e) ? e.code : 'INTERNAL', message: e instanceof Error ? e.message : String(e) };
}
