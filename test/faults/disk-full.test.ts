/**
 * Fault injection: the disk fills up between two checkpoints, so the second one fails halfway (its
 * trainable tensors fit, its optimizer state does not). The run must fail with WRITE_FAILED naming
 * the checkpoint folder and "the disk is full", remove the half-written temporary folder (the space
 * it took is freed), and keep the earlier checkpoint byte for byte and loadable.
 *
 * Two ways to fill the disk: a real one, a 1 MiB tmpfs mounted under the run folders and filled with
 * a ballast file (needs root and mount(2): this sandbox, not a CI runner), and everywhere an injected
 * ENOSPC: fs.writeSync, patched in this test process only, fails once the checkpoint's temporary
 * files have taken 8 KiB. No production code knows about either.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import fsModule, * as fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { initBackend } from '../../core/backend/index.ts';
import { isLowrankError } from '../../core/errors.ts';
import { openStore } from '../../core/store/index.ts';
import { FINETUNE_DEFAULTS, loadTrainedRun, runFinetune, type FinetuneConfig } from '../../core/train/finetune.ts';
import { buildTinyModel } from '../fixtures/tiny-trained-model.ts';
import { recordOutcome } from '../helpers/reliability-record.ts';
import { checked, expectStoreSound, folderContents, readCheckpoint } from './harness.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-faults-disk-'));
const modelDir = path.join(root, 'model');
const data = path.join(root, 'reviews.jsonl');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** Room left for the second checkpoint: its trainable file (about 4.3 KB: 2 pages) fits, its optimizer file (about 7.8 KB) does not. */
const ROOM_BYTES = 8192;

beforeAll(async () => {
  await initBackend();
  const records = await buildTinyModel(modelDir);
  fs.writeFileSync(data, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
});

function config(): FinetuneConfig {
  return {
    ...FINETUNE_DEFAULTS,
    model: modelDir, data, method: 'lora', params: { rank: 4, alpha: 8, dropout: 0 }, targets: ['q_proj', 'v_proj'],
    steps: 8, epochs: null, batchSize: 4, seqLen: 48, lr: 1e-2, evalEvery: 100, checkpointEvery: 2, metricExamples: 0,
  };
}

interface DiskFiller {
  /** Called right after the first checkpoint: from then on only ROOM_BYTES are left. */
  fill(): void;
  release(): void;
}

/** Fills the tmpfs mounted at `dir` with a ballast file, then frees ROOM_BYTES of it. */
function tmpfsFiller(dir: string): DiskFiller {
  const ballast = path.join(dir, 'ballast');
  return {
    fill() {
      const fd = fs.openSync(ballast, 'w');
      const chunk = Buffer.alloc(64 * 1024, 1);
      try {
        for (;;) fs.writeSync(fd, chunk);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
      }
      fs.ftruncateSync(fd, fs.fstatSync(fd).size - ROOM_BYTES);
      fs.closeSync(fd);
    },
    release: () => fs.rmSync(ballast, { force: true }),
  };
}

/** Makes fs.writeSync fail with ENOSPC once files under checkpoint.tmp/ have taken ROOM_BYTES. */
function injectedFiller(): DiskFiller {
  const original = { openSync: fsModule.openSync, writeSync: fsModule.writeSync, closeSync: fsModule.closeSync };
  const tracked = new Set<number>();
  let room = Infinity;
  const patched = {
    openSync(...args: Parameters<typeof fs.openSync>) {
      const fd = original.openSync(...args);
      if (String(args[0]).includes(`${path.sep}checkpoint.tmp${path.sep}`)) tracked.add(fd);
      return fd;
    },
    writeSync(fd: number, buffer: string | NodeJS.ArrayBufferView, ...rest: unknown[]) {
      if (tracked.has(fd)) {
        const bytes = typeof buffer === 'string' ? Buffer.byteLength(buffer) : typeof rest[1] === 'number' ? rest[1] : buffer.byteLength;
        if (bytes > room) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
        room -= bytes;
      }
      return (original.writeSync as (...a: unknown[]) => number)(fd, buffer, ...rest);
    },
    closeSync(fd: number) {
      tracked.delete(fd);
      return original.closeSync(fd);
    },
  };
  Object.assign(fsModule, patched);
  // The engine's `import * as fs from 'node:fs'` sees the patched functions only after this.
  syncBuiltinESMExports();
  return {
    fill: () => (room = ROOM_BYTES),
    release() {
      Object.assign(fsModule, original);
      syncBuiltinESMExports();
    },
  };
}

function canMountTmpfs(): boolean {
  const probe = fs.mkdtempSync(path.join(root, 'probe-'));
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe]).status === 0;
  if (mounted) spawnSync('umount', [probe]);
  return mounted;
}

