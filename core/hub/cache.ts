/**
 * The Hugging Face cache, read and written exactly as transformers and huggingface-cli lay it out,
 * so Python tools and this app share one copy of every model:
 *
 *   $HF_HUB_CACHE (else $HF_HOME/hub, else ~/.cache/huggingface/hub)
 *     models--org--name/
 *       refs/main                 the commit a branch or tag points at (text, no newline)
 *       snapshots/<commit>/...    the files of that commit: symlinks into blobs/, or plain files
 *       blobs/<sha256 or git oid> the bytes, named by the LFS sha256 (git blob sha1 for small files)
 *
 * See huggingface_hub's `file_download.py` (the layout) and `_cache_manager.py` (scanning it).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { isJsonObject } from '../io/hf-folder.ts';
import { parseModelConfig, parameterCount } from '../models/config.ts';

export interface HubId {
  /** `org/name` */
  repo: string;
  /** A branch, tag or 40-hex commit; null means the default branch, `main`. */
  revision: string | null;
}

const REPO_PART = /^[A-Za-z0-9][\w.-]{0,95}$/;
const COMMIT = /^[0-9a-f]{40}$/;

/**
 * `org/name` or `org/name@revision`; null for anything else (a path such as `./m`, `/abs/dir`,
 * `a/b/c`). Callers try the text as a folder first, so a relative folder `org/name` still wins.
 */
export function parseHubId(text: string): HubId | null {
  const at = text.indexOf('@');
  const repo = at < 0 ? text : text.slice(0, at);
  const revision = at < 0 ? null : text.slice(at + 1);
  const parts = repo.split('/');
  if (parts.length !== 2 || !parts.every((p) => REPO_PART.test(p) && p !== '..' && !p.includes('--'))) return null;
  if (revision !== null && !/^[\w./-]{1,200}$/.test(revision)) return null;
  if (revision !== null && revision.split('/').some((p) => p === '..' || p === '')) return null;
  return { repo, revision };
}

export function formatHubId(id: HubId): string {
  return id.revision ? `${id.repo}@${id.revision}` : id.repo;
}

/** `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub` or `~/.cache/huggingface/hub`. */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return path.resolve(env.HF_HUB_CACHE);
  if (env.HF_HOME) return path.resolve(env.HF_HOME, 'hub');
  return path.join(env.XDG_CACHE_HOME ? path.resolve(env.XDG_CACHE_HOME) : path.join(os.homedir(), '.cache'), 'huggingface', 'hub');
}

/** True when `HF_HUB_OFFLINE` asks for no network (huggingface_hub accepts 1/true/yes/on). */
export function hubOffline(env: NodeJS.ProcessEnv = process.env): boolean {
  return ['1', 'true', 'yes', 'on'].includes((env.HF_HUB_OFFLINE ?? '').toLowerCase());
}

export function repoFolder(cacheDir: string, repo: string): string {
  return path.join(cacheDir, `models--${repo.split('/').join('--')}`);
}

/** The files a snapshot must hold for the app to load it; the missing ones, by name. */
export function missingModelFiles(dir: string): string[] {
  const has = (f: string) => fs.existsSync(path.join(dir, f));
  const missing = ['config.json', 'tokenizer.json'].filter((f) => !has(f));
  if (has('model.safetensors.index.json')) {
    try {
      const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8')) as { weight_map?: Record<string, string> };
      missing.push(...[...new Set(Object.values(index.weight_map ?? {}))].filter((f) => !has(f)));
    } catch {
      missing.push('model.safetensors.index.json (unreadable)');
    }
  } else if (!has('model.safetensors')) {
    missing.push('model.safetensors');
  }
  return missing;
}

export interface CachedSnapshot {
  repo: string;
  commit: string;
  dir: string;
}

/** The commit a revision names in the cache: itself for a commit, else the content of refs/<revision>. */
function cachedCommit(repoDir: string, revision: string): string | null {
  if (COMMIT.test(revision)) return revision;
  try {
    const commit = fs.readFileSync(path.join(repoDir, 'refs', revision), 'utf8').trim();
    return COMMIT.test(commit) ? commit : null;
  } catch {
    return null;
  }
}

