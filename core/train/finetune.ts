/**
 * A fine-tuning run from end to end: base model + dataset + method -> trainer, with every step,
 * evaluation, sample and checkpoint recorded in the run store, and `resume` continuing the same
 * curve from the last checkpoint. The CLI, the service and the demo all start runs through here.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '../tf.ts';
import { LowrankError, isLowrankError } from '../errors.ts';
import type { BaseDtype } from '../models/frozen-weight.ts';
import { setUpTraining } from './setup.ts';
import { parameterCount } from '../models/config.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import { loadTokenizer, type Tokenizer } from '../tokenize/tokenizer.ts';
import { loadDataset, type LoadedDataset, type OnBadLine } from '../data/dataset.ts';
import type { DatasetFormat } from '../data/formats.ts';
import { epochOrder, makeBatches, padTokenIdOf } from '../data/batches.ts';
import type { Example } from '../data/tokenize-dataset.ts';
import { getMethod, type AttachedMethod, type MethodParams } from '../methods/index.ts';
import { accumulateBaseGradients } from './base-gradients.ts';
import { optimizerFor, optimizerStateBytesFor } from '../optim/registry.ts';
import type { RunStore } from '../store/store.ts';
import type { JsonObject, Run } from '../store/types.ts';
import { fingerprintFile, fingerprintModel } from '../store/fingerprint.ts';
import { startBackgroundHeartbeat, type BackgroundHeartbeat } from '../store/heartbeat.ts';
import { initBackend } from '../backend/index.ts';
import { PeakMemory, type MemoryEstimate } from './memory.ts';
import { train, type Batch, type LossFunction, type StepReport } from './trainer.ts';
import type { ScheduleKind } from './schedule.ts';
import { loadTrainingCheckpoint, saveTrainingCheckpoint } from './checkpoint.ts';
import { exactMatch, hasCompletionTask, samplePrompt, stopTokenIds, validationLoss } from './evaluate.ts';
import { lmLoss } from './pretrain.ts';
import { generate } from '../models/generate.ts';

export interface FinetuneConfig {
  model: string;
  data: string;
  method: string;
  /** Method hyper-parameters (missing ones take the schema's paper defaults). */
  params: MethodParams;
  targets: string[] | 'all-linear';
  /** Exactly one of steps / epochs. */
  steps: number | null;
  epochs: number | null;
  batchSize: number;
  seqLen: number;
  lr: number;
  schedule: ScheduleKind;
  warmupSteps: number;
  weightDecay: number;
  clipNorm: number;
  gradientAccumulation: number;
  seed: number;
  evalEvery: number;
  checkpointEvery: number;
  /** Stop after this many evaluations without a better validation loss (0 = never). */
  earlyStoppingPatience: number;
  validation: number;
  format: DatasetFormat | 'auto';
  onBadLine: OnBadLine;
  trainOnPrompt: boolean;
  /** A PEFT adapter folder to continue training from. */
  adapter: string | null;
  /** Held-out examples scored by exact match at the end (0 = skip the task metric). */
  metricExamples: number;
  name?: string;
  /**
   * How the frozen base under an adapter is stored in native memory: its own precision ('auto'), another
   * float format, or quantized (int8, nf4: QLoRA). Needs the native addon; older runs' configs lack it.
   */
  baseDtype?: BaseDtype;
  /** Recompute each decoder layer in the backward pass: 'auto' when the memory estimate needs it. */
  gradientCheckpointing?: 'auto' | 'on' | 'off';
}

export const FINETUNE_DEFAULTS: Omit<FinetuneConfig, 'model' | 'data' | 'method' | 'baseDtype' | 'gradientCheckpointing'> &
  Required<Pick<FinetuneConfig, 'baseDtype' | 'gradientCheckpointing'>> = {
  params: {},
  targets: ['q_proj', 'v_proj'],
  steps: null,
  epochs: 1,
  batchSize: 8,
  seqLen: 256,
  lr: 2e-4,
  schedule: 'cosine',
  warmupSteps: 0,
  weightDecay: 0,
  clipNorm: 1,
  gradientAccumulation: 1,
  seed: 0,
  evalEvery: 50,
  checkpointEvery: 100,
  earlyStoppingPatience: 0,
  validation: 0.1,
  format: 'auto',
  onBadLine: 'fail',
  trainOnPrompt: false,
  adapter: null,
  metricExamples: 100,
  baseDtype: 'auto',
  gradientCheckpointing: 'auto',
};

