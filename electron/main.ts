/**
 * Electron main process: the composition root and nothing else. It forks one engine process
 * hosting core/service.ts (core/service/engine-host.js), wires IPC from the window to it, and
 * owns the system file dialog: a path reaches the engine only after the user picked it there.
 * A crash of the engine process is reported to the window and the engine is started again;
 * training jobs run in the engine's own children, so their crash marks only their run failed.
 * Training on the GPU runs in hidden engine windows (Electron's own WebGPU), one per job, opened
 * here for the engine (core/service/engine-window/host.ts holds the logic).
 */
import { app, BrowserWindow, dialog, ipcMain, session, type IpcMainInvokeEvent } from 'electron';
import { fork, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildSync } from 'esbuild';
import { CALLS, type WireError } from '../core/contract.ts';
import type { HostFrame } from '../core/service/engine-host.ts';
import { EngineWindowHost, webgpuSwitches, type OpenEngineWindow } from '../core/service/engine-window/host.ts';
import { buildEngineWindowBundle, type EngineWindowBundle } from '../core/service/engine-window/bundle.ts';
import { ENGINE_WINDOW_CHANNEL, type WindowToMain } from '../core/service/engine-window/protocol.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const ENGINE_ENTRY = path.join(ROOT, 'core', 'service', 'engine-host.js');
const RENDERER_INDEX = path.join(ROOT, 'renderer', 'dist', 'index.html');
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'";

// Before app.ready, or Chromium ignores them.
for (const { name, value } of webgpuSwitches(process.platform)) app.commandLine.appendSwitch(name, value);

let engine: ChildProcess | null = null;
let window: BrowserWindow | null = null;
let nextId = 1;
/** Runs training in the engine now, from its events: failed by main if the engine dies. */
const trainingRuns = new Set<string>();
const pending = new Map<number, (frame: { ok: true; reply: unknown } | { ok: false; error: WireError }) => void>();

/**
 * The engine's runtime. Packaged: Electron itself as Node (ELECTRON_RUN_AS_NODE), with native
 * modules rebuilt for its ABI by electron-builder. In development the native modules are built
 * for the system Node (the CLI and the tests use them), so the engine runs on that Node:
 * bin/start.js passes its own path as LOWRANK_NODE.
 */
function engineRuntime(): string {
  if (app.isPackaged) return process.execPath;
  return process.env.LOWRANK_NODE && fs.existsSync(process.env.LOWRANK_NODE) ? process.env.LOWRANK_NODE : process.execPath;
}

function startEngine(): ChildProcess {
  const child = fork(ENGINE_ENTRY, [], {
    execPath: engineRuntime(),
    env: { ...process.env, ELECTRON_RUN_AS_NODE: '1', LOWRANK_ENGINE_WINDOW: '1', LOWRANK_HOME: process.env.LOWRANK_HOME ?? path.join(app.getPath('userData'), 'store') },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    // Job results and events cross this channel from engine windows too (NaN losses included).
    serialization: 'advanced',
  });
  child.on('message', (frame: HostFrame) => {
    if ('engineWindow' in frame) {
      if (engine === child) engineWindows.fromEngine(frame.engineWindow);
      return;
    }
    if ('event' in frame) {
      const e = frame.event;
      if (e.type === 'run-started') trainingRuns.add(e.runId);
      if (e.type === 'run-finished' || e.type === 'run-failed') trainingRuns.delete(e.runId);
      window?.webContents.send('studio:event', e);
      return;
    }
    pending.get(frame.id)?.(frame);
    pending.delete(frame.id);
  });
  child.on('exit', (code, signal) => {
    const error = { code: 'ENGINE_CRASHED', message: `the engine process stopped (${signal ?? `exit code ${code}`}); it is being restarted` };
    for (const reply of pending.values()) reply({ ok: false, error });
    pending.clear();
    if (engine === child) engineWindows.closeAll();
    if (engine === child && !quitting) {
      engine = startEngine();
      // The window lives on; the runs the dead engine was training are marked failed with the reason.
      if (trainingRuns.size) engine.send({ failRuns: [...trainingRuns], message: `${error.message.replace(/; it is being restarted$/, '')}; start the run again` });
      trainingRuns.clear();
    }
  });
  return child;
}

function callEngine(call: string, request: unknown): Promise<{ ok: true; reply: unknown } | { ok: false; error: WireError }> {
  // The engine validates every request against the contract's schema; main refuses unknown calls early.
  if (typeof call !== 'string' || !Object.hasOwn(CALLS, call)) return Promise.resolve({ ok: false, error: { code: 'BAD_ARGUMENT', message: `unknown call "${String(call)}"` } });
  const id = nextId++;
  return new Promise((resolve) => {
    pending.set(id, resolve);
    engine!.send({ id, call, request });
  });
}

