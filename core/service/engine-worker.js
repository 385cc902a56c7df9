// Entry of a forked engine job (core/service/jobs.ts): registers tsx so the TypeScript engine
// loads in a plain `node` (or Electron-as-node) child, then runs the job.
import { register } from 'tsx/esm/api';
register();
await import('./engine-worker.ts');
