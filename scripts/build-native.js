#!/usr/bin/env node
/**
 * Builds the optional native kernels (native/kernels.c → build/native/lowrank_native.node: GEMM
 * from the system BLAS, a fused softmax cross-entropy) against OpenBLAS on Linux (Debian/Ubuntu:
 * `apt-get install libopenblas-dev`) or Accelerate on macOS. Runs as npm's postinstall and by hand (`node scripts/build-native.js`).
 *
 * Outside CI it never fails an install: without a compiler, Node's headers or a BLAS it says so in
 * one line and exits 0, and the engine keeps the wasm kernels (core/backend/native/addon.ts). With
 * CI set (.ci/run installs OpenBLAS and a compiler) a build or load failure exits 1 with the same
 * line, so `npm ci` fails there instead of the native tests quietly running without the addon.
 * No node-gyp and no download: a plain `cc` against the headers Node ships in <prefix>/include/node.
 * LOWRANK_SKIP_NATIVE=1 skips the build (exit 0, even on CI).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const root = path.resolve(import.meta.dirname, '..');
const sources = ['kernels.c', 'frozen.c', 'quants.c'].map((f) => path.join(root, 'native', f));
const outDir = path.join(root, 'build', 'native');
const target = path.join(outDir, 'lowrank_native.node');

const onCI = process.env.CI != null && process.env.CI !== '';

function skip(reason, { failOnCI = true } = {}) {
  if (onCI && failOnCI) {
    console.error(`lowrank: native kernels not built (${reason}); CI is set, so this fails the install.`);
    process.exit(1);
  }
  console.log(`lowrank: native kernels not built (${reason}); the engine uses its wasm kernels.`);
  process.exit(0);
}

if (process.env.LOWRANK_SKIP_NATIVE === '1') skip('LOWRANK_SKIP_NATIVE=1', { failOnCI: false });
if (process.platform !== 'linux' && process.platform !== 'darwin') skip(`no build recipe for ${process.platform}`);
for (const file of sources) if (!fs.existsSync(file)) skip(`${path.relative(root, file)} is missing`);

const headers = [
  process.env.LOWRANK_NODE_HEADERS,
  path.join(path.dirname(process.execPath), '..', 'include', 'node'),
].filter((dir) => dir != null && fs.existsSync(path.join(dir, 'node_api.h')));
if (headers.length === 0) skip(`node_api.h not found next to ${process.execPath}; set LOWRANK_NODE_HEADERS to the folder that has it`);

const compiler = process.env.CC || 'cc';
const libs = process.platform === 'darwin'
  ? ['-framework', 'Accelerate', '-undefined', 'dynamic_lookup']
  : ['-lopenblas', '-lm', '-lpthread'];
const args = ['-O3', '-fno-math-errno', '-ffp-contract=off', '-Wno-psabi', '-shared', '-fPIC', `-I${headers[0]}`, ...sources, '-o', `${target}.tmp`, ...libs];

fs.mkdirSync(outDir, { recursive: true });
const result = spawnSync(compiler, args, { encoding: 'utf8' });
if (result.error != null) skip(`${compiler}: ${result.error.message}`);
if (result.status !== 0) {
  const first = `${result.stderr}`.split('\n').find((line) => /error/i.test(line)) ?? `exit ${result.status}`;
  const hint = /cblas\.h|-lopenblas|openblas/i.test(result.stderr) ? '; install OpenBLAS (Debian/Ubuntu: apt-get install libopenblas-dev)' : '';
  skip(`${compiler} failed: ${first.trim()}${hint}`);
}
fs.renameSync(`${target}.tmp`, target);
// Loading it proves the BLAS library resolves at run time, not just at link time.
const probe = spawnSync(process.execPath, ['-e', `console.log(require(${JSON.stringify(target)}).library())`], { encoding: 'utf8' });
if (probe.status !== 0) {
  fs.rmSync(target, { force: true });
  const lines = `${probe.stderr}`.trim().split('\n');
  skip(`the built addon does not load: ${(lines.find((line) => /Error/.test(line)) ?? lines[0]).trim()}`);
}
console.log(`lowrank: native kernels built (${probe.stdout.trim()}) → ${path.relative(root, target)}`);
