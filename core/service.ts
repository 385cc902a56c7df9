/**
 * The service: implements every call of core/contract.ts on top of the engine. Transports
 * (Electron IPC in electron/main.ts, the WebSocket bridge in core/serve/) call `call(name,
 * request)`, which validates the request against the contract's schema first, and subscribe to
 * events. Training, export and generation run in child processes (core/service/jobs.ts).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CALLS, describeIssues, type CallName, type Calls, type FinetuneConfigInput, type LiveRun, type MethodEstimate, type Replies, type Request, type StudioEvent, type WireError } from './contract.ts';
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
import { startJob, type Job, type JobRunner } from './service/jobs.ts';
import type { RunEstimateFigures } from './service/estimates.ts';
import { AllowedPaths, DATASET_EXTENSIONS } from './service/allowed-paths.ts';
import type { ExportResult } from './export/run-export.ts';
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

/** What to do about a failed run, by error code. */
const FIXES: Record<string, string> = {
  BAD_DATA: 'Fix the records listed (file:line) in the dataset, or choose "skip bad lines" in the Dataset step, then start a new run.',
  ENGINE_CRASHED: 'Lower the batch size or the sequence length (or pick a method with less state) and start a new run.',
  BAD_CONFIG: 'The model folder\'s config.json is not usable; pick another base model.',
  MISSING_WEIGHT: 'The model folder is incomplete; download it again or pick another base model.',
  SHAPE_MISMATCH: 'The weights do not match config.json; download the model again.',
  BAD_ARGUMENT: 'Change the setting named in the message and start a new run.',
};

const STEP_EVENT_INTERVAL_MS = 100;

export class StudioService {
  readonly store: RunStore;
  readonly paths: AllowedPaths;
  private readonly listeners = new Set<(e: StudioEvent) => void>();
  private readonly live = new Map<string, LiveJob>();
  private readonly handlers: Calls;
  private readonly startJob: JobRunner;
  private readonly bakeoffs: Bakeoffs;
  private closed = false;

