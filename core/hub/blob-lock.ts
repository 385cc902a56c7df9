/** One writer per partial blob of the Hugging Face cache, across processes. */
import * as fs from 'node:fs';
import { LowrankError } from '../errors.ts';

/** True while a process with this id runs (EPERM: it runs, as another user). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * One writer per partial blob, across processes (two `lowrank models pull`, the app and the CLI):
 * `<blob>.incomplete.lock` holds the writer's pid; a dead writer's lock is taken over.
 */
export function lockBlob(incomplete: string, what: string): () => void {
  const lock = `${incomplete}.lock`;
  for (;;) {
    try {
      fs.writeFileSync(lock, String(process.pid), { flag: 'wx' });
      return () => fs.rmSync(lock, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const pid = Number(fs.readFileSync(lock, 'utf8'));
    if (Number.isInteger(pid) && pid > 0 && processAlive(pid)) {
      throw new LowrankError('WRITE_FAILED', `${what} is being downloaded into the cache by another process (pid ${pid}) right now; wait for it to finish, then pull again`);
    }
    fs.rmSync(lock, { force: true });
  }
}
