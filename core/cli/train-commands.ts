/** `lowrank train`, `lowrank data preview` and `lowrank runs list|show|compare`. */
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { openStore } from '../store/index.ts';
import type { Run } from '../store/types.ts';
import { FINETUNE_DEFAULTS, runFinetune, type FinetuneConfig, type FinetuneEvent } from '../train/finetune.ts';
import { formatBytes } from '../train/memory.ts';
import { getMethod } from '../methods/index.ts';
import { parseFormat } from '../data/formats.ts';
import { parseOnBadLine, previewDataset, formatPreview } from '../data/dataset.ts';
import { loadTokenizer } from '../tokenize/tokenizer.ts';
import { ProgressBar, formatDuration } from '../progress.ts';
import type { MethodParams, SchemaField } from '../methods/method.ts';
import type { Flags } from '../cli.ts';
import { choiceFlag, numberFlag, printJson, requireString } from './flags.ts';
import { BASE_DTYPES } from '../models/frozen-weight.ts';

/** --rank/--alpha/--dropout and --param name=value pairs, typed by the method's schema. */
export function methodParams(methodId: string, flags: Flags): MethodParams {
  const schema: SchemaField[] = getMethod(methodId).schema;
  const params: MethodParams = {};
  const set = (name: string, raw: string, flag: string) => {
    const field = schema.find((f) => f.name === name);
    if (!field) throw new LowrankError('BAD_ARGUMENT', `${flag}: method ${methodId} has no parameter "${name}" (it has: ${schema.map((f) => f.name).join(', ')})`);
    if (field.type === 'boolean') params[name] = raw === 'true' || raw === '1';
    else if (field.type === 'number' || field.type === 'integer') {
      const v = Number(raw);
      if (!Number.isFinite(v)) throw new LowrankError('BAD_ARGUMENT', `${flag} must be a number, got "${raw}"`);
      params[name] = v;
    } else params[name] = raw;
  };
  for (const name of ['rank', 'alpha', 'dropout']) {
    if (typeof flags[name] === 'string') set(name, flags[name] as string, `--${name}`);
  }
  for (const pair of String(flags.param ?? '').split(',').filter(Boolean)) {
    const [k, v] = pair.split('=');
    if (v === undefined) throw new LowrankError('BAD_ARGUMENT', `--param expects name=value pairs, got "${pair}"`);
    set(k.trim(), v.trim(), `--param ${k}`);
  }
  return params;
}

