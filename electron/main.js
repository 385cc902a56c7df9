// Electron's entry (package.json "main"): registers tsx so main.ts and the engine load as
// TypeScript, in development and in the packaged app alike.
import { register } from 'tsx/esm/api';
register();
await import('./main.ts');
