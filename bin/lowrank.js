#!/usr/bin/env node
// Thin launcher: runs the TypeScript CLI through tsx so `npx lowrank` works right after `npm ci`.
import { register } from 'tsx/esm/api';
register();
const { main } = await import('../core/cli.ts');
process.exitCode = await main(process.argv.slice(2));
