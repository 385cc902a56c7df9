/**
 * A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, answering exactly the requests the
 * `@huggingface/hub` client makes for a download (read from its source, v2.17):
 *   GET /api/models/{org}/{name}/revision/{rev}?expand=…   model info: sha, gated, private
 *   GET /api/models/{org}/{name}/tree/{rev}?recursive=…    files: oid, size, lfs {oid, size}
 *   GET /{org}/{name}/resolve/{rev}/{file}                 bytes, with Range (206 + Content-Range),
 *       X-Repo-Commit, ETag (git oid), X-Linked-Etag / X-Linked-Size (LFS sha256 and size)
 * and the faults a download must survive: a corrupted body (bytes that do not match the published
 * sha256), a transfer cut after N bytes, 401 for a private or gated repo without a token, 404 for
 * an unknown repo, revision or file. Every request is logged with the bytes it was sent.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';

export interface StandInRepo {
  /** File name → bytes. Files ending .safetensors/.bin are served as LFS files. */
  files: Record<string, Buffer>;
  gated?: boolean;
  private?: boolean;
}

export interface LoggedRequest {
  method: string;
  path: string;
  range: string | null;
  status: number;
  /** Body bytes actually written before the response ended (or was cut). */
  bytesSent: number;
}

export interface HubStandIn {
  endpoint: string;
  /** The commit every repo's `main` points at. */
  commitOf(repo: string): string;
  requests: LoggedRequest[];
  /** The token that opens private and gated repos. */
  token: string;
  /** Serve this file with one byte flipped (its tree and ETag still name the true sha256). */
  corrupt: Set<string>;
  /** Cut the next full transfer of `repo/file` after this many bytes (once). */
  cutAfter: Map<string, number>;
  /** Send file bodies at this rate (null: as fast as possible), so a client's progress can be watched. */
  bytesPerSecond: number | null;
  close(): Promise<void>;
}

const isLfs = (file: string) => /\.(safetensors|bin)$/.test(file);
const gitOid = (data: Buffer) => createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** The files of a model folder on disk, as a stand-in repo. */
export function repoFromFolder(dir: string, extra: Partial<StandInRepo> = {}): StandInRepo {
  const files: Record<string, Buffer> = {};
  for (const name of fs.readdirSync(dir)) if (fs.statSync(path.join(dir, name)).isFile()) files[name] = fs.readFileSync(path.join(dir, name));
  return { files, ...extra };
}

