/**
 * `lowrank models pull`: downloads the files a model needs from the Hugging Face Hub into the
 * shared cache layout (core/hub/cache.ts), with the `@huggingface/hub` client for every request
 * (model info at a revision, the tree, resolve with Range), `HF_ENDPOINT` and `HF_TOKEN` honoured.
 *
 * What it guarantees beyond the client's own `snapshotDownload`:
 * - refusals before any large byte moves: a gated/private repo without a token, a missing repo,
 *   pickle-only weights, an architecture the engine does not run (config.json is read first);
 * - every blob is checked: the sha256 of LFS files against the Hub's oid, the git blob sha1 of
 *   small ones; a mismatch deletes the partial file and adds nothing to the cache;
 * - resume: a blob is written to `blobs/<oid>.incomplete` and an interrupted transfer continues
 *   from its length with a Range request (in this process, and in the next `pull`);
 * - atomic snapshot: `snapshots/<commit>/` appears by one rename, after every blob is verified.
 */
import { createHash, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { downloadFile, fileDownloadInfo, HubApiError, listFiles, modelInfo, type FileDownloadInfoOutput, type ListFileEntry } from '@huggingface/hub';
import { LowrankError } from '../errors.ts';
import { parseModelConfig } from '../models/config.ts';
import { formatBytes } from '../train/memory.ts';
import { hubCacheDir, hubOffline, repoFolder } from './cache.ts';
import { TransferMeter, type PullProgress } from './transfer-meter.ts';
import { lockBlob } from './blob-lock.ts';

export type { PullProgress };

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

/** Root files a model folder is made of (weights are added from the tree / the shard index). */
const MODEL_FILES = new Set([
  'config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
  'chat_template.jinja', 'chat_template.json', 'tokenizer.model', 'vocab.json', 'merges.txt', 'added_tokens.json',
  'README.md', 'model.safetensors', 'model.safetensors.index.json',
]);
const PICKLE = /\.(bin|pt|pth|ckpt)$/;


export interface PullOptions {
  revision?: string | null;
  cacheDir?: string;
  endpoint?: string;
  token?: string | null;
  /** At most 10 calls a second, and one when the transfer ends. */
  onProgress?: (p: PullProgress) => void;
  onLog?: (message: string) => void;
  /** Resumed attempts per file after an interrupted transfer (default 3). */
  retries?: number;
  env?: NodeJS.ProcessEnv;
}

export interface PullResult {
  repo: string;
  commit: string;
  dir: string;
  files: string[];
  /** Bytes of the snapshot's files. */
  bytes: number;
  /** Bytes that came over the network in this pull. */
  downloadedBytes: number;
}

/** `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the file `huggingface-cli login` writes. */
export function hubToken(env: NodeJS.ProcessEnv = process.env): string | null {
  const fromEnv = env.HF_TOKEN ?? env.HUGGING_FACE_HUB_TOKEN;
  if (fromEnv) return fromEnv.trim();
  const file = env.HF_TOKEN_PATH ?? path.join(env.HF_HOME ?? path.join(env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'huggingface'), 'token');
  try {
    return fs.readFileSync(file, 'utf8').trim() || null;
  } catch {
    return null;
  }
}

export function hubEndpoint(env: NodeJS.ProcessEnv = process.env): string {
  return (env.HF_ENDPOINT || DEFAULT_ENDPOINT).replace(/\/+$/, '');
}

/** The Hub's answer as one line a user can act on. */
function hubFailure(e: unknown, repo: string, endpoint: string, token: string | null, what: string): LowrankError {
  if (e instanceof LowrankError) return e;
  if (e instanceof HubApiError) {
    const page = `${endpoint}/${repo}`;
    if (e.statusCode === 401) {
      return token
        ? new LowrankError('HUB_ACCESS', `${repo}: the Hub refused HF_TOKEN (401) for ${what}; check that the token is valid and may read this repo`)
        : new LowrankError('HUB_ACCESS', `${repo} is private or gated (the Hub answered 401 for ${what} without a token): accept its licence at ${page} and set HF_TOKEN to a read token`);
    }
    if (e.statusCode === 403) return new LowrankError('HUB_ACCESS', `${repo} is gated and this token has no access (403): accept its licence at ${page}, then pull again`);
    if (e.statusCode === 404) return new LowrankError('FILE_NOT_FOUND', `${repo}: no such model or revision on ${endpoint} (404 for ${what}); check the id, or its revision after @`);
    return new LowrankError('NETWORK', `${repo}: the Hub answered ${e.statusCode} for ${what}; try again later`);
  }
  if (e instanceof TypeError && /access token/i.test(e.message)) {
    return new LowrankError('HUB_ACCESS', `HF_TOKEN is not a Hugging Face token (they start with hf_); fix or unset it`);
  }
  const cause = e instanceof Error ? ((e.cause as Error | undefined)?.message ?? e.message) : String(e);
  return new LowrankError('NETWORK', `${repo}: cannot reach ${endpoint} for ${what} (${cause}); check the network, or set HF_HUB_OFFLINE=1 to use the cache only`);
}

interface HubFile {
  path: string;
  /** The blob name: LFS sha256, else the git blob sha1. */
  oid: string;
  size: number;
  lfs: boolean;
}

function toHubFile(e: ListFileEntry): HubFile {
  if (e.lfs) return { path: e.path, oid: e.lfs.oid, size: e.lfs.size, lfs: true };
  if (!e.oid) throw new LowrankError('NETWORK', `the Hub's tree lists ${e.path} without an oid; cannot verify it`);
  return { path: e.path, oid: e.oid, size: e.size, lfs: false };
}

/** `W/"abc"` or `"abc"` → `abc`, as huggingface_hub normalises an ETag. */
const normalizeEtag = (etag: string) => etag.replace(/^W\//, '').replace(/^"|"$/g, '');

/** Bytes of a finished blob (an existing one is trusted: its name is its hash). */
function existingBlob(file: string, size: number): boolean {
  try {
    return fs.statSync(file).size === size;
  } catch {
    return false;
  }
}

function hashFileInto(hash: Hash, file: string, bytes: number): void {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let pos = 0; pos < bytes; ) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, bytes - pos), pos);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
}

