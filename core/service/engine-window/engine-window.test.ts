/**
 * Engine windows without Electron. First main's side (host.ts) against in-memory windows: which
 * hellos it accepts, LOWRANK_BACKEND, declines remembered, stop, crash and timeout. Then the
 * whole path through StudioService: engine host runner (window-jobs.ts) <-> host.ts <-> a
 * "window" that is a forked process running the window side (window-main.ts, as renderer.ts
 * does; test/fixtures/engine-window-process.ts), so that a crash is a real process death.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { fork, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { StudioService } from '../../service.ts';
import { BUNDLED_MODEL_DIR, RESOURCES_DIR } from '../../resources.ts';
import type { StudioEvent } from '../../contract.ts';
import type { Run } from '../../store/types.ts';
import { FINETUNE_DEFAULTS } from '../../train/finetune.ts';
import { EngineWindowHost, webgpuSwitches, type EngineWindowListener, type OpenEngineWindow } from './host.ts';
import { WindowJobRunner } from './window-jobs.ts';
import type { MainToEngine, MainToWindow, WindowToMain } from './protocol.ts';
import type { JobRequest } from '../jobs.ts';

const HARDWARE = { ok: true as const, value: { adapter: 'nvidia, ampere, NVIDIA RTX A4000', vendor: 'nvidia', architecture: 'ampere', description: 'NVIDIA RTX A4000', software: false } };
const SOFTWARE = { ok: true as const, value: { adapter: 'google, swiftshader', vendor: 'google', architecture: 'swiftshader', description: '', software: true } };
const TRAIN: JobRequest = { kind: 'train', home: '/nowhere', config: {} as never };

/** In-memory windows: each records what main sent it; the test plays the page. */
function fakeWindows() {
  const windows: Array<{ listener: EngineWindowListener; received: MainToWindow[]; closed: boolean }> = [];
  const open: OpenEngineWindow = (listener) => {
    const w = { listener, received: [] as MainToWindow[], closed: false };
    windows.push(w);
    return { send: (m) => w.received.push(m), close: () => (w.closed = true) };
  };
  const toEngine: MainToEngine[] = [];
  return { windows, open, toEngine };
}

function hello(gpu: Extract<WindowToMain, { type: 'hello' }>['gpu'], problem: string | null = null): WindowToMain {
  return { type: 'hello', pid: 4242, gpu, problem };
}

