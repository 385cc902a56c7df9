/**
 * Where the run store lives and how it is opened. Layout of LOWRANK_HOME:
 *
 *   <home>/lowrank.db           the SQLite store (+ lowrank.db-wal, lowrank.db-shm while open)
 *   <home>/runs/<run id>/       a run's files: checkpoints, exports
 *
 * The CLI uses `LOWRANK_HOME` or `~/.lowrank-studio`; the Electron app passes its userData
 * folder explicitly.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { LowrankError } from '../errors.ts';
import { configureConnection, migrate } from './migrations.ts';
import { RunStore } from './store.ts';
import type { RunStoreOptions, StoreLayout } from './types.ts';

export const DATABASE_FILE = 'lowrank.db';

export function lowrankHome(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.LOWRANK_HOME?.trim();
  return path.resolve(fromEnv ? fromEnv : path.join(os.homedir(), '.lowrank-studio'));
}

export function storeLayout(home: string = lowrankHome()): StoreLayout {
  const root = path.resolve(home);
  return { home: root, databasePath: path.join(root, DATABASE_FILE), runsDir: path.join(root, 'runs') };
}

/**
 * Opens (creating if needed) the store under `home`, brings its schema up to date and marks
 * runs whose process died as 'interrupted'. Close it with `store.close()`.
 */
export function openStore(home: string = lowrankHome(), options: RunStoreOptions = {}): RunStore {
  const layout = storeLayout(home);
  let db: Database.Database;
  try {
    fs.mkdirSync(layout.runsDir, { recursive: true });
    db = new Database(layout.databasePath);
  } catch (e) {
    throw new LowrankError(
      'STORE_UNAVAILABLE',
      `${layout.databasePath}: cannot open the run store (${(e as Error).message}); ` +
        'check that the folder is writable, or set LOWRANK_HOME to another folder',
    );
  }
  try {
    configureConnection(db);
    migrate(db);
    const store = new RunStore(db, layout, options);
    store.recoverInterrupted();
    return store;
  } catch (e) {
    db.close();
    throw e;
  }
}
