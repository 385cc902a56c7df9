/**
 * Models named by Hub id through the CLI (in-process), against a seeded Hugging Face cache and the
 * local Hub stand-in: the same logits by id (HF_HUB_OFFLINE=1) as from the folder, `models list`,
 * `models pull` with its progress line, `--model ID` downloading on first use, `models rm`, the
 * refusals as one line with exit 2, and what a run trained on a Hub model hands back (PEFT
 * `base_model_name_or_path` = the id, a model card on the merged export).
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BUNDLED_MODEL_DIR, RESOURCES_DIR } from '../core/resources.ts';
import { initBackend } from '../core/backend/index.ts';
import { seedHubCache } from '../core/hub/cache.test-helpers.ts';
import { lowrank, logitsOf } from './fixtures/cli-in-process.ts';
import { repoFromFolder, startHubStandIn, type HubStandIn } from './helpers/hub-stand-in.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-hub-cli-'));
const cacheDir = path.join(root, 'hf-cache');
const COMMIT = 'c0ffee'.padEnd(40, '0');
const saved = { ...process.env };
let hub: HubStandIn;

/** Runs the CLI and also returns what it wrote to stderr (progress, errors). */
async function lowrankWithStderr(args: string[]): Promise<{ code: number; lines: Array<Record<string, unknown>>; stderr: string }> {
  const written: string[] = [];
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => (written.push(String(chunk)), true));
  try {
    const r = await lowrank(args);
    return { ...r, stderr: written.join('') };
  } finally {
    spy.mockRestore();
  }
}

beforeAll(async () => {
  await initBackend();
  seedHubCache(cacheDir, 'lowrank-test/cached-llama', BUNDLED_MODEL_DIR, { commit: COMMIT, refs: ['main'], links: true });
  hub = await startHubStandIn({ 'lowrank-test/hub-llama': repoFromFolder(BUNDLED_MODEL_DIR) });
  Object.assign(process.env, { HF_HUB_CACHE: cacheDir, HF_ENDPOINT: hub.endpoint, LOWRANK_HOME: path.join(root, 'home') });
  delete process.env.HF_TOKEN;
});
afterAll(async () => {
  await hub.close();
  for (const k of ['HF_HUB_CACHE', 'HF_ENDPOINT', 'HF_HUB_OFFLINE', 'LOWRANK_HOME']) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
  fs.rmSync(root, { recursive: true, force: true });
});

