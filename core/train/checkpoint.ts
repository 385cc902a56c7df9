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

function toWrite(tensors: Iterable<[string, tf.Tensor]>) {
  return [...tensors].map(([name, t]) => ({ name, shape: t.shape, data: t.dataSync() as Float32Array }));
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
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  writeSafetensors(path.join(tmp, 'trainable.safetensors'), toWrite(params));
  const state = optimizer.getWeights();
  writeSafetensors(path.join(tmp, 'optimizer.safetensors'), toWrite(state.tensors));
  const manifest: CheckpointManifest = { step, optimizerStep: state.step, savedAt: new Date().toISOString(), extra };
  writeJsonFile(path.join(tmp, 'manifest.json'), manifest);
  syncFolder(tmp);
  fs.rmSync(old, { recursive: true, force: true });
  if (fs.existsSync(dir)) fs.renameSync(dir, old);
  fs.renameSync(tmp, dir);
  syncFolder(path.dirname(dir));
  fs.rmSync(old, { recursive: true, force: true });
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
