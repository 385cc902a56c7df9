/**
 * electron/preload.ts as Electron will load it (bundled to CommonJS, as main.ts does): it
 * requires nothing but `electron`, exposes one method per contract call plus an event
 * subscription that returns its unsubscribe, and never hands ipcRenderer to the page.
 */
import { describe, expect, it } from 'vitest';
import * as path from 'node:path';
import { buildSync } from 'esbuild';
import { CALLS } from '../../core/contract.ts';

describe('preload', () => {
  it('exposes window.studio with one method per call and unsubscribable events', async () => {
    const out = buildSync({ entryPoints: [path.resolve(import.meta.dirname, '..', '..', 'electron', 'preload.ts')], bundle: true, platform: 'node', format: 'cjs', external: ['electron'], write: false });
    const code = out.outputFiles[0].text;
    const required: string[] = [];
    const exposed: Record<string, any> = {};
    const listeners = new Map<string, Set<unknown>>();
    const invoked: unknown[][] = [];
    const electron = {
      contextBridge: { exposeInMainWorld: (key: string, api: unknown) => (exposed[key] = api) },
      ipcRenderer: {
        invoke: async (...args: unknown[]) => (invoked.push(args), { ok: true, reply: 'pong' }),
        on: (channel: string, fn: unknown) => (listeners.get(channel) ?? listeners.set(channel, new Set()).get(channel)!).add(fn),
        removeListener: (channel: string, fn: unknown) => listeners.get(channel)?.delete(fn),
      },
    };
    const module = { exports: {} };
    new Function('require', 'module', 'exports', code)((name: string) => (required.push(name), name === 'electron' ? electron : undefined), module, module.exports);
    expect(new Set(required)).toEqual(new Set(['electron']));
    const studio = exposed.studio;
    for (const name of Object.keys(CALLS)) {
      const [group, method] = name.split('.');
      expect(typeof studio[group]?.[method], name).toBe('function');
    }
    expect(await studio.runs.list({ limit: 1 })).toBe('pong');
    expect(invoked.at(-1)).toEqual(['studio:call', 'runs.list', { limit: 1 }]);
    const unsubscribe = studio.onEvent(() => {});
    expect(listeners.get('studio:event')?.size).toBe(1);
    unsubscribe();
    expect(listeners.get('studio:event')?.size).toBe(0);
    expect(JSON.stringify(Object.keys(studio))).not.toMatch(/ipcRenderer/);
  });
});
