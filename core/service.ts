/**
 * The service: implements every call of core/contract.ts on top of the engine. Transports
 * (Electron IPC in electron/main.ts, the WebSocket bridge in core/serve/) call `call(name,
 * request)`, which validates the request against the contract's schema first, and subscribe to
 * events. Training, export and generation run in child processes (core/service/jobs.ts).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CALLS, describeIssues, type CallName, type Calls, type FinetuneConfigInput, type LiveRun, type MethodEstimate, type ModelEntry, type Replies, type Request, type StudioEvent, type WireError } from './contract.ts';
import { LowrankError, isLowrankError, type ErrorCode } from './errors.ts';
import { openStore, type RunStore } from './store/index.ts';
import type { Run } from './store/types.ts';
import { BUNDLED_MODEL_DIR, RESOURCES_DIR } from './resources.ts';
import { openCheckpoint } from './models/load.ts';
import { parameterCount, targetableModules } from './models/config.ts';
import { loadTokenizer } from './tokenize/tokenizer.ts';
import { loadDataset, previewDataset } from './data/dataset.ts';
import { getMethod, listMethods, resolveParams } from './methods/index.ts';
import { FINETUNE_DEFAULTS, type FinetuneEvent, type FinetuneResult } from './train/finetune.ts';
import { startJob, type Job, type JobRequest, type JobRunner } from './service/jobs.ts';
import type { RunEstimateFigures } from './service/estimates.ts';
import { METHOD_DESCRIPTIONS, METHOD_GROUPS, PARAMETER_LABELS } from './methods/descriptions.ts';
import { AllowedPaths, DATASET_EXTENSIONS } from './service/allowed-paths.ts';
import type { ExportResult } from './export/run-export.ts';
import { hubCacheDir, hubIdOfFolder, parseHubId, type HubId } from './hub/cache.ts';
import { pullModel } from './hub/pull.ts';
import { resolveCachedModel } from './hub/resolve.ts';
import { describeModelFolder, listModelEntries } from './service/model-list.ts';
import { launchJob, type LaunchedJob, type LaunchEvent } from './elsewhere/launch.ts';
import { detectLocalEngine } from './elsewhere/local-engine.ts';
import type { ExportJobResult } from './elsewhere/export-job.ts';
import { exportOptions } from './export/availability.ts';
import { Bakeoffs } from './service/bakeoffs.ts';

export interface ServiceOptions {
  /** The run store's folder (LOWRANK_HOME). */
  home: string;
  transport: 'electron' | 'websocket';
  /** True where a system file dialog grants paths (Electron). */
  fileDialog: boolean;
  /** Extra folders whose models / datasets may be listed and read (serve --allow DIR). */
  roots?: string[];
  /** Where engine jobs run; default: forked Node processes (core/service/jobs.ts). */
  jobRunner?: JobRunner;
}

interface LiveJob extends LiveRun {
  job: Job<FinetuneResult>;
  sawFinalEvent: boolean;
  lastStepEmit: number;
}

/** A run trained by another engine this service started (core/elsewhere/launch.ts). */
interface LaunchedRun extends LiveRun {
  job: LaunchedJob;
}

/** What to do about a failed run, by error code. */
const FIXES: Record<string, string> = {
  BAD_DATA: 'Fix the records listed (file:line) in the dataset, or choose "skip bad lines" in the Dataset step, then start a new run.',
  ENGINE_FAILED: 'The other engine stopped with an error: read its last output in the logs, fix the setting it names, and start a new run.',
  ENGINE_CRASHED: 'Lower the batch size or the sequence length (or pick a method with less state) and start a new run.',
  BAD_CONFIG: 'The model folder\'s config.json is not usable; pick another base model.',
  MISSING_WEIGHT: 'The model folder is incomplete; download it again or pick another base model.',
  SHAPE_MISMATCH: 'The weights do not match config.json; download the model again.',
  BAD_ARGUMENT: 'Change the setting named in the message and start a new run.',
  NUMERIC: 'Training diverged: start a new run with a lower learning rate (a third of this one is a good first try) or with gradient clipping on (Training step, "clip gradients"). The steps before the divergence are kept in this run\'s curve.',
  DOES_NOT_FIT: 'Lower the batch size or the sequence length, turn gradient checkpointing on, pick a lower base precision (int8, nf4) or a method with less state, and start a new run.',
};

/** A configuration's identity for its step times: every setting but the run's name, keys in order. */
function timingKey(config: FinetuneConfigInput): string {
  const sorted = (v: unknown): unknown =>
    Array.isArray(v) ? v.map(sorted) : v && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted((v as Record<string, unknown>)[k])])) : v;
  const { name: _name, ...settings } = config as FinetuneConfigInput & { name?: unknown };
  return JSON.stringify(sorted(settings));
}