export type FinetuneEvent =
  | { type: 'run-started'; runId: string; totalSteps: number; trainableParams: number; estimate: MemoryEstimate }
  | ({ type: 'step'; runId: string } & StepReport)
  | { type: 'eval'; runId: string; step: number; valLoss: number }
  | { type: 'sample'; runId: string; step: number; prompt: string; output: string }
  | { type: 'checkpoint'; runId: string; step: number; path: string }
  | { type: 'log'; runId: string; message: string }
  /** Where a slow step is (its pass and layer), at most once a second once it has run 2 s. */
  | { type: 'progress'; runId: string; step: number; message: string }
  | { type: 'run-finished'; runId: string; result: FinetuneResult }
  | { type: 'run-failed'; runId: string; code: string; message: string };

export interface FinetuneResult {
  runId: string;
  status: 'completed' | 'cancelled';
  steps: number;
  trainLoss: number;
  valLoss: number;
  tokensPerSecond: number;
  peakRssBytes: number;
  peakTensorBytes: number;
  estimate: MemoryEstimate;
  taskMetric: { name: string; before: number | null; after: number } | null;
}

/** Everything a run needs, built from its config; also what export and the playground rebuild. */
export interface PreparedRun {
  config: FinetuneConfig;
  model: CausalLM;
  tokenizer: Tokenizer;
  dataset: LoadedDataset;
  attached: AttachedMethod;
  totalSteps: number;
  estimate: MemoryEstimate;
}

export async function prepareRun(config: FinetuneConfig): Promise<PreparedRun> {
  await initBackend();
  const tokenizer = await loadTokenizer(config.model);
  const dataset = await loadDataset(config.data, tokenizer, {
    format: config.format,
    seqLen: config.seqLen,
    onBadLine: config.onBadLine,
    validation: config.validation,
    seed: config.seed,
    trainOnPrompt: config.trainOnPrompt,
  });
  if (dataset.train.length === 0) throw new LowrankError('BAD_DATA', `${config.data}: no training examples left after the validation split`);
  let initial: Map<string, Float32Array> | undefined;
  if (config.adapter) {
    const { readPeftAdapter } = await import('../export/peft.ts');
    initial = new Map([...readPeftAdapter(config.adapter).tensors].map(([k, v]) => [k, v.data]));
  }
  const batchesPerEpoch = Math.ceil(dataset.train.length / config.batchSize / config.gradientAccumulation);
  const totalSteps = config.steps ?? Math.max(1, Math.round((config.epochs ?? 1) * batchesPerEpoch));
  const setup = await setUpTraining({
    modelDir: config.model,
    methodId: config.method,
    params: config.params,
    targets: config.targets,
    batchSize: config.batchSize,
    // Batches are padded to their longest example: the memory follows that, not the cap.
    seqLen: Math.min(config.seqLen, Math.max(...dataset.train.map((e) => e.ids.length))),
    seed: config.seed,
    baseDtype: config.baseDtype ?? 'auto',
    gradientCheckpointing: config.gradientCheckpointing ?? 'auto',
    initial,
    // For methods initialised from an estimated first full-fine-tuning step (LoRA-SB): gradients of
    // the base weights over the first training examples, in the order the run will visit them.
    baseGradients: (model) => ({
      schedule: {
        lr: config.lr,
        // Without warm-up the official formula divides by zero: one step's share stands in.
        warmupRatio: Math.max(config.warmupSteps, 1) / totalSteps,
        trainExamples: dataset.train.length,
        epochs: (totalSteps * config.batchSize * config.gradientAccumulation) / dataset.train.length,
      },
      gradients(weightNames, samples, batchSize) {
        const first = epochOrder(dataset.train.length, config.seed, 0).slice(0, samples).map((i) => dataset.train[i]);
        const batches = makeBatches(first, batchSize, config.seqLen, { padTokenId: padTokenIdOf(tokenizer), padToLongest: true });
        return accumulateBaseGradients(model, weightNames, batches);
      },
    }),
  });
  const { model, attached, params, estimate } = setup;
  return { config: { ...config, params }, model, tokenizer, dataset, attached, totalSteps, estimate };
}

