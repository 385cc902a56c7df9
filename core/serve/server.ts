/**
 * `lowrank serve`: the service over a WebSocket on 127.0.0.1, plus the built renderer as static
 * files. The socket requires the random token printed in the URL (`/?token=...`); the page reads
 * it from its own address. Only loopback is bound: a headless box is reached through an SSH tunnel.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { WebSocketServer, type WebSocket } from 'ws';
import { StudioService, toWireError } from '../service.ts';
import type { ClientFrame, ServerFrame } from '../contract.ts';

export const RENDERER_DIST = path.resolve(import.meta.dirname, '..', '..', 'renderer', 'dist');
export const SERVE_HOST = '127.0.0.1';

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
};

/** The page may only talk to this server; no inline scripts, no frames, no plugins. */
export const CONTENT_SECURITY_POLICY =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws://127.0.0.1:*; " +
  "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

export interface ServeOptions {
  port: number;
  home: string;
  roots?: string[];
  rendererDir?: string;
  /** Fixed token (tests); default: 32 random bytes. */
  token?: string;
}

export interface RunningServer {
  url: string;
  port: number;
  token: string;
  service: StudioService;
  close(): Promise<void>;
}

function tokenMatches(given: string | null, token: string): boolean {
  if (!given) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

function serveStatic(dir: string, req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = new URL(req.url ?? '/', 'http://localhost');
  let rel = decodeURIComponent(url.pathname);
  if (rel === '/' || !path.extname(rel)) rel = '/index.html'; // the router's history paths
  const file = path.resolve(dir, `.${rel}`);
  if (!file.startsWith(dir + path.sep) || !fs.existsSync(file)) {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
    return;
  }
  res.writeHead(200, {
    'content-type': CONTENT_TYPES[path.extname(file)] ?? 'application/octet-stream',
    'content-security-policy': CONTENT_SECURITY_POLICY,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'cache-control': 'no-store',
  });
  fs.createReadStream(file).pipe(res);
}

/**
 * `GET /exports/<folder>/<file>?token=…`: a file of an export under the store's exports/ folder, as
 * a download (browser mode has no file system of its own to show the export in). One folder level,
 * plain names only, the real path checked to stay inside exports/.
 */
function serveExport(exportsDir: string, req: http.IncomingMessage, res: http.ServerResponse, token: string): void {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const parts = url.pathname.split('/').slice(2).map((p) => decodeURIComponent(p));
  const plain = (name: string) => /^[^/\\]+$/.test(name) && !name.startsWith('.');
  if (!tokenMatches(url.searchParams.get('token'), token)) return void res.writeHead(401, { 'content-type': 'text/plain' }).end('a download needs the token of the address the server printed');
  if (parts.length !== 2 || !parts.every(plain)) return void res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
  let file: string;
  try {
    const root = fs.realpathSync(exportsDir);
    file = fs.realpathSync(path.join(exportsDir, parts[0]!, parts[1]!));
    if (!file.startsWith(root + path.sep) || !fs.statSync(file).isFile()) throw new Error('outside');
  } catch {
    return void res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
  }
  res.writeHead(200, {
    'content-type': 'application/octet-stream',
    'content-length': String(fs.statSync(file).size),
    'content-disposition': `attachment; filename="${parts[1]!.replace(/[^\w.-]/g, '_')}"`,
    'x-content-type-options': 'nosniff',
    'cache-control': 'no-store',
  });
  fs.createReadStream(file).pipe(res);
}

export async function startServer(options: ServeOptions): Promise<RunningServer> {
  const rendererDir = path.resolve(options.rendererDir ?? RENDERER_DIST);
  const token = options.token ?? randomBytes(32).toString('base64url');
  const service = new StudioService({ home: options.home, transport: 'websocket', fileDialog: false, roots: options.roots });
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET') return void res.writeHead(405).end();
    if ((req.url ?? '').startsWith('/exports/')) return serveExport(service.exportsDir(), req, res, token);
    // The page asks whether its token is still this server's, to tell a stale tab from a server that is down.
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname === '/auth') return void res.writeHead(tokenMatches(url.searchParams.get('token'), token) ? 204 : 401, { 'cache-control': 'no-store' }).end();
    if (!fs.existsSync(path.join(rendererDir, 'index.html'))) {
      return void res.writeHead(503, { 'content-type': 'text/plain' }).end('the renderer is not built; run `npm run build:renderer`');
    }
    serveStatic(rendererDir, req, res);
  });
  const wss = new WebSocketServer({ noServer: true, maxPayload: 80 * 1024 * 1024 });
  server.on('upgrade', (req, socket, head) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const host = req.headers.host ?? '';
    const origin = req.headers.origin;
    // The token keeps other local users and web pages out; the Origin check stops a page on
    // another site that learned the token from using it via the victim's browser.
    const originOk = origin === undefined || origin === `http://${host}`;
    if (url.pathname !== '/ws' || !tokenMatches(url.searchParams.get('token'), token) || !originOk) {
      socket.write('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\n');
      socket.destroy();
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws));
  });
  wss.on('connection', (ws: WebSocket) => {
    const send = (frame: ServerFrame) => {
      if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(frame));
    };
    const unsubscribe = service.subscribe((event) => send({ event }));
    ws.on('close', unsubscribe);
    ws.on('message', (data) => {
      let frame: ClientFrame;
      try {
        frame = JSON.parse(String(data)) as ClientFrame;
        if (typeof frame !== 'object' || frame === null || typeof frame.id !== 'number' || typeof frame.call !== 'string') throw new Error('bad frame');
      } catch {
        return send({ id: -1, ok: false, error: { code: 'BAD_ARGUMENT', message: 'a frame is {"id": number, "call": string, "request": object}' } });
      }
      service.call(frame.call, frame.request).then(
        (reply) => send({ id: frame.id, ok: true, reply }),
        (e: unknown) => send({ id: frame.id, ok: false, error: toWireError(e) }),
      );
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, SERVE_HOST, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://${SERVE_HOST}:${port}/?token=${token}`,
    port,
    token,
    service,
    close: async () => {
      for (const client of wss.clients) client.terminate();
      wss.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await service.close();
    },
  };
}
