/** `lowrank pretrain`: flags -> PretrainOptions, progress bar or JSON lines, Ctrl-C checkpoints and stops. */
import * as path from 'node:path';
import { initBackend } from '../backend/index.ts';
import { LowrankError } from '../errors.ts';
import { pretrain, type PretrainOptions } from '../train/pretrain.ts';
import type { StorageDtype } from '../io/model-folder.ts';
import { ProgressBar, formatDuration } from '../progress.ts';
import type { Flags } from '../cli.ts';
import { numberFlag, printJson, requireString } from './flags.ts';

/** `lowrank pretrain ...` as typed, with paths made relative to the working directory. */
function commandLine(): string {
  const quote = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
  return ['npx lowrank', ...process.argv.slice(2).filter((a) => a !== '--resume')].map((a, i) => (i === 0 ? a : quote(a))).join(' ');
}

export async function pretrainCommand(flags: Flags): Promise<void> {
  const dtype = (flags.dtype ?? 'float32') as StorageDtype;
  if (!['float32', 'float16', 'bfloat16'].includes(dtype)) {
    throw new LowrankError('BAD_ARGUMENT', `--dtype must be float32, float16 or bfloat16, got "${dtype}"`);
  }
  const steps = numberFlag(flags, 'steps', 2000, { integer: true, min: 1 });
  const opts: PretrainOptions = {
    data: requireString(flags, 'data', '`brown`, a .txt/.jsonl file or a folder of them'),
    out: path.resolve(requireString(flags, 'out', 'the folder to write the model to')),
    vocabSize: numberFlag(flags, 'vocab-size', 4096, { integer: true, min: 260 }),
    hiddenSize: numberFlag(flags, 'hidden', 256, { integer: true, min: 8 }),
    layers: numberFlag(flags, 'layers', 4, { integer: true, min: 1 }),
    heads: numberFlag(flags, 'heads', 8, { integer: true, min: 1 }),
    kvHeads: numberFlag(flags, 'kv-heads', 4, { integer: true, min: 1 }),
    intermediateSize: numberFlag(flags, 'intermediate', 688, { integer: true, min: 1 }),
    seqLen: numberFlag(flags, 'seq-len', 128, { integer: true, min: 8 }),
    batchSize: numberFlag(flags, 'batch-size', 16, { integer: true, min: 1 }),
    steps,
    lr: numberFlag(flags, 'lr', 3e-3, { min: 0 }),
    warmupSteps: numberFlag(flags, 'warmup', Math.min(100, Math.floor(steps / 10)), { integer: true, min: 0 }),
    minLrRatio: numberFlag(flags, 'min-lr-ratio', 0.1, { min: 0, max: 1 }),
    weightDecay: numberFlag(flags, 'weight-decay', 0.1, { min: 0 }),
    seed: numberFlag(flags, 'seed', 0, { integer: true, min: 0 }),
    evalEvery: numberFlag(flags, 'eval-every', 100, { integer: true, min: 1 }),
    checkpointEvery: numberFlag(flags, 'checkpoint-every', 100, { integer: true, min: 1 }),
    dtype,
    resume: Boolean(flags.resume),
    samplePrompt: typeof flags.prompt === 'string' ? flags.prompt : 'The',
    command: commandLine(),
    initFrom: typeof flags['init-from'] === 'string' ? path.resolve(flags['init-from']) : undefined,
  };
  const maxMinutes = numberFlag(flags, 'max-minutes', 0, { min: 0 });
  const backend = await initBackend();
  const json = Boolean(flags.json);
  const bar = json ? null : new ProgressBar('pretrain', opts.steps);
  const log = (message: string) => (json ? printJson({ event: 'log', message }) : bar!.log(message));
  log(`backend ${backend.backend}`);
  let stopRequested = false;
  const onSignal = () => {
    stopRequested = true;
    log('stopping after this step (a checkpoint is written; continue with --resume)');
  };
  process.on('SIGINT', onSignal);
  const started = Date.now();
  try {
    const result = await pretrain(
      opts,
      {
        log,
        step: (r) => {
          if (json) printJson({ event: 'step', ...r });
          else bar!.update(r.step, `loss ${r.loss.toFixed(3)} lr ${r.lr.toExponential(1)} ${Math.round(r.tokensPerSecond)} tok/s`);
        },
      },
      () => stopRequested || (maxMinutes > 0 && Date.now() - started > maxMinutes * 60_000),
    );
    bar?.finish();
    if (json) return printJson({ event: 'done', ...result });
    console.log(`wrote ${result.out}: ${(result.parameters / 1e6).toFixed(2)} M parameters, train loss ${result.finalTrainLoss.toFixed(3)}, validation loss ${result.finalValLoss.toFixed(3)}, ${formatDuration(result.wallSeconds)}`);
    for (const s of result.samples) console.log(`  ${JSON.stringify(s)}`);
  } finally {
    process.off('SIGINT', onSignal);
  }
}
