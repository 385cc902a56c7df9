// Entry of the engine process Electron's main forks (ELECTRON_RUN_AS_NODE): registers tsx, then
// hosts the service (engine-host.ts).
import { register } from 'tsx/esm/api';
register();
await import('./engine-host.ts');
