/**
 * Electron main process: the composition root and nothing else. The desktop shell (window,
 * IPC wiring over core/contract.ts, the engine process supervisor) arrives with the app issue;
 * until then `npm start` serves the engine through the CLI (see bin/start.js).
 */
import { app } from 'electron';

app.whenReady().then(() => {
  console.log('Lowrank Studio: the desktop window is not built yet; use `npx lowrank --help`.');
  app.quit();
});
