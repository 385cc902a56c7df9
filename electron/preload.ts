/**
 * Preload (sandboxed, context-isolated): exposes `window.studio`, one method per call of
 * core/contract.ts (`studio.runs.start(request)`), an event subscription that returns its
 * unsubscribe, and the system file dialog. The renderer never sees ipcRenderer or Node.
 * Bundled to CommonJS by electron/main.ts (sandboxed preloads cannot load ES modules).
 */
import { contextBridge, ipcRenderer, type IpcRendererEvent } from 'electron';
import type { CallName, StudioEvent } from '../core/contract.ts';

/** Every call of the contract; the type below fails to compile if one is missing or unknown. */
const CALL_NAMES = [
  'app.info', 'models.list', 'models.inspect', 'models.pull', 'datasets.list', 'datasets.upload', 'datasets.preview', 'files.browse',
  'methods.list', 'methods.estimates', 'runs.estimate', 'runs.start', 'runs.list', 'runs.get', 'runs.pause', 'runs.resume',
  'runs.cancel', 'runs.delete', 'runs.compare', 'runs.exportOptions', 'runs.export', 'playground.generate', 'playground.stop',
  'elsewhere.local', 'runs.exportJob', 'runs.launchElsewhere',
  'datasets.delete', 'runs.deleteExport',
  'bakeoffs.start', 'bakeoffs.get',
] as const satisfies readonly CallName[];
type Missing = Exclude<CallName, (typeof CALL_NAMES)[number]>;
const exhaustive: Missing extends never ? true : Missing = true;
void exhaustive;

const invoke = (call: string, request: unknown) => ipcRenderer.invoke('studio:call', call, request);

const grouped: Record<string, Record<string, (request: unknown) => Promise<unknown>>> = {};
for (const name of CALL_NAMES) {
  const [group, method] = name.split('.');
  grouped[group] ??= {};
  grouped[group][method] = async (request: unknown) => {
    const r = await invoke(name, request);
    if (!r.ok) throw Object.assign(new Error(r.error.message), { code: r.error.code });
    return r.reply;
  };
}

contextBridge.exposeInMainWorld('studio', {
  ...grouped,
  invoke,
  onEvent(listener: (e: StudioEvent) => void): () => void {
    const handler = (_: IpcRendererEvent, e: StudioEvent) => listener(e);
    ipcRenderer.on('studio:event', handler);
    return () => ipcRenderer.removeListener('studio:event', handler);
  },
  pickPath: (kind: 'model' | 'dataset' | 'directory'): Promise<string | null> => ipcRenderer.invoke('studio:pick', kind),
});