/** Batches are a pure function of (seed, epoch) so a resumed run sees the same data in the same order. */
function batchSchedule(prepared: PreparedRun): (step: number, micro: number) => Batch {
  const { config, dataset, tokenizer } = prepared;
  const cache = new Map<number, Batch[]>();
  return (step, micro) => {
    const index = step * config.gradientAccumulation + micro;
    const perEpoch = Math.ceil(dataset.train.length / config.batchSize);
    const epoch = Math.floor(index / perEpoch);
    if (!cache.has(epoch)) {
      cache.clear();
      cache.set(
        epoch,
        makeBatches(dataset.train, config.batchSize, config.seqLen, {
          padTokenId: padTokenIdOf(tokenizer),
          seed: config.seed,
          epoch,
          padToLongest: true,
        }),
      );
    }
    return cache.get(epoch)![index % perEpoch];
  };
}

/** The training loss with the method's penalty term, if it has one (SoRA's sparsity term on its gates): trained on, not reported. */
function withPenalty(attached: AttachedMethod, out: { loss: tf.Scalar; tokens: tf.Scalar }): ReturnType<LossFunction> {
  return attached.trainingPenalty ? { ...out, penalty: attached.trainingPenalty() } : out;
}

/** Greedy completions of the first validation prompts: the samples shown at each evaluation. */
export function sampleCompletions(model: CausalLM, tokenizer: Tokenizer, examples: Example[], count = 2): Array<{ prompt: string; output: string }> {
  const stops = stopTokenIds(tokenizer);
  return examples
    .map(samplePrompt)
    .filter((prompt) => prompt.length > 0)
    .slice(0, count)
    .map((prompt) => {
      const out = generate(model, prompt, { maxNewTokens: 32, temperature: 0, stopTokenIds: stops });
      return {
        prompt: tokenizer.decode(prompt, { skipSpecialTokens: true }),
        output: tokenizer.decode(out.filter((id) => !stops.includes(id)), { skipSpecialTokens: true }),
      };
    });
}

/** Samples are for looking at: one that cannot be made is logged, and never fails the run. */
function recordSamples(store: RunStore, runId: string, step: number, samples: () => Array<{ prompt: string; output: string }>, emit: (e: FinetuneEvent) => void): void {
  let made: Array<{ prompt: string; output: string }>;
  try {
    made = samples();
  } catch (e) {
    emit({ type: 'log', runId, message: `step ${step}: no samples (${e instanceof Error ? e.message : String(e)})` });
    return;
  }
  for (const s of made) {
    store.addSample(runId, { step, prompt: s.prompt, output: s.output, seed: null });
    emit({ type: 'sample', runId, step, ...s });
  }
}

export interface RunControl {
  /** Polled between steps: true cancels (a checkpoint is written first). */
  shouldStop?(): boolean;
  /** Score the task metric before training too (the demo's "before"). */
  metricBefore?: boolean;
  /** Called with the prepared run before the first step and after the last (the demo's samples). */
  beforeTraining?(prepared: PreparedRun): void;
  afterTraining?(prepared: PreparedRun): void;
  /** How often the background heartbeat beats (tests shorten it). */
  heartbeatIntervalMs?: number;
  /** After how long a step or an evaluation starts reporting where it is (default 2 s; at most once a second after that). */
  progressAfterMs?: number;
}

function checkpointDir(store: RunStore, runId: string): string {
  return path.join(store.runDir(runId), 'checkpoint');
}