async function pickPath(kind: unknown): Promise<string | null> {
  if (kind !== 'model' && kind !== 'dataset' && kind !== 'directory') return null;
  const options: Electron.OpenDialogOptions =
    kind === 'dataset'
      ? { title: 'Choose a dataset', properties: ['openFile'], filters: [{ name: 'Datasets', extensions: ['jsonl', 'json', 'csv', 'txt'] }] }
      : { title: kind === 'model' ? 'Choose a model folder' : 'Choose a destination folder', properties: ['openDirectory', 'createDirectory'] };
  const result = window ? await dialog.showOpenDialog(window, options) : await dialog.showOpenDialog(options);
  if (result.canceled || result.filePaths.length === 0) return null;
  const picked = result.filePaths[0];
  engine!.send({ grant: picked, kind });
  return picked;
}

/** Sandboxed preloads cannot load ES modules or TypeScript: bundle preload.ts to CommonJS once. */
function buildPreload(): string {
  const out = path.join(app.getPath('userData'), 'preload.cjs');
  buildSync({ entryPoints: [path.join(ROOT, 'electron', 'preload.ts')], bundle: true, platform: 'node', format: 'cjs', external: ['electron'], outfile: out, logLevel: 'warning' });
  return out;
}

let engineBundle: Promise<EngineWindowBundle> | null = null;

/** A hidden engine window: Node in the page (the job code needs files and SQLite), own session. */
const openEngineWindow: OpenEngineWindow = (listener) => {
  const win = new BrowserWindow({
    show: false,
    webPreferences: { nodeIntegration: true, contextIsolation: false, sandbox: false, backgroundThrottling: false, partition: 'lowrank-engine' },
  });
  const contents = win.webContents;
  const onMessage = (event: Electron.IpcMainEvent, m: WindowToMain) => {
    if (event.sender === contents) listener.message(m);
  };
  ipcMain.on(ENGINE_WINDOW_CHANNEL, onMessage);
  win.on('closed', () => ipcMain.removeListener(ENGINE_WINDOW_CHANNEL, onMessage));
  contents.on('render-process-gone', (_event, details) => listener.gone({ reason: details.reason, exitCode: details.exitCode }));
  contents.on('did-fail-load', (_event, code, description) => listener.gone({ reason: `its page did not load: ${description} (${code})` }));
  contents.setWindowOpenHandler(() => ({ action: 'deny' }));
  contents.on('will-navigate', (event) => event.preventDefault());
  engineBundle ??= buildEngineWindowBundle({ outDir: path.join(app.getPath('userData'), 'engine-window') });
  engineBundle.then(
    (bundle) => {
      // A failed load is reported by did-fail-load above.
      if (!win.isDestroyed()) win.loadFile(bundle.html).catch(() => undefined);
    },
    (e: unknown) => listener.message({ type: 'fatal', message: `building its bundle failed: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}` }),
  );
  return {
    send: (m) => {
      if (!win.isDestroyed()) contents.send(ENGINE_WINDOW_CHANNEL, m);
    },
    close: () => {
      if (!win.isDestroyed()) win.destroy();
    },
  };
};

const engineWindows = new EngineWindowHost({
  open: openEngineWindow,
  toEngine: (m) => engine?.send({ engineWindow: m }),
});

function fromOurWindow(event: IpcMainInvokeEvent): boolean {
  return window !== null && event.sender === window.webContents && event.senderFrame?.url.startsWith('file://') === true;
}

let quitting = false;

app.whenReady().then(() => {
  session.defaultSession.setPermissionRequestHandler((_wc, _permission, callback) => callback(false));
  session.defaultSession.webRequest.onHeadersReceived((details, callback) => {
    callback({ responseHeaders: { ...details.responseHeaders, 'Content-Security-Policy': [CSP] } });
  });
  engine = startEngine();
  ipcMain.handle('studio:call', (event, call: unknown, request: unknown) =>
    fromOurWindow(event) ? callEngine(String(call), request) : { ok: false, error: { code: 'FORBIDDEN', message: 'not from the app window' } },
  );
  ipcMain.handle('studio:pick', (event, kind: unknown) => (fromOurWindow(event) ? pickPath(kind) : null));

  window = new BrowserWindow({
    width: 1360,
    height: 900,
    title: 'Lowrank Studio',
    webPreferences: { contextIsolation: true, sandbox: true, nodeIntegration: false, webSecurity: true, preload: buildPreload() },
  });
  window.webContents.setWindowOpenHandler(() => ({ action: 'deny' }));
  window.webContents.on('will-navigate', (event, url) => {
    if (!url.startsWith('file://')) event.preventDefault();
  });
  if (!fs.existsSync(RENDERER_INDEX)) {
    dialog.showErrorBox('Lowrank Studio', 'The renderer is not built; run `npm run build:renderer` first.');
    app.quit();
    return;
  }
  void window.loadFile(RENDERER_INDEX);
  window.on('closed', () => (window = null));
});

app.on('window-all-closed', () => app.quit());
app.on('before-quit', () => {
  quitting = true;
  engine?.kill();
});
