/**
 * Builds the engine window's page: one esbuild bundle (a classic script, IIFE) of
 * core/service/engine-window/renderer.ts and everything it imports, TypeScript included, plus an
 * HTML file that loads it. Electron's main builds it at start into the user-data folder (like the
 * preload), so it always matches the sources next to it; tsx is not involved.
 *
 * How the bundle meets an Electron renderer with nodeIntegration:
 *  - `require` is a global there, so Node built-ins and `electron` stay `require(...)` calls;
 *  - native packages (better-sqlite3) stay external, required by absolute path, because `require`
 *    in a page resolves from the page's folder, not from the sources';
 *  - `import.meta.dirname` / `.url` / `.filename` are replaced per file by that file's real
 *    location (the app ships unpacked: electron-builder.yml `asar: false`), so code that finds
 *    files next to it (resources/, wasm binaries) finds them from the bundle too.
 *
 * `nodeBuiltins: 'unavailable'` is for a plain browser page (the Chromium test): built-ins become
 * modules whose functions throw "<module>.<name> is not available in a plain browser page", so
 * code that only imports them loads, and code that calls them fails with that message.
 */
import * as fs from 'node:fs';
import { builtinModules, createRequire } from 'node:module';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { build, type Plugin } from 'esbuild';

const HERE = import.meta.dirname;
export const ENGINE_WINDOW_ENTRY = path.join(HERE, 'renderer.ts');
const ROOT = path.resolve(HERE, '..', '..', '..');
/** Native packages: loaded by Node's require at run time, never bundled. */
const NATIVE_PACKAGES = ['better-sqlite3'];

export interface EngineWindowBundleOptions {
  /** Folder for engine.html and engine.js (created). */
  outDir: string;
  entry?: string;
  /** 'require': an Electron renderer with nodeIntegration; 'unavailable': a plain browser page. */
  nodeBuiltins?: 'require' | 'unavailable';
}

export interface EngineWindowBundle {
  html: string;
  script: string;
  bytes: number;
}

/** Replaces import.meta.* with the file's own location, as tsx / Node would give it. */
function importMetaPlugin(): Plugin {
  return {
    name: 'lowrank-import-meta',
    setup(b) {
      b.onLoad({ filter: /\.ts$/ }, async (args) => {
        if (args.path.includes(`${path.sep}node_modules${path.sep}`)) return undefined;
        const source = await fs.promises.readFile(args.path, 'utf8');
        const contents = source
          .replaceAll('import.meta.dirname', JSON.stringify(path.dirname(args.path)))
          .replaceAll('import.meta.filename', JSON.stringify(args.path))
          .replaceAll('import.meta.url', JSON.stringify(pathToFileURL(args.path).href));
        return { contents, loader: 'ts' };
      });
    },
  };
}

/** Native packages stay `require("/abs/path")`: a page's require does not search the sources' node_modules. */
function nativeByAbsolutePath(): Plugin {
  const require = createRequire(path.join(ROOT, 'package.json'));
  const filter = new RegExp(`^(${NATIVE_PACKAGES.map((p) => p.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&')).join('|')})$`);
  return {
    name: 'lowrank-native-external',
    setup(b) {
      b.onResolve({ filter }, (args) => ({ path: require.resolve(args.path), external: true }));
    },
  };
}

const BUILTIN = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));

/** Built-ins that modules call while they load, with their page equivalents. */
const LOAD_TIME: Record<string, string> = {
  // optional-packages.ts, threads.ts: the require it makes fails when used.
  'module.createRequire': `() => unavailable('require')`,
  // Paths computed while modules load (resources.ts, native/gemm.ts): POSIX string arithmetic.
  'path.join': `(...parts) => normalizePath(parts.join('/'))`,
  'path.resolve': `(...parts) => normalizePath(parts.reduce((r, p) => (p.startsWith('/') ? p : r + '/' + p), ''))`,
  'path.dirname': `(p) => normalizePath(p + '/..')`,
  // native/addon.ts names the addon in its not-loaded reason, so the kernels fall back to JS in a page.
  'path.basename': `(p) => p.split('/').filter(Boolean).pop() ?? ''`,
  'os.endianness': `() => 'LE'`,
  // threads.ts: the default thread count.
  'os.cpus': `() => Array.from({ length: navigator.hardwareConcurrency || 1 }, () => ({}))`,
};