/** Starts a new run (or, with `resumeRunId`, continues an interrupted one) and trains it to the end. */
export async function runFinetune(
  store: RunStore,
  config: FinetuneConfig,
  emit: (e: FinetuneEvent) => void,
  control: RunControl = {},
  resumeRunId?: string,
): Promise<FinetuneResult> {
  let run: Run;
  let prepared: PreparedRun | undefined;
  if (resumeRunId) {
    run = store.getRun(resumeRunId);
    if (run.status === 'completed') throw new LowrankError('BAD_ARGUMENT', `run ${run.id} already completed; start a new run instead of --resume`);
    config = run.config as unknown as FinetuneConfig;
  } else {
    run = store.createRun({
      method: config.method,
      kind: 'finetune',
      name: config.name,
      config: config as unknown as JsonObject,
      baseModelPath: path.resolve(config.model),
      datasetPath: path.resolve(config.data),
    });
  }
  const runId = run.id;
  let lastTrain = NaN;
  let background: BackgroundHeartbeat | null = null;
  let owned = false;
  try {
    // Running, owned by this process, before the (slow) load: a crash while loading leaves a run that
    // the next open marks interrupted and `--resume` continues, not one stuck in 'queued'.
    store.startRun(runId);
    owned = true;
    // Liveness from a worker thread: a step that takes minutes must not get the run taken for dead.
    background = startBackgroundHeartbeat(store.layout.databasePath, runId, control.heartbeatIntervalMs);
    prepared = await prepareRun(config);
    const { model, tokenizer, dataset, attached, totalSteps, estimate } = prepared;
    const backend = await initBackend();
    // A new run, or one whose first process died before it got here.
    if (run.trainableParams === null || run.baseModelFingerprint === null) {
      store.updateRun(runId, {
        trainableParams: attached.trainableParameterCount(),
        totalParams: parameterCount(model.config),
        stateBytes: 4 * attached.trainableParameterCount() + optimizerStateBytesFor(attached),
        estimatedPeakBytes: estimate.processBytes,
        backend: backend.backend,
        hardware: { cpus: os.cpus().length, platform: process.platform, arch: process.arch, node: process.versions.node, adapter: backend.adapter ?? null },
      });
      const [modelPrint, dataPrint] = await Promise.all([fingerprintModel(config.model), fingerprintFile(config.data)]);
      store.db.prepare('UPDATE runs SET base_model_fingerprint = ?, dataset_fingerprint = ? WHERE id = ?').run(modelPrint.sha256, dataPrint.sha256, runId);
    }
    emit({ type: 'run-started', runId, totalSteps, trainableParams: attached.trainableParameterCount(), estimate });
    emit({ type: 'log', runId, message: `backend: ${backend.backend}${backend.adapter ? ` (${backend.adapter})` : ''}` });
    // Exact match needs a prompt to complete: plain text (trained from its first token) has no task metric.
    const metricSet = dataset.validation.filter(hasCompletionTask).slice(0, config.metricExamples);
    let metricBefore: number | null = null;
    if (control.metricBefore && metricSet.length) metricBefore = exactMatch(model, tokenizer, metricSet).accuracy;
    control.beforeTraining?.(prepared);

    const optimizer = optimizerFor(attached, {
      weightDecay: config.weightDecay,
      lrScale: (name) => attached.lrScale(name),
    });
    const ckptDir = checkpointDir(store, runId);
    let startStep = 0;
    if (resumeRunId && store.latestCheckpoint(runId)) {
      const manifest = loadTrainingCheckpoint(ckptDir, attached.trainable, optimizer);
      startStep = manifest.step;
      // A process killed after its last checkpoint leaves no step to run: the run ends on the loss that step logged.
      lastTrain = store.metrics(runId, { split: 'train', name: 'loss' }).filter((m) => m.step === startStep).pop()?.value ?? NaN;
      const randomState = manifest.extra?.methodRandomState;
      if (typeof randomState === 'number') attached.setRandomState?.(randomState);
      emit({ type: 'log', runId, message: `resuming from step ${startStep}` });
    }
    const peak = new PeakMemory();
    let lastVal = NaN;
    let bestVal = Infinity;
    let evalsWithoutImprovement = 0;
    let earlyStop = false;
    let cancelled = false;
    let lastReport: StepReport | undefined;
    let lastHeartbeat = 0;
    model.training = true;
    // A step that takes minutes (a first step at real size) says where it is.
    const progressAfter = control.progressAfterMs ?? 2000;
    let stepStarted = Date.now();
    let stepNumber = startStep + 1;
    let lastProgress = 0;
    model.layerProgress = (layer, layers, pass) => {
      const now = Date.now();
      if (now - stepStarted < progressAfter || now - lastProgress < Math.min(1000, progressAfter)) return;
      lastProgress = now;
      emit({ type: 'progress', runId, step: stepNumber, message: `step ${stepNumber}/${totalSteps}: ${pass} pass, layer ${layer} of ${layers}` });
    };
    await train(
      attached.trainable,
      optimizer,
      batchSchedule(prepared),
      (batch) => withPenalty(attached, lmLoss(model, batch)),
      {
        totalSteps,
        startStep,
        gradientAccumulation: config.gradientAccumulation,
        clipNorm: config.clipNorm,
        schedule: { kind: config.schedule, lr: config.lr, totalSteps, warmupSteps: config.warmupSteps },
        evalEvery: dataset.validation.length ? config.evalEvery : undefined,
        checkpointEvery: config.checkpointEvery,
      },
      {
        beforeStep: (step, lr) => {
          stepStarted = Date.now();
          stepNumber = step + 1;
          attached.beforeStep?.({ step, totalSteps, lr });
        },
        afterOptimizerStep: (step, lr) => attached.afterOptimizerStep?.({ step, totalSteps, lr }),
        onStep: (r) => {
          lastTrain = r.loss;
          lastReport = r;
          peak.sample(tf.memory().numBytes);
          peak.tensorBytes = Math.max(peak.tensorBytes, r.peakTensorBytes);
          store.appendMetrics(runId, [
            { step: r.step, split: 'train', name: 'loss', value: r.loss },
            { step: r.step, split: 'train', name: 'lr', value: r.lr },
            { step: r.step, split: 'train', name: 'grad_norm', value: r.gradNorm },
            { step: r.step, split: 'train', name: 'tokens_per_second', value: r.tokensPerSecond },
          ]);
          if (Date.now() - lastHeartbeat > 2000) {
            store.heartbeat(runId);
            lastHeartbeat = Date.now();
          }
          emit({ type: 'step', runId, ...r });
        },
        onEval: (step) => {
          model.training = false;
          const evalStarted = Date.now();
          let lastEvalProgress = 0;
          lastVal = validationLoss(model, dataset.validation.slice(0, 256), config.batchSize, (done, total) => {
            // A long evaluation says where it is, as a slow step does.
            const now = Date.now();
            if (now - evalStarted < progressAfter || now - lastEvalProgress < Math.min(1000, progressAfter)) return;
            lastEvalProgress = now;
            emit({ type: 'progress', runId, step, message: `step ${step}/${totalSteps}: evaluating ${done} of ${total} validation examples` });
          });
          store.appendMetrics(runId, [{ step, split: 'val', name: 'loss', value: lastVal }]);
          emit({ type: 'eval', runId, step, valLoss: lastVal });
          recordSamples(store, runId, step, () => sampleCompletions(model, tokenizer, dataset.validation), emit);
          model.training = true;
          if (lastVal < bestVal - 1e-4) {
            bestVal = lastVal;
            evalsWithoutImprovement = 0;
          } else if (config.earlyStoppingPatience > 0 && ++evalsWithoutImprovement >= config.earlyStoppingPatience) {
            earlyStop = true;
            emit({ type: 'log', runId, message: `early stopping at step ${step}: no better validation loss in ${evalsWithoutImprovement} evaluations` });
          }
        },
        onCheckpoint: (step) => {
          saveTrainingCheckpoint(ckptDir, step, attached.trainable, optimizer, { methodRandomState: attached.getRandomState?.() ?? null });
          store.addCheckpoint(runId, { step, path: ckptDir });
          emit({ type: 'checkpoint', runId, step, path: ckptDir });
        },
        shouldStop: () => {
          cancelled = control.shouldStop?.() ?? false;
          return cancelled || earlyStop;
        },
      },
    );
    model.training = false;
    model.layerProgress = null;
    if (Number.isNaN(lastVal) && dataset.validation.length) lastVal = validationLoss(model, dataset.validation.slice(0, 256), config.batchSize);
    let taskMetric: FinetuneResult['taskMetric'] = null;
    if (metricSet.length && !cancelled) {
      const after = exactMatch(model, tokenizer, metricSet).accuracy;
      taskMetric = { name: 'exact_match', before: metricBefore, after };
    }
    control.afterTraining?.(prepared);
    peak.sample(tf.memory().numBytes);
    const status = cancelled ? 'cancelled' : 'completed';
    const result: FinetuneResult = {
      runId,
      status,
      steps: lastReport?.step ?? startStep,
      trainLoss: lastTrain,
      valLoss: lastVal,
      tokensPerSecond: lastReport?.tokensPerSecond ?? 0,
      peakRssBytes: peak.rssBytes,
      peakTensorBytes: peak.tensorBytes,
      estimate,
      taskMetric,
    };
    store.finishRun(runId, {
      status,
      finalTrainLoss: Number.isNaN(lastTrain) ? null : lastTrain,
      finalValLoss: Number.isNaN(lastVal) ? null : lastVal,
      tokensPerSecond: result.tokensPerSecond,
      wallSeconds: lastReport?.elapsedSeconds ?? 0,
      measuredPeakRss: peak.rssBytes,
      measuredPeakTensorBytes: peak.tensorBytes,
      taskMetricName: taskMetric?.name ?? null,
      taskMetricValue: taskMetric?.after ?? null,
    });
    optimizer.dispose();
    emit({ type: 'run-finished', runId, result });
    return result;
  } catch (e) {
    const code = isLowrankError(e) ? e.code : 'INTERNAL';
    const message = e instanceof Error ? e.message : String(e);
    // A run this process could not start (another process is training it) is not this process's to fail.
    if (owned) {
      try {
        // A failure after some steps keeps their last loss beside the checkpoint they wrote.
        if (!Number.isNaN(lastTrain)) store.updateRun(runId, { finalTrainLoss: lastTrain });
        store.failRun(runId, { code, message });
      } catch {
        /* the original error matters */
      }
    }
    emit({ type: 'run-failed', runId, code, message });
    throw e;
  } finally {
    await background?.stop();
    prepared?.attached.detach();
    prepared?.model.dispose();
  }
}

