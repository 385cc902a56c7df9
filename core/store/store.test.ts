/**
 * The run store on real SQLite files in temporary LOWRANK_HOME folders: schema migrations,
 * every table's writes and reads, run state transitions, listRuns filters, deletion and the
 * recovery of runs whose process died or stopped sending heartbeats.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { LowrankError } from '../errors.ts';
import { lowrankHome, openStore, storeLayout } from './paths.ts';
import { MIGRATIONS, SCHEMA_VERSION, configureConnection, migrate, schemaVersion } from './migrations.ts';
import { processAlive, type RunStore } from './store.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-store-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
let homes = 0;
const freshHome = () => path.join(root, `home-${homes++}`);

/** A store whose clock the test moves by hand. */
function clockedStore(home = freshHome(), start = Date.UTC(2026, 10, 29, 3, 15, 0)) {
  const clock = { now: start };
  const store = openStore(home, { clock: () => clock.now, staleHeartbeatMs: 60_000 });
  return { store, clock, home };
}

function expectError(fn: () => unknown, code: string, ...fragments: string[]): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(LowrankError);
    expect((e as LowrankError).code).toBe(code);
    for (const f of fragments) expect((e as LowrankError).message).toContain(f);
    return;
  }
  throw new Error(`expected LowrankError ${code}`);
}

const deadPid = () => spawnSync(process.execPath, ['-e', '']).pid as number;
const lora = { method: 'lora', kind: 'finetune' as const, config: { rank: 8, alpha: 16, targets: ['q_proj', 'v_proj'] } };
const count = (store: RunStore, table: string, runId: string) =>
  (store.db.prepare(`SELECT COUNT(*) AS n FROM ${table} WHERE run_id = ?`).get(runId) as { n: number }).n;

