/**
 * The renderer's one door to the engine. It detects its transport: inside Electron the preload
 * script exposes `window.studio` (IPC); in a browser served by `lowrank serve` it opens the
 * WebSocket with the token from the page's own address. Both speak core/contract.ts.
 */
import { reactive } from 'vue';
import type { CallName, Replies, Request, ServerFrame, StudioEvent, WireError } from '../../core/contract.ts';

/** What electron/preload.ts exposes: one method per call, grouped (`studio.runs.start`), plus events and the dialog. */
export interface StudioBridge {
  invoke(call: string, request: unknown): Promise<{ ok: true; reply: unknown } | { ok: false; error: WireError }>;
  onEvent(listener: (e: StudioEvent) => void): () => void;
  pickPath(kind: 'model' | 'dataset' | 'directory'): Promise<string | null>;
}

declare global {
  interface Window {
    studio?: StudioBridge & Record<string, unknown>;
  }
}

export class ApiError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

type Listener = (e: StudioEvent) => void;

interface Transport {
  kind: 'electron' | 'websocket';
  call(name: string, request: unknown): Promise<unknown>;
  onEvent(listener: Listener): () => void;
  pickPath?(kind: 'model' | 'dataset' | 'directory'): Promise<string | null>;
}

function electronTransport(bridge: StudioBridge): Transport {
  return {
    kind: 'electron',
    async call(name, request) {
      const r = await bridge.invoke(name, request);
      if (!r.ok) throw new ApiError(r.error.code, r.error.message);
      return r.reply;
    },
    onEvent: (l) => bridge.onEvent(l),
    pickPath: (kind) => bridge.pickPath(kind),
  };
}

/**
 * Serve mode's link to the server, for the banner: 'unreachable' when the server does not answer,
 * 'stale-token' when it answers but no longer accepts this page's token (it was restarted).
 */
export const connection = reactive({ state: 'connecting' as 'connecting' | 'ok' | 'unreachable' | 'stale-token' });
const RECONNECT_MS = 2000;

function websocketTransport(): Transport {
  const token = new URLSearchParams(location.search).get('token') ?? sessionStorage.getItem('lowrank-token') ?? '';
  sessionStorage.setItem('lowrank-token', token);
  const listeners = new Set<Listener>();
  const pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  let nextId = 1;
  let socket: Promise<WebSocket> | null = null;
  let retry: ReturnType<typeof setTimeout> | undefined;
  // A browser's WebSocket does not say why a connection failed: ask the server whether the token is the problem.
  const diagnose = async () => {
    try {
      const r = await fetch(`/auth?token=${encodeURIComponent(token)}`, { cache: 'no-store' });
      connection.state = r.status === 401 ? 'stale-token' : 'connecting';
    } catch {
      connection.state = 'unreachable';
    }
    // Keep trying while the server is away; a stale token needs the new address, not retries.
    clearTimeout(retry);
    if (connection.state !== 'stale-token') retry = setTimeout(() => void connect().catch(() => {}), RECONNECT_MS);
  };
  const connect = (): Promise<WebSocket> => {
    socket ??= new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://${location.host}/ws?token=${encodeURIComponent(token)}`);
      let opened = false;
      ws.onopen = () => {
        opened = true;
        connection.state = 'ok';
        resolve(ws);
      };
      ws.onerror = () => reject(new ApiError('DISCONNECTED', 'cannot reach the Lowrank server; open the address it printed (with its token)'));
      ws.onclose = () => {
        socket = null;
        for (const p of pending.values()) p.reject(new ApiError('DISCONNECTED', 'the connection to the Lowrank server closed'));
        pending.clear();
        if (!opened) reject(new ApiError('DISCONNECTED', 'cannot reach the Lowrank server; open the address it printed (with its token)'));
        void diagnose();
      };
      ws.onmessage = (m) => {
        const frame = JSON.parse(String(m.data)) as ServerFrame;
        if ('event' in frame) {
          for (const l of listeners) l(frame.event);
          return;
        }
        const p = pending.get(frame.id);
        if (!p) return;
        pending.delete(frame.id);
        if (frame.ok) p.resolve(frame.reply);
        else p.reject(new ApiError(frame.error.code, frame.error.message));
      };
    });
    return socket;
  };
  return {
    kind: 'websocket',
    async call(name, request) {
      const ws = await connect();
      const id = nextId++;
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        ws.send(JSON.stringify({ id, call: name, request }));
      });
    },
    onEvent(l) {
      listeners.add(l);
      void connect().catch(() => {});
      return () => listeners.delete(l);
    },
  };
}

const transport: Transport = window.studio ? electronTransport(window.studio) : websocketTransport();
if (window.studio) connection.state = 'ok';

export const api = {
  transport: transport.kind,
  call<K extends CallName>(name: K, request: Request<K>): Promise<Replies[K]> {
    return transport.call(name, request) as Promise<Replies[K]>;
  },
  onEvent: (listener: Listener) => transport.onEvent(listener),
  /** The system file dialog (Electron only); null when cancelled. */
  pickPath: transport.pickPath,
};

/**
 * Browser mode: the address that downloads `file` of the export folder `folder` (under the server's
 * exports/), with the page's token; null in Electron, where the export is on the user's own disk.
 */
export function exportDownloadUrl(folder: string, file: string): string | null {
  if (transport.kind !== 'websocket') return null;
  const token = sessionStorage.getItem('lowrank-token') ?? '';
  return `/exports/${encodeURIComponent(folder)}/${encodeURIComponent(file)}?token=${encodeURIComponent(token)}`;
}

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