interface Session {
  repo: string;
  commit: string;
  endpoint: string;
  token: string | null;
  blobsDir: string;
  retries: number;
  meter: TransferMeter | null;
  log: (message: string) => void;
}

/** What the client's per-file calls take: the file at the pinned commit, with the token if there is one. */
function fileParams(s: Session, f: HubFile) {
  return { repo: s.repo, path: f.path, revision: s.commit, hubUrl: s.endpoint, ...(s.token ? { accessToken: s.token } : {}) };
}

/** Downloads one file into blobs/<oid> (resuming a partial one), verified; returns bytes moved. */
async function downloadBlob(s: Session, f: HubFile): Promise<number> {
  const blobPath = path.join(s.blobsDir, f.oid);
  if (existingBlob(blobPath, f.size)) return 0;
  fs.mkdirSync(s.blobsDir, { recursive: true });
  const incomplete = `${blobPath}.incomplete`;
  const common = fileParams(s, f);
  let info;
  try {
    info = await fileDownloadInfo(common);
  } catch (e) {
    throw hubFailure(e, s.repo, s.endpoint, s.token, f.path);
  }
  if (!info) throw new LowrankError('FILE_NOT_FOUND', `${s.repo}: ${f.path} is listed in the tree but the Hub has no such file at ${s.commit}`);
  // The Hub's X-Linked-Etag (LFS sha256) or ETag (git oid) must name the blob the tree listed. A CDN's
  // own ETag (another kind of hash) says nothing either way: the content's hash is checked below.
  const etag = normalizeEtag(info.etag);
  const sameKind = /^[0-9a-f]+$/.test(etag) && etag.length === f.oid.length;
  if ((sameKind && etag !== f.oid) || info.size !== f.size) {
    throw new LowrankError('INTEGRITY', `${s.repo}: the Hub's ETag/size for ${f.path} (${etag}, ${info.size} bytes) differ from its tree (${f.oid}, ${f.size} bytes); try again later`);
  }
  if (s.meter) s.meter.file = f.path;
  const release = lockBlob(incomplete, `${s.repo}/${f.path}`);
  try {
    return await transferBlob(s, f, info, incomplete, blobPath);
  } finally {
    release();
  }
}

