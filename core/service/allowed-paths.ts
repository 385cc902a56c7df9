/**
 * Which files the service may read or write on a caller's behalf. A path from the renderer is
 * accepted only inside an allowed root (the bundled resources, the store's uploads/ and exports/,
 * folders given to `lowrank serve --allow`) or when the user picked it in a system file dialog
 * (Electron main grants it). Symlinks are resolved first, so a link cannot lead outside a root.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import type { BrowseEntry, DatasetEntry, ModelEntry } from '../contract.ts';

export const DATASET_EXTENSIONS = ['.jsonl', '.json', '.csv', '.txt'];
type Kind = 'model' | 'dataset' | 'directory';

function real(p: string): string {
  const resolved = path.resolve(p);
  try {
    return fs.realpathSync(resolved);
  } catch {
    // Not there yet (an export destination): resolve its closest existing parent.
    const parent = path.dirname(resolved);
    return parent === resolved ? resolved : path.join(real(parent), path.basename(resolved));
  }
}

function inside(p: string, root: string): boolean {
  const rel = path.relative(root, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

const isModelDir = (dir: string) => fs.existsSync(path.join(dir, 'config.json'));

export class AllowedPaths {
  private readonly roots: Record<Kind, string[]>;
  private readonly granted: Record<Kind, Set<string>> = { model: new Set(), dataset: new Set(), directory: new Set() };

  constructor(roots: { models: string[]; datasets: string[]; exports: string[] }) {
    this.roots = {
      model: roots.models.map(real),
      dataset: roots.datasets.map(real),
      directory: roots.exports.map(real),
    };
  }

  grant(p: string, kind: Kind): void {
    this.granted[kind].add(real(p));
  }

  check(p: string, kind: Kind): void {
    const r = real(p);
    const ok = this.roots[kind].some((root) => inside(r, root)) || [...this.granted[kind]].some((g) => inside(r, g));
    if (!ok) {
      throw new LowrankError(
        'BAD_ARGUMENT',
        `${p}: not a ${kind} this app may open; choose it with the file picker (or start \`lowrank serve --allow DIR\` with its folder)`,
      );
    }
  }

  private browseRoots(): string[] {
    return [...new Set([...this.roots.model, ...this.roots.dataset, ...this.granted.model, ...this.granted.directory])].filter((r) => fs.existsSync(r));
  }

  listModels(bundled: string): Array<Pick<ModelEntry, 'path' | 'name' | 'bundled'>> {
    const found = new Map<string, Pick<ModelEntry, 'path' | 'name' | 'bundled'>>();
    const bundledReal = real(bundled);
    for (const root of [...this.roots.model, ...this.granted.model]) {
      const candidates = isModelDir(root) ? [root] : fs.existsSync(root) ? fs.readdirSync(root).map((n) => path.join(root, n)) : [];
      for (const dir of candidates) {
        if (!isModelDir(dir)) continue;
        found.set(dir, { path: dir, name: path.basename(dir), bundled: dir === bundledReal });
      }
    }
    return [...found.values()].sort((a, b) => Number(b.bundled) - Number(a.bundled) || a.name.localeCompare(b.name));
  }

  listDatasets(uploads: string): DatasetEntry[] {
    const out: DatasetEntry[] = [];
    const uploadsReal = real(uploads);
    for (const root of this.roots.dataset) {
      if (!fs.existsSync(root)) continue;
      for (const name of fs.readdirSync(root).sort()) {
        const file = path.join(root, name);
        if (!DATASET_EXTENSIONS.includes(path.extname(name).toLowerCase()) || !fs.statSync(file).isFile()) continue;
        const source = root === uploadsReal ? 'uploaded' : root.startsWith(real(path.join(import.meta.dirname, '..', '..', 'resources'))) ? 'bundled' : 'root';
        out.push({ path: file, name, bytes: fs.statSync(file).size, source });
      }
    }
    for (const file of this.granted.dataset) {
      if (fs.existsSync(file)) out.push({ path: file, name: path.basename(file), bytes: fs.statSync(file).size, source: 'picked' });
    }
    return out;
  }

  /** The server-side picker: the allowed roots, then the folders and dataset files inside them. */
  browse(dir?: string): { dir: string | null; parent: string | null; entries: BrowseEntry[] } {
    const roots = this.browseRoots();
    if (dir === undefined) {
      return { dir: null, parent: null, entries: roots.map((r) => ({ path: r, name: r, kind: 'dir' as const, isModel: isModelDir(r) })) };
    }
    const r = real(dir);
    if (!roots.some((root) => inside(r, root))) throw new LowrankError('BAD_ARGUMENT', `${dir}: outside the folders this server may show`);
    const entries: BrowseEntry[] = [];
    for (const name of fs.readdirSync(r).sort()) {
      if (name.startsWith('.')) continue;
      const p = path.join(r, name);
      const stat = fs.statSync(p);
      if (stat.isDirectory()) entries.push({ path: p, name, kind: 'dir', isModel: isModelDir(p) });
      else if (DATASET_EXTENSIONS.includes(path.extname(name).toLowerCase())) entries.push({ path: p, name, kind: 'file', isModel: false });
    }
    const parent = roots.includes(r) ? null : path.dirname(r);
    return { dir: r, parent, entries };
  }
}
