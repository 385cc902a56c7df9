/**
 * Schema of the run store and the numbered migrations that build it. `PRAGMA user_version`
 * holds the number of the last migration applied. Migrations are append-only: a released one
 * is never edited; a schema change is a new entry with the next version.
 *
 * Conventions of the schema:
 * - every `*_at` column is Unix time in milliseconds (INTEGER): cheap to store per metric row,
 *   and a staleness check is one subtraction;
 * - byte counts and parameter counts are INTEGER (exact up to 2^53 in JavaScript);
 * - child tables cascade on run deletion; `parent_run_id` (a resumed or continued run points at
 *   the run it continues) is set to NULL if the parent is deleted.
 */
import type Database from 'better-sqlite3';
import { LowrankError } from '../errors.ts';

export interface Migration {
  version: number;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    sql: `
CREATE TABLE runs (
  id                          TEXT PRIMARY KEY,
  name                        TEXT NOT NULL,
  status                      TEXT NOT NULL CHECK (status IN
                                ('queued','running','paused','completed','failed','cancelled','interrupted')),
  created_at                  INTEGER NOT NULL,
  started_at                  INTEGER,
  finished_at                 INTEGER,
  method                      TEXT NOT NULL,
  kind                        TEXT NOT NULL CHECK (kind IN ('finetune','pretrain')),
  base_model_path             TEXT,
  base_model_fingerprint      TEXT,
  dataset_path                TEXT,
  dataset_fingerprint         TEXT,
  config_json                 TEXT NOT NULL,
  trainable_params            INTEGER,
  total_params                INTEGER,
  state_bytes                 INTEGER,
  estimated_peak_bytes        INTEGER,
  measured_peak_rss           INTEGER,
  measured_peak_tensor_bytes  INTEGER,
  tokens_per_second           REAL,
  wall_seconds                REAL,
  final_train_loss            REAL,
  final_val_loss              REAL,
  task_metric_name            TEXT,
  task_metric_value           REAL,
  backend                     TEXT,
  hardware_json               TEXT,
  error_code                  TEXT,
  error_message               TEXT,
  pid                         INTEGER,
  heartbeat_at                INTEGER,
  parent_run_id               TEXT REFERENCES runs(id) ON DELETE SET NULL
);
CREATE INDEX runs_status ON runs(status);
CREATE INDEX runs_created ON runs(created_at);

-- value is NULL when the metric was NaN (SQLite stores NaN as NULL); the store reads it back as NaN.
CREATE TABLE metrics (
  run_id  TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  step    INTEGER NOT NULL,
  split   TEXT NOT NULL CHECK (split IN ('train','val')),
  name    TEXT NOT NULL,
  value   REAL,
  at      INTEGER NOT NULL
);
CREATE INDEX metrics_run_step ON metrics(run_id, step);

CREATE TABLE samples (
  id      INTEGER PRIMARY KEY,
  run_id  TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  step    INTEGER NOT NULL,
  prompt  TEXT NOT NULL,
  output  TEXT NOT NULL,
  seed    INTEGER,
  at      INTEGER NOT NULL
);
CREATE INDEX samples_run ON samples(run_id, step);

CREATE TABLE checkpoints (
  id          INTEGER PRIMARY KEY,
  run_id      TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  step        INTEGER NOT NULL,
  path        TEXT NOT NULL,
  bytes       INTEGER,
  created_at  INTEGER NOT NULL
);
CREATE INDEX checkpoints_run ON checkpoints(run_id, step);

CREATE TABLE artifacts (
  id             INTEGER PRIMARY KEY,
  run_id         TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  kind           TEXT NOT NULL CHECK (kind IN ('peft','merged','gguf')),
  path           TEXT NOT NULL,
  format_detail  TEXT,
  bytes          INTEGER,
  created_at     INTEGER NOT NULL
);
CREATE INDEX artifacts_run ON artifacts(run_id);

CREATE TABLE logs (
  id       INTEGER PRIMARY KEY,
  run_id   TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  at       INTEGER NOT NULL,
  level    TEXT NOT NULL CHECK (level IN ('debug','info','warn','error')),
  message  TEXT NOT NULL
);
CREATE INDEX logs_run ON logs(run_id, at);
`,
  },
  {
    // Where a run was trained: here ('local'), trained elsewhere and imported ('imported', from a
    // PEFT adapter), or trained by another engine this app started and followed ('launched').
    version: 2,
    sql: `
ALTER TABLE runs ADD COLUMN origin TEXT NOT NULL DEFAULT 'local' CHECK (origin IN ('local','imported','launched'));
`,
  },
  {
    // A sample drawn from the validation split keeps the answer it should give (NULL: plain text, older runs).
    version: 3,
    sql: `ALTER TABLE samples ADD COLUMN expected TEXT;`,
  },
];

export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1].version;

/**
 * Connection settings, applied on every open (they are per connection, except journal_mode).
 *
 * Durability: WAL with synchronous=NORMAL. A commit appends to the WAL with write(2) before it
 * returns, so once `appendMetrics` returns, the rows survive a crash or SIGKILL of this
 * process — the kernel holds the bytes. What NORMAL gives up versus FULL is the fsync of the
 * WAL on every commit: after an OS crash or power loss the last few transactions may roll
 * back, but the database is never corrupt (the WAL is fsynced at each checkpoint). A training
 * loop commits metrics every step; an fsync per step would cost more than the step on small
 * models, and a lost tail of metrics after a power cut is acceptable. Checkpoint *files* are
 * fsynced by core/train/checkpoint.ts, so at worst the store lists an older checkpoint than the
 * newest one on disk.
 */
export function configureConnection(db: Database.Database): void {
  // Readers (UI, CLI) and the engine process share the file; wait on a lock rather than fail.
  db.pragma('busy_timeout = 5000');
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
}

export function schemaVersion(db: Database.Database): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/**
 * Applies every migration newer than `user_version`, each in its own IMMEDIATE transaction
 * together with the bump of `user_version`, so a kill mid-migration leaves the previous
 * version intact. The version is re-read inside the transaction: two processes opening a
 * fresh store at once apply each migration once. Returns the versions applied.
 */
export function migrate(db: Database.Database, migrations: readonly Migration[] = MIGRATIONS): number[] {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) throw new Error(`migrations must be numbered 1, 2, 3, ...; entry ${i} is version ${m.version}`);
  });
  const latest = migrations.length ? migrations[migrations.length - 1].version : 0;
  const current = schemaVersion(db);
  if (current > latest) {
    throw new LowrankError(
      'STORE_TOO_NEW',
      `${db.name}: the run store is at schema version ${current}, newer than this build knows (${latest}); ` +
        'update Lowrank Studio, or point LOWRANK_HOME at another folder',
    );
  }
  const applied: number[] = [];
  for (const migration of migrations) {
    if (migration.version <= current) continue;
    const apply = db.transaction(() => {
      if (schemaVersion(db) >= migration.version) return false;
      db.exec(migration.sql);
      // PRAGMA takes no bound parameters; the version is an integer from this file.
      db.pragma(`user_version = ${Math.trunc(migration.version)}`);
      return true;
    });
    if (apply.immediate()) applied.push(migration.version);
  }
  return applied;
}