/** The snapshot folder of `id` in the cache, or null when that revision is not there. */
export function findCachedSnapshot(id: HubId, cacheDir = hubCacheDir()): CachedSnapshot | null {
  const repoDir = repoFolder(cacheDir, id.repo);
  const commit = cachedCommit(repoDir, id.revision ?? 'main');
  if (!commit) return null;
  const dir = path.join(repoDir, 'snapshots', commit);
  return fs.existsSync(dir) ? { repo: id.repo, commit, dir } : null;
}

/**
 * The Hub id a folder came from, when it is a snapshot of the cache
 * (`…/models--org--name/snapshots/<commit>`); null for any other folder.
 */
export function hubIdOfFolder(dir: string): { repo: string; commit: string } | null {
  const resolved = path.resolve(dir);
  const commit = path.basename(resolved);
  const snapshots = path.dirname(resolved);
  const repoDir = path.basename(path.dirname(snapshots));
  const m = /^models--([^-].*?)--(.+)$/.exec(repoDir);
  if (!COMMIT.test(commit) || path.basename(snapshots) !== 'snapshots' || !m) return null;
  return { repo: `${m[1]}/${m[2]}`, commit };
}

export interface CachedModel {
  id: string;
  repo: string;
  commit: string;
  /** Branches and tags pointing at this commit (refs/*). */
  refs: string[];
  path: string;
  /** Bytes of the files the snapshot links to (each blob once). */
  bytes: number;
  /** Files the app needs that the snapshot lacks (a partial download by another tool). */
  missing: string[];
  architecture: string | null;
  parameters: number | null;
  /** Why the app cannot use it, when it cannot (an unknown architecture, missing files). */
  problem: string | null;
}

function walkFiles(dir: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const r = path.join(rel, e.name);
    if (e.isDirectory()) out.push(...walkFiles(dir, r));
    else out.push(r);
  }
  return out;
}

function snapshotBytes(dir: string): number {
  const seen = new Set<string>();
  let bytes = 0;
  for (const f of walkFiles(dir)) {
    try {
      const real = fs.realpathSync(path.join(dir, f));
      if (seen.has(real)) continue;
      seen.add(real);
      bytes += fs.statSync(real).size;
    } catch {
      // A dangling link (its blob was deleted): no bytes on disk.
    }
  }
  return bytes;
}

function refsOf(repoDir: string): Map<string, string[]> {
  const byCommit = new Map<string, string[]>();
  const refsDir = path.join(repoDir, 'refs');
  if (!fs.existsSync(refsDir)) return byCommit;
  for (const ref of walkFiles(refsDir)) {
    const commit = fs.readFileSync(path.join(refsDir, ref), 'utf8').trim();
    byCommit.set(commit, [...(byCommit.get(commit) ?? []), ref.split(path.sep).join('/')]);
  }
  return byCommit;
}

/** What a snapshot's config.json says: architecture and parameter count, or why it is unusable. */
function describeSnapshot(dir: string, missing: string[]): Pick<CachedModel, 'architecture' | 'parameters' | 'problem'> {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  } catch {
    return { architecture: null, parameters: null, problem: missing.length ? `incomplete: missing ${missing.join(', ')}` : 'config.json is unreadable' };
  }
  const architecture = isJsonObject(raw) && Array.isArray(raw.architectures) ? String(raw.architectures[0]) : null;
  try {
    const config = parseModelConfig(raw as Record<string, unknown>, path.join(dir, 'config.json'));
    return { architecture, parameters: parameterCount(config), problem: missing.length ? `incomplete: missing ${missing.join(', ')}` : null };
  } catch (e) {
    return { architecture, parameters: null, problem: e instanceof Error ? e.message : String(e) };
  }
}

