/**
 * The service at its edge, without a browser or training: requests are validated against the
 * contract (wrong types, extra fields, unknown calls refused), paths outside the allowed roots
 * are refused, uploads stay in uploads/, and `lowrank serve` binds loopback, requires its token
 * and sends a Content-Security-Policy.
 */
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import WebSocket from 'ws';
import { StudioService } from '../service.ts';
import { startServer } from '../serve/server.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-service-'));
const service = new StudioService({ home: path.join(root, 'home'), transport: 'websocket', fileDialog: false });
afterAll(async () => {
  await service.close();
  fs.rmSync(root, { recursive: true, force: true });
});

const rejection = (p: Promise<unknown>) => p.then(() => null, (e: { code: string; message: string }) => e);

describe('service contract', () => {
  it('rejects wrong types, extra fields and unknown calls', async () => {
    const wrongType = await rejection(service.call('runs.list', { limit: '5' }));
    expect(wrongType?.code).toBe('BAD_ARGUMENT');
    expect(wrongType?.message).toMatch(/limit/);
    const extra = await rejection(service.call('runs.get', { runId: 'x', also: 1 }));
    expect(extra?.code).toBe('BAD_ARGUMENT');
    expect(extra?.message).toMatch(/also|unrecognized/i);
    const badConfig = await rejection(service.call('runs.start', { config: { model: 1 } }));
    expect(badConfig?.code).toBe('BAD_ARGUMENT');
    expect((await rejection(service.call('__proto__', {})))?.code).toBe('BAD_ARGUMENT');
    expect((await rejection(service.call('constructor', {})))?.code).toBe('BAD_ARGUMENT');
    expect(Array.isArray(await service.call('methods.list', {}))).toBe(true);
  });

  it('refuses paths outside the allowed roots, also through ../ and symlinks', async () => {
    for (const p of ['/etc', path.join(root, 'home', 'uploads', '..', '..', '..')]) {
      expect((await rejection(service.call('models.inspect', { path: p })))?.message).toMatch(/file picker/);
    }
    fs.mkdirSync(path.join(root, 'home', 'uploads'), { recursive: true });
    fs.symlinkSync('/etc/passwd', path.join(root, 'home', 'uploads', 'passwd.txt'));
    const viaLink = await rejection(service.call('datasets.preview', { model: '/nope', data: path.join(root, 'home', 'uploads', 'passwd.txt'), seqLen: 64, format: 'auto', count: 1, validation: 0 }));
    expect(viaLink?.code).toBe('BAD_ARGUMENT');
    expect((await rejection(service.call('files.browse', { dir: '/' })))?.code).toBe('BAD_ARGUMENT');
  });

  it('keeps uploads inside uploads/ whatever their name', async () => {
    const entry = (await service.call('datasets.upload', { name: '../../evil.jsonl', content: '{"text":"hi"}\n' })) as { path: string };
    expect(path.dirname(entry.path)).toBe(path.join(root, 'home', 'uploads'));
    expect((await rejection(service.call('datasets.upload', { name: 'x.sh', content: 'echo' })))?.code).toBe('BAD_ARGUMENT');
  });
});

describe('lowrank serve', () => {
  it('binds 127.0.0.1, requires the token and sends a CSP', async () => {
    const server = await startServer({ port: 0, home: path.join(root, 'serve-home'), rendererDir: path.join(root, 'no-renderer') });
    try {
      expect(new URL(server.url).hostname).toBe('127.0.0.1');
      const connect = (query: string) =>
        new Promise<string>((resolve) => {
          const ws = new WebSocket(`ws://127.0.0.1:${server.port}/ws${query}`);
          ws.once('open', () => (ws.close(), resolve('open')));
          ws.once('unexpected-response', (_req, res) => resolve(`HTTP ${res.statusCode}`));
          ws.once('error', () => resolve('error'));
        });
      expect(await connect('')).toBe('HTTP 401');
      expect(await connect('?token=nope')).toBe('HTTP 401');
      expect(await connect(`?token=${server.token}`)).toBe('open');
      fs.mkdirSync(path.join(root, 'no-renderer'), { recursive: true });
      fs.writeFileSync(path.join(root, 'no-renderer', 'index.html'), '<!doctype html>');
      const res = await fetch(`http://127.0.0.1:${server.port}/`);
      expect(res.headers.get('content-security-policy')).toMatch(/script-src 'self'/);
      expect((await fetch(`http://127.0.0.1:${server.port}/..%2f..%2fpackage.json`)).status).toBe(404);
    } finally {
      await server.close();
    }
  });
});