/** A run's base model as a person names it: `org/name@commit` for a cache snapshot, else the folder's name. */
function baseModelLabel(dir: string | null): { name: string; hubId: string | null } {
  if (!dir) return { name: '–', hubId: null };
  const hub = hubIdOfFolder(dir);
  return hub ? { name: `${hub.repo}@${hub.commit.slice(0, 7)}`, hubId: hub.repo } : { name: path.basename(dir), hubId: null };
}

const STEP_EVENT_INTERVAL_MS = 100;

export class StudioService {
  readonly store: RunStore;
  readonly paths: AllowedPaths;
  private readonly listeners = new Set<(e: StudioEvent) => void>();
  private readonly live = new Map<string, LiveJob>();
  private readonly launched = new Map<string, LaunchedRun>();
  /** Playground answers being generated, by request id (playground.stop stops them). */
  private readonly answers = new Map<string, Job<Replies['playground.generate']>>();
  /** Review's timed steps (runs.estimate) by configuration, for the ETA of a run started with it. */
  private readonly timedSteps = new Map<string, { seconds: number[]; at: number }>();
  private readonly handlers: Calls;
  private readonly startJob: JobRunner;
  private readonly hubCacheDir = hubCacheDir();
  private readonly estimates = new Map<string, Promise<MethodEstimate[]>>();
  private readonly pulls = new Map<string, Promise<ModelEntry>>();
  private readonly bakeoffs: Bakeoffs;
  private closed = false;

  constructor(readonly options: ServiceOptions) {
    this.startJob = options.jobRunner ?? startJob;
    this.store = openStore(options.home);
    this.paths = new AllowedPaths({
      // Models: the bundled one, the Hugging Face cache and the app's own merged exports too.
      models: [path.dirname(BUNDLED_MODEL_DIR), this.hubCacheDir, this.exportsDir(), ...(options.roots ?? [])],
      datasets: [path.join(RESOURCES_DIR, 'datasets'), this.uploadsDir(), ...(options.roots ?? [])],
      exports: [this.exportsDir()],
    });
    this.handlers = this.makeHandlers();
    this.bakeoffs = new Bakeoffs({
      store: this.store,
      trainToEnd: (config, onStarted) => this.trainToEnd(config, onStarted),
      compare: (runIds) => this.compareRuns(runIds),
      isOpen: () => !this.closed,
    });
  }

  /** Validates `request` against the contract, then runs the call. Errors are LowrankErrors. */
  async call(name: string, request: unknown): Promise<unknown> {
    if (!Object.hasOwn(CALLS, name)) throw new LowrankError('BAD_ARGUMENT', `unknown call "${name}"`);
    const parsed = CALLS[name as CallName].safeParse(request ?? {});
    if (!parsed.success) throw new LowrankError('BAD_ARGUMENT', `${name}: ${describeIssues(parsed.error)}`);
    const handler = this.handlers[name as CallName] as (r: unknown) => Promise<unknown>;
    try {
      return await handler(parsed.data);
    } catch (e) {
      // Errors from job processes too (they carry a code but are not LowrankErrors here).
      if (e instanceof Error) e.message = this.userFacing(e.message);
      throw e;
    }
  }

  /**
   * A message as the person reads it: an uploaded file by the name they gave it, not the store's
   * upload path; the dataset format by the wizard's Format setting, not the CLI flag.
   */
  private userFacing(text: string): string {
    return text
      .split(path.resolve(this.uploadsDir()) + path.sep)
      .join('')
      .replace(/force a format with --format [\w|-]+/, 'pick one in the Format setting (Dataset step)')
      .replace(/--format ([\w-]+) needs/, 'format "$1" needs');
  }

