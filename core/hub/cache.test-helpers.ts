/**
 * For tests: writes a model folder into a Hugging Face cache the way huggingface_hub does
 * (blobs named by hash, snapshot entries as relative symlinks, or plain files as on Windows
 * without symlink rights), independently of core/hub/pull.ts. Production code never imports it.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

export function seedHubCache(
  cacheDir: string,
  repo: string,
  fromDir: string,
  opts: { commit: string; refs: string[]; links: boolean; only?: string[] },
): string {
  const repoDir = path.join(cacheDir, `models--${repo.replace('/', '--')}`);
  const snapshot = path.join(repoDir, 'snapshots', opts.commit);
  fs.mkdirSync(snapshot, { recursive: true });
  fs.mkdirSync(path.join(repoDir, 'blobs'), { recursive: true });
  for (const name of opts.only ?? fs.readdirSync(fromDir)) {
    const bytes = fs.readFileSync(path.join(fromDir, name));
    if (!opts.links) {
      fs.writeFileSync(path.join(snapshot, name), bytes);
      continue;
    }
    const blob = path.join(repoDir, 'blobs', createHash('sha256').update(bytes).digest('hex'));
    fs.writeFileSync(blob, bytes);
    fs.symlinkSync(path.join('..', '..', 'blobs', path.basename(blob)), path.join(snapshot, name));
  }
  for (const ref of opts.refs) {
    fs.mkdirSync(path.dirname(path.join(repoDir, 'refs', ref)), { recursive: true });
    fs.writeFileSync(path.join(repoDir, 'refs', ref), opts.commit);
  }
  return snapshot;
}
