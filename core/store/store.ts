/**
 * The run store: every run, its config, metrics, samples, checkpoints, exported artifacts and
 * logs, in one SQLite file under LOWRANK_HOME (see paths.ts for opening it, migrations.ts for
 * the schema and the durability settings). All writes of one call are one transaction, so a
 * SIGKILL at any moment leaves each call either fully applied or not at all.
 *
 * Life of a run: queued -> running (startRun) -> paused | completed | cancelled | failed.
 * A 'running' run whose process died without finishing is marked 'interrupted' the next time
 * a store is opened (recoverInterrupted); it can be started again from its latest checkpoint.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type Database from 'better-sqlite3';
import { LowrankError } from '../errors.ts';
import type {
  Artifact, ArtifactInput, ArtifactKind, Checkpoint, CheckpointInput, CreateRunInput, FailRunInput,
  FinishRunInput, JsonObject, ListRunsFilter, LogEntry, LogLevel, Metric, MetricInput, MetricSplit,
  MetricsFilter, Run, RunKind, RunOrigin, RunPatch, RunStatus, RunStoreOptions, Sample, SampleInput,
  StoreLayout,
} from './types.ts';

/** Ten minutes: a blocked event loop (a long synchronous step on CPU) must not look dead. */
export const DEFAULT_STALE_HEARTBEAT_MS = 10 * 60 * 1000;
const RUN_ID_PATTERN = /^\d{8}-\d{6}-[0-9a-f]{4}$/;
const NOT_FINISHED: readonly RunStatus[] = ['queued', 'running', 'paused', 'interrupted'];

interface RunRow {
  id: string; name: string; status: RunStatus; created_at: number; started_at: number | null;
  finished_at: number | null; method: string; kind: RunKind; base_model_path: string | null;
  base_model_fingerprint: string | null; dataset_path: string | null; dataset_fingerprint: string | null;
  config_json: string; trainable_params: number | null; total_params: number | null; state_bytes: number | null;
  estimated_peak_bytes: number | null; measured_peak_rss: number | null; measured_peak_tensor_bytes: number | null;
  tokens_per_second: number | null; wall_seconds: number | null; final_train_loss: number | null;
  final_val_loss: number | null; task_metric_name: string | null; task_metric_value: number | null;
  backend: string | null; hardware_json: string | null; error_code: string | null; error_message: string | null;
  pid: number | null; heartbeat_at: number | null; parent_run_id: string | null; origin: RunOrigin;
}
interface MetricRow { run_id: string; step: number; split: MetricSplit; name: string; value: number | null; at: number }
interface SampleRow { id: number; run_id: string; step: number; prompt: string; output: string; seed: number | null; expected: string | null; at: number }
interface CheckpointRow { id: number; run_id: string; step: number; path: string; bytes: number | null; created_at: number }
interface ArtifactRow {
  id: number; run_id: string; kind: ArtifactKind; path: string; format_detail: string | null; bytes: number | null;
  created_at: number;
}
interface LogRow { id: number; run_id: string; at: number; level: LogLevel; message: string }

/** Column of each field a caller may set through createRun / updateRun / finishRun. */
const PATCH_COLUMNS: Readonly<Record<keyof RunPatch, string>> = {
  name: 'name', trainableParams: 'trainable_params', totalParams: 'total_params', stateBytes: 'state_bytes',
  estimatedPeakBytes: 'estimated_peak_bytes', measuredPeakRss: 'measured_peak_rss',
  measuredPeakTensorBytes: 'measured_peak_tensor_bytes', tokensPerSecond: 'tokens_per_second',
  wallSeconds: 'wall_seconds', finalTrainLoss: 'final_train_loss', finalValLoss: 'final_val_loss',
  taskMetricName: 'task_metric_name', taskMetricValue: 'task_metric_value', backend: 'backend',
  hardware: 'hardware_json',
};

function patchAssignments(patch: RunPatch): { columns: string[]; values: unknown[] } {
  const columns: string[] = [];
  const values: unknown[] = [];
  for (const key of Object.keys(PATCH_COLUMNS) as (keyof RunPatch)[]) {
    const value = patch[key];
    if (value === undefined) continue;
    columns.push(PATCH_COLUMNS[key]);
    values.push(key === 'hardware' && value !== null ? JSON.stringify(value) : value);
  }
  return { columns, values };
}