/** The transfer itself, resumed from the partial file, then the hash check and the rename. */
async function transferBlob(s: Session, f: HubFile, info: FileDownloadInfoOutput, incomplete: string, blobPath: string): Promise<number> {
  const common = fileParams(s, f);
  let moved = 0;
  for (let attempt = 0; ; attempt++) {
    let offset = fs.existsSync(incomplete) ? fs.statSync(incomplete).size : 0;
    if (offset > f.size) {
      fs.truncateSync(incomplete, 0);
      offset = 0;
    }
    if (offset > 0 && attempt === 0) s.log(`resuming ${f.path} at ${offset} of ${f.size} bytes`);
    if (attempt === 0) s.meter?.resumedFrom(offset);
    const fd = fs.openSync(incomplete, 'a');
    try {
      const blob = await downloadFile({ ...common, downloadInfo: info, xet: false });
      if (!blob) throw new LowrankError('FILE_NOT_FOUND', `${s.repo}: ${f.path} vanished from the Hub during the download`);
      const reader = (offset > 0 ? blob.slice(offset) : blob).stream().getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        fs.writeSync(fd, value);
        moved += value.length;
        s.meter?.add(value.length);
      }
    } catch (e) {
      fs.closeSync(fd);
      const have = fs.statSync(incomplete).size;
      if (e instanceof LowrankError || (e instanceof HubApiError && e.statusCode < 500)) throw hubFailure(e, s.repo, s.endpoint, s.token, f.path);
      // A full disk or a read-only cache is not the network's fault: no retry, the partial file stays.
      const fsCode = (e as NodeJS.ErrnoException).code;
      if (typeof fsCode === 'string' && /^E(NOSPC|DQUOT|ROFS|ACCES|PERM|IO)$/.test(fsCode)) {
        throw new LowrankError('WRITE_FAILED', `${incomplete}: cannot write the download of ${s.repo}/${f.path} (${fsCode}) at ${have} of ${f.size} bytes; free space or fix the folder, then pull again to resume`);
      }
      if (attempt >= s.retries) {
        throw new LowrankError('NETWORK', `${s.repo}: the download of ${f.path} was interrupted at ${have} of ${f.size} bytes (${e instanceof Error ? e.message : String(e)}); run the same pull again to resume`);
      }
      s.log(`${f.path}: transfer interrupted at ${have} of ${f.size} bytes; resuming`);
      await new Promise((resolve) => setTimeout(resolve, 250 * (attempt + 1)));
      continue;
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    break;
  }
  const written = fs.statSync(incomplete).size;
  // The whole file is hashed (earlier partial bytes included), so a resume cannot hide corruption.
  const hash = createHash(f.lfs ? 'sha256' : 'sha1');
  if (!f.lfs) hash.update(`blob ${written}\0`);
  hashFileInto(hash, incomplete, written);
  const digest = hash.digest('hex');
  if (written !== f.size || digest !== f.oid) {
    fs.rmSync(incomplete, { force: true });
    const kind = f.lfs ? 'sha256' : 'git blob sha1';
    throw new LowrankError(
      'INTEGRITY',
      `${s.repo}: ${f.path} failed its ${kind} check (expected ${f.oid}, got ${digest}, ${written} of ${f.size} bytes); the corrupted file was deleted and no snapshot was written, pull again`,
    );
  }
  fs.renameSync(incomplete, blobPath);
  return moved;
}

