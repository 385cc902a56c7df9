/**
 * Training checkpoints: trainable tensors, optimizer state and a small JSON manifest (step and
 * whatever the caller needs to continue: data cursor, RNG state). Written into a temporary folder,
 * every file fsynced, then swapped in by rename, so a kill at any moment leaves either the previous
 * checkpoint or the new one — never half of one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { SafetensorsFile, syncFolder, writeSafetensors } from '../io/safetensors.ts';
import { writeJsonFile } from '../io/model-folder.ts';
import type { Optimizer } from '../optim/registry.ts';

export interface CheckpointManifest {
  step: number;
  optimizerStep: number;
  savedAt: string;
  extra?: Record<string, unknown>;
}

/**
 * The tensors' values, refused if any is NaN or infinite: a diverged run keeps the checkpoint it had,
 * as resuming from NaN weights could never recover.
 */
function finiteValues(dir: string, step: number, tensors: Iterable<[string, tf.Tensor]>) {
  return [...tensors].map(([name, t]) => {
    const data = t.dataSync() as Float32Array;
    for (let i = 0; i < data.length; i++) {
      if (!Number.isFinite(data[i])) {
        throw new LowrankError(
          'NUMERIC',
          `step ${step}: "${name}" holds ${data[i]} at index ${i}: training diverged, so ${dir} keeps its previous checkpoint; ` +
            'start again with a lower learning rate',
        );
      }
    }
    return { name, shape: t.shape, data };
  });
}

export function saveTrainingCheckpoint(
  dir: string,
  step: number,
  params: Map<string, tf.Variable>,
  optimizer: Optimizer,
  extra?: Record<string, unknown>,
): void {
  const tmp = `${dir}.tmp`;
  const old = `${dir}.old`;
  try {
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(tmp, { recursive: true });
    writeSafetensors(path.join(tmp, 'trainable.safetensors'), finiteValues(dir, step, params));
    pauseForFaultTest();
    const state = optimizer.getWeights();
    writeSafetensors(path.join(tmp, 'optimizer.safetensors'), finiteValues(dir, step, state.tensors));
    pauseForFaultTest();
    const manifest: CheckpointManifest = { step, optimizerStep: state.step, savedAt: new Date().toISOString(), extra };
    writeJsonFile(path.join(tmp, 'manifest.json'), manifest);
    syncFolder(tmp);
  } catch (e) {
    // Neither a full disk nor a diverged run leaves half a checkpoint behind; the previous one is untouched so far.
    fs.rmSync(tmp, { recursive: true, force: true });
    throw writeFailed(dir, step, e);
  }
  fs.rmSync(old, { recursive: true, force: true });
  if (fs.existsSync(dir)) fs.renameSync(dir, old);
  pauseForFaultTest();
  fs.renameSync(tmp, dir);
  syncFolder(path.dirname(dir));
  fs.rmSync(old, { recursive: true, force: true });
}

function writeFailed(dir: string, step: number, e: unknown): LowrankError {
  if (e instanceof LowrankError && e.code !== 'WRITE_FAILED') return e;
  const code = (e as NodeJS.ErrnoException)?.code;
  const why =
    e instanceof LowrankError ? e.message
    : code === 'ENOSPC' ? 'the disk is full'
    : e instanceof Error ? e.message : String(e);
  const kept = fs.existsSync(dir) ? 'the previous checkpoint there is kept' : 'there is no earlier checkpoint';
  return new LowrankError('WRITE_FAILED', `cannot write the checkpoint of step ${step} to ${dir} (${why}); ${kept}`);
}

/**
 * Test-only: with LOWRANK_FAULT_PAUSE_MS set, each phase of the write above is held open that long,
 * so the fault suite (test/faults) can SIGKILL the process inside it. Unset, this does nothing.
 */
function pauseForFaultTest(): void {
  const ms = Number(process.env.LOWRANK_FAULT_PAUSE_MS ?? 0);
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Restores params and optimizer state in place; returns the manifest. With `optimizer` null only
 * the params are read (export and the playground need no optimizer state).
 */
export function loadTrainingCheckpoint(dir: string, params: Map<string, tf.Variable>, optimizer: Optimizer | null): CheckpointManifest {
  // A kill between the two renames leaves only `<dir>.old`: it is the latest complete checkpoint.
  if (!fs.existsSync(dir) && fs.existsSync(`${dir}.old`)) fs.renameSync(`${dir}.old`, dir);
  const manifestPath = path.join(dir, 'manifest.json');
  if (!fs.existsSync(manifestPath)) throw new LowrankError('FILE_NOT_FOUND', `${manifestPath}: no checkpoint to resume from`);
  const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8')) as CheckpointManifest;
  const trainable = SafetensorsFile.open(path.join(dir, 'trainable.safetensors'));
  const optimizerFile = SafetensorsFile.open(path.join(dir, 'optimizer.safetensors'));
  try {
    for (const [name, v] of params) {
      if (!trainable.tensors.has(name)) {
        throw new LowrankError('MISSING_WEIGHT', `${trainable.path}: tensor "${name}" is missing; the checkpoint belongs to another run`);
      }
      tf.tidy(() => v.assign(tf.tensor(trainable.readFloat32(name), v.shape)));
    }
    if (optimizer) {
      const tensors = new Map<string, tf.Tensor>();
      for (const name of optimizerFile.tensors.keys()) {
        tensors.set(name, tf.tensor(optimizerFile.readFloat32(name), optimizerFile.tensors.get(name)!.shape));
      }
      try {
        optimizer.setWeights({ step: manifest.optimizerStep, tensors });
      } finally {
        for (const t of tensors.values()) t.dispose();
      }
    }
  } finally {
    trainable.close();
    optimizerFile.close();
  }
  return manifest;
}
