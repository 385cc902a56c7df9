/**
 * The engine window's page script (bundled by bundle.ts; Electron renderer with nodeIntegration,
 * contextIsolation off, no sandbox): serves protocol.ts over ipcRenderer (window-main.ts), with
 * tfjs-backend-webgpu over this window's own navigator.gpu.
 */
import { ipcRenderer } from 'electron';
import Database from 'better-sqlite3';
import { builtInWebgpuAdapter } from '../../backend/webgpu.ts';
import { startWindowBackend } from './window-backend.ts';
import { serveEngineWindow } from './window-main.ts';
import { ENGINE_WINDOW_CHANNEL, type MainToWindow, type WindowToMain } from './protocol.ts';

/**
 * The run store is SQLite through better-sqlite3, a native module: it loads here only when built
 * for Electron's ABI (electron-builder rebuilds it when packaging; a development checkout has it
 * built for the system Node, and then jobs run in Node processes).
 */
function storeProblem(): string | null {
  try {
    new Database(':memory:').close();
    return null;
  } catch (e) {
    return `better-sqlite3: ${(e instanceof Error ? e.message : String(e)).split('\n')[0]}`;
  }
}

const send = (m: WindowToMain) => ipcRenderer.send(ENGINE_WINDOW_CHANNEL, m);
addEventListener('unhandledrejection', (e) => send({ type: 'fatal', message: String((e as PromiseRejectionEvent).reason) }));
serveEngineWindow(
  { send, onMessage: (listener) => ipcRenderer.on(ENGINE_WINDOW_CHANNEL, (_event, m: MainToWindow) => listener(m)) },
  { pid: process.pid, adapter: builtInWebgpuAdapter, jobCodeProblem: storeProblem, startBackend: startWindowBackend },
);
