#!/usr/bin/env node
// `npm start`: builds the renderer if needed, then launches Electron where its binary is
// installed; where it is not (a headless box, a machine without Electron's download) it starts
// `lowrank serve` instead, which prints the address to open in a browser.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';

const root = path.resolve(import.meta.dirname, '..');
const require = createRequire(import.meta.url);

if (!existsSync(path.join(root, 'renderer', 'dist', 'index.html'))) {
  console.log('Building the renderer (first start)…');
  const vite = path.join(root, 'node_modules', 'vite', 'bin', 'vite.js');
  const built = spawnSync(process.execPath, [vite, 'build', '--config', path.join(root, 'renderer', 'vite.config.ts'), '--logLevel', 'warn'], { stdio: 'inherit', cwd: root });
  if (built.status !== 0) process.exit(built.status ?? 1);
}

let electronPath = null;
try {
  const p = require('electron');
  if (typeof p === 'string' && existsSync(p)) electronPath = p;
} catch {
  /* electron's binary was not downloaded */
}
const child = electronPath
  ? spawn(electronPath, [root], { stdio: 'inherit', cwd: root, env: { ...process.env, LOWRANK_NODE: process.execPath } })
  : (console.log("Electron's binary is not installed here; serving the app to a browser on this machine instead."),
    spawn(process.execPath, [path.join(root, 'bin', 'lowrank.js'), 'serve', ...process.argv.slice(2)], { stdio: 'inherit', cwd: root }));
const forward = (signal) => child.kill(signal);
process.on('SIGINT', forward);
process.on('SIGTERM', forward);
child.on('exit', (code) => process.exit(code ?? 0));
