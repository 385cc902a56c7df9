/** `lowrank serve [--port P] [--allow DIR,...]`: the app in a browser, on this machine only. */
import * as path from 'node:path';
import { lowrankHome } from '../store/index.ts';
import type { Flags } from '../cli.ts';
import { numberFlag } from '../cli/flags.ts';
import { startServer } from './server.ts';

export async function serveCommand(flags: Flags): Promise<void> {
  const port = numberFlag(flags, 'port', 7860, { integer: true, min: 0, max: 65535 });
  const roots = typeof flags.allow === 'string' ? flags.allow.split(',').filter(Boolean).map((p) => path.resolve(p)) : [];
  const server = await startServer({ port, home: lowrankHome(), roots });
  console.log(`Lowrank Studio is serving on ${server.url}`);
  console.log('Open that address in a browser on this machine (the token in it is required). Ctrl+C stops.');
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      void server.close().then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}
