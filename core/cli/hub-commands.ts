/**
 * `lowrank models pull|list|rm`: the Hugging Face cache from the terminal, and `--model ID`
 * resolution (cache first, then a download with a progress bar) for every command.
 */
import { LowrankError } from '../errors.ts';
import { formatDuration } from '../progress.ts';
import { formatBytes } from '../train/memory.ts';
import { formatHubId, hubCacheDir, listCachedModels, parseHubId, removeCachedModel, type HubId } from '../hub/cache.ts';
import { pullModel, type PullProgress } from '../hub/pull.ts';
import { resolveModel } from '../hub/resolve.ts';
import type { Flags } from '../cli.ts';
import { printJson } from './flags.ts';

/** A one-line transfer bar: bytes, rate and time left; redrawn in place on a TTY, every 5 s otherwise. */
export class TransferBar {
  private lastDraw = 0;
  private drawn = false;
  private readonly tty = Boolean(process.stderr.isTTY);

  update(p: PullProgress): void {
    const now = performance.now();
    const finished = p.bytes >= p.totalBytes && p.file === null;
    if (!finished && now - this.lastDraw < (this.tty ? 100 : 5000)) return;
    this.lastDraw = now;
    const width = 24;
    const filled = p.totalBytes > 0 ? Math.round((width * Math.min(p.bytes, p.totalBytes)) / p.totalBytes) : width;
    const bar = '='.repeat(Math.max(filled - 1, 0)) + (filled > 0 ? '>' : '') + ' '.repeat(width - filled);
    const line = `${p.repo} ${formatBytes(p.bytes)} / ${formatBytes(p.totalBytes)} [${bar}] ${formatBytes(p.bytesPerSecond)}/s ETA ${formatDuration(p.etaSeconds)}${p.file ? `  ${p.file}` : ''}`;
    if (this.tty) {
      process.stderr.write(`\r\x1b[2K${line}`);
      this.drawn = true;
    } else {
      process.stderr.write(`${line}\n`);
    }
  }

  log(message: string): void {
    if (this.tty && this.drawn) process.stderr.write('\r\x1b[2K');
    process.stderr.write(`${message}\n`);
  }

  finish(): void {
    if (this.tty && this.drawn) process.stderr.write('\n');
    this.drawn = false;
  }
}

/** `--model` as given: a folder, or a Hub id resolved from the cache or downloaded with a bar. */
export async function resolveModelFlag(value: string): Promise<string> {
  const bar = new TransferBar();
  try {
    return await resolveModel(value, { onProgress: (p) => bar.update(p), onLog: (m) => bar.log(m) });
  } finally {
    bar.finish();
  }
}

function requireHubId(positionals: string[], usage: string): HubId {
  const text = positionals[1];
  const id = text ? parseHubId(text) : null;
  if (!id) throw new LowrankError('BAD_ARGUMENT', `${text ? `"${text}" is not a Hub id (org/name or org/name@revision)` : 'a Hub id is required'}; usage: ${usage}`);
  return id;
}

export async function modelsCommand(flags: Flags, positionals: string[]): Promise<void> {
  const sub = positionals[0];
  if (sub === 'pull') {
    const id = requireHubId(positionals, 'lowrank models pull ORG/NAME [--revision R]');
    if (id.revision && typeof flags.revision === 'string' && flags.revision !== id.revision) {
      throw new LowrankError('BAD_ARGUMENT', `two revisions given (@${id.revision} and --revision ${flags.revision}); give one`);
    }
    const revision = typeof flags.revision === 'string' ? flags.revision : id.revision;
    const bar = flags.json ? null : new TransferBar();
    let result;
    try {
      result = await pullModel(id.repo, { revision, onProgress: (p) => bar?.update(p), onLog: (m) => bar?.log(m) });
    } finally {
      bar?.finish();
    }
    if (flags.json) return printJson(result);
    console.log(`${formatHubId({ repo: id.repo, revision })} at ${result.commit.slice(0, 12)}: ${result.files.length} files, ${formatBytes(result.bytes)} (${formatBytes(result.downloadedBytes)} downloaded)`);
    console.log(result.dir);
    return;
  }
  if (sub === 'list') {
    const cacheDir = hubCacheDir();
    const models = listCachedModels(cacheDir);
    if (flags.json) return printJson({ cacheDir, models });
    if (!models.length) return console.log(`no models in the Hugging Face cache (${cacheDir})`);
    for (const m of models) {
      const what = m.problem ?? `${m.architecture}, ${((m.parameters ?? 0) / 1e6).toFixed(1)} M parameters`;
      console.log(`${m.id.padEnd(40)} ${m.commit.slice(0, 12)} ${formatBytes(m.bytes).padStart(9)}  ${what}`);
    }
    return;
  }
  if (sub === 'rm') {
    const id = requireHubId(positionals, 'lowrank models rm ORG/NAME[@REVISION]');
    const { bytes, removed } = removeCachedModel(id);
    if (flags.json) return printJson({ removed, bytes });
    console.log(`removed ${removed} (${formatBytes(bytes)} freed)`);
    return;
  }
  throw new LowrankError('BAD_ARGUMENT', `usage: lowrank models pull ID [--revision R] | list [--json] | rm ID${sub ? ` (unknown subcommand "${sub}")` : ''}`);
}