export function finetuneConfigFromFlags(flags: Flags): FinetuneConfig {
  const method = requireString(flags, 'method', 'a method id, e.g. lora (see `lowrank methods`)');
  if (flags.steps !== undefined && flags.epochs !== undefined) throw new LowrankError('BAD_ARGUMENT', 'give --steps or --epochs, not both');
  const steps = flags.steps !== undefined ? numberFlag(flags, 'steps', 0, { integer: true, min: 1 }) : null;
  const epochs = steps === null ? numberFlag(flags, 'epochs', FINETUNE_DEFAULTS.epochs ?? 1, { min: 0.01 }) : null;
  const target = typeof flags.target === 'string' ? flags.target : undefined;
  const schedule = (flags.schedule ?? FINETUNE_DEFAULTS.schedule) as FinetuneConfig['schedule'];
  if (!['constant', 'linear', 'cosine'].includes(schedule)) throw new LowrankError('BAD_ARGUMENT', `--schedule must be constant, linear or cosine, got "${schedule}"`);
  return {
    ...FINETUNE_DEFAULTS,
    model: path.resolve(requireString(flags, 'model', 'a Hugging Face model folder')),
    data: path.resolve(requireString(flags, 'data', 'a .jsonl/.json/.csv/.txt dataset')),
    method,
    params: methodParams(method, flags),
    targets: target === undefined ? (getMethod(method).defaultTargets ?? FINETUNE_DEFAULTS.targets) : target === 'all-linear' ? 'all-linear' : target.split(',').map((t) => t.trim()),
    steps,
    epochs,
    batchSize: numberFlag(flags, 'batch-size', FINETUNE_DEFAULTS.batchSize, { integer: true, min: 1 }),
    seqLen: numberFlag(flags, 'seq-len', FINETUNE_DEFAULTS.seqLen, { integer: true, min: 2 }),
    // Without --lr, the rate the method's paper or code trains with (MethodInfo.paperLearningRate).
    lr: numberFlag(flags, 'lr', getMethod(method).paperLearningRate?.value ?? FINETUNE_DEFAULTS.lr, { min: 0 }),
    schedule,
    warmupSteps: numberFlag(flags, 'warmup', FINETUNE_DEFAULTS.warmupSteps, { integer: true, min: 0 }),
    weightDecay: numberFlag(flags, 'weight-decay', FINETUNE_DEFAULTS.weightDecay, { min: 0 }),
    clipNorm: numberFlag(flags, 'clip-norm', FINETUNE_DEFAULTS.clipNorm, { min: 0 }),
    gradientAccumulation: numberFlag(flags, 'grad-accum', FINETUNE_DEFAULTS.gradientAccumulation, { integer: true, min: 1 }),
    seed: numberFlag(flags, 'seed', FINETUNE_DEFAULTS.seed, { integer: true, min: 0 }),
    evalEvery: numberFlag(flags, 'eval-every', FINETUNE_DEFAULTS.evalEvery, { integer: true, min: 1 }),
    checkpointEvery: numberFlag(flags, 'checkpoint-every', FINETUNE_DEFAULTS.checkpointEvery, { integer: true, min: 1 }),
    earlyStoppingPatience: numberFlag(flags, 'early-stopping', FINETUNE_DEFAULTS.earlyStoppingPatience, { integer: true, min: 0 }),
    validation: numberFlag(flags, 'validation', FINETUNE_DEFAULTS.validation, { min: 0 }),
    format: parseFormat(String(flags.format ?? 'auto')),
    onBadLine: parseOnBadLine(String(flags['on-bad-line'] ?? 'fail')),
    trainOnPrompt: Boolean(flags['train-on-prompt']),
    adapter: typeof flags.adapter === 'string' ? path.resolve(flags.adapter) : null,
    metricExamples: numberFlag(flags, 'metric-examples', FINETUNE_DEFAULTS.metricExamples, { integer: true, min: 0 }),
    name: typeof flags.name === 'string' ? flags.name : undefined,
    baseDtype: choiceFlag(flags, 'base-dtype', BASE_DTYPES, FINETUNE_DEFAULTS.baseDtype),
    gradientCheckpointing: choiceFlag(flags, 'gradient-checkpointing', ['auto', 'on', 'off'] as const, FINETUNE_DEFAULTS.gradientCheckpointing),
  };
}