describe('engine window host (main side)', () => {
  it('sends the job to a window with a hardware adapter, relays its messages, closes it after the result', () => {
    const f = fakeWindows();
    const host = new EngineWindowHost({ open: f.open, toEngine: (m) => f.toEngine.push(m), env: {} });
    host.fromEngine({ type: 'run', id: 1, request: TRAIN });
    host.fromEngine({ type: 'stop', id: 1 }); // before the window is ready: delivered after the job
    const [w] = f.windows;
    w.listener.message(hello(HARDWARE));
    expect(w.received).toEqual([{ type: 'job', request: TRAIN }, { type: 'stop' }]);
    expect(f.toEngine[0]).toEqual({ type: 'started', id: 1, pid: 4242, adapter: 'nvidia, ampere, NVIDIA RTX A4000' });
    w.listener.message({ type: 'message', message: { type: 'progress', message: 'half' } });
    expect(w.closed).toBe(false);
    w.listener.message({ type: 'message', message: { type: 'result', result: 7 } });
    expect(w.closed).toBe(true);
    expect(f.toEngine.slice(1)).toEqual([
      { type: 'message', id: 1, message: { type: 'progress', message: 'half' } },
      { type: 'message', id: 1, message: { type: 'result', result: 7 } },
      { type: 'exit', id: 1, crash: null },
    ]);
    w.listener.gone({ reason: 'clean-exit' }); // closing it is not a crash
    expect(f.toEngine).toHaveLength(4);
  });

  it('declines software adapters unless LOWRANK_BACKEND=webgpu, and remembers why', () => {
    const f = fakeWindows();
    const host = new EngineWindowHost({ open: f.open, toEngine: (m) => f.toEngine.push(m), env: {} });
    host.fromEngine({ type: 'run', id: 1, request: TRAIN });
    f.windows[0].listener.message(hello(SOFTWARE));
    expect(f.windows[0].closed).toBe(true);
    expect(f.toEngine[0]).toMatchObject({ type: 'declined', id: 1, reason: expect.stringMatching(/software renderer 'google, swiftshader'.*LOWRANK_BACKEND=webgpu/) });
    host.fromEngine({ type: 'run', id: 2, request: TRAIN });
    expect(f.windows).toHaveLength(1); // no second window for a known answer
    expect(f.toEngine[1]).toEqual({ ...f.toEngine[0], id: 2 });

    const forced = fakeWindows();
    const forcedHost = new EngineWindowHost({ open: forced.open, toEngine: (m) => forced.toEngine.push(m), env: { LOWRANK_BACKEND: 'WebGPU' } });
    forcedHost.fromEngine({ type: 'run', id: 1, request: TRAIN });
    forced.windows[0].listener.message(hello(SOFTWARE));
    expect(forced.toEngine[0]).toMatchObject({ type: 'started', adapter: 'google, swiftshader' });
  });

  it('declines without a window when another backend is forced, and on every kind of unusable window', () => {
    const f = fakeWindows();
    new EngineWindowHost({ open: f.open, toEngine: (m) => f.toEngine.push(m), env: { LOWRANK_BACKEND: 'wasm' } }).fromEngine({ type: 'run', id: 1, request: TRAIN });
    expect(f.windows).toHaveLength(0);
    expect(f.toEngine).toEqual([{ type: 'declined', id: 1, reason: 'LOWRANK_BACKEND=wasm forces the wasm backend' }]);

    const cases: Array<[(l: EngineWindowListener) => void, RegExp]> = [
      [(l) => l.message(hello({ ok: false, reason: 'navigator.gpu.requestAdapter() found no adapter' })), /^no WebGPU in the engine window: .*found no adapter/],
      [(l) => l.message(hello(HARDWARE, 'better-sqlite3: was compiled against NODE_MODULE_VERSION 115')), /cannot load the job code: better-sqlite3: .*115/],
      [(l) => l.message({ type: 'fatal', message: 'Cannot find module x' }), /failed to load: Cannot find module x/],
      [(l) => l.gone({ reason: 'crashed', exitCode: 11 }), /stopped before it was ready \(crashed\)/],
    ];
    for (const [play, reason] of cases) {
      const g = fakeWindows();
      new EngineWindowHost({ open: g.open, toEngine: (m) => g.toEngine.push(m), env: {} }).fromEngine({ type: 'run', id: 3, request: TRAIN });
      play(g.windows[0].listener);
      expect(g.windows[0].closed).toBe(true);
      expect(g.toEngine).toEqual([{ type: 'declined', id: 3, reason: expect.stringMatching(reason) }]);
    }
  });

  it('reports a window that dies mid-job as a crash with the reason, and one that never says hello', async () => {
    const f = fakeWindows();
    const host = new EngineWindowHost({ open: f.open, toEngine: (m) => f.toEngine.push(m), env: {}, helloTimeoutMs: 50 });
    host.fromEngine({ type: 'run', id: 1, request: TRAIN });
    f.windows[0].listener.message(hello(HARDWARE));
    f.windows[0].listener.gone({ reason: 'oom', exitCode: 9 });
    expect(f.toEngine.at(-1)).toEqual({ type: 'exit', id: 1, crash: expect.stringMatching(/^the engine window ran out of memory; lower the batch size/) });
    host.fromEngine({ type: 'run', id: 2, request: TRAIN });
    expect(f.windows).toHaveLength(2); // a crash mid-job says nothing about the next window
    await new Promise((r) => setTimeout(r, 120));
    expect(f.toEngine.at(-1)).toEqual({ type: 'declined', id: 2, reason: 'the engine window did not start within 0.05 s' });
    expect(f.windows[1].closed).toBe(true);
  });

  it('asks Electron for WebGPU and Vulkan on Linux only', () => {
    expect(webgpuSwitches('linux')).toEqual([{ name: 'enable-unsafe-webgpu' }, { name: 'enable-features', value: 'Vulkan' }]);
    expect(webgpuSwitches('darwin')).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------
// The whole path, with forked processes as windows.

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-engine-window-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
const WINDOW_SCRIPT = path.join(import.meta.dirname, '..', '..', '..', 'test', 'fixtures', 'engine-window-process.ts');

/** main + engine host in one: host.ts opening process-windows, the runner feeding StudioService. */
function appWithProcessWindows(home: string, gpu: Extract<WindowToMain, { type: 'hello' }>['gpu'], extraEnv: Record<string, string> = {}) {
  const children: ChildProcess[] = [];
  const declined: string[] = [];
  const open: OpenEngineWindow = (listener) => {
    const child = fork(WINDOW_SCRIPT, [], {
      execArgv: ['--import', 'tsx'],
      env: { ...process.env, TEST_WINDOW_GPU: JSON.stringify(gpu), ...extraEnv },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      serialization: 'advanced',
    });
    children.push(child);
    let closing = false;
    child.on('message', (m: WindowToMain) => listener.message(m));
    child.on('exit', (code, signal) => {
      if (!closing) listener.gone({ reason: signal === 'SIGKILL' ? 'killed' : 'crashed', exitCode: code ?? undefined });
    });
    return {
      send: (m) => child.connected && child.send(m),
      close: () => {
        closing = true;
        child.kill('SIGKILL');
      },
    };
  };
  // Messages cross asynchronously, as over Electron's IPC.
  let runner: WindowJobRunner;
  const host = new EngineWindowHost({ open, toEngine: (m) => setImmediate(() => runner.fromMain(m)), env: {} });
  runner = new WindowJobRunner({ toMain: (m) => setImmediate(() => host.fromEngine(m)), onDeclined: (r) => declined.push(r) });
  const service = new StudioService({ home, transport: 'electron', fileDialog: false, jobRunner: runner.run });
  return { service, children, declined };
}

function waitFor(service: StudioService, predicate: (e: StudioEvent) => boolean, timeoutMs = 120_000): Promise<StudioEvent> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timed out waiting for an event')), timeoutMs);
    const off = service.subscribe((e) => {
      if (predicate(e)) {
        clearTimeout(timer);
        off();
        resolve(e);
      }
    });
  });
}

const config = (steps: number) => ({
  ...FINETUNE_DEFAULTS,
  model: BUNDLED_MODEL_DIR,
  data: path.join(RESOURCES_DIR, 'datasets', 'review-sentiment.jsonl'),
  method: 'lora',
  params: { rank: 2 },
  steps,
  epochs: null,
  batchSize: 2,
  seqLen: 32,
  evalEvery: 100,
  checkpointEvery: 100,
  metricExamples: 0,
});

describe.skipIf(!fs.existsSync(path.join(BUNDLED_MODEL_DIR, 'config.json')))('training through an engine window', () => {
  it('trains in the window (events, pid, result) and a window crash fails only that run', async () => {
    const app = appWithProcessWindows(path.join(root, 'home-a'), HARDWARE);
    try {
      const finished = waitFor(app.service, (e) => e.type === 'run-finished' || e.type === 'run-failed');
      const { runId } = (await app.service.call('runs.start', { config: config(3) })) as { runId: string };
      expect(await finished).toMatchObject({ type: 'run-finished', runId });
      expect(app.children).toHaveLength(1);
      const detail = (await app.service.call('runs.get', { runId })) as { run: Run; logs: Array<{ message: string }> };
      expect(detail.run.status).toBe('completed');
      expect(detail.run.pid).toBe(app.children[0].pid); // the job ran in the window's process
      expect(detail.logs.map((l) => l.message)).toContainEqual(expect.stringMatching(/^backend: /));

      // A crash: the window's process is killed mid-run; the service marks the run failed and lives on.
      const failed = waitFor(app.service, (e) => e.type === 'run-failed');
      const firstStep = waitFor(app.service, (e) => e.type === 'step');
      const second = (await app.service.call('runs.start', { config: config(400) })) as { runId: string };
      await firstStep;
      app.children[1].kill('SIGKILL');
      expect(await failed).toMatchObject({ runId: second.runId, code: 'ENGINE_CRASHED', message: expect.stringMatching(/engine window's process was killed/) });
      const after = (await app.service.call('runs.get', { runId: second.runId })) as { run: Run; fix: string | null };
      expect(after.run.status).toBe('failed');
      expect(after.fix).toBeTruthy();
    } finally {
      await app.service.close();
    }
  }, 180_000);

  it('pauses, resumes and cancels a window job like a forked one', async () => {
    const app = appWithProcessWindows(path.join(root, 'home-b'), HARDWARE);
    try {
      const firstStep = waitFor(app.service, (e) => e.type === 'step');
      const { runId } = (await app.service.call('runs.start', { config: config(400) })) as { runId: string };
      await firstStep;
      expect(await app.service.call('runs.pause', { runId })).toEqual({ status: 'paused' });
      let stepsWhilePaused = 0;
      const off = app.service.subscribe((e) => e.type === 'step' && stepsWhilePaused++);
      await new Promise((r) => setTimeout(r, 1500));
      off();
      expect(stepsWhilePaused).toBeLessThanOrEqual(1); // SIGSTOP froze the window's process
      const ended = waitFor(app.service, (e) => e.type === 'run-finished' || e.type === 'run-failed' || (e.type === 'run-status' && e.status === 'cancelled'));
      await app.service.call('runs.resume', { runId });
      await app.service.call('runs.cancel', { runId });
      await ended;
      await expect.poll(async () => ((await app.service.call('runs.get', { runId })) as { run: Run }).run.status, { timeout: 60_000 }).toBe('cancelled');
    } finally {
      await app.service.close();
    }
  }, 180_000);

  it('runs in a forked process when the window has only a software adapter, saying why once', async () => {
    const app = appWithProcessWindows(path.join(root, 'home-c'), SOFTWARE);
    try {
      const finished = waitFor(app.service, (e) => e.type === 'run-finished' || e.type === 'run-failed');
      const { runId } = (await app.service.call('runs.start', { config: config(2) })) as { runId: string };
      expect(await finished).toMatchObject({ type: 'run-finished', runId });
      const { run } = (await app.service.call('runs.get', { runId })) as { run: Run };
      expect(run.pid).not.toBe(app.children[0].pid);
      expect(app.declined).toEqual([expect.stringMatching(/software renderer 'google, swiftshader'/)]);
      await app.service.call('runs.start', { config: config(1) });
      await waitFor(app.service, (e) => e.type === 'run-finished' || e.type === 'run-failed');
      expect(app.children).toHaveLength(1); // the second job did not try a window again
      expect(app.declined).toHaveLength(1);
    } finally {
      await app.service.close();
    }
  }, 180_000);
});
