/**
 * `pullModel` against the local Hub stand-in (test/helpers/hub-stand-in.ts): the cache layout it
 * writes, byte-identical weights, the sha256 check, resume after a cut transfer (by the bytes the
 * stand-in was asked for), the refusals before any weight moves. No test touches the real Hub.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LowrankError, type ErrorCode } from '../errors.ts';
import { BUNDLED_MODEL_DIR } from '../resources.ts';
import { repoFromFolder, startHubStandIn, type HubStandIn } from '../../test/helpers/hub-stand-in.ts';
import { pullModel, type PullProgress } from './pull.ts';
import { findCachedSnapshot, repoFolder } from './cache.ts';
import { seedHubCache } from './cache.test-helpers.ts';

const REPO = 'lowrank-test/brown-llama';
const WEIGHTS = 'model.safetensors';
let hub: HubStandIn;
let cacheDir: string;
const source = repoFromFolder(BUNDLED_MODEL_DIR);
const weightBytes = source.files[WEIGHTS].length;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function expectRefusal(promise: Promise<unknown>, code: ErrorCode, ...mentions: Array<string | RegExp>): Promise<LowrankError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error, 'expected a LowrankError').toBeInstanceOf(LowrankError);
  const e = error as LowrankError;
  expect(e.code, e.message).toBe(code);
  expect(e.message).not.toMatch(/[\r\n]/);
  for (const m of mentions) expect(e.message).toMatch(m);
  return e;
}

/** Whether this process may mount a tmpfs (root and mount(2): this sandbox, not a CI runner). */
function canMountTmpfs(): boolean {
  if (process.getuid?.() !== 0) return false;
  const probe = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-hub-probe-'));
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe]).status === 0;
  if (mounted) spawnSync('umount', [probe]);
  fs.rmSync(probe, { recursive: true, force: true });
  return mounted;
}

/** Body bytes the stand-in sent for the weights (the `bytes=0-0` probes excluded). */
const weightTransfers = () => hub.requests.filter((r) => r.path.endsWith(`/resolve/${hub.commitOf(REPO)}/${WEIGHTS}`) && r.range !== 'bytes=0-0');
const env = () => ({ HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: cacheDir });

beforeAll(async () => {
  hub = await startHubStandIn({
    [REPO]: { files: { ...source.files, 'pytorch_model.bin': Buffer.from('not wanted'), 'onnx-notes.txt': Buffer.from('not wanted') } },
    'lowrank-test/private-model': { ...source, private: true },
    'lowrank-test/gated-model': { ...source, gated: true },
    'lowrank-test/pickle-only': { files: { 'config.json': source.files['config.json'], 'pytorch_model.bin': Buffer.alloc(1000, 7) } },
    'lowrank-test/bert': {
      files: { 'config.json': Buffer.from(JSON.stringify({ architectures: ['BertForMaskedLM'], model_type: 'bert' })), [WEIGHTS]: Buffer.alloc(4096, 1) },
    },
  });
});
afterAll(async () => hub.close());
beforeEach(() => {
  cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-hub-cache-'));
  hub.requests.length = 0;
});