function toRun(r: RunRow): Run {
  return {
    id: r.id, name: r.name, status: r.status, createdAt: r.created_at, startedAt: r.started_at,
    finishedAt: r.finished_at, method: r.method, kind: r.kind, baseModelPath: r.base_model_path,
    baseModelFingerprint: r.base_model_fingerprint, datasetPath: r.dataset_path,
    datasetFingerprint: r.dataset_fingerprint, config: JSON.parse(r.config_json) as JsonObject,
    trainableParams: r.trainable_params, totalParams: r.total_params, stateBytes: r.state_bytes,
    estimatedPeakBytes: r.estimated_peak_bytes, measuredPeakRss: r.measured_peak_rss,
    measuredPeakTensorBytes: r.measured_peak_tensor_bytes, tokensPerSecond: r.tokens_per_second,
    wallSeconds: r.wall_seconds, finalTrainLoss: r.final_train_loss, finalValLoss: r.final_val_loss,
    taskMetricName: r.task_metric_name, taskMetricValue: r.task_metric_value, backend: r.backend,
    hardware: r.hardware_json === null ? null : (JSON.parse(r.hardware_json) as JsonObject),
    errorCode: r.error_code, errorMessage: r.error_message, pid: r.pid, heartbeatAt: r.heartbeat_at,
    parentRunId: r.parent_run_id, origin: r.origin,
  };
}

/** `YYYYMMDD-HHMMSS-xxxx` in UTC: ids sort by creation second; 4 hex digits tell apart runs of one second. */
export function newRunId(now: number): string {
  const iso = new Date(now).toISOString();
  const stamp = `${iso.slice(0, 10).replaceAll('-', '')}-${iso.slice(11, 19).replaceAll(':', '')}`;
  return `${stamp}-${randomBytes(2).toString('hex')}`;
}

/** Signal 0 checks existence without signalling; EPERM means it exists but belongs to another user. */
export function processAlive(pid: number): boolean {
  // 0 and negative numbers address process groups, not one process.
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function sqliteCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string' ? e.code : undefined;
}

export class RunStore {
  private readonly now: () => number;
  private readonly staleHeartbeatMs: number;

