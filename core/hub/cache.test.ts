/**
 * Reading the Hugging Face cache as transformers and huggingface-cli write it (refs, snapshots,
 * blobs; symlinks or plain files), offline: ids, the cache folder's environment variables, the
 * snapshot a revision names, listing and removal.
 */
import { afterEach, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { BUNDLED_MODEL_DIR } from '../resources.ts';
import { findCachedSnapshot, hubCacheDir, hubIdOfFolder, listCachedModels, parseHubId, removeCachedModel } from './cache.ts';
import { resolveCachedModel } from './resolve.ts';
import { seedHubCache } from './cache.test-helpers.ts';

const COMMIT_A = 'a'.repeat(40);
const COMMIT_B = 'b'.repeat(40);
const scratch: string[] = [];
function cache(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-hf-cache-'));
  scratch.push(dir);
  return dir;
}
afterEach(() => {
  for (const d of scratch.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

describe('Hub ids', () => {
  it('parses org/name[@revision] and nothing else', () => {
    expect(parseHubId('Qwen/Qwen2.5-0.5B-Instruct')).toEqual({ repo: 'Qwen/Qwen2.5-0.5B-Instruct', revision: null });
    expect(parseHubId('HuggingFaceTB/SmolLM2-360M@v1.0')).toEqual({ repo: 'HuggingFaceTB/SmolLM2-360M', revision: 'v1.0' });
    expect(parseHubId('org/name@refs/pr/3')).toEqual({ repo: 'org/name', revision: 'refs/pr/3' });
    for (const notId of ['./org/name', '/abs/dir', 'a/b/c', 'name', 'org/', '../x', 'org/na--me', 'org/name@', 'org/name@../../x', '']) {
      expect(parseHubId(notId), notId).toBeNull();
    }
  });

  it('finds the cache folder as huggingface_hub does: HF_HUB_CACHE, then HF_HOME/hub, then ~/.cache/huggingface/hub', () => {
    expect(hubCacheDir({ HF_HUB_CACHE: '/x/cache', HF_HOME: '/y' })).toBe('/x/cache');
    expect(hubCacheDir({ HF_HOME: '/y' })).toBe('/y/hub');
    expect(hubCacheDir({ XDG_CACHE_HOME: '/z' })).toBe('/z/huggingface/hub');
    expect(hubCacheDir({})).toBe(path.join(os.homedir(), '.cache', 'huggingface', 'hub'));
  });

  it('knows the Hub id of a snapshot folder, and of no other folder', () => {
    expect(hubIdOfFolder(`/c/models--Qwen--Qwen2.5-0.5B/snapshots/${COMMIT_A}`)).toEqual({ repo: 'Qwen/Qwen2.5-0.5B', commit: COMMIT_A });
    expect(hubIdOfFolder(BUNDLED_MODEL_DIR)).toBeNull();
    expect(hubIdOfFolder(`/c/models--Qwen--x/other/${COMMIT_A}`)).toBeNull();
  });
});

describe('the cache layout', () => {
  it('resolves main through refs/ and a commit directly, from symlinked blobs or plain files', () => {
    const dir = cache();
    seedHubCache(dir, 'org/linked', BUNDLED_MODEL_DIR, { commit: COMMIT_A, refs: ['main'], links: true });
    seedHubCache(dir, 'org/plain', BUNDLED_MODEL_DIR, { commit: COMMIT_B, refs: ['main', 'v2'], links: false });
    const linked = findCachedSnapshot({ repo: 'org/linked', revision: null }, dir)!;
    expect(linked.dir).toBe(path.join(dir, 'models--org--linked', 'snapshots', COMMIT_A));
    expect(fs.lstatSync(path.join(linked.dir, 'model.safetensors')).isSymbolicLink()).toBe(true);
    expect(findCachedSnapshot({ repo: 'org/plain', revision: 'v2' }, dir)?.commit).toBe(COMMIT_B);
    expect(findCachedSnapshot({ repo: 'org/plain', revision: COMMIT_B }, dir)?.commit).toBe(COMMIT_B);
    expect(findCachedSnapshot({ repo: 'org/plain', revision: 'v3' }, dir)).toBeNull();
    expect(findCachedSnapshot({ repo: 'org/none', revision: null }, dir)).toBeNull();

    const env = { HF_HUB_CACHE: dir, HF_HUB_OFFLINE: '1' };
    expect(resolveCachedModel('org/linked', env)).toBe(linked.dir);
    expect(resolveCachedModel(`org/plain@${COMMIT_B}`, env)).toBe(path.join(dir, 'models--org--plain', 'snapshots', COMMIT_B));
    // A folder is itself, whatever its name looks like.
    expect(resolveCachedModel(BUNDLED_MODEL_DIR, env)).toBe(BUNDLED_MODEL_DIR);
  });

  it('says what is missing and how to get it, offline or not', () => {
    const dir = cache();
    seedHubCache(dir, 'org/partial', BUNDLED_MODEL_DIR, { commit: COMMIT_A, refs: ['main'], links: true, only: ['config.json'] });
    const offline = { HF_HUB_CACHE: dir, HF_HUB_OFFLINE: '1' };
    expect(() => resolveCachedModel('org/absent', offline)).toThrow(LowrankError);
    expect(() => resolveCachedModel('org/absent', offline)).toThrow(/org\/absent: it is not in the Hugging Face cache .*; unset HF_HUB_OFFLINE to download it/);
    expect(() => resolveCachedModel('org/partial', offline)).toThrow(/lacks tokenizer\.json, model\.safetensors/);
    expect(() => resolveCachedModel('org/absent', { HF_HUB_CACHE: dir })).toThrow(/lowrank models pull org\/absent/);
    // Where a download is allowed, the caller is told to pull (null), not refused.
    expect(resolveCachedModel('org/absent', { HF_HUB_CACHE: dir }, true)).toBeNull();
  });

  it('lists every snapshot with its id, size on disk, architecture and parameters, and flags partial ones', () => {
    const dir = cache();
    seedHubCache(dir, 'org/linked', BUNDLED_MODEL_DIR, { commit: COMMIT_A, refs: ['main'], links: true });
    seedHubCache(dir, 'org/partial', BUNDLED_MODEL_DIR, { commit: COMMIT_B, refs: ['v1'], links: true, only: ['config.json'] });
    const listed = listCachedModels(dir);
    const folderBytes = fs.readdirSync(BUNDLED_MODEL_DIR).reduce((n, f) => n + fs.statSync(path.join(BUNDLED_MODEL_DIR, f)).size, 0);
    expect(listed.map((m) => [m.id, m.commit, m.refs])).toEqual([
      ['org/linked', COMMIT_A, ['main']],
      ['org/partial@v1', COMMIT_B, ['v1']],
    ]);
    expect(listed[0]).toMatchObject({ bytes: folderBytes, architecture: 'LlamaForCausalLM', missing: [], problem: null });
    expect(listed[0].parameters).toBeGreaterThan(1_000_000);
    expect(listed[1].missing).toEqual(['tokenizer.json', 'model.safetensors']);
    expect(listed[1].problem).toMatch(/^incomplete: missing tokenizer\.json, model\.safetensors/);
  });

  it('removes one revision (its refs and the blobs no other snapshot uses) or the whole repo', () => {
    const dir = cache();
    seedHubCache(dir, 'org/two', BUNDLED_MODEL_DIR, { commit: COMMIT_A, refs: ['main'], links: true });
    seedHubCache(dir, 'org/two', BUNDLED_MODEL_DIR, { commit: COMMIT_B, refs: ['v1'], links: true, only: ['config.json', 'tokenizer.json'] });
    const blobs = path.join(dir, 'models--org--two', 'blobs');
    const before = fs.readdirSync(blobs).length;
    const removed = removeCachedModel({ repo: 'org/two', revision: 'main' }, dir);
    expect(removed.removed).toBe(path.join(dir, 'models--org--two', 'snapshots', COMMIT_A));
    // config.json and tokenizer.json are shared with v1's snapshot and stay; the rest went.
    expect(fs.readdirSync(blobs).length).toBe(2);
    expect(before).toBeGreaterThan(2);
    expect(fs.existsSync(path.join(dir, 'models--org--two', 'refs', 'main'))).toBe(false);
    expect(findCachedSnapshot({ repo: 'org/two', revision: 'v1' }, dir)?.commit).toBe(COMMIT_B);
    removeCachedModel({ repo: 'org/two', revision: null }, dir);
    expect(fs.existsSync(path.join(dir, 'models--org--two'))).toBe(false);
    expect(() => removeCachedModel({ repo: 'org/two', revision: null }, dir)).toThrow(/not in the Hugging Face cache/);
  });
});