/** Links `snapshots/<commit>/<file>` → `../../blobs/<oid>` (a copy where symlinks are not allowed). */
function linkBlob(snapshotDir: string, blobsDir: string, f: HubFile): void {
  const link = path.join(snapshotDir, f.path);
  const blob = path.join(blobsDir, f.oid);
  try {
    fs.symlinkSync(path.relative(path.dirname(link), blob), link);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') throw e;
    fs.copyFileSync(blob, link);
  }
}

/** Writes refs/<revision> = commit by rename, so a reader never sees half a hash. */
function writeRef(repoDir: string, revision: string, commit: string): void {
  const ref = path.join(repoDir, 'refs', revision);
  fs.mkdirSync(path.dirname(ref), { recursive: true });
  const tmp = `${ref}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, commit);
  fs.renameSync(tmp, ref);
}

/** The files to fetch from the tree: the model's own, with the weights the index names. */
function chooseFiles(repo: string, tree: HubFile[], index: Record<string, unknown> | null): HubFile[] {
  const byPath = new Map(tree.map((f) => [f.path, f]));
  const wanted = tree.filter((f) => MODEL_FILES.has(f.path));
  if (index) {
    const map = index.weight_map;
    if (typeof map !== 'object' || map === null) throw new LowrankError('BAD_CONFIG', `${repo}: model.safetensors.index.json has no weight_map`);
    for (const shard of new Set(Object.values(map as Record<string, unknown>).map(String))) {
      const f = byPath.get(shard);
      if (!f) throw new LowrankError('MISSING_WEIGHT', `${repo}: model.safetensors.index.json names ${shard}, which the repo does not have`);
      if (!wanted.includes(f)) wanted.push(f);
    }
  }
  return wanted;
}

/** Pulls `repo` at `opts.revision` (default main) into the cache; returns the snapshot folder. */
export async function pullModel(repo: string, opts: PullOptions = {}): Promise<PullResult> {
  const env = opts.env ?? process.env;
  if (hubOffline(env)) {
    throw new LowrankError('NETWORK', `HF_HUB_OFFLINE is set: not downloading ${repo}; unset it to pull, or use a model already in the cache (\`lowrank models list\`)`);
  }
  const endpoint = (opts.endpoint ?? hubEndpoint(env)).replace(/\/+$/, '');
  const token = opts.token === undefined ? hubToken(env) : opts.token;
  const revision = opts.revision ?? 'main';
  const cacheDir = opts.cacheDir ?? hubCacheDir(env);
  const repoDir = repoFolder(cacheDir, repo);
  const log = opts.onLog ?? (() => {});
  const credentials = token ? { accessToken: token } : {};

  // 1. The commit the revision names, and whether the repo is gated.
  let info;
  try {
    info = await modelInfo({ name: repo, revision, hubUrl: endpoint, additionalFields: ['sha'], ...credentials });
  } catch (e) {
    throw hubFailure(e, repo, endpoint, token, 'its model info');
  }
  if (info.gated && !token) {
    throw new LowrankError('HUB_ACCESS', `${repo} is gated: accept its licence at ${endpoint}/${repo}, then set HF_TOKEN to a read token and pull again`);
  }
  const commit = String(info.sha ?? '');
  if (!/^[0-9a-f]{40}$/.test(commit)) throw new LowrankError('NETWORK', `${repo}: the Hub gave no commit for revision ${revision}`);

  // 2. The files at that commit; refuse what the engine cannot load before any weight moves.
  const tree: HubFile[] = [];
  try {
    for await (const e of listFiles({ repo, revision: commit, hubUrl: endpoint, ...credentials })) if (e.type === 'file') tree.push(toHubFile(e));
  } catch (e) {
    throw hubFailure(e, repo, endpoint, token, 'its file list');
  }
  const has = (p: string) => tree.some((f) => f.path === p);
  if (!has('config.json')) throw new LowrankError('BAD_CONFIG', `${repo} has no config.json: not a transformers model this app can load`);
  if (!has('model.safetensors') && !has('model.safetensors.index.json')) {
    const pickles = tree.filter((f) => PICKLE.test(f.path)).map((f) => f.path);
    if (pickles.length) {
      throw new LowrankError(
        'PICKLE_REFUSED',
        `${repo} has only PyTorch pickle weights (${pickles.slice(0, 3).join(', ')}); Lowrank Studio does not load pickles because unpickling runs arbitrary code. ` +
          `Look for a safetensors version of the model (often a "refs/pr/N" revision), or convert it in Python: AutoModelForCausalLM.from_pretrained(ID).save_pretrained(DIR, safe_serialization=True)`,
      );
    }
    throw new LowrankError('MISSING_WEIGHT', `${repo} has no model.safetensors or model.safetensors.index.json at ${commit}`);
  }

  const blobsDir = path.join(repoDir, 'blobs');
  const session: Session = { repo, commit, endpoint, token, blobsDir, retries: opts.retries ?? 3, meter: null, log };
  const small = tree.filter((f) => f.path === 'config.json' || f.path === 'model.safetensors.index.json');
  for (const f of small) await downloadBlob(session, f);
  const config = JSON.parse(fs.readFileSync(path.join(blobsDir, small.find((f) => f.path === 'config.json')!.oid), 'utf8')) as Record<string, unknown>;
  parseModelConfig(config, `${repo}/config.json`);
  const indexFile = small.find((f) => f.path === 'model.safetensors.index.json');
  const index = indexFile ? (JSON.parse(fs.readFileSync(path.join(blobsDir, indexFile.oid), 'utf8')) as Record<string, unknown>) : null;
  const files = chooseFiles(repo, tree, index);

  // 3. The transfer, then the snapshot by one rename.
  const pending = files.filter((f) => !existingBlob(path.join(blobsDir, f.oid), f.size));
  const partialBytes = (f: HubFile) => fs.statSync(path.join(blobsDir, `${f.oid}.incomplete`), { throwIfNoEntry: false })?.size ?? 0;
  const needed = pending.reduce((n, f) => n + Math.max(f.size - partialBytes(f), 0), 0);
  const disk = fs.statfsSync(blobsDir);
  if (needed > disk.bavail * disk.bsize) {
    throw new LowrankError(
      'WRITE_FAILED',
      `${repo} needs ${formatBytes(needed)} more in ${cacheDir} but that disk has ${formatBytes(disk.bavail * disk.bsize)} free; free some space or set HF_HUB_CACHE to a folder on a larger disk`,
    );
  }
  const meter = new TransferMeter(repo, pending.reduce((n, f) => n + f.size, 0), opts.onProgress);
  session.meter = meter;
  meter.emit();
  let downloadedBytes = 0;
  for (const f of pending) downloadedBytes += await downloadBlob(session, f);
  meter.file = null;
  meter.emit();

  const snapshotDir = path.join(repoDir, 'snapshots', commit);
  if (!fs.existsSync(snapshotDir)) {
    const tmp = path.join(repoDir, 'snapshots', `.${commit}.incomplete-${process.pid}`);
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(tmp, { recursive: true });
    try {
      for (const f of files) linkBlob(tmp, blobsDir, f);
      fs.renameSync(tmp, snapshotDir);
    } catch (e) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw new LowrankError('WRITE_FAILED', `${snapshotDir}: cannot write the snapshot (${(e as Error).message})`);
    }
  } else {
    // A snapshot another tool started: add what it lacks, each link by rename.
    for (const f of files) {
      if (fs.existsSync(path.join(snapshotDir, f.path))) continue;
      const tmpDir = fs.mkdtempSync(path.join(repoDir, 'snapshots', `.${commit}.link-`));
      linkBlob(tmpDir, blobsDir, f);
      fs.renameSync(path.join(tmpDir, f.path), path.join(snapshotDir, f.path));
      fs.rmSync(tmpDir, { recursive: true, force: true });
    }
  }
  if (revision !== commit) writeRef(repoDir, revision, commit);
  return { repo, commit, dir: snapshotDir, files: files.map((f) => f.path), bytes: files.reduce((n, f) => n + f.size, 0), downloadedBytes };
}
