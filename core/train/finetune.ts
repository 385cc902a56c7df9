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
import { methodDisplayName } from '../methods/descriptions.ts';
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
import { exactMatch, hasCompletionTask, samplePrompt, splitPrompt, stopTokenIds, validationLoss } from './evaluate.ts';
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
  /** `metric`: exact match on the first EVAL_METRIC_EXAMPLES held-out prompts, where the data has answers. */
  | { type: 'eval'; runId: string; step: number; valLoss: number; metric?: { name: string; value: number; examples: number } }
  | { type: 'sample'; runId: string; step: number; prompt: string; output: string; expected: string | null }
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

/** A run's dataset, split as the run splits it. */
export async function loadRunDataset(config: FinetuneConfig, tokenizer: Tokenizer): Promise<LoadedDataset> {
  const dataset = await loadDataset(config.data, tokenizer, {
    format: config.format,
    seqLen: config.seqLen,
    onBadLine: config.onBadLine,
    validation: config.validation,
    seed: config.seed,
    trainOnPrompt: config.trainOnPrompt,
  });
  if (dataset.train.length === 0) throw new LowrankError('BAD_DATA', `${config.data}: no training examples left after the validation split`);
  return dataset;
}

/** Batches are padded to their longest example: the memory and the time follow that, not the cap. */
export function paddedSeqLen(config: Pick<FinetuneConfig, 'seqLen'>, dataset: LoadedDataset): number {
  return Math.min(config.seqLen, Math.max(...dataset.train.map((e) => e.ids.length)));
}