  constructor(readonly options: ServiceOptions) {
    this.startJob = options.jobRunner ?? startJob;
    this.store = openStore(options.home);
    this.paths = new AllowedPaths({
      models: [path.dirname(BUNDLED_MODEL_DIR), ...(options.roots ?? [])],
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
    return handler(parsed.data);
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
    await Promise.all(exits);
    this.store.close();
  }

  private emit(e: StudioEvent): void {
    for (const l of this.listeners) l(e);
  }

  private uploadsDir(): string {
    return path.join(this.options.home, 'uploads');
  }

  private exportsDir(): string {
    return path.join(this.options.home, 'exports');
  }

  private checkConfigPaths(config: FinetuneConfigInput): void {
    this.paths.check(config.model, 'model');
    this.paths.check(config.data, 'dataset');
    if (config.adapter) this.paths.check(config.adapter, 'model');
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
  private startTraining(config: FinetuneConfigInput, resumeRunId?: string): Promise<{ runId: string }> {
    return new Promise((resolve, reject) => {
      let live: LiveJob | undefined;
      const job = this.startJob<FinetuneResult>(
        { kind: 'train', home: this.options.home, config, resumeRunId },
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

  private throughputGuess(modelPath: string, parameters: number): number {
    const previous = this.store
      .listRuns({ status: 'completed', limit: 50 })
      .filter((r) => r.baseModelPath === path.resolve(modelPath) && r.tokensPerSecond)
      .map((r) => r.tokensPerSecond as number);
    if (previous.length) return previous.sort((a, b) => a - b)[Math.floor(previous.length / 2)];
    // ~6 FLOPs per parameter per token (forward + backward) at a conservative 2 GFLOP/s.
    return 2e9 / (6 * Math.max(parameters, 1));
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
      'models.list': async () => this.paths.listModels(BUNDLED_MODEL_DIR),
      'models.inspect': async ({ path: dir }) => {
        this.paths.check(dir, 'model');
        const { config, reader, dtypes } = openCheckpoint(dir);
        reader.close();
        return {
          path: dir,
          name: path.basename(dir),
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
      'datasets.preview': async ({ model, data, seqLen, format, count, validation }) => {
        this.paths.check(model, 'model');
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
        return { ...preview, trainExamples, validationExamples };
      },
      'files.browse': async ({ dir }) => this.paths.browse(dir),
      'methods.list': async () => listMethods().map(({ attach: _attach, ...info }) => info),
      'methods.estimates': async (request) => {
        this.paths.check(request.model, 'model');
        // Loading a model is heavy for a large one: a job process, so the socket stays free.
        return this.startJob<MethodEstimate[]>({ kind: 'estimate-methods', home: this.options.home, ...request }).result;
      },
      'runs.estimate': async ({ config }) => {
        this.checkConfigPaths(config);
        getMethod(config.method);
        const r = await this.startJob<RunEstimateFigures>({
          kind: 'estimate-run',
          home: this.options.home,
          config,
        }).result;
        const { tokens, parameters, ...rest } = r;
        return { ...rest, availableBytes: os.totalmem(), estimatedSeconds: tokens / this.throughputGuess(config.model, parameters) };
      },
      'runs.start': async ({ config }) => {
        this.checkConfigPaths(config);
        getMethod(config.method);
        resolveParams(config.method, getMethod(config.method).schema, config.params);
        return this.startTraining(config);
      },
      'runs.list': async (filter) => store.listRuns(filter),
      'runs.get': async ({ runId }) => {
        const run = store.getRun(runId);
        const live = this.live.get(runId);
        return {
          run,
          metrics: store.metrics(runId),
          samples: store.samples(runId),
          checkpoints: store.checkpoints(runId),
          artifacts: store.artifacts(runId),
          logs: store.logs(runId),
          live: live ? { runId, totalSteps: live.totalSteps, step: live.step, paused: live.paused, startedAt: live.startedAt } : null,
          fix: run.status === 'failed' ? (FIXES[run.errorCode ?? ''] ?? 'Check the settings named in the message and start a new run.') : null,
        };
      },
      'runs.pause': async ({ runId }) => {
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
        if (this.live.has(runId)) throw new LowrankError('BAD_RUN_STATE', `run ${runId} is training; cancel it before deleting`);
        store.deleteRun(runId);
        return { deleted: true as const };
      },
      'runs.compare': async ({ runIds }) => this.compareRuns(runIds),
      'bakeoffs.start': async (request) => {
        this.checkConfigPaths(request.config);
        return this.bakeoffs.start(request);
      },
      'bakeoffs.get': async ({ bakeoffId }) => this.bakeoffs.get(bakeoffId),
      'runs.export': async ({ runId, format, quant, destinationDir, name }) => {
        const dir = destinationDir ?? this.exportsDir();
        this.paths.check(dir, 'directory');
        fs.mkdirSync(dir, { recursive: true });
        const stem = name ?? `${runId}-${format}${format === 'gguf' ? `-${quant ?? 'f16'}` : ''}`;
        let out = path.join(dir, stem);
        for (let i = 2; fs.existsSync(out); i++) out = path.join(dir, `${stem}-${i}`);
        const job = this.startJob<ExportResult>(
          { kind: 'export', home: this.options.home, request: { runId, format, out, quant: format === 'gguf' ? (quant ?? 'f16') : undefined } },
          { onProgress: (message) => this.emit({ type: 'export-progress', runId, message }) },
        );
        const result = await job.result;
        this.emit({ type: 'export-progress', runId, message: `done: ${result.path}` });
        return result;
      },
      'playground.generate': async (request) => {
        const run = store.getRun(request.runId);
        if (!store.latestCheckpoint(run.id)) throw new LowrankError('BAD_RUN_STATE', `run ${run.id} has no checkpoint yet; the playground needs a trained adapter`);
        const job = this.startJob<{ base: string; adapted: string; seconds: number }>({ kind: 'generate', home: this.options.home, ...request });
        return job.result;
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