  constructor(
    readonly db: Database.Database,
    readonly layout: StoreLayout,
    options: RunStoreOptions = {},
  ) {
    this.now = options.clock ?? Date.now;
    this.staleHeartbeatMs = options.staleHeartbeatMs ?? DEFAULT_STALE_HEARTBEAT_MS;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** The folder for a run's files (checkpoints, exports), created on first use. */
  runDir(id: string): string {
    if (!RUN_ID_PATTERN.test(id)) throw this.notFound(id);
    const dir = path.join(this.layout.runsDir, id);
    fs.mkdirSync(dir, { recursive: true });
    return dir;
  }

  // ---- runs ----------------------------------------------------------------------------------

  createRun(input: CreateRunInput): Run {
    const at = this.now();
    const { columns, values } = patchAssignments(input);
    const fixed = ['id', 'status', 'created_at', 'method', 'kind', 'config_json', 'base_model_path',
      'base_model_fingerprint', 'dataset_path', 'dataset_fingerprint', 'parent_run_id', 'origin'];
    const all = input.name === undefined ? [...fixed, 'name', ...columns] : [...fixed, ...columns];
    const sql = `INSERT INTO runs (${all.join(', ')}) VALUES (${all.map(() => '?').join(', ')})`;
    for (let attempt = 0; ; attempt++) {
      const id = newRunId(at);
      const fixedValues = [id, 'queued', at, input.method, input.kind, JSON.stringify(input.config),
        input.baseModelPath ?? null, input.baseModelFingerprint ?? null, input.datasetPath ?? null,
        input.datasetFingerprint ?? null, input.parentRunId ?? null, input.origin ?? 'local'];
      try {
        this.db.prepare(sql).run(...fixedValues, ...(input.name === undefined ? [id] : []), ...values);
      } catch (e) {
        if (sqliteCode(e) === 'SQLITE_CONSTRAINT_PRIMARYKEY' && attempt < 16) continue;
        if (sqliteCode(e) === 'SQLITE_CONSTRAINT_FOREIGNKEY') throw this.notFound(input.parentRunId ?? '');
        throw e;
      }
      this.runDir(id);
      return this.getRun(id);
    }
  }

  getRun(id: string): Run {
    const row = this.db.prepare('SELECT * FROM runs WHERE id = ?').get(id) as RunRow | undefined;
    if (!row) throw this.notFound(id);
    return toRun(row);
  }

  listRuns(filter: ListRunsFilter = {}): Run[] {
    const where: string[] = [];
    const params: unknown[] = [];
    if (filter.status !== undefined) {
      const statuses = Array.isArray(filter.status) ? filter.status : [filter.status];
      where.push(`status IN (${statuses.map(() => '?').join(', ') || 'NULL'})`);
      params.push(...statuses);
    }
    if (filter.method !== undefined) {
      where.push('method = ?');
      params.push(filter.method);
    }
    if (filter.kind !== undefined) {
      where.push('kind = ?');
      params.push(filter.kind);
    }
    let sql = 'SELECT * FROM runs';
    if (where.length) sql += ` WHERE ${where.join(' AND ')}`;
    sql += ' ORDER BY created_at DESC, rowid DESC';
    if (filter.limit !== undefined) {
      sql += ' LIMIT ?';
      params.push(Math.max(0, Math.trunc(filter.limit)));
    }
    return (this.db.prepare(sql).all(...params) as RunRow[]).map(toRun);
  }

  /** Fills in measurements known after creation (parameter counts once the model is wrapped...). */
  updateRun(id: string, patch: RunPatch): Run {
    const { columns, values } = patchAssignments(patch);
    if (columns.length) {
      const sql = `UPDATE runs SET ${columns.map((c) => `${c} = ?`).join(', ')} WHERE id = ?`;
      if (this.db.prepare(sql).run(...values, id).changes === 0) throw this.notFound(id);
    }
    return this.getRun(id);
  }

  /**
   * Replaces a run's method and config: a run trained by another engine takes the settings of the
   * adapter it produced once that is known (a PiSSA run's converted adapter is a plain LoRA).
   */
  setRunConfig(id: string, method: string, config: JsonObject): Run {
    if (this.db.prepare('UPDATE runs SET method = ?, config_json = ? WHERE id = ?').run(method, JSON.stringify(config), id).changes === 0) throw this.notFound(id);
    return this.getRun(id);
  }

  /** queued | paused | interrupted -> running, owned by `pid` (the process that trains). */
  startRun(id: string, pid: number = process.pid): Run {
    const at = this.now();
    return this.transition(id, ['queued', 'paused', 'interrupted'], 'start',
      `status = 'running', started_at = COALESCE(started_at, ?), finished_at = NULL, pid = ?, heartbeat_at = ?,
       error_code = NULL, error_message = NULL`, [at, pid, at]);
  }

  /**
   * Proof of life from the training process. Throws BAD_RUN_STATE when the run is no longer
   * this process's to train (cancelled, failed, taken over): the trainer should stop. A run
   * marked 'interrupted' while its process was merely slow comes back to 'running'.
   */
  heartbeat(id: string, pid: number = process.pid): void {
    const changes = this.db
      .prepare(`UPDATE runs SET heartbeat_at = ?, status = 'running', finished_at = NULL, error_code = NULL,
                error_message = NULL WHERE id = ? AND pid = ? AND status IN ('running', 'interrupted')`)
      .run(this.now(), id, pid).changes;
    if (changes === 0) {
      const run = this.getRun(id);
      throw new LowrankError('BAD_RUN_STATE', `run ${id} is ${run.status} (pid ${run.pid}), not running in process ${pid}; stop training it`);
    }
  }

  pauseRun(id: string): Run {
    return this.transition(id, ['running'], 'pause', `status = 'paused'`, []);
  }

  finishRun(id: string, input: FinishRunInput): Run {
    const { status, ...finals } = input;
    const from: readonly RunStatus[] = status === 'completed' ? ['running'] : NOT_FINISHED;
    const { columns, values } = patchAssignments(finals);
    const sets = [`status = ?`, 'finished_at = ?', ...columns.map((c) => `${c} = ?`)].join(', ');
    return this.transition(id, from, status === 'completed' ? 'complete' : 'cancel', sets, [status, this.now(), ...values]);
  }

  failRun(id: string, error: FailRunInput): Run {
    return this.transition(id, NOT_FINISHED, 'fail',
      `status = 'failed', finished_at = ?, error_code = ?, error_message = ?`, [this.now(), error.code, error.message]);
  }

  /** Deletes the run, its rows in every table and its folder. A live running run is refused. */
  deleteRun(id: string): void {
    const run = this.getRun(id);
    if (run.status === 'running' && run.pid !== null && processAlive(run.pid)) {
      throw new LowrankError('BAD_RUN_STATE', `run ${id} is running in process ${run.pid}; cancel it before deleting`);
    }
    this.db.prepare('DELETE FROM runs WHERE id = ?').run(id);
    fs.rmSync(path.join(this.layout.runsDir, id), { recursive: true, force: true });
  }

  /**
   * Marks 'interrupted' every 'running' run whose process is gone, or whose heartbeat is older
   * than staleHeartbeatMs (a pid can be reused after a reboot). Runs when a store is opened.
   */
  recoverInterrupted(): Run[] {
    const now = this.now();
    const running = this.listRuns({ status: 'running' });
    const dead = running.filter((r) => r.pid === null || !processAlive(r.pid));
    const stale = running.filter((r) => !dead.includes(r) && now - (r.heartbeatAt ?? r.startedAt ?? 0) > this.staleHeartbeatMs);
    const mark = this.db.prepare(`UPDATE runs SET status = 'interrupted', finished_at = ?, error_code = 'INTERRUPTED',
      error_message = ? WHERE id = ? AND status = 'running' AND heartbeat_at IS ?`);
    const recovered: string[] = [];
    this.db.transaction(() => {
      for (const r of [...dead, ...stale]) {
        const lastSeen = r.heartbeatAt === null ? 'never' : new Date(r.heartbeatAt).toISOString();
        const why = dead.includes(r) ? `process ${r.pid} ended` : `no heartbeat for ${Math.round((now - (r.heartbeatAt ?? 0)) / 1000)} s`;
        const message = `${why} before the run finished (last heartbeat ${lastSeen}); resume from its latest checkpoint`;
        if (mark.run(r.heartbeatAt ?? now, message, r.id, r.heartbeatAt).changes) recovered.push(r.id);
      }
    }).immediate();
    return recovered.map((id) => this.getRun(id));
  }

  // ---- metrics, samples, checkpoints, artifacts, logs ---------------------------------------

  /** All rows in one transaction: a kill leaves all of them or none. */
  appendMetrics(id: string, rows: readonly MetricInput[]): void {
    const at = this.now();
    const insert = this.db.prepare('INSERT INTO metrics (run_id, step, split, name, value, at) VALUES (?, ?, ?, ?, ?, ?)');
    this.forRun(id, () => this.db.transaction(() => {
      for (const r of rows) insert.run(id, r.step, r.split, r.name, Number.isNaN(r.value) ? null : r.value, r.at ?? at);
    })());
  }

  metrics(id: string, filter: MetricsFilter = {}): Metric[] {
    this.getRun(id);
    let sql = 'SELECT * FROM metrics WHERE run_id = ?';
    const params: unknown[] = [id];
    if (filter.name !== undefined) {
      sql += ' AND name = ?';
      params.push(filter.name);
    }
    if (filter.split !== undefined) {
      sql += ' AND split = ?';
      params.push(filter.split);
    }
    const rows = this.db.prepare(`${sql} ORDER BY step, rowid`).all(...params) as MetricRow[];
    return rows.map((r) => ({ runId: r.run_id, step: r.step, split: r.split, name: r.name, value: r.value ?? NaN, at: r.at }));
  }

  /**
   * A resumed run repeats the steps after its checkpoint: their metric and sample rows, logged by the
   * process that died, go (in one transaction), so the curves hold each step once.
   */
  discardAfter(id: string, step: number): { metrics: number; samples: number } {
    return this.forRun(id, () => this.db.transaction(() => ({
      metrics: this.db.prepare('DELETE FROM metrics WHERE run_id = ? AND step > ?').run(id, step).changes,
      samples: this.db.prepare('DELETE FROM samples WHERE run_id = ? AND step > ?').run(id, step).changes,
    }))());
  }

  addSample(id: string, sample: SampleInput): Sample {
    const at = this.now();
    const expected = sample.expected ?? null;
    const rowid = this.forRun(id, () => this.db.prepare('INSERT INTO samples (run_id, step, prompt, output, seed, expected, at) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(id, sample.step, sample.prompt, sample.output, sample.seed ?? null, expected, at).lastInsertRowid);
    return { id: Number(rowid), runId: id, step: sample.step, prompt: sample.prompt, output: sample.output, seed: sample.seed ?? null, expected, at };
  }

  samples(id: string): Sample[] {
    this.getRun(id);
    const rows = this.db.prepare('SELECT * FROM samples WHERE run_id = ? ORDER BY step, id').all(id) as SampleRow[];
    return rows.map((r) => ({ id: r.id, runId: r.run_id, step: r.step, prompt: r.prompt, output: r.output, seed: r.seed, expected: r.expected, at: r.at }));
  }

  /** Record a checkpoint after its files are durably on disk (core/train/checkpoint.ts). */
  addCheckpoint(id: string, checkpoint: CheckpointInput): Checkpoint {
    const at = this.now();
    const rowid = this.forRun(id, () => this.db.prepare('INSERT INTO checkpoints (run_id, step, path, bytes, created_at) VALUES (?, ?, ?, ?, ?)')
      .run(id, checkpoint.step, checkpoint.path, checkpoint.bytes ?? null, at).lastInsertRowid);
    return { id: Number(rowid), runId: id, step: checkpoint.step, path: checkpoint.path, bytes: checkpoint.bytes ?? null, createdAt: at };
  }

  checkpoints(id: string): Checkpoint[] {
    this.getRun(id);
    const rows = this.db.prepare('SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step, id').all(id) as CheckpointRow[];
    return rows.map(toCheckpoint);
  }

  /** The checkpoint of the highest step (the newest among equal steps), or null. */
  latestCheckpoint(id: string): Checkpoint | null {
    this.getRun(id);
    const row = this.db.prepare('SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step DESC, id DESC LIMIT 1')
      .get(id) as CheckpointRow | undefined;
    return row ? toCheckpoint(row) : null;
  }

  addArtifact(id: string, artifact: ArtifactInput): Artifact {
    const at = this.now();
    const detail = artifact.formatDetail ?? null;
    const bytes = artifact.bytes ?? null;
    const rowid = this.forRun(id, () => this.db.prepare('INSERT INTO artifacts (run_id, kind, path, format_detail, bytes, created_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(id, artifact.kind, artifact.path, detail, bytes, at).lastInsertRowid);
    return { id: Number(rowid), runId: id, kind: artifact.kind, path: artifact.path, formatDetail: detail, bytes, createdAt: at };
  }

  artifacts(id: string): Artifact[] {
    this.getRun(id);
    const rows = this.db.prepare('SELECT * FROM artifacts WHERE run_id = ? ORDER BY created_at, id').all(id) as ArtifactRow[];
    return rows.map((r) => ({ id: r.id, runId: r.run_id, kind: r.kind, path: r.path, formatDetail: r.format_detail, bytes: r.bytes, createdAt: r.created_at }));
  }

  /** Forgets one exported artifact (its files are the caller's to remove); returns it. */
  deleteArtifact(id: string, artifactId: number): Artifact {
    const artifact = this.artifacts(id).find((a) => a.id === artifactId);
    if (!artifact) throw new LowrankError('BAD_ARGUMENT', `run ${id} has no export ${artifactId}`);
    this.db.prepare('DELETE FROM artifacts WHERE id = ?').run(artifactId);
    return artifact;
  }

  addLog(id: string, level: LogLevel, message: string): void {
    const at = this.now();
    this.forRun(id, () => this.db.prepare('INSERT INTO logs (run_id, at, level, message) VALUES (?, ?, ?, ?)').run(id, at, level, message));
  }

  logs(id: string): LogEntry[] {
    this.getRun(id);
    const rows = this.db.prepare('SELECT * FROM logs WHERE run_id = ? ORDER BY at, id').all(id) as LogRow[];
    return rows.map((r) => ({ id: r.id, runId: r.run_id, at: r.at, level: r.level, message: r.message }));
  }

  // ---- helpers --------------------------------------------------------------------------------

  private notFound(id: string): LowrankError {
    return new LowrankError('RUN_NOT_FOUND', `no run with id "${id}" in ${this.layout.databasePath}; \`lowrank runs list\` shows the runs there`);
  }

  /** Runs a write on a run's child table; the foreign key turns an unknown id into RUN_NOT_FOUND. */
  private forRun<T>(id: string, write: () => T): T {
    try {
      return write();
    } catch (e) {
      if (sqliteCode(e) === 'SQLITE_CONSTRAINT_FOREIGNKEY') throw this.notFound(id);
      throw e;
    }
  }

  /** One conditional UPDATE, so two processes cannot both make the same transition. */
  private transition(id: string, from: readonly RunStatus[], verb: string, sets: string, values: unknown[]): Run {
    const sql = `UPDATE runs SET ${sets} WHERE id = ? AND status IN (${from.map(() => '?').join(', ')})`;
    if (this.db.prepare(sql).run(...values, id, ...from).changes === 0) {
      const run = this.getRun(id);
      throw new LowrankError('BAD_RUN_STATE', `cannot ${verb} run ${id}: it is ${run.status} (allowed from ${from.join(', ')})`);
    }
    return this.getRun(id);
  }
}

function toCheckpoint(r: CheckpointRow): Checkpoint {
  return { id: r.id, runId: r.run_id, step: r.step, path: r.path, bytes: r.bytes, createdAt: r.created_at };
}