export async function trainCommand(flags: Flags): Promise<void> {
  const store = openStore();
  const json = Boolean(flags.json);
  const resume = typeof flags.resume === 'string' ? flags.resume : undefined;
  if (resume && store.getRun(resume).origin !== 'local') {
    const { origin } = store.getRun(resume);
    store.close();
    throw new LowrankError('BAD_RUN_STATE', origin === 'launched'
      ? `run ${resume} is trained by LLaMA-Factory; continue it with lowrank export-job --resume ${resume}`
      : `run ${resume} was imported from an adapter trained elsewhere; start a new run from it with --adapter`);
  }
  const config = resume ? (store.getRun(resume).config as unknown as FinetuneConfig) : finetuneConfigFromFlags(flags);
  let bar: ProgressBar | null = null;
  let stop = false;
  const onSignal = () => {
    stop = true;
  };
  process.on('SIGINT', onSignal);
  const emit = (e: FinetuneEvent) => {
    if (json) {
      const { type, runId, ...rest } = e;
      if (type === 'step' || type === 'eval' || type === 'checkpoint' || type === 'sample' || type === 'log' || type === 'progress' || type === 'run-started') {
        printJson({ event: type, run_id: runId, ...rest });
      }
      return;
    }
    switch (e.type) {
      case 'run-started':
        console.error(`run ${e.runId}: ${e.trainableParams.toLocaleString('en-US')} trainable parameters, estimated peak ${formatBytes(e.estimate.processBytes)}`);
        bar = new ProgressBar('train', e.totalSteps);
        break;
      case 'step':
        bar?.update(e.step, `loss ${e.loss.toFixed(4)} ${Math.round(e.tokensPerSecond)} tok/s`);
        break;
      case 'eval':
        bar?.log(`step ${e.step}: validation loss ${e.valLoss.toFixed(4)}`);
        break;
      case 'sample':
        bar?.log(`  ${JSON.stringify(e.prompt.slice(-60))} -> ${JSON.stringify(e.output)}`);
        break;
      case 'log':
        bar?.log(e.message);
        break;
      case 'progress':
        // Before the first step (loading, the base model's samples) there is no bar yet.
        if (bar && e.step > 0) bar.update(e.step - 1, e.message);
        else if (bar) bar.log(e.message);
        // Phases on a terminal only: piped stderr stays the run's lines and, for bad input, the one error line.
        else if (process.stderr.isTTY) console.error(`${e.message}…`);
        break;
      default:
        break;
    }
  };
  try {
    const r = await runFinetune(store, config, emit, { shouldStop: () => stop }, resume);
    (bar as ProgressBar | null)?.finish();
    const done = {
      event: 'done',
      run_id: r.runId,
      status: r.status,
      train_loss: r.trainLoss,
      val_loss: r.valLoss,
      tokens_per_s: r.tokensPerSecond,
      peak_bytes: r.peakRssBytes,
      peak_tensor_bytes: r.peakTensorBytes,
      estimated_peak_bytes: r.estimate.processBytes,
      task_metric: r.taskMetric,
    };
    if (json) return printJson(done);
    console.log(
      `run ${r.runId} ${r.status}: train loss ${r.trainLoss.toFixed(4)}, validation loss ${Number.isNaN(r.valLoss) ? '-' : r.valLoss.toFixed(4)}, ` +
        `${Math.round(r.tokensPerSecond)} tokens/s, peak ${formatBytes(r.peakRssBytes)} (estimated ${formatBytes(r.estimate.processBytes)})` +
        (r.taskMetric ? `, ${r.taskMetric.name} ${(100 * r.taskMetric.after).toFixed(1)} %` : ''),
    );
  } finally {
    process.off('SIGINT', onSignal);
    store.close();
  }
}

export async function dataPreviewCommand(flags: Flags): Promise<void> {
  const model = requireString(flags, 'model', 'the model folder whose tokenizer and chat template render the data');
  const data = requireString(flags, 'data', 'a .jsonl/.json/.csv/.txt dataset');
  const tokenizer = await loadTokenizer(model);
  const preview = await previewDataset(data, tokenizer, {
    seqLen: numberFlag(flags, 'seq-len', 256, { integer: true, min: 2 }),
    format: parseFormat(String(flags.format ?? 'auto')),
    count: numberFlag(flags, 'count', 3, { integer: true, min: 1 }),
  });
  if (flags.json) return printJson(preview);
  console.log(formatPreview(preview, { color: Boolean(process.stdout.isTTY) }));
}

function runRow(r: Run): string {
  const loss = r.finalValLoss ?? r.finalTrainLoss;
  return [
    r.id.padEnd(22),
    r.status.padEnd(11),
    r.method.padEnd(9),
    (loss === null ? '-' : loss.toFixed(4)).padStart(8),
    (r.taskMetricValue === null ? '-' : `${(100 * r.taskMetricValue).toFixed(1)}%`).padStart(7),
    (r.trainableParams === null ? '-' : r.trainableParams.toLocaleString('en-US')).padStart(11),
    (r.tokensPerSecond === null ? '-' : Math.round(r.tokensPerSecond).toString()).padStart(7),
    (r.wallSeconds === null ? '-' : formatDuration(r.wallSeconds)).padStart(7),
    ` ${r.name}${r.origin === 'local' ? '' : ` [${r.origin}]`}`,
  ].join(' ');
}

