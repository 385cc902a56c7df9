/**
 * One engine job in its own process: training, export or playground generation. The parent
 * (core/service/jobs.ts) sends one `JobRequest`; this process reports `WorkerMessage`s and
 * exits. A crash or an out-of-memory kill here leaves the service (and the UI) running.
 */
import { openStore } from '../store/index.ts';
import { runFinetune, loadTrainedRun, type FinetuneConfig } from '../train/finetune.ts';
import { exportRun } from '../export/run-export.ts';
import { generate } from '../models/generate.ts';
import { stopTokenIds } from '../train/evaluate.ts';
import { isLowrankError } from '../errors.ts';
import type { JobRequest, WorkerMessage } from './jobs.ts';
import { estimateMethods, estimateRun } from './estimates.ts';

const send = (m: WorkerMessage) => process.send?.(m);
let stopRequested = false;

async function runJob(job: JobRequest): Promise<unknown> {
  if (job.kind === 'estimate-methods') return estimateMethods(job.model, job.batchSize, job.seqLen, job.targets);
  if (job.kind === 'estimate-run') return estimateRun(job.config);
  const store = openStore(job.home);
  try {
    switch (job.kind) {
      case 'train':
        return await runFinetune(store, job.config as FinetuneConfig, (event) => send({ type: 'event', event }), { shouldStop: () => stopRequested }, job.resumeRunId);
      case 'export':
        return await exportRun(store, job.request, (message) => send({ type: 'progress', message }));
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

// The service went away (its process crashed or quit): stop rather than train for nobody; the
// store marks the run interrupted when it is next opened.
process.on('disconnect', () => process.exit(1));

process.on('message', (m: JobRequest | { kind: 'stop' }) => {
  if (m.kind === 'stop') {
    stopRequested = true;
    return;
  }
  runJob(m).then(
    (result) => {
      process.send?.({ type: 'result', result } satisfies WorkerMessage, () => process.exit(0));
    },
    (e: unknown) => {
      const error = { code: isLowrankError(e) ? e.code : 'INTERNAL', message: e instanceof Error ? e.message : String(e) };
      process.send?.({ type: 'error', error } satisfies WorkerMessage, () => process.exit(1));
    },
  );
});
