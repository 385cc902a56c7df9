/**
 * One engine job in its own process: training, export or playground generation (run-job.ts).
 * The parent (core/service/jobs.ts) sends one `JobRequest`; this process reports `WorkerMessage`s
 * and exits. A crash or an out-of-memory kill here leaves the service (and the UI) running.
 */
import type { JobRequest, WorkerMessage } from './jobs.ts';
import { jobError, runJob } from './run-job.ts';

let stopRequested = false;

// The service went away (its process crashed or quit): stop rather than train for nobody; the
// store marks the run interrupted when it is next opened.
process.on('disconnect', () => process.exit(1));

process.on('message', (m: JobRequest | { kind: 'stop' }) => {
  if (m.kind === 'stop') {
    stopRequested = true;
    return;
  }
  runJob(m, { send: (message) => process.send?.(message), shouldStop: () => stopRequested }).then(
    (result) => {
      process.send?.({ type: 'result', result } satisfies WorkerMessage, () => process.exit(0));
    },
    (e: unknown) => {
      process.send?.({ type: 'error', error: jobError(e) } satisfies WorkerMessage, () => process.exit(1));
    },
  );
});
