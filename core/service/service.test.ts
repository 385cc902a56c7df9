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
import type { RunDetail } from '../contract.ts';
import { startServer } from '../serve/server.ts';
import { BUNDLED_MODEL_DIR, RESOURCES_DIR } from '../resources.ts';

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
    const methods = await service.call('methods.list', {});
    expect(Array.isArray(methods)).toBe(true);
    // Electron's IPC sends replies by structured clone: no method function (attach, countTrainable, unavailableExports) may ride along.
    expect(() => structuredClone(methods)).not.toThrow();
  });

  // Each rule gets a request that is valid in every other respect (the bundled model, a real
  // dataset file), so the only thing that can refuse it is the allowed-paths check named.
  const uploads = path.join(root, 'home', 'uploads');
  const outside = path.join(root, 'outside');
  const outsideData = path.join(outside, 'reviews.jsonl');
  const preview = (data: string) =>
    service.call('datasets.preview', { model: BUNDLED_MODEL_DIR, data, seqLen: 64, format: 'auto', count: 1, validation: 0 });
  const notAllowed = (p: string) => `${p}: not a dataset this app may open; choose it with the file picker`;
  fs.mkdirSync(uploads, { recursive: true });
  fs.mkdirSync(outside, { recursive: true });
  fs.copyFileSync(path.join(RESOURCES_DIR, 'datasets', 'review-sentiment.jsonl'), outsideData);

  it('refuses a path outside every allowed root', async () => {
    const etc = await rejection(service.call('models.inspect', { path: '/etc' }));
    expect(etc?.code).toBe('BAD_ARGUMENT');
    expect(etc?.message).toBe('/etc: not a model this app may open; choose it with the file picker (or start `lowrank serve --allow DIR` with its folder)');
    const browse = await rejection(service.call('files.browse', { dir: '/' }));
    expect(browse?.code).toBe('BAD_ARGUMENT');
    expect(browse?.message).toBe('/: outside the folders this server may show');
  });

  it('refuses a raw ../ path that starts inside uploads/ and climbs out of it', async () => {
    // Built as a string, not with path.join, so the `..` segments reach the service unnormalised.
    const climbing = `${uploads}/../../outside/reviews.jsonl`;
    expect(climbing.startsWith(`${uploads}/`)).toBe(true);
    const refused = await rejection(preview(climbing));
    expect(refused?.code).toBe('BAD_ARGUMENT');
    // Named as the person knows it: relative to their uploads, not by the server's upload folder.
    expect(refused?.message).toContain(notAllowed(climbing.slice(uploads.length + 1)));
    expect(refused?.message).not.toContain(uploads);
    // The same file is accepted once it is inside uploads/: the refusal was the path, not the file.
    fs.copyFileSync(outsideData, path.join(uploads, 'reviews-copy.jsonl'));
    const accepted = (await preview(path.join(uploads, 'reviews-copy.jsonl'))) as { problems: unknown[] };
    expect(accepted.problems).toEqual([]);
  });

  it('refuses a symlink inside uploads/ that points outside the allowed roots', async () => {
    const link = path.join(uploads, 'linked-reviews.jsonl');
    fs.symlinkSync(outsideData, link);
    const refused = await rejection(preview(link));
    expect(refused?.code).toBe('BAD_ARGUMENT');
    expect(refused?.message).toContain(notAllowed('linked-reviews.jsonl'));
    // A link to a file that is itself inside uploads/ is fine: the rule is where it leads.
    const inner = path.join(uploads, 'linked-inside.jsonl');
    fs.copyFileSync(outsideData, path.join(uploads, 'reviews-inside.jsonl'));
    fs.symlinkSync(path.join(uploads, 'reviews-inside.jsonl'), inner);
    const accepted = (await preview(inner)) as { problems: unknown[] };
    expect(accepted.problems).toEqual([]);
  });

  it('names an uploaded file as it was uploaded in its problems, and deletes uploads only', async () => {
    const entry = (await service.call('datasets.upload', { name: 'bad-lines.jsonl', content: '{"text":"fine"}\n{"text": broken\n' })) as { path: string };
    const shown = (await preview(entry.path)) as { problems: Array<{ where: string }>; examples: Array<{ source: string }> };
    expect(shown.problems.map((p) => p.where)).toEqual(['bad-lines.jsonl:2']);
    expect(shown.examples[0].source).toBe('bad-lines.jsonl:1');
    expect(await service.call('datasets.delete', { path: entry.path })).toEqual({ deleted: true });
    expect(fs.existsSync(entry.path)).toBe(false);
    const bundled = await rejection(service.call('datasets.delete', { path: path.join(RESOURCES_DIR, 'datasets', 'review-sentiment.jsonl') }));
    expect(bundled?.message).toBe('review-sentiment.jsonl: only uploaded datasets can be deleted here');
    expect(fs.existsSync(path.join(RESOURCES_DIR, 'datasets', 'review-sentiment.jsonl'))).toBe(true);
  });

  it('names a run\'s base model by its Hub id when it is a cache snapshot, by its folder otherwise, and says what to do about a diverged run', async () => {
    const snapshot = path.join(root, 'hub', 'models--Qwen--Qwen2.5-0.5B', 'snapshots', '0123456789abcdef0123456789abcdef01234567');
    const hubRun = service.store.createRun({ method: 'lora', kind: 'finetune', name: 'hub', config: {}, baseModelPath: snapshot, datasetPath: '/data/x.jsonl' });
    const folderRun = service.store.createRun({ method: 'lora', kind: 'finetune', name: 'folder', config: {}, baseModelPath: BUNDLED_MODEL_DIR, datasetPath: '/data/x.jsonl' });
    expect(((await service.call('runs.get', { runId: hubRun.id })) as RunDetail).baseModel).toEqual({ name: 'Qwen/Qwen2.5-0.5B@0123456', hubId: 'Qwen/Qwen2.5-0.5B' });
    expect(((await service.call('runs.get', { runId: folderRun.id })) as RunDetail).baseModel).toEqual({ name: path.basename(BUNDLED_MODEL_DIR), hubId: null });
    service.store.startRun(folderRun.id);
    service.store.failRun(folderRun.id, { code: 'NUMERIC', message: 'step 3: the loss is NaN' });
    expect(((await service.call('runs.get', { runId: folderRun.id })) as RunDetail).fix).toMatch(/lower learning rate/);
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
      // The page's check of its own token (the stale-token banner).
      expect((await fetch(`http://127.0.0.1:${server.port}/auth?token=${server.token}`)).status).toBe(204);
      expect((await fetch(`http://127.0.0.1:${server.port}/auth?token=stale`)).status).toBe(401);
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