describe('pullModel', () => {
  it('writes the Hugging Face cache layout: refs/main, snapshot links into blobs named by sha256, byte-identical files', async () => {
    const progress: PullProgress[] = [];
    const result = await pullModel(REPO, { env: env(), onProgress: (p) => progress.push(p) });
    const commit = hub.commitOf(REPO);
    const repoDir = repoFolder(cacheDir, REPO);
    expect(repoDir).toBe(path.join(cacheDir, 'models--lowrank-test--brown-llama'));
    expect(fs.readFileSync(path.join(repoDir, 'refs', 'main'), 'utf8')).toBe(commit);
    expect(result.dir).toBe(path.join(repoDir, 'snapshots', commit));
    // Only what a model needs: no pickle, no unrelated files.
    expect(fs.readdirSync(result.dir).sort()).toEqual(Object.keys(source.files).sort());
    const link = path.join(result.dir, WEIGHTS);
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(fs.readlinkSync(link)).toBe(path.join('..', '..', 'blobs', sha256(source.files[WEIGHTS])));
    for (const [name, bytes] of Object.entries(source.files)) expect(fs.readFileSync(path.join(result.dir, name)).equals(bytes), name).toBe(true);
    expect(hub.requests.some((r) => r.path.endsWith('pytorch_model.bin'))).toBe(false);
    expect(fs.readdirSync(path.join(repoDir, 'blobs')).filter((b) => b.endsWith('.incomplete'))).toEqual([]);
    // Progress ends at the total, with a measured rate.
    const total = Object.values(source.files).reduce((n, b) => n + b.length, 0) - source.files['config.json'].length;
    const last = progress.at(-1)!;
    expect(last.totalBytes).toBe(total);
    expect(last.bytes).toBe(total);
    expect(progress.some((p) => p.bytesPerSecond > 0 && p.file === WEIGHTS)).toBe(true);
    expect(findCachedSnapshot({ repo: REPO, revision: null }, cacheDir)?.dir).toBe(result.dir);

    // A second pull finds every blob and transfers nothing.
    hub.requests.length = 0;
    const again = await pullModel(REPO, { env: env() });
    expect(again.downloadedBytes).toBe(0);
    expect(weightTransfers()).toEqual([]);
  });

  it('refuses a body whose sha256 does not match the Hub, and leaves nothing in snapshots/ or blobs/', async () => {
    hub.corrupt.add(`${REPO}/${WEIGHTS}`);
    try {
      await expectRefusal(pullModel(REPO, { env: env() }), 'INTEGRITY', /sha256 check/, new RegExp(sha256(source.files[WEIGHTS])), /model\.safetensors/);
    } finally {
      hub.corrupt.clear();
    }
    const repoDir = repoFolder(cacheDir, REPO);
    expect(fs.existsSync(path.join(repoDir, 'snapshots')) ? fs.readdirSync(path.join(repoDir, 'snapshots')) : []).toEqual([]);
    expect(fs.readdirSync(path.join(repoDir, 'blobs')).filter((b) => b.startsWith(sha256(source.files[WEIGHTS])))).toEqual([]);
    expect(findCachedSnapshot({ repo: REPO, revision: null }, cacheDir)).toBeNull();
  });

  it('resumes a cut transfer from where it stopped, in the same pull (Range from the cut)', async () => {
    const cut = 3_000_000;
    hub.cutAfter.set(`${REPO}/${WEIGHTS}`, cut);
    const logs: string[] = [];
    const result = await pullModel(REPO, { env: env(), onLog: (m) => logs.push(m) });
    const transfers = weightTransfers();
    expect(transfers.map((t) => [t.range, t.bytesSent])).toEqual([
      [null, cut],
      [`bytes=${cut}-${weightBytes - 1}`, weightBytes - cut],
    ]);
    expect(transfers.reduce((n, t) => n + t.bytesSent, 0)).toBe(weightBytes);
    expect(logs.join('\n')).toContain(`interrupted at ${cut} of ${weightBytes} bytes`);
    expect(fs.readFileSync(path.join(result.dir, WEIGHTS)).equals(source.files[WEIGHTS])).toBe(true);
  });

  it('keeps the partial file of a pull that gave up, and the next pull asks only for the rest', async () => {
    const cut = 2_500_000;
    hub.cutAfter.set(`${REPO}/${WEIGHTS}`, cut);
    await expectRefusal(pullModel(REPO, { env: env(), retries: 0 }), 'NETWORK', new RegExp(`interrupted at ${cut} of ${weightBytes} bytes`), /run the same pull again to resume/);
    const repoDir = repoFolder(cacheDir, REPO);
    expect(fs.existsSync(path.join(repoDir, 'snapshots'))).toBe(false);
    expect(fs.statSync(path.join(repoDir, 'blobs', `${sha256(source.files[WEIGHTS])}.incomplete`)).size).toBe(cut);

    hub.requests.length = 0;
    const logs: string[] = [];
    const result = await pullModel(REPO, { env: env(), onLog: (m) => logs.push(m) });
    expect(weightTransfers().map((t) => [t.range, t.bytesSent])).toEqual([[`bytes=${cut}-${weightBytes - 1}`, weightBytes - cut]]);
    expect(logs).toContain(`resuming ${WEIGHTS} at ${cut} of ${weightBytes} bytes`);
    expect(fs.readFileSync(path.join(result.dir, WEIGHTS)).equals(source.files[WEIGHTS])).toBe(true);
  });

  it('leaves a file another live process is downloading alone, and takes over a dead one\'s lock', async () => {
    const blobs = path.join(repoFolder(cacheDir, REPO), 'blobs');
    const lock = path.join(blobs, `${sha256(source.files[WEIGHTS])}.incomplete.lock`);
    fs.mkdirSync(blobs, { recursive: true });
    fs.writeFileSync(lock, String(process.ppid));
    await expectRefusal(pullModel(REPO, { env: env() }), 'WRITE_FAILED', new RegExp(`${WEIGHTS} is being downloaded .* by another process \\(pid ${process.ppid}\\)`));
    expect(weightTransfers()).toEqual([]);
    // A pid that no process has (Linux pids stay below 2^22): a crashed pull's lock.
    fs.writeFileSync(lock, String(2 ** 22 + 7));
    const result = await pullModel(REPO, { env: env() });
    expect(fs.readFileSync(path.join(result.dir, WEIGHTS)).equals(source.files[WEIGHTS])).toBe(true);
    expect(fs.existsSync(lock)).toBe(false);
  });

  it('completes a snapshot another tool left partial, keeping its files', async () => {
    const commit = hub.commitOf(REPO);
    const snapshot = seedHubCache(cacheDir, REPO, BUNDLED_MODEL_DIR, { commit, refs: ['main'], links: false, only: ['config.json'] });
    const before = fs.statSync(path.join(snapshot, 'config.json'));
    const result = await pullModel(REPO, { env: env() });
    expect(result.dir).toBe(snapshot);
    expect(fs.readdirSync(snapshot).sort()).toEqual(Object.keys(source.files).sort());
    expect(fs.lstatSync(path.join(snapshot, 'config.json')).isSymbolicLink()).toBe(false);
    expect(fs.statSync(path.join(snapshot, 'config.json')).ino).toBe(before.ino);
    expect(fs.readFileSync(path.join(snapshot, WEIGHTS)).equals(source.files[WEIGHTS])).toBe(true);
    expect(fs.readdirSync(path.join(cacheDir, 'models--lowrank-test--brown-llama', 'snapshots'))).toEqual([commit]);
  });

  it('refuses a private repo without a token (401) and pulls it with HF_TOKEN', async () => {
    await expectRefusal(pullModel('lowrank-test/private-model', { env: env() }), 'HUB_ACCESS', /private or gated/, /HF_TOKEN/, /401/);
    expect(hub.requests.filter((r) => r.path.includes('/resolve/'))).toEqual([]);
    const result = await pullModel('lowrank-test/private-model', { env: { ...env(), HF_TOKEN: hub.token } });
    expect(fs.readFileSync(path.join(result.dir, WEIGHTS)).equals(source.files[WEIGHTS])).toBe(true);
  });

  it('refuses a gated repo without a token before any download', async () => {
    await expectRefusal(pullModel('lowrank-test/gated-model', { env: env() }), 'HUB_ACCESS', /is gated/, new RegExp(`${hub.endpoint}/lowrank-test/gated-model`), /HF_TOKEN/);
    expect(hub.requests.filter((r) => r.path.includes('/resolve/'))).toEqual([]);
  });

  it('refuses a missing repo (404), pickle-only weights and an unsupported architecture before the weights move', async () => {
    await expectRefusal(pullModel('lowrank-test/no-such-model', { env: env() }), 'FILE_NOT_FOUND', /no such model/, /404/);
    await expectRefusal(pullModel(REPO, { env: env(), revision: 'v9' }), 'FILE_NOT_FOUND', /no such model or revision/);
    await expectRefusal(pullModel('lowrank-test/pickle-only', { env: env() }), 'PICKLE_REFUSED', /pytorch_model\.bin/, /arbitrary code/, /safetensors/);
    await expectRefusal(pullModel('lowrank-test/bert', { env: env() }), 'UNKNOWN_ARCHITECTURE', /BertForMaskedLM/);
    // Of the refused repos only config.json was fetched (to read the architecture); no weights.
    const fetched = hub.requests.filter((r) => r.path.includes('/resolve/')).map((r) => r.path.split('/').pop());
    expect(new Set(fetched)).toEqual(new Set(['config.json']));
  });

  // A real small disk needs root and mount(2) (this sandbox; CI runners skip it, as test/faults/disk-full does).
  it.runIf(canMountTmpfs())('refuses before the weights move when the cache\'s disk is too small', async () => {
    const small = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-hub-small-'));
    expect(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', small]).status).toBe(0);
    try {
      await expectRefusal(pullModel(REPO, { env: { ...env(), HF_HUB_CACHE: small } }), 'WRITE_FAILED', /needs 7\.\d MB more in .* but that disk has [34]\.\d MB free/, /HF_HUB_CACHE/);
      expect(weightTransfers()).toEqual([]);
    } finally {
      spawnSync('umount', ['-l', small]);
      fs.rmSync(small, { recursive: true, force: true });
    }
  });

  it('honours HF_HUB_OFFLINE', async () => {
    await expectRefusal(pullModel(REPO, { env: { ...env(), HF_HUB_OFFLINE: '1' } }), 'NETWORK', /HF_HUB_OFFLINE/);
    expect(hub.requests).toEqual([]);
  });
});