/**
 * The model of a finished (or checkpointed) run with its trained method attached: for export and the
 * playground. `overrides` may change the method's export-time parameters (MethodInfo.exportParams,
 * e.g. DyLoRA's export_rank); the trained tensors do not depend on them.
 */
export async function loadTrainedRun(store: RunStore, runId: string, overrides: MethodParams = {}): Promise<PreparedRun & { run: Run; step: number }> {
  const run = store.getRun(runId);
  if (run.kind !== 'finetune') throw new LowrankError('BAD_ARGUMENT', `run ${runId} is a ${run.kind} run, not a fine-tuning run`);
  const checkpoint = store.latestCheckpoint(runId);
  if (!checkpoint) throw new LowrankError('FILE_NOT_FOUND', `run ${runId} has no checkpoint to load (it stopped before its first)`);
  const config = run.config as unknown as FinetuneConfig;
  const allowed = getMethod(config.method).exportParams ?? [];
  for (const name of Object.keys(overrides)) {
    if (!allowed.includes(name)) {
      throw new LowrankError(
        'BAD_ARGUMENT',
        `method ${config.method}: parameter "${name}" cannot change after training (the trained tensors depend on it); ${allowed.length ? `an export may set ${allowed.join(', ')}` : 'this method has no export-time parameters'}`,
      );
    }
  }
  const prepared = await prepareRun({ ...config, params: { ...config.params, ...overrides } });
  const manifest = loadTrainingCheckpoint(checkpoint.path, prepared.attached.trainable, null);
  return { ...prepared, run, step: manifest.step };
}
