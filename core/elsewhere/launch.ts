/**
 * `lowrank export-job --launch`: LLaMA-Factory started here as a child process on a job folder, its
 * trainer_log.jsonl streamed into the store as a live run, and its adapter imported at the end.
 *
 * Stopping follows LLaMA-Factory's own LogCallback (train/callbacks.py): with LLAMABOARD_ENABLED
 * set it turns SIGABRT into "stop after this step" (should_training_stop), after which the SFT
 * workflow saves the model as usual. So pause = SIGABRT: the engine stops cleanly and keeps its
 * `checkpoint-N` folders (save_steps); resume starts it again with resume_from_checkpoint on the
 * newest one. Cancel = SIGTERM to the engine's process group (torchrun's workers too).
 * The store's heartbeat is this process's: if it dies the run reads as interrupted.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import type { FinetuneConfig, FinetuneEvent } from '../train/finetune.ts';
import type { RunStore } from '../store/store.ts';
import type { JsonObject, RunStatus } from '../store/types.ts';
import { JOB_MANIFEST, type JobManifest } from './export-job.ts';
import { TRAINER_LOG } from './llamafactory.ts';
import { LLAMAFACTORY_CLI, findOnPath } from './local-engine.ts';
import { TrainerLogFollower, engineCheckpoints, logMetrics, type TrainerLogEntry } from './trainer-log.ts';
import { adapterRunConfig, checkpointFromAdapter, finalLosses } from './import-adapter.ts';
import { readPeftAdapter } from '../export/peft.ts';

export type LaunchEvent = FinetuneEvent | { type: 'run-status'; runId: string; status: RunStatus };

export interface LaunchOptions {
  /** Continue this launched run (paused or interrupted) from the engine's newest checkpoint. */
  resumeRunId?: string;
  onEvent?(event: LaunchEvent): void;
  /** How often the log is read, ms (default 250). */
  pollMs?: number;
  /** Output lines kept for a failure's message. */
  tailLines?: number;
  /**
   * Writes the finished adapter as the run's checkpoint and returns its trainable count; default: here
   * (checkpointFromAdapter). The app's service runs it in an engine job process instead.
   */
  checkpointAdapter?(runId: string, config: FinetuneConfig, step: number): Promise<number>;
}

export interface LaunchedJob {
  runId: string;
  readonly pid: number | undefined;
  /** Settles with the run's final status once the engine has exited and its result is recorded. */
  result: Promise<RunStatus>;
  /** Stop after the current step, keeping the engine's checkpoints; the run becomes paused. */
  pause(): void;
  /** Stop now; the run becomes cancelled. */
  cancel(): void;
}

export function readJobManifest(jobDir: string): JobManifest {
  const file = path.join(jobDir, JOB_MANIFEST);
  if (!fs.existsSync(file)) throw new LowrankError('FILE_NOT_FOUND', `${file}: not a job folder written by lowrank export-job`);
  return JSON.parse(fs.readFileSync(file, 'utf8')) as JobManifest;
}

const MAX_STORED_LINES = 2000;