export async function startHubStandIn(repos: Record<string, StandInRepo>): Promise<HubStandIn> {
  const token = 'hf_standin_test_token';
  const commits = new Map(Object.keys(repos).map((r) => [r, createHash('sha1').update(`commit ${r}`).digest('hex')]));
  const requests: LoggedRequest[] = [];
  const corrupt = new Set<string>();
  const cutAfter = new Map<string, number>();
  const settings = { bytesPerSecond: null as number | null };

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const entry: LoggedRequest = { method: req.method ?? 'GET', path: url.pathname, range: req.headers.range ?? null, status: 200, bytesSent: 0 };
    requests.push(entry);
    const send = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      entry.status = status;
      const text = typeof body === 'string' ? body : JSON.stringify(body);
      res.writeHead(status, { 'Content-Type': typeof body === 'string' ? 'text/plain' : 'application/json', ...headers });
      res.end(text);
    };
    const authorized = req.headers.authorization === `Bearer ${token}`;
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/(revision|tree)\/([^/]+)$/.exec(url.pathname);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    const repoName = api?.[1] ?? resolve?.[1];
    const revision = decodeURIComponent(api?.[3] ?? resolve?.[2] ?? '');
    const repo = repoName ? repos[repoName] : undefined;
    if (!repoName || (!api && !resolve)) return send(404, { error: 'Not found' });
    // The Hub hides a private repo from an anonymous caller behind the same 401 as a missing one.
    if (!repo || (repo.private && !authorized)) {
      return send(authorized || !repo ? 404 : 401, { error: 'Repository not found' }, { 'X-Error-Code': 'RepositoryNotFound' });
    }
    const commit = commits.get(repoName)!;
    if (revision !== 'main' && revision !== 'HEAD' && revision !== commit) return send(404, { error: `Invalid rev id: ${revision}` }, { 'X-Error-Code': 'RevisionNotFound' });
    if (api?.[2] === 'revision') {
      return send(200, { _id: commit.slice(0, 24), id: repoName, sha: commit, private: Boolean(repo.private), gated: repo.gated ? 'manual' : false, downloads: 0, likes: 0, lastModified: '2026-01-01T00:00:00.000Z' });
    }
    if (api?.[2] === 'tree') {
      return send(
        200,
        Object.entries(repo.files).map(([p, data]) => ({
          type: 'file',
          oid: gitOid(isLfs(p) ? Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha256(data)}\nsize ${data.length}\n`) : data),
          size: data.length,
          path: p,
          ...(isLfs(p) ? { lfs: { oid: sha256(data), size: data.length, pointerSize: 130 } } : {}),
        })),
      );
    }
    const file = decodeURIComponent(resolve![3]);
    const data = repo.files[file];
    if (!data) return send(404, { error: 'Entry not found' }, { 'X-Error-Code': 'EntryNotFound' });
    if (repo.gated && !authorized) return send(401, { error: `Access to model ${repoName} is restricted. You must have access to it and be authenticated to access it.` }, { 'X-Error-Code': 'GatedRepo' });
    const body = corrupt.has(`${repoName}/${file}`) ? Buffer.concat([data.subarray(0, data.length >> 1), Buffer.from([data[data.length >> 1] ^ 0xff]), data.subarray((data.length >> 1) + 1)]) : data;
    const headers: Record<string, string> = {
      'Content-Type': 'application/octet-stream',
      'Accept-Ranges': 'bytes',
      'X-Repo-Commit': commit,
      ETag: `"${isLfs(file) ? sha256(data) : gitOid(data)}"`,
      ...(isLfs(file) ? { 'X-Linked-Etag': `"${sha256(data)}"`, 'X-Linked-Size': String(data.length) } : {}),
    };
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    let start = 0;
    let end = body.length - 1;
    if (range) {
      start = Number(range[1]);
      end = range[2] ? Math.min(Number(range[2]), body.length - 1) : body.length - 1;
      if (start > end) {
        entry.status = 416;
        res.writeHead(416, { 'Content-Range': `bytes */${body.length}` });
        return res.end();
      }
      entry.status = 206;
      res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${end}/${body.length}`, 'Content-Length': String(end - start + 1) });
    } else {
      res.writeHead(200, { ...headers, 'Content-Length': String(body.length) });
    }
    const slice = body.subarray(start, end + 1);
    const key = `${repoName}/${file}`;
    const cut = cutAfter.get(key);
    if (cut !== undefined && slice.length > 1) {
      cutAfter.delete(key);
      // Half a body, then the connection drops: what a flaky network or a killed proxy does.
      res.write(slice.subarray(0, cut), () => {
        entry.bytesSent = cut;
        res.socket?.destroy();
      });
      return;
    }
    if (settings.bytesPerSecond === null) {
      entry.bytesSent = slice.length;
      return res.end(slice);
    }
    const chunk = 64 * 1024;
    const pace = (offset: number) => {
      if (res.destroyed) return;
      if (offset >= slice.length) return res.end();
      res.write(slice.subarray(offset, offset + chunk));
      entry.bytesSent = Math.min(offset + chunk, slice.length);
      setTimeout(() => pace(offset + chunk), (1000 * chunk) / settings.bytesPerSecond!);
    };
    pace(0);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    get bytesPerSecond() {
      return settings.bytesPerSecond;
    },
    set bytesPerSecond(v: number | null) {
      settings.bytesPerSecond = v;
    },
    endpoint: `http://127.0.0.1:${port}`,
    commitOf: (repo) => commits.get(repo)!,
    requests,
    token,
    corrupt,
    cutAfter,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