async function diskFullDuringCheckpoint(mechanism: string, home: string, filler: DiskFiller): Promise<void> {
  const store = openStore(home);
  let firstCheckpoint = new Map<string, Buffer>();
  let runId = '';
  let error: unknown;
  try {
    await runFinetune(store, config(), (e) => {
      if (e.type === 'run-started') runId = e.runId;
      if (e.type === 'checkpoint' && e.step === 2) {
        firstCheckpoint = folderContents(e.path);
        filler.fill();
      }
    });
  } catch (e) {
    error = e;
  } finally {
    filler.release();
  }
  const checkpointDir = path.join(home, 'runs', runId, 'checkpoint');
  try {
    checked(
      (passed, outcome) => recordOutcome({
        suite: 'faults', group: 'full disk', name: `disk full during the step-4 checkpoint (${mechanism})`,
        expected: 'WRITE_FAILED naming the checkpoint and "the disk is full"; run failed; no temporary folder left; the step-2 checkpoint unchanged and loadable',
        outcome, passed,
      }),
      () => (error instanceof Error ? `${isLowrankError(error) ? error.code : 'no code'}: ${error.message}` : 'no error'),
      () => {
        expect(isLowrankError(error) && error.code).toBe('WRITE_FAILED');
        expect((error as Error).message).toContain(`cannot write the checkpoint of step 4 to ${checkpointDir}`);
        // Halfway: the trainable tensors were written, the optimizer state was not.
        expect((error as Error).message).toContain(`${path.join(`${checkpointDir}.tmp`, 'optimizer.safetensors')}: the disk is full`);
        expectStoreSound(store, mechanism);
        const run = store.getRun(runId);
        expect(run.status).toBe('failed');
        expect(run.errorCode).toBe('WRITE_FAILED');
        expect(store.latestCheckpoint(runId)?.step).toBe(2);
        // The half-written checkpoint is gone (its space with it); the earlier one is as it was.
        expect(fs.readdirSync(path.dirname(checkpointDir))).toEqual(['checkpoint']);
        expect(firstCheckpoint.size).toBe(3);
        expect(folderContents(checkpointDir)).toEqual(firstCheckpoint);
        expect(readCheckpoint(checkpointDir)).toMatchObject({ step: 2, finite: true });
      },
    );
    const loaded = await loadTrainedRun(store, runId);
    expect(loaded.step).toBe(2);
    loaded.attached.detach();
    loaded.model.dispose();
  } finally {
    store.close();
  }
}

describe('a full disk during a checkpoint', () => {
  it('injected ENOSPC (fs.writeSync fails after 8 KiB of the checkpoint): WRITE_FAILED, the earlier checkpoint kept', async () => {
    await diskFullDuringCheckpoint('injected ENOSPC', path.join(root, 'home-injected'), injectedFiller());
  });

  it.runIf(process.getuid?.() === 0 && canMountTmpfs())('a real 1 MiB tmpfs filled up: WRITE_FAILED, the earlier checkpoint kept', async () => {
    const home = path.join(root, 'home-tmpfs');
    const runs = path.join(home, 'runs');
    fs.mkdirSync(runs, { recursive: true });
    expect(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', runs]).status).toBe(0);
    try {
      await diskFullDuringCheckpoint('tmpfs 1 MiB', home, tmpfsFiller(runs));
    } finally {
      spawnSync('umount', ['-l', runs]);
    }
  });
});
