/**
 * Whether this machine can run a job with LLaMA-Factory itself: `llamafactory-cli` on PATH (pip's
 * console script) and a GPU PyTorch can train on, CUDA (an NVIDIA driver that lists a GPU) or Metal
 * (Apple silicon, where PyTorch's MPS backend runs). Only then does the wizard offer the choice.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

export const LLAMAFACTORY_CLI = 'llamafactory-cli';

/** The executable's path on PATH (PATHEXT on Windows), or null. */
export function findOnPath(command: string, envPath = process.env.PATH ?? ''): string | null {
  const extensions = process.platform === 'win32' ? (process.env.PATHEXT ?? '.EXE;.CMD;.BAT').split(';') : [''];
  for (const dir of envPath.split(path.delimiter)) {
    if (!dir) continue;
    for (const ext of extensions) {
      const file = path.join(dir, command + ext);
      try {
        fs.accessSync(file, fs.constants.X_OK);
        if (fs.statSync(file).isFile()) return file;
      } catch {
        /* not here */
      }
    }
  }
  return null;
}

export type GpuKind = 'cuda' | 'metal';

/** A GPU PyTorch trains on: CUDA when nvidia-smi lists one, Metal on Apple silicon. */
export function visibleGpu(): { kind: GpuKind; name: string } | null {
  if (process.platform === 'darwin' && os.arch() === 'arm64') return { kind: 'metal', name: 'Apple silicon (Metal)' };
  if (process.env.CUDA_VISIBLE_DEVICES === '' || process.env.CUDA_VISIBLE_DEVICES === '-1') return null;
  const smi = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8', timeout: 5000 });
  const first = smi.status === 0 ? smi.stdout.split('\n').find((l) => l.startsWith('GPU ')) : undefined;
  return first ? { kind: 'cuda', name: first.replace(/\s*\(UUID:.*\)$/, '') } : null;
}

export interface LocalEngine {
  llamafactory: string | null;
  gpu: { kind: GpuKind; name: string } | null;
  /** True when a run can be launched with LLaMA-Factory here. */
  available: boolean;
}

export function detectLocalEngine(): LocalEngine {
  const llamafactory = findOnPath(LLAMAFACTORY_CLI);
  const gpu = llamafactory ? visibleGpu() : null;
  return { llamafactory, gpu, available: llamafactory !== null && gpu !== null };
}