describe('models by Hub id', () => {
  it('uses a cached model by id offline, with the same logits as its folder, and lists it', async () => {
    process.env.HF_HUB_OFFLINE = '1';
    try {
      const byId = await logitsOf('lowrank-test/cached-llama');
      const byFolder = await logitsOf(BUNDLED_MODEL_DIR);
      expect(byId.length).toBeGreaterThan(100);
      expect(byId).toEqual(byFolder);
      const listed = await lowrank(['models', 'list', '--json']);
      expect(listed.code).toBe(0);
      expect(listed.lines[0].cacheDir).toBe(cacheDir);
      const entries = listed.lines[0].models as Array<Record<string, unknown>>;
      expect(entries.map((m) => [m.id, m.commit, m.architecture, m.problem])).toEqual([['lowrank-test/cached-llama', COMMIT, 'LlamaForCausalLM', null]]);
      // Not cached, offline: one line that says so, exit 2, no request to the Hub.
      const missing = await lowrankWithStderr(['inspect', '--model', 'lowrank-test/hub-llama']);
      expect(missing.code).toBe(2);
      expect(missing.stderr.trim().split('\n')).toEqual([
        expect.stringMatching(/^lowrank inspect: model lowrank-test\/hub-llama: it is not in the Hugging Face cache .*; unset HF_HUB_OFFLINE to download it$/),
      ]);
      expect(hub.requests).toEqual([]);
    } finally {
      delete process.env.HF_HUB_OFFLINE;
    }
  });

  it('pulls through the stand-in with a progress line of bytes, rate and ETA, then finds the model by id', async () => {
    const pulled = await lowrankWithStderr(['models', 'pull', 'lowrank-test/hub-llama']);
    expect(pulled.code, pulled.stderr).toBe(0);
    expect(pulled.stderr).toMatch(/lowrank-test\/hub-llama [\d.]+ (B|KB|MB) \/ 7\.\d MB \[[=> ]{24}\] [\d.]+ (B|KB|MB)\/s ETA \d+:\d\d/);
    const snapshot = path.join(cacheDir, 'models--lowrank-test--hub-llama', 'snapshots', hub.commitOf('lowrank-test/hub-llama'));
    const weights = fs.readFileSync(path.join(snapshot, 'model.safetensors'));
    expect(weights.equals(fs.readFileSync(path.join(BUNDLED_MODEL_DIR, 'model.safetensors')))).toBe(true);
    const listed = await lowrank(['models', 'list', '--json']);
    expect((listed.lines[0].models as Array<{ id: string }>).map((m) => m.id)).toEqual(['lowrank-test/cached-llama', 'lowrank-test/hub-llama']);

    const removed = await lowrank(['models', 'rm', 'lowrank-test/hub-llama']);
    expect(removed.code).toBe(0);
    expect(fs.existsSync(path.dirname(path.dirname(snapshot)))).toBe(false);
    // --model with an id that is not cached downloads it first (network allowed).
    hub.requests.length = 0;
    const inspected = await lowrank(['inspect', '--model', 'lowrank-test/hub-llama', '--json']);
    expect(inspected.code).toBe(0);
    expect(inspected.lines[0]).toMatchObject({ architecture: 'LlamaForCausalLM' });
    expect(hub.requests.filter((r) => r.path.endsWith('/model.safetensors') && r.range !== 'bytes=0-0').map((r) => r.bytesSent)).toEqual([weights.length]);
  });

  it('refuses an unknown repo and a bad id with one line and exit 2', async () => {
    const missing = await lowrankWithStderr(['models', 'pull', 'lowrank-test/no-such-model']);
    expect(missing.code).toBe(2);
    expect(missing.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^lowrank models: lowrank-test\/no-such-model: no such model or revision on http:\/\/127\.0\.0\.1:\d+ \(404/)]);
    // As --model it may be a mistyped folder too: the line says both.
    const typo = await lowrankWithStderr(['inspect', '--model', 'lowrank-test/typo']);
    expect(typo.code).toBe(2);
    expect(typo.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^lowrank inspect: no folder lowrank-test\/typo here, and as a Hub id: lowrank-test\/typo: no such model or revision .*\(404/)]);
    const bad = await lowrankWithStderr(['models', 'pull', 'not-an-id']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/"not-an-id" is not a Hub id/);
  });

  it('hands results back: PEFT base_model_name_or_path is the Hub id, the merged export carries a model card', async () => {
    const data = path.join(RESOURCES_DIR, 'datasets', 'review-sentiment.jsonl');
    const trained = await lowrank([
      'train', '--model', 'lowrank-test/cached-llama', '--data', data, '--method', 'lora', '--rank', '2', '--target', 'q_proj,v_proj',
      '--steps', '2', '--batch-size', '2', '--seq-len', '32', '--eval-every', '100', '--checkpoint-every', '2', '--metric-examples', '0', '--json',
    ]);
    expect(trained.code).toBe(0);
    const runId = trained.lines.at(-1)!.run_id as string;
    const peft = path.join(root, 'peft');
    const merged = path.join(root, 'merged');
    expect((await lowrank(['export', '--run', runId, '--format', 'peft', '--out', peft])).code).toBe(0);
    expect((await lowrank(['export', '--run', runId, '--format', 'merged', '--out', merged])).code).toBe(0);
    const adapterConfig = JSON.parse(fs.readFileSync(path.join(peft, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    expect(adapterConfig.base_model_name_or_path).toBe('lowrank-test/cached-llama');

    const card = fs.readFileSync(path.join(merged, 'README.md'), 'utf8');
    const dataSha = createHash('sha256').update(fs.readFileSync(data)).digest('hex');
    expect(card.startsWith('---\nbase_model: lowrank-test/cached-llama\nlibrary_name: transformers\n')).toBe(true);
    expect(card).toContain(`(commit \`${COMMIT}\`)`);
    expect(card).toContain('| method | lora |');
    expect(card).toContain('| method: rank | 2 |');
    expect(card).toContain(`\`review-sentiment.jsonl\`, sha256 ${dataSha}`);
    expect(card).toMatch(/\| final training loss \| \d+\.\d{4} \|/);
    expect(card).toContain(`lowrank train --model lowrank-test/cached-llama@${COMMIT} --data review-sentiment.jsonl --method lora --param `);
    expect(card).toContain('--target q_proj,v_proj --steps 2 --batch-size 2 --seq-len 32');
  });
});