function unavailableBuiltins(): Plugin {
  return {
    name: 'lowrank-unavailable-builtins',
    setup(b) {
      b.onResolve({ filter: /^[a-z:_/]+$/ }, (args) => (BUILTIN.has(args.path) ? { path: args.path.replace(/^node:/, ''), namespace: 'unavailable-builtin' } : undefined));
      b.onLoad({ filter: /.*/, namespace: 'unavailable-builtin' }, (args) => {
        const real = createRequire(import.meta.url)(`node:${args.path}`) as Record<string, unknown>;
        const names = Object.keys(real).filter((n) => n !== 'default' && /^[A-Za-z_$][\w$]*$/.test(n));
        const lines = [
          `const unavailable = (name) => function () { throw new Error(name + ' is not available in a plain browser page'); };`,
          `const normalizePath = (p) => { const out = []; for (const s of p.split('/')) { if (s === '..') out.pop(); else if (s && s !== '.') out.push(s); } return '/' + out.join('/'); };`,
          ...names.map((n) => `export const ${n} = ${LOAD_TIME[`${args.path}.${n}`] ?? `unavailable(${JSON.stringify(`${args.path}.${n}`)})`};`),
          `export default { ${names.join(', ')} };`,
        ];
        return { contents: lines.join('\n'), loader: 'js' };
      });
    },
  };
}

export async function buildEngineWindowBundle(opts: EngineWindowBundleOptions): Promise<EngineWindowBundle> {
  const nodeBuiltins = opts.nodeBuiltins ?? 'require';
  fs.mkdirSync(opts.outDir, { recursive: true });
  const script = path.join(opts.outDir, 'engine.js');
  const html = path.join(opts.outDir, 'engine.html');
  await build({
    entryPoints: [opts.entry ?? ENGINE_WINDOW_ENTRY],
    outfile: script,
    bundle: true,
    format: 'iife',
    // 'node' picks the packages' "main" entries: every tfjs package then shares one tfjs-core.
    platform: nodeBuiltins === 'require' ? 'node' : 'browser',
    mainFields: ['main', 'module'],
    target: 'chrome120',
    external: nodeBuiltins === 'require' ? ['electron'] : [],
    plugins: [importMetaPlugin(), nativeByAbsolutePath(), ...(nodeBuiltins === 'unavailable' ? [unavailableBuiltins()] : [])],
    // tfjs-core's node platform requires node-fetch only where fetch is missing; a page has fetch.
    ...(nodeBuiltins === 'unavailable' ? { define: { 'process.env.NODE_ENV': '"production"' } } : {}),
    logLevel: 'error',
  });
  // An error while the bundle loads (before it can report anything) is still reported to main.
  const reportLoadErrors =
    nodeBuiltins === 'require'
      ? `<script>addEventListener('error', (e) => require('electron').ipcRenderer.send('lowrank:engine-window', { type: 'fatal', message: String(e.message) }));</script>\n`
      : // A plain page has no `process`; an empty one makes reads of process.env see nothing set.
        // Buffer: only for constants made while modules load (safetensors.ts's ZIP magic).
        `<script>globalThis.process ??= { env: {}, versions: {}, platform: 'browser', argv: [] };\n` +
        `globalThis.Buffer ??= { from: (s) => Uint8Array.from(String(s), (c) => c.charCodeAt(0) & 255), isBuffer: () => false };</script>\n`;
  fs.writeFileSync(
    html,
    `<!doctype html>\n<html><head><meta charset="utf-8"><title>Lowrank Studio engine</title></head>\n<body>\n${reportLoadErrors}<script src="./engine.js"></script>\n</body></html>\n`,
  );
  return { html, script, bytes: fs.statSync(script).size };
}
