/**
 * Naming a model: a folder, or a Hub id `org/name[@revision]`. An id is looked up in the Hugging
 * Face cache first, offline; then, unless `HF_HUB_OFFLINE=1` (or the caller allows no download),
 * pulled from the Hub into that cache. Either way the answer is a folder path, so everything
 * downstream (loading, training, the run store) deals in folders only.
 */
import * as fs from 'node:fs';
import { LowrankError } from '../errors.ts';
import { findCachedSnapshot, formatHubId, hubCacheDir, hubOffline, missingModelFiles, parseHubId } from './cache.ts';
import { pullModel, type PullOptions } from './pull.ts';

export interface ResolveOptions extends Pick<PullOptions, 'onProgress' | 'onLog' | 'env'> {
  /** False: only the cache (the app's service, which downloads through its own call). */
  download?: boolean;
}

/** The folder `text` names: itself when it exists, else the cached (or pulled) snapshot of a Hub id. */
export async function resolveModel(text: string, opts: ResolveOptions = {}): Promise<string> {
  const env = opts.env ?? process.env;
  const cached = resolveCachedModel(text, env, opts.download !== false && !hubOffline(env));
  if (cached !== null) return cached;
  const id = parseHubId(text)!;
  try {
    const pulled = await pullModel(id.repo, { revision: id.revision, env, onProgress: opts.onProgress, onLog: opts.onLog });
    return pulled.dir;
  } catch (e) {
    // `models/llama` may be a mistyped folder as much as a Hub id: say both.
    if (e instanceof LowrankError && e.code === 'FILE_NOT_FOUND') throw new LowrankError(e.code, `no folder ${text} here, and as a Hub id: ${e.message}`);
    throw e;
  }
}

/**
 * The folder `text` names without any download: `text` itself when it is not a Hub id or exists
 * on disk, the snapshot of a Hub id in the cache, else null (when `mayDownload`) or an error that
 * says how to get the model.
 */
export function resolveCachedModel(text: string, env: NodeJS.ProcessEnv = process.env, mayDownload = false): string | null {
  const id = parseHubId(text);
  if (!id || fs.existsSync(text)) return text;
  const cacheDir = hubCacheDir(env);
  const snapshot = findCachedSnapshot(id, cacheDir);
  const missing = snapshot ? missingModelFiles(snapshot.dir) : [];
  if (snapshot && missing.length === 0) return snapshot.dir;
  if (mayDownload) return null;
  const where = snapshot ? `its snapshot in ${snapshot.dir} lacks ${missing.join(', ')}` : `it is not in the Hugging Face cache (${cacheDir}) and no folder has that name`;
  const how = hubOffline(env) ? 'unset HF_HUB_OFFLINE to download it' : `download it with \`lowrank models pull ${formatHubId(id)}\``;
  throw new LowrankError('FILE_NOT_FOUND', `model ${formatHubId(id)}: ${where}; ${how}`);
}
