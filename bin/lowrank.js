#!/usr/bin/env node
// Thin launcher: runs the TypeScript CLI through tsx so `npx lowrank` works right after `npm ci`.
import { register } from 'tsx/esm/api';

// `lowrank runs list | head`: a closed pipe ends the command quietly, as for other Unix tools.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
}
register();
const { main } = await import('../core/cli.ts');
process.exitCode = await main(process.argv.slice(2));
