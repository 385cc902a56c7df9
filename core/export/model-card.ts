/**
 * The model card (`README.md`) of a merged export, in the Hub's format: YAML metadata that the Hub
 * and `huggingface_hub.ModelCard` read (`base_model`, `library_name`, `tags`, `datasets` omitted:
 * the data is a local file), then what a reader needs to trust or redo the run: the base model and
 * its commit, the method and every hyper-parameter, the data file's name and sha256, the metrics,
 * and the exact `lowrank train` command.
 */
import * as path from 'node:path';
import { hubIdOfFolder } from '../hub/cache.ts';
import type { Run } from '../store/types.ts';
import type { FinetuneConfig } from '../train/finetune.ts';

/** What `base_model_name_or_path` / `base_model` should say: the Hub id for a cache snapshot, else the folder. */
export function baseModelReference(dir: string): string {
  return hubIdOfFolder(dir)?.repo ?? path.resolve(dir);
}

const shellQuote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** The `lowrank train` command that reproduces the run's configuration. */
export function reproduceCommand(config: FinetuneConfig): string {
  const hub = hubIdOfFolder(config.model);
  const args: Array<[string, string | number | null | boolean]> = [
    ['model', hub ? `${hub.repo}@${hub.commit}` : config.model],
    ['data', path.basename(config.data)],
    ['method', config.method],
    ['param', Object.entries(config.params).map(([k, v]) => `${k}=${String(v)}`).join(',') || null],
    ['target', config.targets === 'all-linear' ? 'all-linear' : config.targets.join(',')],
    config.steps !== null ? ['steps', config.steps] : ['epochs', config.epochs],
    ['batch-size', config.batchSize],
    ['seq-len', config.seqLen],
    ['lr', config.lr],
    ['schedule', config.schedule],
    ['warmup', config.warmupSteps],
    ['weight-decay', config.weightDecay],
    ['clip-norm', config.clipNorm],
    ['grad-accum', config.gradientAccumulation],
    ['seed', config.seed],
    ['validation', config.validation],
    ['eval-every', config.evalEvery],
    ['early-stopping', config.earlyStoppingPatience],
    ['checkpoint-every', config.checkpointEvery],
    ['metric-examples', config.metricExamples],
    ['format', config.format],
    ['on-bad-line', config.onBadLine],
    ['train-on-prompt', config.trainOnPrompt],
    ['base-dtype', config.baseDtype ?? null],
    ['gradient-checkpointing', config.gradientCheckpointing ?? null],
  ];
  const parts = ['lowrank', 'train'];
  for (const [flag, value] of args) {
    if (value === null || value === false) continue;
    parts.push(`--${flag}`);
    if (value !== true) parts.push(shellQuote(String(value)));
  }
  return parts.join(' ');
}

const figure = (v: number | null, digits = 4) => (v === null ? '–' : Number.isInteger(v) ? v.toLocaleString('en-US') : v.toFixed(digits));

export function modelCard(run: Run, step: number): string {
  const config = run.config as unknown as FinetuneConfig;
  const hub = hubIdOfFolder(config.model);
  const base = baseModelReference(config.model);
  const lines = ['---'];
  if (hub) lines.push(`base_model: ${hub.repo}`);
  lines.push('library_name: transformers', 'pipeline_tag: text-generation', 'tags:', '- lowrank-studio', `- ${config.method}`, '---', '');
  lines.push(`# ${run.name}`, '');
  lines.push(
    `A merged fine-tune of \`${base}\`${hub ? ` (commit \`${hub.commit}\`)` : ''}, trained with the \`${config.method}\` method in Lowrank Studio ` +
      `(run \`${run.id}\`, exported at step ${step}). The update is folded into the weights: load it with \`AutoModelForCausalLM.from_pretrained\` like its base.`,
    '',
  );
  lines.push('## Training', '', '| setting | value |', '|---|---|');
  const settings: Array<[string, unknown]> = [
    ['method', config.method],
    ...Object.entries(config.params).map(([k, v]): [string, unknown] => [`method: ${k}`, v]),
    ['target modules', config.targets === 'all-linear' ? 'all-linear' : config.targets.join(', ')],
    [config.steps !== null ? 'steps' : 'epochs', config.steps ?? config.epochs],
    ['batch size', config.batchSize],
    ['gradient accumulation', config.gradientAccumulation],
    ['sequence length', config.seqLen],
    ['learning rate', config.lr],
    ['schedule', `${config.schedule}, ${config.warmupSteps} warm-up steps`],
    ['weight decay', config.weightDecay],
    ['gradient clipping', config.clipNorm],
    ['seed', config.seed],
    ['base weights', config.baseDtype ?? 'auto'],
  ];
  for (const [k, v] of settings) lines.push(`| ${k} | ${String(v)} |`);
  lines.push('', '## Data', '');
  lines.push(`\`${path.basename(config.data)}\`${run.datasetFingerprint ? `, ${run.datasetFingerprint.replace(/^sha256:/, 'sha256 ')}` : ''}; format ${config.format}, ${config.validation > 0 ? `validation split ${config.validation}` : 'no validation split'}${config.trainOnPrompt ? ', loss on prompts too' : ''}.`, '');
  lines.push('## Results', '', '| metric | value |', '|---|---|');
  const metrics: Array<[string, number | null]> = [
    ['final training loss', run.finalTrainLoss],
    ['final validation loss', run.finalValLoss],
    ...(run.taskMetricName ? [[run.taskMetricName, run.taskMetricValue] as [string, number | null]] : []),
    ['trainable parameters', run.trainableParams],
    ['total parameters', run.totalParams],
    ['tokens per second', run.tokensPerSecond === null ? null : Math.round(run.tokensPerSecond)],
    ['wall time (s)', run.wallSeconds === null ? null : Math.round(run.wallSeconds)],
  ];
  for (const [k, v] of metrics) lines.push(`| ${k} | ${figure(v)} |`);
  lines.push('', '## Reproduce', '', 'With the data file beside you:', '', '```sh', reproduceCommand(config), '```', '');
  return lines.join('\n');
}