export function launchJob(store: RunStore, jobDir: string, options: LaunchOptions = {}): LaunchedJob {
  const dir = path.resolve(jobDir);
  const manifest = readJobManifest(dir);
  if (manifest.engine !== 'llamafactory') {
    throw new LowrankError('BAD_ARGUMENT', `${dir} is an ${manifest.engine} job: --launch follows LLaMA-Factory's trainer_log.jsonl; start axolotl with the README's commands and import its adapter with lowrank import`);
  }
  const cli = findOnPath(LLAMAFACTORY_CLI);
  if (!cli) throw new LowrankError('BAD_ARGUMENT', `${LLAMAFACTORY_CLI} is not on PATH: install LLaMA-Factory (pip install llamafactory) or run the job on a GPU machine with the commands in ${path.join(dir, 'README.md')}`);
  const outputDir = path.join(dir, manifest.outputDir);
  const emit = (e: LaunchEvent) => options.onEvent?.(e);

  let runId: string;
  const args = ['train', manifest.configFile];
  // A resumed engine appends to its log from its checkpoint's step on: keep the steps the store has.
  let storedUpTo = -1;
  if (options.resumeRunId) {
    runId = options.resumeRunId;
    const run = store.getRun(runId);
    if (run.origin !== 'launched' || !['paused', 'interrupted'].includes(run.status)) {
      throw new LowrankError('BAD_RUN_STATE', `run ${runId} is a ${run.origin} run and ${run.status}; only a paused or interrupted launched run continues this way`);
    }
    storedUpTo = Math.max(-1, ...store.metrics(runId, { name: 'loss' }).map((m) => m.step));
    const newest = engineCheckpoints(outputDir).at(-1);
    // LLaMA-Factory takes key=value overrides after the YAML (examples/README.md "Advanced usage").
    if (newest) args.push(`resume_from_checkpoint=${newest.dir}`);
    else store.addLog(runId, 'warn', `no checkpoint-N folder in ${outputDir} yet: the engine starts from step 0`);
  } else {
    const config: JsonObject = { ...(manifest.config as unknown as JsonObject), elsewhere: { engine: manifest.engine, jobDir: dir } };
    runId = store.createRun({
      method: manifest.config.method, kind: 'finetune', config, name: manifest.config.name ?? `${manifest.config.method} on LLaMA-Factory`,
      baseModelPath: manifest.config.model, datasetPath: manifest.config.data, origin: 'launched',
    }).id;
    fs.rmSync(outputDir, { recursive: true, force: true });
  }
  store.startRun(runId);
  store.addLog(runId, 'info', `${cli} ${args.join(' ')} (in ${dir})`);

  const child: ChildProcess = spawn(cli, args, {
    cwd: dir,
    // A process group of its own, so cancel reaches torchrun's workers; LLAMABOARD_ENABLED arms the SIGABRT stop.
    detached: process.platform !== 'win32',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, LLAMABOARD_ENABLED: '1', LLAMABOARD_WORKDIR: outputDir },
  });
  const tail: string[] = [];
  const tailLines = options.tailLines ?? 20;
  let stored = 0;
  const onOutput = (chunk: Buffer) => {
    for (const raw of chunk.toString('utf8').split(/\r?\n|\r/)) {
      const line = raw.trimEnd();
      if (!line) continue;
      tail.push(line);
      if (tail.length > tailLines) tail.shift();
      if (stored++ < MAX_STORED_LINES) store.addLog(runId, 'info', line);
      emit({ type: 'log', runId, message: line });
    }
  };
  child.stdout?.on('data', onOutput);
  child.stderr?.on('data', onOutput);

  const follower = new TrainerLogFollower(path.join(outputDir, TRAINER_LOG));
  const entries: TrainerLogEntry[] = [];
  const seenCheckpoints = new Set<number>();
  let logError: Error | null = null;
  const drain = () => {
    let fresh: TrainerLogEntry[] = [];
    try {
      fresh = follower.poll().filter((e) => e.step > storedUpTo);
    } catch (e) {
      logError = e as Error;
    }
    if (fresh.length) {
      store.appendMetrics(runId, logMetrics(fresh));
      for (const e of fresh) {
        entries.push(e);
        if (e.loss !== null) {
          emit({
            type: 'step', runId, step: e.step, totalSteps: e.totalSteps ?? e.step, loss: e.loss, lr: e.lr ?? NaN, gradNorm: NaN, tokens: NaN,
            trainedTokens: NaN, tokensPerSecond: e.tokensPerSecond ?? NaN, elapsedSeconds: e.elapsedSeconds ?? NaN, peakTensorBytes: NaN, etaSeconds: e.remainingSeconds ?? NaN,
          });
        }
        if (e.evalLoss !== null) emit({ type: 'eval', runId, step: e.step, valLoss: e.evalLoss });
      }
    }
    for (const c of engineCheckpoints(outputDir)) {
      if (seenCheckpoints.has(c.step)) continue;
      seenCheckpoints.add(c.step);
      store.addLog(runId, 'info', `the engine saved ${c.dir}`);
      emit({ type: 'checkpoint', runId, step: c.step, path: c.dir });
    }
  };
  const poll = setInterval(() => {
    drain();
    try {
      store.heartbeat(runId);
    } catch {
      /* cancelled elsewhere: the exit handler records the end */
    }
  }, options.pollMs ?? 250);

  let stopping: 'pause' | 'cancel' | null = null;
  const signalGroup = (signal: NodeJS.Signals) => {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
    try {
      process.kill(process.platform === 'win32' ? child.pid : -child.pid, signal);
    } catch {
      child.kill(signal);
    }
  };

  // The engine has a process group of its own, so it would outlive this process: end it with it.
  const endWithUs = () => signalGroup('SIGTERM');
  process.once('exit', endWithUs);

  const result = new Promise<RunStatus>((resolve, reject) => {
    let failedToStart = false;
    child.on('error', (e) => {
      process.off('exit', endWithUs);
      failedToStart = true;
      clearInterval(poll);
      store.failRun(runId, { code: 'ENGINE_FAILED', message: `${cli} could not start: ${e.message}` });
      reject(new LowrankError('BAD_ARGUMENT', `${cli} could not start: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      process.off('exit', endWithUs);
      if (failedToStart) return;
      clearInterval(poll);
      drain();
      void finish(code, signal).then(resolve, reject);
    });
  });

  const finish = async (code: number | null, signal: NodeJS.Signals | null): Promise<RunStatus> => {
    const losses = finalLosses(entries);
    const lastStep = entries.length ? entries[entries.length - 1].step : 0;
    let status: RunStatus;
    if (stopping === 'cancel') {
      status = store.finishRun(runId, { status: 'cancelled', finalTrainLoss: losses.train, finalValLoss: losses.val }).status;
    } else if (stopping === 'pause') {
      const newest = engineCheckpoints(outputDir).at(-1);
      store.addLog(runId, 'info', `paused at step ${lastStep}; ${newest ? `resume continues from ${newest.dir}` : 'no checkpoint-N folder yet, so resume starts over'}`);
      status = store.pauseRun(runId).status;
    } else if (code === 0 && !logError) {
      const write = options.checkpointAdapter ?? ((id: string, config: FinetuneConfig, step: number) => checkpointFromAdapter(store, id, config, step));
      status = await importResult(store, runId, dir, manifest, lastStep, losses, write);
    } else {
      const why = logError ? (logError as Error).message : `${LLAMAFACTORY_CLI} exited with ${signal ? `signal ${signal}` : `code ${code}`}`;
      const message = `${why}; last output: ${tail.slice(-5).join(' | ') || '(none)'}`;
      for (const line of tail) store.addLog(runId, 'error', line);
      store.updateRun(runId, { finalTrainLoss: losses.train, finalValLoss: losses.val });
      status = store.failRun(runId, { code: 'ENGINE_FAILED', message }).status;
      emit({ type: 'run-failed', runId, code: 'ENGINE_FAILED', message });
    }
    emit({ type: 'run-status', runId, status });
    return status;
  };

  return {
    runId,
    get pid() {
      return child.pid;
    },
    result,
    pause: () => {
      stopping ??= 'pause';
      signalGroup('SIGABRT');
    },
    cancel: () => {
      stopping = 'cancel';
      signalGroup('SIGTERM');
    },
  };
}

/** The engine finished: its adapter becomes the run's checkpoint (a full fine-tune's folder an artifact). */
async function importResult(
  store: RunStore, runId: string, jobDir: string, manifest: JobManifest, step: number, losses: { train: number | null; val: number | null },
  checkpointAdapter: (runId: string, config: FinetuneConfig, step: number) => Promise<number>,
): Promise<RunStatus> {
  const resultDir = path.join(jobDir, manifest.resultDir);
  try {
    let trainable: number | null = null;
    if (fs.existsSync(path.join(resultDir, 'adapter_config.json'))) {
      const config: FinetuneConfig = adapterRunConfig(readPeftAdapter(resultDir), manifest.config.model, manifest.config.data, manifest.config);
      trainable = await checkpointAdapter(runId, config, step);
      const { elsewhere } = store.getRun(runId).config;
      store.setRunConfig(runId, config.method, { ...(config as unknown as JsonObject), elsewhere: elsewhere ?? null, trainedAs: manifest.config.method });
      store.addArtifact(runId, { kind: 'peft', path: resultDir, formatDetail: 'trained by LLaMA-Factory' });
    } else if (fs.existsSync(path.join(resultDir, 'config.json'))) {
      store.addArtifact(runId, { kind: 'merged', path: resultDir, formatDetail: 'trained by LLaMA-Factory' });
    } else {
      throw new LowrankError('FILE_NOT_FOUND', `${resultDir}: the engine exited without writing an adapter (adapter_config.json) or a model (config.json)`);
    }
    store.addLog(runId, 'info', `imported the result from ${resultDir}`);
    return store.finishRun(runId, { status: 'completed', trainableParams: trainable, finalTrainLoss: losses.train, finalValLoss: losses.val }).status;
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    store.addLog(runId, 'error', message);
    return store.failRun(runId, { code: e instanceof LowrankError ? e.code : 'INTERNAL', message }).status;
  }
}