/** Every model snapshot in the cache, newest first within a repo, repos by id. */
export function listCachedModels(cacheDir = hubCacheDir()): CachedModel[] {
  if (!fs.existsSync(cacheDir)) return [];
  const out: CachedModel[] = [];
  for (const name of fs.readdirSync(cacheDir).sort()) {
    const m = /^models--([^-].*?)--(.+)$/.exec(name);
    const repoDir = path.join(cacheDir, name);
    if (!m || !fs.existsSync(path.join(repoDir, 'snapshots'))) continue;
    const repo = `${m[1]}/${m[2]}`;
    const refs = refsOf(repoDir);
    const snapshots = fs
      .readdirSync(path.join(repoDir, 'snapshots'))
      .filter((c) => COMMIT.test(c))
      .map((commit) => ({ commit, dir: path.join(repoDir, 'snapshots', commit) }))
      .sort((a, b) => fs.statSync(b.dir).mtimeMs - fs.statSync(a.dir).mtimeMs);
    for (const { commit, dir } of snapshots) {
      const missing = missingModelFiles(dir);
      const r = refs.get(commit) ?? [];
      out.push({
        id: r.includes('main') ? repo : `${repo}@${r[0] ?? commit}`,
        repo,
        commit,
        refs: r,
        path: dir,
        bytes: snapshotBytes(dir),
        missing,
        ...describeSnapshot(dir, missing),
      });
    }
  }
  return out;
}

/**
 * Deletes a model from the cache: the whole repo folder, or with a revision only that snapshot,
 * the refs pointing at it and the blobs no other snapshot links to. Returns the bytes freed.
 */
export function removeCachedModel(id: HubId, cacheDir = hubCacheDir()): { bytes: number; removed: string } {
  const repoDir = repoFolder(cacheDir, id.repo);
  if (!fs.existsSync(repoDir)) {
    throw new LowrankError('FILE_NOT_FOUND', `${id.repo} is not in the Hugging Face cache (${cacheDir}); \`lowrank models list\` shows what is`);
  }
  if (id.revision === null) {
    const bytes = fs.existsSync(path.join(repoDir, 'blobs')) ? fs.readdirSync(path.join(repoDir, 'blobs')).reduce((n, b) => n + fs.statSync(path.join(repoDir, 'blobs', b)).size, 0) : 0;
    fs.rmSync(repoDir, { recursive: true, force: true });
    return { bytes, removed: repoDir };
  }
  const snapshot = findCachedSnapshot(id, cacheDir);
  if (!snapshot) throw new LowrankError('FILE_NOT_FOUND', `${formatHubId(id)}: that revision is not in the Hugging Face cache (${repoDir})`);
  const blobsOf = (dir: string) =>
    new Set(
      walkFiles(dir)
        .map((f) => path.join(dir, f))
        .filter((p) => fs.lstatSync(p).isSymbolicLink())
        .map((p) => path.resolve(path.dirname(p), fs.readlinkSync(p))),
    );
  const mine = blobsOf(snapshot.dir);
  const others = fs
    .readdirSync(path.join(repoDir, 'snapshots'))
    .map((c) => path.join(repoDir, 'snapshots', c))
    .filter((d) => d !== snapshot.dir)
    .flatMap((d) => [...blobsOf(d)]);
  const keep = new Set(others);
  let bytes = 0;
  for (const blob of mine) {
    if (keep.has(blob) || !fs.existsSync(blob)) continue;
    bytes += fs.statSync(blob).size;
    fs.rmSync(blob);
  }
  for (const [commit, refs] of refsOf(repoDir)) {
    if (commit === snapshot.commit) for (const ref of refs) fs.rmSync(path.join(repoDir, 'refs', ref));
  }
  fs.rmSync(snapshot.dir, { recursive: true, force: true });
  // The last snapshot gone: drop the repo folder too, as `huggingface-cli delete-cache` does.
  if (fs.readdirSync(path.join(repoDir, 'snapshots')).length === 0) fs.rmSync(repoDir, { recursive: true, force: true });
  return { bytes, removed: snapshot.dir };
}