const RUN_HEADER = `${'id'.padEnd(22)} ${'status'.padEnd(11)} ${'method'.padEnd(9)} ${'loss'.padStart(8)} ${'metric'.padStart(7)} ${'trainable'.padStart(11)} ${'tok/s'.padStart(7)} ${'wall'.padStart(7)}  name`;

export async function runsCommand(flags: Flags, positionals: string[]): Promise<void> {
  const [sub, ...ids] = positionals;
  const store = openStore();
  try {
    if (sub === undefined || sub === 'list') {
      const runs = store.listRuns({ limit: numberFlag(flags, 'limit', 50, { integer: true, min: 1 }) });
      if (flags.json) return printJson(runs);
      console.log(RUN_HEADER);
      for (const r of runs) console.log(runRow(r));
      return;
    }
    if (sub === 'show') {
      if (ids.length !== 1) throw new LowrankError('BAD_ARGUMENT', 'usage: lowrank runs show RUN_ID');
      const run = store.getRun(ids[0]);
      const detail = { run, checkpoints: store.checkpoints(run.id), artifacts: store.artifacts(run.id), samples: store.samples(run.id).slice(-4) };
      if (flags.json) return printJson({ ...detail, metrics: store.metrics(run.id) });
      console.log(RUN_HEADER);
      console.log(runRow(run));
      console.log(`config: ${JSON.stringify(run.config)}`);
      if (run.errorMessage) console.log(`error: ${run.errorCode}: ${run.errorMessage}`);
      for (const c of detail.checkpoints) console.log(`checkpoint step ${c.step}: ${c.path}`);
      for (const a of detail.artifacts) console.log(`export ${a.kind}: ${a.path}`);
      for (const s of detail.samples) console.log(`sample @${s.step}: ${JSON.stringify(s.prompt.slice(-60))} -> ${JSON.stringify(s.output)}`);
      return;
    }
    if (sub === 'compare') {
      if (ids.length < 2) throw new LowrankError('BAD_ARGUMENT', 'usage: lowrank runs compare RUN_ID RUN_ID [RUN_ID ...]');
      const runs = ids.map((id) => store.getRun(id));
      const keys = [...new Set(runs.flatMap((r) => Object.keys(r.config)))].sort();
      const differing = keys.filter((k) => new Set(runs.map((r) => JSON.stringify(r.config[k]))).size > 1);
      if (flags.json) {
        return printJson({ runs, configDiff: Object.fromEntries(differing.map((k) => [k, runs.map((r) => r.config[k] ?? null)])) });
      }
      console.log(RUN_HEADER);
      for (const r of runs) console.log(runRow(r));
      console.log('\nconfig differences:');
      for (const k of differing) console.log(`  ${k.padEnd(22)} ${runs.map((r) => JSON.stringify(r.config[k] ?? null)).join('  |  ')}`);
      return;
    }
    throw new LowrankError('BAD_ARGUMENT', `unknown runs subcommand "${sub}"; use list, show ID or compare ID ID...`);
  } finally {
    store.close();
  }
}

export async function methodsCommand(flags: Flags): Promise<void> {
  const { listMethods } = await import('../methods/index.ts');
  const methods = listMethods();
  if (flags.json) return printJson(methods.map(({ attach: _attach, countTrainable: _count, unavailableExports: _exports, ...info }) => info));
  for (const m of methods) {
    console.log(`${m.id.padEnd(10)} ${m.family.padEnd(8)} ${m.summary}`);
    console.log(`${''.padEnd(19)} ${m.paper.title} (${m.paper.year}); ${m.schema.map((f) => `${f.name}=${String(f.default)}`).join(', ')}`);
    const rate = m.paperLearningRate;
    console.log(`${''.padEnd(19)} lr ${rate ? `${rate.value} (${rate.source})` : `not pinned by its paper or code (the run's --lr, default ${FINETUNE_DEFAULTS.lr})`}`);
  }
}
