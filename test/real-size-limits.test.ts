/**
 * Honest limits at real width: a run that cannot fit the machine is refused before any weight is
 * read, within seconds, with exit 2 and one line that names the figure and what would fit; the same
 * model trains when it fits. Uses a two-layer model at Qwen2.5-0.5B's real width and vocabulary.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { sharedRealShape } from './fixtures/real-shapes.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-limits-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
const cli = path.resolve(import.meta.dirname, '..', 'bin', 'lowrank.js');
const data = path.join(root, 'text.jsonl');
fs.writeFileSync(data, Array.from({ length: 16 }, (_, i) => JSON.stringify({ text: `Line ${i}: the tide rose over the old harbour wall at dusk.` })).join('\n'));

function train(args: string[], env: Record<string, string> = {}) {
  const started = performance.now();
  const r = spawnSync(process.execPath, [cli, 'train', '--data', data, '--steps', '1', '--batch-size', '1', '--seq-len', '32', '--metric-examples', '0', ...args], {
    encoding: 'utf8',
    env: { ...process.env, LOWRANK_HOME: path.join(root, 'home'), ...env },
  });
  return { ...r, seconds: (performance.now() - started) / 1000 };
}

describe('runs that cannot fit', () => {
  const model = sharedRealShape('qwen2.5-0.5b', { layers: 2 });

  it('full fine-tuning beyond the memory budget is refused within 10 s, exit 2, one line with the figure', () => {
    const r = train(['--model', model, '--method', 'full'], { LOWRANK_MEMORY_LIMIT: '1' });
    expect(r.status, r.stderr).toBe(2);
    expect(r.seconds).toBeLessThan(10);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/does not fit: it needs [\d.]+ GB of memory, more than the 1\.0 GB available \(LOWRANK_MEMORY_LIMIT=1\)/);
    expect(lines[0]).toMatch(/try .*lora/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('a LoRA run beyond the budget names what would fit (checkpointing, batch, sequence, a 4-bit base)', () => {
    const r = train(['--model', model, '--method', 'lora', '--gradient-checkpointing', 'off', '--batch-size', '16', '--seq-len', '32'], { LOWRANK_MEMORY_LIMIT: '0.45' });
    expect(r.status, r.stderr).toBe(2);
    expect(r.seconds).toBeLessThan(10);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/does not fit/);
    expect(r.stderr).toMatch(/--base-dtype nf4/);
  });

  it('the same model trains a LoRA step when it fits', () => {
    const r = train(['--model', model, '--method', 'lora', '--json']);
    expect(r.status, r.stderr).toBe(0);
  });
});
