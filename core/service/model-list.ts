/**
 * The wizard's list of base models: the bundled model and models in allowed or picked folders,
 * every model snapshot in the Hugging Face cache, and the merged exports of the app's own runs;
 * each with architecture, parameters and size on disk read from its files (config.json and file
 * sizes only: listing never loads weights).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ModelEntry } from '../contract.ts';
import { isJsonObject } from '../io/hf-folder.ts';
import { parseModelConfig, parameterCount } from '../models/config.ts';
import { hubIdOfFolder, listCachedModels } from '../hub/cache.ts';
import type { RunStore } from '../store/store.ts';
import type { AllowedPaths } from './allowed-paths.ts';

/** Bytes of a folder's files (links followed: a cache snapshot's size is its blobs'). */
function folderBytes(dir: string): number {
  let bytes = 0;
  for (const name of fs.readdirSync(dir)) {
    try {
      const stat = fs.statSync(path.join(dir, name));
      if (stat.isFile()) bytes += stat.size;
    } catch {
      // A dangling link counts nothing.
    }
  }
  return bytes;
}

/** Architecture, parameters and whether the engine supports it, from config.json alone. */
export function describeModelFolder(dir: string): Pick<ModelEntry, 'architecture' | 'parameters' | 'bytes' | 'problem'> {
  const bytes = folderBytes(dir);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  } catch (e) {
    return { architecture: null, parameters: null, bytes, problem: `config.json: ${(e as Error).message}` };
  }
  const architecture = isJsonObject(raw) && Array.isArray(raw.architectures) ? String(raw.architectures[0]) : null;
  try {
    return { architecture, parameters: parameterCount(parseModelConfig(raw as Record<string, unknown>, path.join(dir, 'config.json'))), bytes, problem: null };
  } catch (e) {
    return { architecture, parameters: null, bytes, problem: (e as Error).message };
  }
}

export function listModelEntries(opts: { paths: AllowedPaths; bundledDir: string; hubCacheDir: string; exportsDir: string; store: RunStore }): ModelEntry[] {
  const found = new Map<string, ModelEntry>();
  const exportsDir = path.resolve(opts.exportsDir);
  for (const m of opts.paths.listModels(opts.bundledDir)) {
    if (hubIdOfFolder(m.path)) continue;
    const isExport = path.dirname(path.resolve(m.path)) === exportsDir;
    found.set(m.path, { ...m, source: m.bundled ? 'bundled' : isExport ? 'export' : 'folder', hubId: null, ...describeModelFolder(m.path) });
  }
  for (const m of listCachedModels(opts.hubCacheDir)) {
    found.set(m.path, {
      path: m.path,
      name: m.id,
      bundled: false,
      source: 'hf-cache',
      hubId: m.repo,
      architecture: m.architecture,
      parameters: m.parameters,
      bytes: m.bytes,
      problem: m.problem,
    });
  }
  // Merged exports written outside the store's exports/ folder (a destination the user picked).
  for (const run of opts.store.listRuns({ limit: 1000 })) {
    for (const a of opts.store.artifacts(run.id)) {
      if (a.kind !== 'merged' || found.has(a.path) || !fs.existsSync(path.join(a.path, 'config.json'))) continue;
      found.set(a.path, { path: a.path, name: path.basename(a.path), bundled: false, source: 'export', hubId: null, ...describeModelFolder(a.path) });
    }
  }
  const order = { bundled: 0, 'hf-cache': 1, export: 2, folder: 3 };
  return [...found.values()].sort((a, b) => order[a.source] - order[b.source] || a.name.localeCompare(b.name));
}
