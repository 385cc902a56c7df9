#!/usr/bin/env node
// `npm start`: launches Electron where its binary is installed. Where it is not (a build machine
// without Electron's download, a headless box), say so and point at what works.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { spawn } from 'node:child_process';

const require = createRequire(import.meta.url);
let electronPath = null;
try {
  const p = require('electron');
  if (typeof p === 'string' && existsSync(p)) electronPath = p;
} catch {
  /* electron's binary was not downloaded */
}
if (electronPath) {
  const child = spawn(electronPath, ['--import', 'tsx', '.'], { stdio: 'inherit' });
  child.on('exit', (code) => process.exit(code ?? 0));
} else {
  console.log('Electron\'s binary is not installed on this machine (its download needs network access).');
  console.log('The desktop app and `lowrank serve` arrive with the app issue; meanwhile the engine works from the CLI:');
  console.log('  npx lowrank --help');
  console.log('  npx lowrank generate --model resources/models/brown-llama --prompt "The"');
}