  subscribe(listener: (e: StudioEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** A path the user picked in a system dialog (Electron main calls this; never the renderer). */
  grant(p: string, kind: 'model' | 'dataset' | 'directory'): void {
    this.paths.grant(p, kind);
  }

  /** Marks runs failed that a crashed engine process left behind (Electron main knows which). */
  failRuns(runIds: string[], code: string, message: string): void {
    for (const runId of runIds) {
      const run = this.store.getRun(runId);
      if (['completed', 'failed', 'cancelled'].includes(run.status)) continue;
      this.store.failRun(runId, { code, message });
      this.store.addLog(runId, 'error', message);
      this.emit({ type: 'run-failed', runId, code, message });
    }
  }

  /** Stops every job (their runs are found interrupted by the next service) and closes the store. */
  async close(): Promise<void> {
    this.closed = true;
    const exits = [...this.live.values()].map(({ job }) => job.exited);
    for (const l of this.live.values()) l.job.signal('SIGKILL');
    this.live.clear();
    // A launched engine is followed by this process: stop it with it (its runs end cancelled).
    const launched = [...this.launched.values()].map(({ job }) => (job.cancel(), job.result.catch(() => undefined)));
    this.launched.clear();
    for (const answer of this.answers.values()) answer.signal('SIGKILL');
    await Promise.all([...exits, ...launched]);
    this.store.close();
  }

  private emit(e: StudioEvent): void {
    const shown = e.type === 'run-failed' || e.type === 'log' ? { ...e, message: this.userFacing(e.message) } : e;
    for (const l of this.listeners) l(shown);
  }

  private uploadsDir(): string {
    return path.join(this.options.home, 'uploads');
  }

  /** Where exports go unless a dialog granted another folder; `lowrank serve` offers downloads from here. */
  exportsDir(): string {
    return path.join(this.options.home, 'exports');
  }

  private insideExports(p: string): boolean {
    return path.resolve(p).startsWith(this.exportsDir() + path.sep);
  }

  /** A model folder or a Hub id (from the HF cache: the service downloads only through models.pull), checked. */
  private modelPath(p: string): string {
    const dir = resolveCachedModel(p)!;
    this.paths.check(dir, 'model');
    return dir;
  }

  /** The config with its model named by folder, every path checked. */
  private checkConfigPaths(config: FinetuneConfigInput): FinetuneConfigInput {
    const model = this.modelPath(config.model);
    this.paths.check(config.data, 'dataset');
    if (config.adapter) this.paths.check(config.adapter, 'model');
    return { ...config, model };
  }

  private onTrainEvent(live: LiveJob, e: FinetuneEvent): void {
    if (e.type === 'step') {
      live.step = e.step;
      // Throttled to ≤ 10/s per run; the last step always goes through with run-finished's figures.
      const now = Date.now();
      if (now - live.lastStepEmit < STEP_EVENT_INTERVAL_MS && e.step !== live.totalSteps) return;
      live.lastStepEmit = now;
    }
    if (e.type === 'run-started') live.totalSteps = e.totalSteps;
    if (e.type === 'run-finished' || e.type === 'run-failed') live.sawFinalEvent = true;
    if (e.type === 'log') this.store.addLog(e.runId, 'info', e.message);
    this.emit(e);
  }

  /** Forks a training job; resolves with the run id at the job's first event. */
  /** Review's timed steps of exactly this configuration, when they were measured in the last 10 minutes. */
  private recentTimedSteps(config: FinetuneConfigInput): number[] | undefined {
    const timed = this.timedSteps.get(timingKey(config));
    return timed && Date.now() - timed.at < 10 * 60_000 ? timed.seconds : undefined;
  }

  private startTraining(config: FinetuneConfigInput, resumeRunId?: string): Promise<{ runId: string }> {
    return new Promise((resolve, reject) => {
      let live: LiveJob | undefined;
      const job = this.startJob<FinetuneResult>(
        { kind: 'train', home: this.options.home, config, resumeRunId, priorStepSeconds: resumeRunId ? undefined : this.recentTimedSteps(config) },
        {
          onEvent: (e) => {
            if (this.closed) return;
            if (!live) {
              live = { runId: e.runId, totalSteps: 0, step: 0, paused: false, startedAt: Date.now(), job, sawFinalEvent: false, lastStepEmit: 0 };
              this.live.set(e.runId, live);
              resolve({ runId: e.runId });
            }
            this.onTrainEvent(live, e);
          },
        },
      );
      job.result.then(
        () => {
          if (this.closed) return;
          if (live) {
            this.live.delete(live.runId);
            this.emit({ type: 'run-status', runId: live.runId, status: this.store.getRun(live.runId).status });
          }
        },
        (e: unknown) => {
          if (!live) return reject(e);
          if (this.closed) return;
          this.live.delete(live.runId);
          if (!live.sawFinalEvent) {
            // The process died without reporting: mark the run failed here, so the UI shows why.
            const message = e instanceof Error ? e.message : String(e);
            try {
              this.store.failRun(live.runId, { code: 'ENGINE_CRASHED', message });
            } catch {
              /* already finished */
            }
            this.store.addLog(live.runId, 'error', message);
            this.emit({ type: 'run-failed', runId: live.runId, code: 'ENGINE_CRASHED', message });
          }
          this.emit({ type: 'run-status', runId: live.runId, status: this.store.getRun(live.runId).status });
        },
      );
    });
  }

  /** Downloads a Hub model into the HF cache, reporting `model-pull` events. */
  private async pullModel(id: string, hubId: HubId): Promise<ModelEntry> {
    const event = { type: 'model-pull' as const, id, file: null, bytes: 0, totalBytes: 0, bytesPerSecond: 0, etaSeconds: null, done: false, error: null };
    try {
      const result = await pullModel(hubId.repo, {
        revision: hubId.revision,
        cacheDir: this.hubCacheDir,
        onProgress: (p) => this.emit({ ...event, file: p.file, bytes: p.bytes, totalBytes: p.totalBytes, bytesPerSecond: p.bytesPerSecond, etaSeconds: Number.isFinite(p.etaSeconds) ? p.etaSeconds : null }),
      });
      this.emit({ ...event, bytes: result.bytes, totalBytes: result.bytes, done: true });
      return { path: result.dir, name: id, bundled: false, source: 'hf-cache' as const, hubId: hubId.repo, ...describeModelFolder(result.dir) };
    } catch (e) {
      this.emit({ ...event, done: true, error: e instanceof Error ? e.message : String(e) });
      throw e;
    }
  }

  /** Starts (or resumes) LLaMA-Factory on a job folder and follows it as a live run. */
  private startLaunch(jobDir: string, resumeRunId?: string): string {
    let entry: LaunchedRun | undefined;
    const job = launchJob(this.store, jobDir, {
      resumeRunId,
      onEvent: (e: LaunchEvent) => {
        if (this.closed) return;
        if (entry && e.type === 'step') {
          entry.step = e.step;
          entry.totalSteps = e.totalSteps;
        }
        this.emit(e);
      },
      // Loading the model to write the checkpoint is engine work: a job process, as training is.
      checkpointAdapter: (runId, config, step) =>
        this.startJob<number>({ kind: 'checkpoint-adapter', home: this.options.home, runId, config: config as FinetuneConfigInput, step }).result,
    });
    entry = { runId: job.runId, totalSteps: 0, step: 0, paused: false, startedAt: Date.now(), job };
    this.launched.set(job.runId, entry);
    job.result.finally(() => this.launched.delete(job.runId)).catch(() => undefined);
    this.emit({ type: 'run-status', runId: job.runId, status: 'running' });
    return job.runId;
  }

  private exportJobReply(runId: string, r: ExportJobResult): Replies['runs.exportJob'] {
    return {
      runId, engine: r.engine, dir: r.dir, configFile: r.configFile, model: r.model, modelIsHubId: r.modelIsHubId, records: r.records,
      skipped: r.skipped, commands: r.commands, memory: r.memory, memoryNote: r.memoryNote,
      notCarried: r.mappings.filter((m) => m.fields.length === 0).map((m) => ({ setting: m.setting, note: m.note ?? '' })),
    };
  }

  /** Starts a run and resolves once its job has ended, whatever the run's status (the bake-off queue). */
  private async trainToEnd(config: FinetuneConfigInput, onStarted: (runId: string) => void): Promise<void> {
    this.checkConfigPaths(config);
    const { runId } = await this.startTraining(config);
    onStarted(runId);
    await this.live.get(runId)?.job.result.catch(() => undefined);
  }

  private compareRuns(runIds: string[]): Replies['runs.compare'] {
    const store = this.store;
    const runs = runIds.map((id) => store.getRun(id));
    const keys = [...new Set(runs.flatMap((r) => Object.keys(r.config)))].sort();
    const configDiff: Record<string, unknown[]> = {};
    for (const k of keys) {
      const values = runs.map((r) => r.config[k] ?? null);
      if (new Set(values.map((v) => JSON.stringify(v))).size > 1) configDiff[k] = values;
    }
    const curves: Replies['runs.compare']['curves'] = {};
    const samples: Replies['runs.compare']['samples'] = {};
    for (const r of runs) {
      const loss = store.metrics(r.id, { name: 'loss' });
      curves[r.id] = {
        train: loss.filter((m) => m.split === 'train').map((m) => [m.step, m.value]),
        val: loss.filter((m) => m.split === 'val').map((m) => [m.step, m.value]),
      };
      const all = store.samples(r.id);
      const lastStep = all.length ? Math.max(...all.map((s) => s.step)) : -1;
      samples[r.id] = all.filter((s) => s.step === lastStep);
    }
    return { runs, configDiff, curves, samples };
  }

  private liveRun(runId: string): LiveJob {
    const live = this.live.get(runId);
    if (!live) throw new LowrankError('BAD_RUN_STATE', `run ${runId} is not training in this session`);
    return live;
  }

  /**
   * Seconds to the last step: from the estimate job's timed steps of this very configuration (the
   * first carries one-off set-up; evaluations are forward passes, about a third of a step per batch),
   * else from earlier completed runs of the same model and method, else from the model size.
   */
  private estimatedSeconds(config: FinetuneConfigInput, r: RunEstimateFigures): { seconds: number; basis: string } {
    if (r.stepSeconds && r.stepSeconds.length > 1) {
      const typical = Math.min(...r.stepSeconds.slice(1));
      const seconds = r.stepSeconds[0] + (r.totalSteps - 1) * typical + (r.evaluations + 1) * r.validationBatches * (typical / 3);
      return { seconds, basis: `from ${r.stepSeconds.length} timed steps of this configuration` };
    }
    const previous = this.store
      .listRuns({ status: 'completed', limit: 200 })
      .filter((run) => run.baseModelPath === path.resolve(config.model) && run.tokensPerSecond);
    for (const [runs, basis] of [[previous.filter((run) => run.method === config.method), `${config.method} runs`], [previous, 'runs']] as const) {
      if (!runs.length) continue;
      const rates = runs.map((run) => run.tokensPerSecond as number).sort((a, b) => a - b);
      return { seconds: r.tokens / rates[Math.floor(rates.length / 2)], basis: `from the speed of ${runs.length} earlier ${basis} on this model` };
    }
    // ~6 FLOPs per parameter per token (forward + backward) at a conservative 20 GFLOP/s.
    return { seconds: (r.tokens * 6 * r.parameters) / 20e9, basis: 'a rough guess from the model size' };
  }

  private makeHandlers(): Calls {
    const store = this.store;
    return {
      'app.info': async () => {
        const pkg = JSON.parse(fs.readFileSync(path.join(RESOURCES_DIR, '..', 'package.json'), 'utf8')) as { version: string };
        return {
          version: pkg.version,
          transport: this.options.transport,
          fileDialog: this.options.fileDialog,
          bundledModel: fs.existsSync(path.join(BUNDLED_MODEL_DIR, 'config.json')) ? BUNDLED_MODEL_DIR : null,
          totalMemoryBytes: os.totalmem(),
          freeMemoryBytes: os.freemem(),
          cpus: os.cpus().length,
          home: this.options.home,
          finetuneDefaults: FINETUNE_DEFAULTS,
        };
      },
      'models.list': async () => {
        const entries = listModelEntries({ paths: this.paths, bundledDir: BUNDLED_MODEL_DIR, hubCacheDir: this.hubCacheDir, exportsDir: this.exportsDir(), store });
        // The app's own merged exports open wherever they were written.
        for (const e of entries) if (e.source === 'export') this.paths.grant(e.path, 'model');
        return entries;
      },
      'models.pull': async ({ id }) => {
        const hubId = parseHubId(id);
        if (!hubId) throw new LowrankError('BAD_ARGUMENT', `models.pull: "${id}" is not a Hub id (org/name or org/name@revision)`);
        // A second window asking for the same model joins the download under way (one writer per blob).
        const running = this.pulls.get(id);
        if (running) return running;
        const pull = this.pullModel(id, hubId);
        this.pulls.set(id, pull);
        return pull.finally(() => this.pulls.delete(id));
      },
      'models.inspect': async ({ path: given }) => {
        const dir = this.modelPath(given);
        const { config, reader, dtypes } = openCheckpoint(dir);
        reader.close();
        return {
          path: dir,
          name: hubIdOfFolder(dir)?.repo ?? path.basename(dir),
          architecture: config.architecture,
          parameters: parameterCount(config),
          dtype: [...dtypes].join(', '),
          layers: config.numLayers,
          hiddenSize: config.hiddenSize,
          vocabSize: config.vocabSize,
          maxPositions: config.maxPositions,
          targetableModules: targetableModules(config),
        };
      },
      'datasets.list': async () => this.paths.listDatasets(this.uploadsDir()),
      'datasets.upload': async ({ name, content }) => {
        const base = path.basename(name).replace(/[^\w.-]/g, '_');
        if (!DATASET_EXTENSIONS.includes(path.extname(base).toLowerCase())) {
          throw new LowrankError('BAD_ARGUMENT', `${base}: a dataset is a ${DATASET_EXTENSIONS.join(', ')} file`);
        }
        fs.mkdirSync(this.uploadsDir(), { recursive: true });
        const file = path.join(this.uploadsDir(), base);
        fs.writeFileSync(file, content);
        return { path: file, name: base, bytes: Buffer.byteLength(content), source: 'uploaded' as const };
      },
      'datasets.delete': async ({ path: file }) => {
        if (path.dirname(path.resolve(file)) !== path.resolve(this.uploadsDir())) throw new LowrankError('BAD_ARGUMENT', `${path.basename(file)}: only uploaded datasets can be deleted here`);
        if ([...this.live.values()].some((l) => (store.getRun(l.runId).config as { data?: string }).data === file)) {
          throw new LowrankError('BAD_RUN_STATE', `${path.basename(file)}: a run is training on it; cancel the run first`);
        }
        fs.rmSync(file, { force: true });
        return { deleted: true as const };
      },
      'datasets.preview': async ({ model: given, data, seqLen, format, count, validation }) => {
        const model = this.modelPath(given);
        this.paths.check(data, 'dataset');
        const tokenizer = await loadTokenizer(model);
        const preview = await previewDataset(data, tokenizer, { seqLen, format, count });
        let trainExamples = 0;
        let validationExamples = 0;
        if (preview.problems.length === 0) {
          const loaded = await loadDataset(data, tokenizer, { seqLen, format, validation, onBadLine: 'skip' });
          trainExamples = loaded.train.length;
          validationExamples = loaded.validation.length;
        }
        const named = (where: string) => this.userFacing(where);
        return {
          ...preview,
          problems: preview.problems.map((p) => ({ ...p, where: named(p.where), reason: named(p.reason) })),
          examples: preview.examples.map((e) => ({ ...e, source: named(e.source) })),
          trainExamples,
          validationExamples,
        };
      },
      'files.browse': async ({ dir }) => this.paths.browse(dir),
      'methods.list': async () =>
        listMethods().map(({ attach: _attach, countTrainable: _count, unavailableExports: _exports, ...info }) => ({
          ...info,
          ...(METHOD_DESCRIPTIONS[info.id] ?? { displayName: info.id, help: info.summary, formula: '' }),
          group: METHOD_GROUPS[info.family],
          labels: Object.fromEntries(info.schema.map((f) => [f.name, PARAMETER_LABELS[f.name] ?? f.name])),
        })),
      'methods.estimates': async (request) => {
        // The model step (its fit figure) and the method step may ask the same question: one job
        // answers both, until the model's config.json changes.
        const job: JobRequest =
          'config' in request
            ? { kind: 'estimate-methods', home: this.options.home, config: this.checkConfigPaths(request.config) }
            : { kind: 'estimate-model-methods', home: this.options.home, ...request, model: this.modelPath(request.model) };
        const model = 'config' in job ? job.config.model : job.model;
        const configTime = fs.statSync(path.join(model, 'config.json'), { throwIfNoEntry: false })?.mtimeMs ?? 0;
        const key = JSON.stringify([job, configTime]);
        let answer = this.estimates.get(key);
        if (!answer) {
          // Loading a model is heavy for a large one: a job process, so the socket stays free.
          answer = this.startJob<MethodEstimate[]>(job).result;
          this.estimates.set(key, answer);
          answer.catch(() => this.estimates.delete(key));
        }
        return answer;
      },
      'runs.estimate': async ({ config: given }) => {
        const config = this.checkConfigPaths(given);
        getMethod(config.method);
        const r = await this.startJob<RunEstimateFigures>({
          kind: 'estimate-run',
          home: this.options.home,
          config,
        }).result;
        const { seconds, basis } = this.estimatedSeconds(config, r);
        // The first timed step pays one-off set-up; the others are what this configuration's steps take.
        if (r.stepSeconds && r.stepSeconds.length > 1) this.timedSteps.set(timingKey(config), { seconds: r.stepSeconds.slice(1), at: Date.now() });
        const { tokens: _t, parameters: _p, stepSeconds: _s, evaluations: _e, validationBatches: _v, ...rest } = r;
        return { ...rest, availableBytes: os.totalmem(), estimatedSeconds: seconds, timeBasis: basis };
      },
      'runs.start': async ({ config: given }) => {
        const config = this.checkConfigPaths(given);
        getMethod(config.method);
        resolveParams(config.method, getMethod(config.method).schema, config.params);
        return this.startTraining(config);
      },
      'runs.list': async (filter) => store.listRuns(filter),
      'runs.get': async ({ runId }) => {
        const run = store.getRun(runId);
        const live = this.live.get(runId) ?? this.launched.get(runId);
        return {
          run: run.errorMessage ? { ...run, errorMessage: this.userFacing(run.errorMessage) } : run,
          metrics: store.metrics(runId),
          samples: store.samples(runId),
          checkpoints: store.checkpoints(runId),
          artifacts: store.artifacts(runId),
          logs: store.logs(runId),
          live: live ? { runId, totalSteps: live.totalSteps, step: live.step, paused: live.paused, startedAt: live.startedAt } : null,
          fix: run.status === 'failed' ? (FIXES[run.errorCode ?? ''] ?? 'Check the settings named in the message and start a new run.') : null,
          baseModel: baseModelLabel(run.baseModelPath),
        };
      },
      'runs.pause': async ({ runId }) => {
        const launched = this.launched.get(runId);
        if (launched) {
          // The engine stops after its current step and keeps its checkpoints; the run turns paused when it has exited.
          launched.job.pause();
          const status = await launched.job.result;
          return { status };
        }
        const live = this.liveRun(runId);
        if (process.platform === 'win32') throw new LowrankError('BAD_RUN_STATE', 'pausing is not available on Windows yet; cancel the run instead (it keeps its last checkpoint)');
        // SIGSTOP freezes the training process where it is: nothing is lost, memory stays held.
        live.job.signal('SIGSTOP');
        live.paused = true;
        const { status } = store.pauseRun(runId);
        this.emit({ type: 'run-status', runId, status });
        return { status };
      },
      'runs.resume': async ({ runId }) => {
        if (!this.live.has(runId) && store.getRun(runId).origin === 'launched') {
          if (this.launched.has(runId)) return { status: store.getRun(runId).status };
          const jobDir = (store.getRun(runId).config.elsewhere as { jobDir?: string } | null)?.jobDir;
          if (!jobDir) throw new LowrankError('BAD_RUN_STATE', `run ${runId} has no job folder to continue from`);
          this.startLaunch(jobDir, runId);
          return { status: store.getRun(runId).status };
        }
        if (!this.live.has(runId)) {
          // A run whose process is gone (the app quit or crashed): continue from its last checkpoint.
          const run = store.getRun(runId);
          if (run.kind !== 'finetune' || !['interrupted', 'paused'].includes(run.status)) {
            throw new LowrankError('BAD_RUN_STATE', `run ${runId} is ${run.status}; only a paused or interrupted run can be resumed`);
          }
          const config = run.config as unknown as FinetuneConfigInput;
          this.checkConfigPaths(config);
          await this.startTraining(config, runId);
          return { status: store.getRun(runId).status };
        }
        const live = this.liveRun(runId);
        if (!live.paused) return { status: store.getRun(runId).status };
        const { status } = store.startRun(runId, live.job.pid);
        live.job.signal('SIGCONT');
        live.paused = false;
        this.emit({ type: 'run-status', runId, status });
        return { status };
      },
      'runs.cancel': async ({ runId }) => {
        const launched = this.launched.get(runId);
        if (launched) {
          launched.job.cancel();
          return { status: await launched.job.result };
        }
        const live = this.live.get(runId);
        if (live) {
          if (live.paused) {
            store.startRun(runId, live.job.pid);
            live.job.signal('SIGCONT');
            live.paused = false;
          }
          live.job.stop();
          return { status: store.getRun(runId).status };
        }
        const run = store.getRun(runId);
        if (['completed', 'failed', 'cancelled'].includes(run.status)) return { status: run.status };
        const { status } = store.finishRun(runId, { status: 'cancelled' });
        this.emit({ type: 'run-status', runId, status });
        return { status };
      },
      'runs.delete': async ({ runId }) => {
        if (this.live.has(runId) || this.launched.has(runId)) throw new LowrankError('BAD_RUN_STATE', `run ${runId} is training; cancel it before deleting`);
        // Its exports in the store's exports folder go with it; ones written to a folder the user chose stay theirs.
        const exports = store.artifacts(runId).filter((a) => this.insideExports(a.path));
        store.deleteRun(runId);
        for (const a of exports) fs.rmSync(a.path, { recursive: true, force: true });
        return { deleted: true as const };
      },
      'runs.deleteExport': async ({ runId, artifactId }) => {
        const artifact = store.artifacts(runId).find((a) => a.id === artifactId);
        if (!artifact) throw new LowrankError('BAD_ARGUMENT', `run ${runId} has no export ${artifactId}`);
        this.paths.check(path.dirname(artifact.path), 'directory');
        fs.rmSync(artifact.path, { recursive: true, force: true });
        store.deleteArtifact(runId, artifactId);
        return { deleted: true as const };
      },
      'runs.compare': async ({ runIds }) => this.compareRuns(runIds),
      'bakeoffs.start': async (request) => {
        this.checkConfigPaths(request.config);
        return this.bakeoffs.start(request);
      },
      'bakeoffs.get': async ({ bakeoffId }) => this.bakeoffs.get(bakeoffId),
      'runs.exportOptions': async ({ runId }) => {
        const run = store.getRun(runId);
        // The base as the run's config names it: what exportRun rebuilds the run from.
        const config = run.config as unknown as FinetuneConfigInput;
        return exportOptions(getMethod(run.method), String(config.model), config.params ?? {});
      },
      'runs.export': async ({ runId, format, quant, dtype, destinationDir, name }) => {
        const dir = destinationDir ?? this.exportsDir();
        this.paths.check(dir, 'directory');
        fs.mkdirSync(dir, { recursive: true });
        const stem = name ?? `${runId}-${format}${format === 'gguf' ? `-${quant ?? 'f16'}` : ''}`;
        let out = path.join(dir, stem);
        for (let i = 2; fs.existsSync(out); i++) out = path.join(dir, `${stem}-${i}`);
        const job = this.startJob<ExportResult>(
          { kind: 'export', home: this.options.home, request: { runId, format, out, quant: format === 'gguf' ? (quant ?? 'f16') : undefined, dtype: dtype ?? 'base' } },
          { onProgress: (message) => this.emit({ type: 'export-progress', runId, message }) },
        );
        const result = await job.result;
        this.emit({ type: 'export-progress', runId, message: `done: ${result.path}` });
        return result;
      },
      'elsewhere.local': async () => detectLocalEngine(),
      'runs.exportJob': async ({ runId, engine, destinationDir }) => {
        const dir = destinationDir ?? this.exportsDir();
        this.paths.check(dir, 'directory');
        fs.mkdirSync(dir, { recursive: true });
        const stem = `${runId}-${engine}-job`;
        let out = path.join(dir, stem);
        for (let i = 2; fs.existsSync(out); i++) out = path.join(dir, `${stem}-${i}`);
        const job = this.startJob<ExportJobResult>(
          { kind: 'export-job', home: this.options.home, runId, engine, out },
          { onProgress: (message) => this.emit({ type: 'export-progress', runId, message }) },
        );
        return this.exportJobReply(runId, await job.result);
      },
      'runs.launchElsewhere': async ({ config }) => {
        this.checkConfigPaths(config);
        const local = detectLocalEngine();
        if (!local.available) {
          throw new LowrankError('BAD_ARGUMENT', local.llamafactory ? 'no CUDA or Metal GPU is visible to LLaMA-Factory here; train with Lowrank Studio\'s own engine' : 'llamafactory-cli is not on PATH; install LLaMA-Factory (pip install llamafactory) or train with Lowrank Studio\'s own engine');
        }
        const out = path.join(this.options.home, 'jobs', `${new Date().toISOString().replace(/[:.]/g, '-')}-llamafactory`);
        await this.startJob<ExportJobResult>({ kind: 'export-job', home: this.options.home, config, engine: 'llamafactory', out }).result;
        return { runId: this.startLaunch(out) };
      },
      'playground.generate': async (request) => {
        const run = store.getRun(request.runId);
        if (!store.latestCheckpoint(run.id)) throw new LowrankError('BAD_RUN_STATE', `run ${run.id} has no checkpoint yet; the playground needs a trained model`);
        if (this.answers.has(request.requestId)) throw new LowrankError('BAD_ARGUMENT', `playground request ${request.requestId} is already being answered`);
        const { requestId } = request;
        const job = this.startJob<Replies['playground.generate']>(
          { kind: 'generate', home: this.options.home, request },
          { onStream: (source, text) => this.emit({ type: 'playground-token', requestId, source, text }) },
        );
        this.answers.set(requestId, job);
        try {
          return await job.result;
        } finally {
          this.answers.delete(requestId);
        }
      },
      'playground.stop': async ({ requestId }) => {
        const job = this.answers.get(requestId);
        job?.stop();
        return { stopped: job !== undefined };
      },
    } satisfies { [K in CallName]: (r: Request<K>) => Promise<Replies[K]> };
  }
}

/** An error as it crosses a transport. */
export function toWireError(e: unknown): WireError {
  if (isLowrankError(e)) return { code: e.code, message: e.message };
  if (e instanceof Error && typeof (e as { code?: unknown }).code === 'string') return { code: String((e as unknown as { code: string }).code), message: e.message };
  return { code: 'INTERNAL', message: e instanceof Error ? e.message : String(e) };
}

export type { Run, ErrorCode };
