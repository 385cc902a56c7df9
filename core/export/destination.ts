/**
 * Every export writes a folder the user names with --out. It must appear whole or not at all: a
 * crash, a full disk or a bad tensor halfway through must never leave a folder that looks like a
 * finished export. So the folder is built under a hidden sibling name, every file is fsynced, and
 * one rename(2) (atomic within a filesystem, which a sibling guarantees) puts it in place.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { LowrankError } from '../errors.ts';
import { syncFolder } from '../io/safetensors.ts';
import { processAlive } from '../store/store.ts';

/**
 * Runs `write(tmpDir)` into a fresh temporary folder next to `out`, then moves it to `out`.
 * Refuses an `out` that already exists (nothing is ever overwritten) and a parent folder that is
 * missing or not writable, before any work starts. On any failure the temporary folder is removed
 * and the error is rethrown (file-system errors become WRITE_FAILED naming `out`). A process killed
 * mid-export cannot remove its own: the next export to the same `out` does.
 */
export async function withFreshDestination<T>(out: string, write: (tmpDir: string) => T | Promise<T>): Promise<T> {
  const target = path.resolve(out);
  const parent = path.dirname(target);
  refuseExisting(out, target);
  requireWritableFolder(parent);

  removeLeftovers(parent, path.basename(target));
  const tmpDir = path.join(parent, `.${path.basename(target)}.partial-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    fs.mkdirSync(tmpDir);
  } catch (e) {
    throw writeFailed(out, e);
  }
  try {
    const result = await write(tmpDir);
    syncTree(tmpDir);
    pauseForFaultTest();
    // Checked again: the write may have taken minutes, and rename(2) silently replaces an empty folder.
    refuseExisting(out, target);
    fs.renameSync(tmpDir, target);
    syncFolder(parent);
    return result;
  } catch (e) {
    fs.rmSync(tmpDir, { recursive: true, force: true });
    throw isSystemError(e) ? writeFailed(out, e) : e;
  }
}

/** Temporary folders for the same `out` left by an export that was killed (its process is gone). Best effort. */
function removeLeftovers(parent: string, name: string): void {
  const prefix = `.${name}.partial-`;
  try {
    for (const entry of fs.readdirSync(parent)) {
      const pid = entry.startsWith(prefix) ? /^(\d+)-[0-9a-f]{8}$/.exec(entry.slice(prefix.length))?.[1] : undefined;
      if (pid !== undefined && !processAlive(Number(pid))) fs.rmSync(path.join(parent, entry), { recursive: true, force: true });
    }
  } catch {
    // A folder we may write into but not list, or a leftover we may not remove: it stays, and is ignored.
  }
}

/**
 * Test-only: with LOWRANK_FAULT_PAUSE_MS set, a finished folder waits that long before its rename, so
 * the fault suite (test/faults) can SIGKILL the export there. Unset, this does nothing.
 */
function pauseForFaultTest(): void {
  const ms = Number(process.env.LOWRANK_FAULT_PAUSE_MS ?? 0);
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function refuseExisting(out: string, target: string): void {
  if (fs.lstatSync(target, { throwIfNoEntry: false }) !== undefined) {
    throw new LowrankError('BAD_ARGUMENT', `${out} already exists; choose another --out or delete it`);
  }
}

function requireWritableFolder(folder: string): void {
  const stat = fs.statSync(folder, { throwIfNoEntry: false });
  if (!stat) throw new LowrankError('FILE_NOT_FOUND', `the folder ${folder} does not exist; create it or choose another --out`);
  if (!stat.isDirectory()) throw new LowrankError('BAD_ARGUMENT', `${folder} is a file, not a folder; choose another --out`);
  try {
    fs.accessSync(folder, fs.constants.W_OK);
  } catch {
    throw new LowrankError('WRITE_FAILED', `cannot write into the folder ${folder} (permission denied); choose another --out`);
  }
}

/** An errno error from a file operation (ENOSPC, EACCES, ...); anything else is rethrown as is. */
function isSystemError(e: unknown): e is NodeJS.ErrnoException {
  return e instanceof Error && typeof (e as NodeJS.ErrnoException).code === 'string' && typeof (e as NodeJS.ErrnoException).syscall === 'string';
}

function writeFailed(out: string, e: unknown): LowrankError {
  const code = (e as NodeJS.ErrnoException)?.code;
  const why =
    code === 'ENOSPC' ? 'the disk is full'
    : code === 'EACCES' || code === 'EPERM' ? 'permission denied'
    : code === 'EROFS' ? 'the filesystem is read-only'
    : e instanceof Error ? e.message : String(e);
  return new LowrankError('WRITE_FAILED', `cannot write ${out}: ${why}; nothing was left at ${out}`);
}

/** fsyncs every file (and folder) under `dir`, so the rename publishes data that is on disk. */
function syncTree(dir: string): void {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      syncTree(full);
    } else if (entry.isFile()) {
      const fd = fs.openSync(full, 'r');
      try {
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
  }
  syncFolder(dir);
}

