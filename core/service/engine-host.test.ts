/**
 * The desktop app's engine process without Electron: electron/main.ts forks engine-host.js and
 * speaks to it over the fork channel. Calls are validated and answered, dialog grants open a
 * path, the runs of a crashed predecessor are marked failed, and a disconnect ends it.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openStore } from '../store/index.ts';
import type { ServerFrame } from '../contract.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-host-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

describe('engine host', () => {
  it('answers calls, takes grants, fails a crashed engine\'s runs and exits on disconnect', async () => {
    const home = path.join(root, 'home');
    const store = openStore(home);
    const run = store.createRun({ method: 'lora', kind: 'finetune', config: {} });
    store.close();
    const picked = path.join(root, 'picked.jsonl');
    fs.writeFileSync(picked, '{"text":"hello"}\n');

    const host = fork(path.join(import.meta.dirname, 'engine-host.js'), [], { env: { ...process.env, LOWRANK_HOME: home }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const frames: ServerFrame[] = [];
    host.on('message', (f: ServerFrame) => frames.push(f));
    const reply = async (id: number) => {
      await expect.poll(() => frames.find((f) => 'id' in f && f.id === id), { timeout: 60_000 }).toBeTruthy();
      return frames.find((f) => 'id' in f && f.id === id) as Extract<ServerFrame, { id: number }>;
    };
    try {
      host.send({ id: 1, call: 'methods.list', request: {} });
      expect((await reply(1)).ok).toBe(true);
      host.send({ id: 2, call: 'runs.list', request: { limit: -1, extra: true } });
      const bad = await reply(2);
      expect(bad.ok).toBe(false);
      host.send({ id: 3, call: 'datasets.list', request: {} });
      expect(JSON.stringify(await reply(3))).not.toContain('picked.jsonl');
      host.send({ grant: picked, kind: 'dataset' });
      host.send({ id: 4, call: 'datasets.list', request: {} });
      expect(JSON.stringify(await reply(4))).toContain('picked.jsonl');
      host.send({ failRuns: [run.id], message: 'the engine process was killed' });
      await expect.poll(() => frames.some((f) => 'event' in f && f.event.type === 'run-failed' && f.event.runId === run.id), { timeout: 30_000 }).toBe(true);
      host.send({ id: 5, call: 'runs.get', request: { runId: run.id } });
      const detail = await reply(5);
      expect(detail.ok && (detail.reply as { run: { status: string; errorCode: string } }).run).toMatchObject({ status: 'failed', errorCode: 'ENGINE_CRASHED' });
      const exited = new Promise<number | null>((resolve) => host.once('exit', (code) => resolve(code)));
      host.disconnect();
      expect(await exited).toBe(0);
    } finally {
      if (host.exitCode === null) host.kill('SIGKILL');
    }
  }, 120_000);
});