export async function prepareRun(config: FinetuneConfig, onPhase: (message: string) => void = () => {}): Promise<PreparedRun> {
  await initBackend();
  onPhase('reading the dataset');
  const tokenizer = await loadTokenizer(config.model);
  const dataset = await loadRunDataset(config, tokenizer);
  let initial: Map<string, Float32Array> | undefined;
  if (config.adapter) {
    const { readPeftAdapter } = await import('../export/peft.ts');
    initial = new Map([...readPeftAdapter(config.adapter).tensors].map(([k, v]) => [k, v.data]));
  }
  const batchesPerEpoch = Math.ceil(dataset.train.length / config.batchSize / config.gradientAccumulation);
  const totalSteps = config.steps ?? Math.max(1, Math.round((config.epochs ?? 1) * batchesPerEpoch));
  onPhase(`loading the model and setting up ${methodDisplayName(config.method)}`);
  const setup = await setUpTraining({
    modelDir: config.model,
    methodId: config.method,
    params: config.params,
    targets: config.targets,
    batchSize: config.batchSize,
    seqLen: paddedSeqLen(config, dataset),
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

/**
 * The k-th of `count` contiguous, near-equal blocks of the training examples in file order (FedSVD's
 * simulated clients, AttachedMethod.dataShards); sizes differ by at most one.
 */
export function dataShard<T>(examples: T[], count: number, k: number): T[] {
  const from = Math.floor((k * examples.length) / count);
  const to = Math.floor(((k + 1) * examples.length) / count);
  return examples.slice(from, to);
}

/**
 * Under a method's data shards, step `step` trains on its shard's own batches: shard k has its own
 * seeded epoch order, and the method says how many steps the shard trained before (its cursor).
 */
function shardedBatchSchedule(prepared: PreparedRun, whole: (step: number, micro: number) => Batch): (step: number, micro: number) => Batch {
  const { config, dataset, tokenizer, attached, totalSteps } = prepared;
  const shards = attached.dataShards!;
  const examples = Array.from({ length: shards.count }, (_, k) => dataShard(dataset.train, shards.count, k));
  shards.setSizes(examples.map((e) => e.length), totalSteps);
  const cache = new Map<string, Batch[]>();
  return (step, micro) => {
    const at = shards.shardAt(step);
    if (!at) return whole(step, micro);
    const { shard, cursor } = at;
    const index = cursor * config.gradientAccumulation + micro;
    const perEpoch = Math.ceil(examples[shard].length / config.batchSize);
    const epoch = Math.floor(index / perEpoch);
    const key = `${shard}:${epoch}`;
    if (!cache.has(key)) {
      if (cache.size >= 2 * shards.count) cache.clear();
      cache.set(
        key,
        makeBatches(examples[shard], config.batchSize, config.seqLen, {
          padTokenId: padTokenIdOf(tokenizer),
          seed: (config.seed + 0x9e3779b9 * (shard + 1)) >>> 0,
          epoch,
          padToLongest: true,
        }),
      );
    }
    return cache.get(key)![index % perEpoch];
  };
}

/** Batches are a pure function of (seed, epoch) so a resumed run sees the same data in the same order. */
function batchSchedule(prepared: PreparedRun): (step: number, micro: number) => Batch {
  const { config, dataset, tokenizer } = prepared;
  const cache = new Map<number, Batch[]>();
  const whole = (step: number, micro: number): Batch => {
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
  return prepared.attached.dataShards ? shardedBatchSchedule(prepared, whole) : whole;
}

/** The training loss with the method's penalty term, if it has one (SoRA's sparsity term on its gates): trained on, not reported. */
function withPenalty(attached: AttachedMethod, batch: Batch, out: { loss: tf.Scalar; tokens: tf.Scalar }): ReturnType<LossFunction> {
  return attached.trainingPenalty ? { ...out, penalty: attached.trainingPenalty(batch) } : out;
}

/**
 * Times the run's first `steps` training steps on a prepared run that is thrown away afterwards (the
 * Review step's time estimate): the first carries one-off work (kernel set-up, a projector's SVD),
 * the others are what every step costs.
 */
export async function measureStepSeconds(prepared: PreparedRun, steps = 2): Promise<number[]> {
  const { config, attached, model } = prepared;
  const optimizer = optimizerFor(attached, { weightDecay: config.weightDecay, lrScale: (name) => attached.lrScale(name) });
  const seconds: number[] = [];
  let started = performance.now();
  model.training = true;
  try {
    await train(
      attached.trainable,
      optimizer,
      batchSchedule(prepared),
      (batch) => withPenalty(attached, batch, lmLoss(model, batch)),
      { totalSteps: Math.min(steps, prepared.totalSteps), gradientAccumulation: config.gradientAccumulation, clipNorm: config.clipNorm, schedule: { kind: config.schedule, lr: config.lr, totalSteps: prepared.totalSteps, warmupSteps: config.warmupSteps } },
      {
        beforeStep: (step, lr) => {
          started = performance.now();
          attached.beforeStep?.({ step, totalSteps: prepared.totalSteps, lr });
        },
        afterOptimizerStep: (step, lr) => attached.afterOptimizerStep?.({ step, totalSteps: prepared.totalSteps, lr }),
        onStep: () => seconds.push((performance.now() - started) / 1000),
      },
    );
  } finally {
    model.training = false;
    optimizer.dispose();
  }
  return seconds;
}

export interface SampleCompletion {
  prompt: string;
  output: string;
  /** The validation record's answer (null for plain text, which has none). */
  expected: string | null;
}

/** Greedy completions of the first validation prompts, beside their answers: the samples shown at each evaluation. */
export function sampleCompletions(model: CausalLM, tokenizer: Tokenizer, examples: Example[], count = 3): SampleCompletion[] {
  const stops = stopTokenIds(tokenizer);
  const text = (ids: number[]) => tokenizer.decode(ids.filter((id) => !stops.includes(id)), { skipSpecialTokens: true });
  return examples
    .filter((example) => samplePrompt(example).length > 0)
    .slice(0, count)
    .map((example) => {
      const prompt = samplePrompt(example);
      // An answer to compare with needs a few tokens past its length; plain text gets a longer continuation.
      const answer = hasCompletionTask(example) ? splitPrompt(example).reference.length : null;
      const out = generate(model, prompt, { maxNewTokens: answer === null ? 32 : answer + 8, temperature: 0, stopTokenIds: stops });
      return {
        prompt: tokenizer.decode(prompt, { skipSpecialTokens: true }),
        output: text(out),
        expected: hasCompletionTask(example) ? text(splitPrompt(example).reference).trim() : null,
      };
    });
}

/** Samples are for looking at: one that cannot be made is logged, and never fails the run. */
function recordSamples(store: RunStore, runId: string, step: number, samples: () => SampleCompletion[], emit: (e: FinetuneEvent) => void): void {
  let made: SampleCompletion[];
  try {
    made = samples();
  } catch (e) {
    emit({ type: 'log', runId, message: `step ${step}: no samples (${e instanceof Error ? e.message : String(e)})` });
    return;
  }
  for (const s of made) {
    store.addSample(runId, { step, prompt: s.prompt, output: s.output, expected: s.expected, seed: null });
    emit({ type: 'sample', runId, step, ...s });
  }
}

/**
 * Forward passes a generation takes once a model answers over those it takes running to the limit of
 * answer + `extra` tokens, over the examples with an answer; 1 without. A generation runs the model
 * once per token it generates (generate.ts: the prompt's pass gives the first), and the reference
 * answer ends with its stop token (the chat template's end of turn is trained): a model that has
 * learned the task takes r passes, the untrained base r + extra. (The bundled task: r = 4, so the
 * metric's generations take 4/6 of the base's; measured 0.63 with the step-0 evaluation's warm-up.)
 */
function answerPassesRatio(examples: Example[], extra: number): number {
  const answers = examples.filter(hasCompletionTask).map((e) => splitPrompt(e).reference.length);
  if (!answers.length) return 1;
  return answers.reduce((n, r) => n + r, 0) / answers.reduce((n, r) => n + r + extra, 0);
}

/** Held-out examples scored at each evaluation (the whole metric set is scored at the end). */
export const EVAL_METRIC_EXAMPLES = 20;

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
  /** Step times of this configuration measured moments before (Review's timed steps): the ETA's first samples. */
  priorStepSeconds?: number[];
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
    const phase = (message: string) => emit({ type: 'progress', runId, step: 0, message });
    prepared = await prepareRun(config, phase);
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
    const evalMetricSet = metricSet.slice(0, EVAL_METRIC_EXAMPLES);
    // What the base model answers before any training: the samples' and the metric's step 0. It is
    // the work of every evaluation, so its timing is the ETA's estimate of one until one has run.
    let evalSecondsEstimate: number | undefined;
    if (!resumeRunId || store.samples(runId).length === 0) {
      // The first generation and the first batched forward pay one-off set-up (kernels, buffers) that
      // later evaluations do not (measured: the step-0 evaluation took 1.8x an in-loop one); pay it
      // before the clock starts, on one prompt and one batch.
      model.training = false;
      const warm = dataset.validation.find((e) => samplePrompt(e).length > 0);
      if (warm) generate(model, samplePrompt(warm), { maxNewTokens: 2, temperature: 0 });
      if (dataset.validation.length) validationLoss(model, dataset.validation.slice(0, config.batchSize), config.batchSize);
      phase('asking the base model the sample prompts (step 0)');
      let started = performance.now();
      recordSamples(store, runId, 0, () => sampleCompletions(model, tokenizer, dataset.validation), emit);
      const sampleSeconds = (performance.now() - started) / 1000;
      let lossSeconds = 0;
      let metricSeconds = 0;
      // Where the data has answers to score: the base model's loss and accuracy, the curves' starting points.
      if (evalMetricSet.length) {
        started = performance.now();
        const valLoss = validationLoss(model, dataset.validation.slice(0, 256), config.batchSize);
        lossSeconds = (performance.now() - started) / 1000;
        started = performance.now();
        const metric = { name: 'exact_match', value: exactMatch(model, tokenizer, evalMetricSet).accuracy, examples: evalMetricSet.length };
        metricSeconds = (performance.now() - started) / 1000;
        store.appendMetrics(runId, [
          { step: 0, split: 'val', name: 'loss', value: valLoss },
          { step: 0, split: 'val', name: 'exact_match', value: metric.value },
        ]);
        emit({ type: 'eval', runId, step: 0, valLoss, metric });
      }
      // An untrained base runs every generation to its token limit; a model that has learned the task
      // answers and stops. Later evaluations run about the forward passes of the answer with its stop
      // token (measured: the step-0 evaluation took 1.3-1.8x an in-loop one).
      const sampled = dataset.validation.filter((e) => samplePrompt(e).length > 0).slice(0, 3);
      evalSecondsEstimate = lossSeconds + sampleSeconds * answerPassesRatio(sampled, 8) + metricSeconds * answerPassesRatio(evalMetricSet, 2);
    }
    phase(`step 1/${totalSteps}: the first step${attached.createOptimizer ? ' (and the optimizer\'s first projections)' : ''}`);

    const optimizer = optimizerFor(attached, {
      weightDecay: config.weightDecay,
      lrScale: (name) => attached.lrScale(name),
    });
    const ckptDir = checkpointDir(store, runId);
    let startStep = 0;
    if (resumeRunId && store.latestCheckpoint(runId)) {
      const manifest = loadTrainingCheckpoint(ckptDir, attached.trainable, optimizer);
      startStep = manifest.step;
      // The steps after the checkpoint run again: the rows the dead process logged for them go.
      store.discardAfter(runId, startStep);
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
      (batch) => withPenalty(attached, batch, lmLoss(model, batch)),
      {
        totalSteps,
        startStep,
        gradientAccumulation: config.gradientAccumulation,
        clipNorm: config.clipNorm,
        schedule: { kind: config.schedule, lr: config.lr, totalSteps, warmupSteps: config.warmupSteps },
        evalEvery: dataset.validation.length ? config.evalEvery : undefined,
        checkpointEvery: config.checkpointEvery,
        privacy: attached.privateGradients,
        evalSecondsEstimate,
        priorStepSeconds: control.priorStepSeconds,
      },
      {
        beforeStep: (step, lr) => {
          stepStarted = Date.now();
          stepNumber = step + 1;
          attached.beforeStep?.({ step, totalSteps, lr });
        },
        afterOptimizerStep: (step, lr) => {
          attached.afterOptimizerStep?.({ step, totalSteps, lr });
          for (const message of attached.takeLogLines?.() ?? []) emit({ type: 'log', runId, message: `step ${step + 1}: ${message}` });
        },
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
            // The method's own figures of the step (PELA's distillation loss).
            ...Object.entries(attached.stepMetrics?.() ?? {}).map(([name, value]) => ({ step: r.step, split: 'train' as const, name, value })),
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
          let metric: { name: string; value: number; examples: number } | undefined;
          if (evalMetricSet.length) {
            emit({ type: 'progress', runId, step, message: `step ${step}/${totalSteps}: scoring ${evalMetricSet.length} held-out answers` });
            metric = { name: 'exact_match', value: exactMatch(model, tokenizer, evalMetricSet).accuracy, examples: evalMetricSet.length };
            store.appendMetrics(runId, [{ step, split: 'val', name: 'exact_match', value: metric.value }]);
          }
          emit({ type: 'eval', runId, step, valLoss: lastVal, metric });
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
