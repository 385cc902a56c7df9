/**
 * The service's models by Hub id and its model list: the bundled model, the Hugging Face cache and
 * the runs' merged exports (also one written outside exports/), with architecture, parameters and
 * size; a cached Hub id opens through `models.inspect`; an id not in the cache is refused with the
 * way to get it, without a download (the service downloads only through `models.pull`).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { StudioService } from '../service.ts';
import { BUNDLED_MODEL_DIR } from '../resources.ts';
import { seedHubCache } from '../hub/cache.test-helpers.ts';
import type { ModelEntry, ModelInfo, StudioEvent } from '../contract.ts';
import { repoFromFolder, startHubStandIn } from '../../test/helpers/hub-stand-in.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-model-list-'));
const home = path.join(root, 'home');
const cacheDir = path.join(root, 'hf-cache');
const COMMIT = 'd'.repeat(40);
const previous = process.env.HF_HUB_CACHE;
let service: StudioService;
const rejection = (p: Promise<unknown>) => p.then(() => null, (e: { code: string; message: string }) => e);

beforeAll(() => {
  process.env.HF_HUB_CACHE = cacheDir;
  seedHubCache(cacheDir, 'lowrank-test/cached-llama', BUNDLED_MODEL_DIR, { commit: COMMIT, refs: ['main'], links: true });
  service = new StudioService({ home, transport: 'websocket', fileDialog: false });
  // Two merged exports of a run: one in the store's exports/, one where the user chose.
  fs.cpSync(BUNDLED_MODEL_DIR, path.join(home, 'exports', 'run-merged'), { recursive: true });
  fs.cpSync(BUNDLED_MODEL_DIR, path.join(root, 'elsewhere', 'picked-merged'), { recursive: true });
  const run = service.store.createRun({ method: 'lora', kind: 'finetune', config: {} });
  service.store.addArtifact(run.id, { kind: 'merged', path: path.join(home, 'exports', 'run-merged'), formatDetail: null, bytes: null });
  service.store.addArtifact(run.id, { kind: 'merged', path: path.join(root, 'elsewhere', 'picked-merged'), formatDetail: null, bytes: null });
});
afterAll(async () => {
  await service.close();
  if (previous === undefined) delete process.env.HF_HUB_CACHE;
  else process.env.HF_HUB_CACHE = previous;
  fs.rmSync(root, { recursive: true, force: true });
});

describe('models in the service', () => {
  it('lists the bundled model, the HF cache and the merged exports with architecture, parameters and size', async () => {
    const list = (await service.call('models.list', {})) as ModelEntry[];
    const bytes = fs.readdirSync(BUNDLED_MODEL_DIR).reduce((n, f) => n + fs.statSync(path.join(BUNDLED_MODEL_DIR, f)).size, 0);
    expect(list.map((m) => [m.source, m.name, m.hubId])).toEqual([
      ['bundled', 'brown-llama', null],
      ['hf-cache', 'lowrank-test/cached-llama', 'lowrank-test/cached-llama'],
      ['export', 'picked-merged', null],
      ['export', 'run-merged', null],
    ]);
    for (const m of list) {
      expect(m, m.name).toMatchObject({ architecture: 'LlamaForCausalLM', bytes, problem: null });
      expect(m.parameters, m.name).toBe(list[0].parameters);
    }
    expect(list[1].path).toBe(path.join(cacheDir, 'models--lowrank-test--cached-llama', 'snapshots', COMMIT));
    // A listed export outside the allowed roots opens too.
    expect(((await service.call('models.inspect', { path: list[2].path })) as ModelInfo).architecture).toBe('LlamaForCausalLM');
  });

  it('opens a cached model by Hub id, and refuses an id that is not cached without downloading', async () => {
    const info = (await service.call('models.inspect', { path: 'lowrank-test/cached-llama' })) as ModelInfo;
    expect(info).toMatchObject({ name: 'lowrank-test/cached-llama', architecture: 'LlamaForCausalLM', path: path.join(cacheDir, 'models--lowrank-test--cached-llama', 'snapshots', COMMIT) });
    const missing = await rejection(service.call('models.inspect', { path: 'lowrank-test/not-cached' }));
    expect(missing?.code).toBe('FILE_NOT_FOUND');
    expect(missing?.message).toMatch(/lowrank-test\/not-cached: it is not in the Hugging Face cache/);
    const badId = await rejection(service.call('models.pull', { id: '../../etc' }));
    expect(badId?.code).toBe('BAD_ARGUMENT');
  });

  it('pulls through models.pull with progress events; a second request for the same id joins the first', async () => {
    const hub = await startHubStandIn({ 'lowrank-test/hub-llama': repoFromFolder(BUNDLED_MODEL_DIR) });
    const previousEndpoint = process.env.HF_ENDPOINT;
    process.env.HF_ENDPOINT = hub.endpoint;
    const events: StudioEvent[] = [];
    const unsubscribe = service.subscribe((e) => events.push(e));
    try {
      const [a, b] = (await Promise.all([
        service.call('models.pull', { id: 'lowrank-test/hub-llama' }),
        service.call('models.pull', { id: 'lowrank-test/hub-llama' }),
      ])) as ModelEntry[];
      expect(b).toEqual(a);
      expect(a).toMatchObject({ source: 'hf-cache', hubId: 'lowrank-test/hub-llama', architecture: 'LlamaForCausalLM', problem: null });
      const weights = hub.requests.filter((r) => r.path.endsWith('/model.safetensors') && r.range !== 'bytes=0-0');
      expect(weights.map((r) => r.bytesSent)).toEqual([fs.statSync(path.join(BUNDLED_MODEL_DIR, 'model.safetensors')).size]);
      const pulls = events.filter((e) => e.type === 'model-pull');
      expect(pulls.at(-1)).toMatchObject({ id: 'lowrank-test/hub-llama', done: true, error: null, bytes: a.bytes, totalBytes: a.bytes });
      expect(pulls.some((e) => e.type === 'model-pull' && !e.done && e.file === 'model.safetensors')).toBe(true);
      expect(((await service.call('models.list', {})) as ModelEntry[]).map((m) => m.name)).toContain('lowrank-test/hub-llama');
    } finally {
      unsubscribe();
      if (previousEndpoint === undefined) delete process.env.HF_ENDPOINT;
      else process.env.HF_ENDPOINT = previousEndpoint;
      await hub.close();
    }
  });
});