describe('location and migrations', () => {
  it('lowrankHome: LOWRANK_HOME, else ~/.lowrank-studio', () => {
    expect(lowrankHome({ LOWRANK_HOME: '/data/lowrank' })).toBe('/data/lowrank');
    expect(lowrankHome({})).toBe(path.join(os.homedir(), '.lowrank-studio'));
    expect(lowrankHome({ LOWRANK_HOME: '  ' })).toBe(path.join(os.homedir(), '.lowrank-studio'));
  });

  it('creates the store from nothing: folders, schema, WAL, synchronous=NORMAL, foreign keys', () => {
    const home = path.join(freshHome(), 'nested', 'home');
    const store = openStore(home);
    const layout = storeLayout(home);
    expect(fs.existsSync(layout.databasePath)).toBe(true);
    expect(fs.statSync(layout.runsDir).isDirectory()).toBe(true);
    expect(schemaVersion(store.db)).toBe(SCHEMA_VERSION);
    expect(store.db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(store.db.pragma('synchronous', { simple: true })).toBe(1); // 1 = NORMAL
    expect(store.db.pragma('foreign_keys', { simple: true })).toBe(1);
    const tables = (store.db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map((t) => t.name);
    expect(tables).toEqual(['artifacts', 'checkpoints', 'logs', 'metrics', 'runs', 'samples']);
    const indexes = store.db.prepare("PRAGMA index_list('metrics')").all() as { name: string }[];
    expect(indexes.map((i) => i.name)).toContain('metrics_run_step');
    store.close();
  });

  it('re-opens idempotently: no migration re-applied, data kept', () => {
    const home = freshHome();
    const first = openStore(home);
    const run = first.createRun(lora);
    first.close();
    const second = openStore(home);
    expect(migrate(second.db)).toEqual([]);
    expect(schemaVersion(second.db)).toBe(SCHEMA_VERSION);
    expect(second.getRun(run.id).config).toEqual(lora.config);
    second.close();
  });

  it('applies only newer migrations, each atomically with its version', () => {
    const db = new Database(path.join(root, 'migrate.db'));
    configureConnection(db);
    expect(migrate(db)).toEqual(MIGRATIONS.map((m) => m.version));
    const broken = [...MIGRATIONS, { version: SCHEMA_VERSION + 1, sql: 'CREATE TABLE half (x); INSERT INTO nowhere VALUES (1);' }];
    expect(() => migrate(db, broken)).toThrow(/nowhere/);
    expect(schemaVersion(db)).toBe(SCHEMA_VERSION);
    expect(db.prepare("SELECT name FROM sqlite_master WHERE name = 'half'").get()).toBeUndefined();
    const next = [...MIGRATIONS, { version: SCHEMA_VERSION + 1, sql: 'ALTER TABLE runs ADD COLUMN note TEXT;' }];
    expect(migrate(db, next)).toEqual([SCHEMA_VERSION + 1]);
    expect(migrate(db, next)).toEqual([]);
    expect(() => migrate(db, [{ version: 2, sql: '' }])).toThrow(/numbered 1, 2, 3/);
    db.close();
  });

  it("migration 2 gives every existing run the origin 'local'; new runs take theirs, and nothing else may be stored", () => {
    const home = freshHome();
    const layout = storeLayout(home);
    fs.mkdirSync(layout.runsDir, { recursive: true });
    const v1 = new Database(layout.databasePath);
    configureConnection(v1);
    migrate(v1, MIGRATIONS.slice(0, 1));
    v1.prepare(`INSERT INTO runs (id, name, status, created_at, method, kind, config_json) VALUES ('20260101-000000-abcd', 'old', 'completed', 0, 'lora', 'finetune', '{}')`).run();
    v1.close();
    const store = openStore(home);
    expect(store.getRun('20260101-000000-abcd').origin).toBe('local');
    expect(store.createRun(lora).origin).toBe('local');
    expect(store.createRun({ ...lora, origin: 'imported' }).origin).toBe('imported');
    expect(() => store.db.prepare(`UPDATE runs SET origin = 'cloud' WHERE id = '20260101-000000-abcd'`).run()).toThrow(/CHECK constraint/);
    store.close();
  });

  it('refuses a store written by a newer build', () => {
    const home = freshHome();
    openStore(home).close();
    const db = new Database(storeLayout(home).databasePath);
    db.pragma(`user_version = ${SCHEMA_VERSION + 5}`);
    db.close();
    expectError(() => openStore(home), 'STORE_TOO_NEW', `schema version ${SCHEMA_VERSION + 5}`, 'LOWRANK_HOME');
  });
});

describe('runs', () => {
  it('creates a queued run with a sortable id, its folder, and every input field', () => {
    const { store } = clockedStore();
    const run = store.createRun({
      ...lora, name: 'first', baseModelPath: '/models/smol', baseModelFingerprint: 'sha256:aa', datasetPath: '/d.jsonl',
      datasetFingerprint: 'sha256:bb', trainableParams: 1000, totalParams: 100000, stateBytes: 12000,
      estimatedPeakBytes: 5e8, backend: 'wasm', hardware: { cpus: 2, gpu: null },
    });
    expect(run.id).toMatch(/^20261129-031500-[0-9a-f]{4}$/);
    expect(run).toMatchObject({
      name: 'first', status: 'queued', createdAt: Date.UTC(2026, 10, 29, 3, 15, 0), startedAt: null, method: 'lora',
      kind: 'finetune', baseModelPath: '/models/smol', datasetFingerprint: 'sha256:bb', trainableParams: 1000,
      totalParams: 100000, estimatedPeakBytes: 5e8, backend: 'wasm', hardware: { cpus: 2, gpu: null }, pid: null,
      parentRunId: null, measuredPeakRss: null,
    });
    expect(run.config).toEqual(lora.config);
    expect(fs.statSync(store.runDir(run.id)).isDirectory()).toBe(true);
    expect(store.createRun({ ...lora, kind: 'pretrain' }).name).toMatch(/^20261129-031500-/);
    expect(store.createRun({ ...lora, parentRunId: run.id }).parentRunId).toBe(run.id);
    expectError(() => store.createRun({ ...lora, parentRunId: '20000101-000000-0000' }), 'RUN_NOT_FOUND');
    store.close();
  });

  it('an unknown id names the id and the command that lists runs', () => {
    const { store } = clockedStore();
    expectError(() => store.getRun('20261129-000000-dead'), 'RUN_NOT_FOUND', '20261129-000000-dead', '`lowrank runs list`');
    expectError(() => store.appendMetrics('nope', [{ step: 0, split: 'train', name: 'loss', value: 1 }]), 'RUN_NOT_FOUND', 'nope');
    expectError(() => store.runDir('../..'), 'RUN_NOT_FOUND');
    expect([0, -1, 1.5].map(processAlive)).toEqual([false, false, false]);
    expect(store.db.prepare('SELECT COUNT(*) AS n FROM metrics').get()).toEqual({ n: 0 });
    store.close();
  });

  it('goes queued -> running -> paused -> running -> completed, and refuses illegal moves', () => {
    const { store, clock } = clockedStore();
    const { id } = store.createRun(lora);
    clock.now += 1000;
    const started = store.startRun(id, process.pid);
    expect(started).toMatchObject({ status: 'running', pid: process.pid, startedAt: clock.now, heartbeatAt: clock.now });
    clock.now += 1000;
    store.heartbeat(id);
    expect(store.getRun(id).heartbeatAt).toBe(clock.now);
    expectError(() => store.heartbeat(id, process.pid + 1), 'BAD_RUN_STATE', 'stop training');
    expectError(() => store.startRun(id), 'BAD_RUN_STATE', 'cannot start', 'running');
    expect(store.pauseRun(id).status).toBe('paused');
    clock.now += 1000;
    expect(store.startRun(id).startedAt).toBe(started.startedAt);
    store.updateRun(id, { measuredPeakRss: 123456789, name: 'renamed' });
    clock.now += 1000;
    const done = store.finishRun(id, {
      status: 'completed', finalTrainLoss: 1.25, finalValLoss: 1.5, taskMetricName: 'exact_match', taskMetricValue: 0.4,
      tokensPerSecond: 812.5, wallSeconds: 3.5, measuredPeakTensorBytes: 4096,
    });
    expect(done).toMatchObject({
      status: 'completed', finishedAt: clock.now, finalTrainLoss: 1.25, finalValLoss: 1.5, taskMetricName: 'exact_match',
      taskMetricValue: 0.4, tokensPerSecond: 812.5, wallSeconds: 3.5, measuredPeakRss: 123456789, measuredPeakTensorBytes: 4096,
      name: 'renamed',
    });
    expectError(() => store.finishRun(id, { status: 'cancelled' }), 'BAD_RUN_STATE', 'completed');
    expectError(() => store.failRun(id, { code: 'X', message: 'y' }), 'BAD_RUN_STATE');
    store.close();
  });

  it('fails and cancels runs', () => {
    const { store } = clockedStore();
    const queued = store.createRun(lora);
    expectError(() => store.finishRun(queued.id, { status: 'completed' }), 'BAD_RUN_STATE');
    expect(store.finishRun(queued.id, { status: 'cancelled' }).status).toBe('cancelled');
    const failing = store.createRun(lora);
    store.startRun(failing.id);
    const failed = store.failRun(failing.id, { code: 'OUT_OF_MEMORY', message: 'tensor allocation of 2 GB failed' });
    expect(failed).toMatchObject({ status: 'failed', errorCode: 'OUT_OF_MEMORY', errorMessage: 'tensor allocation of 2 GB failed' });
    expect(failed.finishedAt).not.toBeNull();
    store.close();
  });

  it('listRuns filters by status, method, kind and limits, newest first', () => {
    const { store, clock } = clockedStore();
    const made = [lora, { ...lora, method: 'dora' }, { ...lora, method: 'galore', kind: 'pretrain' as const }, lora].map((input) => {
      clock.now += 1000;
      return store.createRun(input).id;
    });
    made.push(store.createRun(lora).id); // same millisecond as the previous one: creation order still decides
    store.startRun(made[0]);
    store.startRun(made[3]);
    store.finishRun(made[3], { status: 'completed' });
    expect(store.listRuns().map((r) => r.id)).toEqual([...made].reverse());
    store.deleteRun(made.pop() as string);
    expect(store.listRuns({ status: 'running' }).map((r) => r.id)).toEqual([made[0]]);
    expect(store.listRuns({ status: ['queued', 'completed'] }).map((r) => r.id)).toEqual([made[3], made[2], made[1]]);
    expect(store.listRuns({ status: [] })).toEqual([]);
    expect(store.listRuns({ method: 'lora' }).map((r) => r.id)).toEqual([made[3], made[0]]);
    expect(store.listRuns({ kind: 'pretrain' }).map((r) => r.id)).toEqual([made[2]]);
    expect(store.listRuns({ method: 'lora', status: 'running' }).map((r) => r.id)).toEqual([made[0]]);
    expect(store.listRuns({ limit: 2 }).map((r) => r.id)).toEqual([made[3], made[2]]);
    store.close();
  });
});

describe('metrics, samples, checkpoints, artifacts, logs', () => {
  it('writes and reads every child table', () => {
    const { store, clock } = clockedStore();
    const { id } = store.createRun(lora);
    const other = store.createRun(lora).id;
    store.appendMetrics(id, [
      { step: 2, split: 'train', name: 'loss', value: 2.5 },
      { step: 1, split: 'train', name: 'loss', value: 3 },
      { step: 1, split: 'train', name: 'lr', value: 1e-4, at: 42 },
      { step: 2, split: 'val', name: 'loss', value: 2.75 },
      { step: 3, split: 'train', name: 'loss', value: NaN },
      { step: 4, split: 'train', name: 'loss', value: Infinity },
    ]);
    store.appendMetrics(other, [{ step: 1, split: 'train', name: 'loss', value: 9 }]);
    store.appendMetrics(id, []);
    expect(store.metrics(id, { name: 'loss', split: 'train' }).map((m) => [m.step, m.value])).toEqual([[1, 3], [2, 2.5], [3, NaN], [4, Infinity]]);
    expect(store.metrics(id, { split: 'val' })).toEqual([{ runId: id, step: 2, split: 'val', name: 'loss', value: 2.75, at: clock.now }]);
    expect(store.metrics(id, { name: 'lr' })[0].at).toBe(42);
    expect(store.metrics(id)).toHaveLength(6);
    expect(() => store.appendMetrics(id, [{ step: 5, split: 'train', name: 'a', value: 1 }, { step: 5, split: 'test' as 'val', name: 'b', value: 1 }])).toThrow(/CHECK/);
    expect(store.metrics(id)).toHaveLength(6); // the batch rolled back as a whole

    const sample = store.addSample(id, { step: 10, prompt: 'Q: 2+2?', output: 'A: 4', seed: 7, expected: '4' });
    store.addSample(id, { step: 5, prompt: 'Hi', output: 'there' });
    expect(store.samples(id)).toEqual([
      { id: sample.id + 1, runId: id, step: 5, prompt: 'Hi', output: 'there', seed: null, expected: null, at: clock.now },
      { ...sample, expected: '4' },
    ]);

    expect(store.latestCheckpoint(id)).toBeNull();
    store.addCheckpoint(id, { step: 100, path: path.join(store.runDir(id), 'step-100'), bytes: 2048 });
    const last = store.addCheckpoint(id, { step: 300, path: '/ckpt/300' });
    store.addCheckpoint(id, { step: 200, path: '/ckpt/200', bytes: 10 });
    expect(store.latestCheckpoint(id)).toEqual(last);
    expect(store.checkpoints(id).map((c) => c.step)).toEqual([100, 200, 300]);
    expect(last.bytes).toBeNull();

    const gguf = store.addArtifact(id, { kind: 'gguf', path: '/out/model.gguf', formatDetail: 'q8_0', bytes: 1 << 20 });
    store.addArtifact(id, { kind: 'peft', path: '/out/adapter' });
    expect(store.artifacts(id).map((a) => [a.kind, a.formatDetail, a.bytes])).toEqual([['gguf', 'q8_0', 1 << 20], ['peft', null, null]]);
    expect(store.artifacts(id)[0]).toEqual(gguf);
    expect(() => store.addArtifact(id, { kind: 'onnx' as 'gguf', path: '/x' })).toThrow(/CHECK/);

    store.addLog(id, 'info', 'started on wasm');
    store.addLog(id, 'warn', 'loss spike at step 3');
    expect(store.logs(id).map((l) => [l.level, l.message])).toEqual([['info', 'started on wasm'], ['warn', 'loss spike at step 3']]);
    const missing = '20000101-000000-0000';
    const reads: (() => unknown)[] = [() => store.metrics(missing), () => store.samples(missing), () => store.checkpoints(missing),
      () => store.artifacts(missing), () => store.logs(missing), () => store.latestCheckpoint(missing)];
    for (const read of reads) expectError(read, 'RUN_NOT_FOUND', missing);
    store.close();
  });

  it('deleteRun removes the run, its rows, its folder; children forget their parent', () => {
    const { store } = clockedStore();
    const { id } = store.createRun(lora);
    const child = store.createRun({ ...lora, parentRunId: id });
    store.appendMetrics(id, [{ step: 1, split: 'train', name: 'loss', value: 1 }]);
    store.addSample(id, { step: 1, prompt: 'p', output: 'o' });
    store.addCheckpoint(id, { step: 1, path: '/c' });
    store.addArtifact(id, { kind: 'merged', path: '/m' });
    store.addLog(id, 'error', 'x');
    fs.writeFileSync(path.join(store.runDir(id), 'adapter_model.safetensors'), 'x');
    store.deleteRun(id);
    expectError(() => store.getRun(id), 'RUN_NOT_FOUND');
    for (const table of ['metrics', 'samples', 'checkpoints', 'artifacts', 'logs']) expect(count(store, table, id), table).toBe(0);
    expect(fs.existsSync(path.join(store.layout.runsDir, id))).toBe(false);
    expect(store.getRun(child.id).parentRunId).toBeNull();
    store.startRun(child.id, process.pid);
    expectError(() => store.deleteRun(child.id), 'BAD_RUN_STATE', `process ${process.pid}`);
    store.close();
  });
});

describe('recovery of runs left running', () => {
  it('marks interrupted a run whose process is gone, at the next open', () => {
    const { store, home } = clockedStore();
    const { id } = store.createRun(lora);
    store.startRun(id, deadPid());
    store.close();
    const reopened = openStore(home);
    expect(reopened.getRun(id)).toMatchObject({ status: 'interrupted', errorCode: 'INTERRUPTED' });
    expect(reopened.startRun(id, process.pid).status).toBe('running'); // resumable
    reopened.close();
  });

  it('marks interrupted a run with a stale heartbeat even if its pid is alive; a fresh one stays running', () => {
    const start = Date.UTC(2026, 10, 29, 3, 15, 0);
    const { store, home } = clockedStore(freshHome(), start);
    const { id } = store.createRun(lora);
    store.startRun(id, process.pid); // alive: this very process
    store.close();
    const later = openStore(home, { clock: () => start + 10 * 60_000, staleHeartbeatMs: 60_000 });
    expect(later.getRun(id)).toMatchObject({ status: 'interrupted', errorCode: 'INTERRUPTED' });
    expect(later.getRun(id).errorMessage).toMatch(/no heartbeat for 600 s/);
    later.close();

    const { store: s2, clock } = clockedStore(freshHome(), start);
    const a = s2.createRun(lora).id;
    const b = s2.createRun(lora).id;
    s2.startRun(a, process.pid);
    s2.startRun(b, process.pid);
    clock.now += 90_000;
    s2.heartbeat(b);
    const recovered = s2.recoverInterrupted();
    expect(recovered.map((r) => r.id)).toEqual([a]);
    expect(recovered[0].errorMessage).toMatch(/no heartbeat for 90 s/);
    expect(s2.getRun(b).status).toBe('running');
    // A slow but live trainer that was marked interrupted takes its run back with its next heartbeat.
    s2.heartbeat(a);
    expect(s2.getRun(a)).toMatchObject({ status: 'running', errorCode: null, finishedAt: null });
    s2.close();
  });
});
