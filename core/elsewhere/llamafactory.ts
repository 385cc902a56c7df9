/**
 * A LLaMA-Factory job: the training YAML `llamafactory-cli train` reads, and the dataset registered
 * in `data/dataset_info.json`. Every field written here is one LLaMA-Factory's argument dataclasses
 * define (hiyouga/LLaMA-Factory@ff6d4d1, src/llamafactory/hparams/):
 *   model_args.py      model_name_or_path, adapter_name_or_path, quantization_bit / _type, double_quantization
 *   data_args.py       dataset, dataset_dir, template, cutoff_len, train_on_prompt, val_size
 *   finetuning_args.py stage, finetuning_type, lora_rank, lora_alpha, lora_dropout, lora_target, use_rslora,
 *                      use_dora, pissa_init, pissa_iter, pissa_convert, loraplus_lr_ratio, use_galore,
 *                      galore_target, galore_rank, galore_update_interval, galore_scale, galore_proj_type
 *   training_args.py   (transformers' Seq2SeqTrainingArguments) output_dir, per_device_train_batch_size, ...
 * and dataset_info.json follows data/README.md ("formatting": alpaca | sharegpt, "columns", "tags").
 * test/fixtures/engine-arguments.json lists those definitions; the tests check every field against it.
 */
import type { FinetuneConfig } from '../train/finetune.ts';
import {
  galoreRank, integerAlpha, requireJobMethod, schedulerName, targetList, type EngineJob, type JobInput, type JobRecords, type SettingMapping,
} from './job-spec.ts';
import { toYaml, type YamlValue } from './yaml.ts';

export const LLAMAFACTORY_CONFIG = 'llamafactory.yaml';
export const LLAMAFACTORY_DATASET = 'lowrank_run';
/** LLaMA-Factory's trainer log (extras/constants.py TRAINER_LOG), one JSON line per logging step. */
export const TRAINER_LOG = 'trainer_log.jsonl';

/** data/README.md: a dataset description per format; ours are always written as JSON lines. */
function datasetInfo(records: JobRecords, file: string): Record<string, YamlValue> {
  switch (records.kind) {
    case 'chat':
      // sharegpt formatting with OpenAI-style role/content messages (README "OpenAI format").
      return {
        file_name: file,
        formatting: 'sharegpt',
        columns: { messages: 'messages' },
        tags: { role_tag: 'role', content_tag: 'content', user_tag: 'user', assistant_tag: 'assistant', system_tag: 'system' },
      };
    case 'segments':
      // Alpaca columns: prompt -> the user turn, response -> the trained answer; the `empty` template
      // (data/template.py) joins them verbatim, as the prompt/completion format does here.
      return { file_name: file, formatting: 'alpaca', columns: { prompt: 'prompt', response: 'completion' } };
    case 'text':
      // Pre-training data: "only the `text` column will be used" (data/README.md).
      return { file_name: file, columns: { prompt: 'text' } };
  }
}

export function llamaFactoryJob(input: JobInput, dataFile: string): EngineJob {
  const { config } = input;
  const method = requireJobMethod(config.method, 'llamafactory');
  const p = config.params;
  const doc: Record<string, YamlValue> = {};
  const mappings: SettingMapping[] = [];
  const map = (setting: string, fields: Record<string, YamlValue>, note?: string) => {
    Object.assign(doc, fields);
    mappings.push({ setting, fields: Object.keys(fields), note });
  };
  const none = (setting: string, note: string) => mappings.push({ setting, fields: [], note });

  map('model', { model_name_or_path: input.model }, input.modelIsHubId ? undefined : 'a local folder: copy it to the GPU machine and change this path');
  if (input.adapterDir) map('adapter', { adapter_name_or_path: input.adapterDir }, 'training continues from the copied adapter');
  else none('adapter', 'the run starts from a new adapter');

  const adapterMethod = method !== 'full' && method !== 'galore';
  map('method', {
    stage: input.records.kind === 'text' ? 'pt' : 'sft',
    do_train: true,
    finetuning_type: adapterMethod ? 'lora' : 'full',
    ...(method === 'dora' ? { use_dora: true } : {}),
  });
  if (adapterMethod) {
    const targets = targetList(config);
    map('targets', { lora_target: targets === 'all-linear' ? 'all' : targets.join(',') });
    map('params.rank', { lora_rank: p.rank as number });
    map('params.alpha', { lora_alpha: integerAlpha(config, 'llamafactory') });
    map('params.dropout', { lora_dropout: p.dropout as number });
    map('params.use_rslora', { use_rslora: Boolean(p.use_rslora) });
    if (method === 'loraplus') map('params.loraplus_lr_ratio', { loraplus_lr_ratio: p.loraplus_lr_ratio as number });
    if (method === 'pissa') {
      // pissa_iter: FSVD iterations, -1 for the exact SVD (finetuning_args.py); pissa_convert saves the
      // adapter as a plain LoRA of the original weights (pissa_converted/), which is what imports here.
      map('params.svd', { pissa_init: true, pissa_iter: p.svd === 'exact' ? -1 : (p.svd_niter as number), pissa_convert: true },
        p.svd === 'auto' ? 'auto (exact on small matrices here) becomes the randomized SVD with svd_niter iterations' : undefined);
      if (p.svd !== 'exact') mappings.push({ setting: 'params.svd_niter', fields: ['pissa_iter'] });
      else none('params.svd_niter', 'the exact SVD takes no iterations');
    }
  } else if (method === 'galore') {
    const targets = targetList(config);
    map('targets', { use_galore: true, galore_target: targets === 'all-linear' ? 'all' : targets.join(',') });
    const galore = galoreRank(input, 'llamafactory');
    map('params.rank', { galore_rank: galore.rank }, galore.note);
    mappings.push({ setting: 'params.rank_ratio', fields: galore.note ? ['galore_rank'] : [], note: galore.ratioNote });
    map('params.update_proj_gap', { galore_update_interval: p.update_proj_gap as number });
    map('params.scale', { galore_scale: p.scale as number });
    map('params.proj_type', { galore_proj_type: p.proj_type as string });
    none('params.svd', 'galore_torch takes the exact SVD of each gradient (torch.linalg.svd)');
    none('params.svd_niter', 'galore_torch takes the exact SVD of each gradient');
  } else {
    none('targets', 'full fine-tuning trains every weight');
  }

  map('baseDtype', baseDtypeFields(config), 'bf16 mixed precision on the GPU; int8/nf4 quantize the frozen base with bitsandbytes as here');
  map('gradientCheckpointing', { disable_gradient_checkpointing: config.gradientCheckpointing === 'off' },
    "LLaMA-Factory checkpoints every layer unless disabled; 'auto' here checkpoints only as many as memory needs");

  // Dataset.
  map('data', { dataset: LLAMAFACTORY_DATASET, dataset_dir: 'data' }, `copied to data/${dataFile} and registered in data/dataset_info.json`);
  if (input.records.kind === 'segments') map('format', { template: 'empty' }, 'prompt and completion joined verbatim, as here');
  else none('format', input.records.kind === 'chat'
    ? 'no `template`: LLaMA-Factory then renders conversations with the tokenizer\'s own chat template, as here'
    : 'plain text, packed for pre-training (stage pt)');
  map('seqLen', { cutoff_len: config.seqLen });
  map('trainOnPrompt', { train_on_prompt: config.trainOnPrompt });
  none('onBadLine', 'applied while copying: the copied file holds only the records that read');

  // Output and schedule.
  map('checkpointEvery', { output_dir: input.outputDir, save_steps: config.checkpointEvery, logging_steps: 1, overwrite_output_dir: true, report_to: 'none' });
  map('batchSize', { per_device_train_batch_size: config.batchSize }, 'per GPU: on N GPUs the global batch is N times larger');
  map('gradientAccumulation', { gradient_accumulation_steps: config.gradientAccumulation });
  map('lr', { learning_rate: config.lr });
  if (config.steps !== null) {
    map('steps', { max_steps: config.steps });
    none('epochs', 'the run is given in steps');
  } else {
    map('epochs', { num_train_epochs: config.epochs ?? 1 });
    none('steps', 'the run is given in epochs');
  }
  map('schedule', { lr_scheduler_type: schedulerName(config) });
  map('warmupSteps', { warmup_steps: config.warmupSteps });
  map('weightDecay', { weight_decay: config.weightDecay });
  map('clipNorm', { max_grad_norm: config.clipNorm });
  map('seed', { seed: config.seed });
  if (config.name) map('name', { run_name: config.name });
  else none('name', 'the run has no name');
  if (config.validation > 0) {
    map('validation', { val_size: config.validation, per_device_eval_batch_size: config.batchSize });
    map('evalEvery', { eval_strategy: 'steps', eval_steps: config.evalEvery });
  } else {
    none('validation', 'no validation split');
    none('evalEvery', 'no validation split to evaluate');
  }
  none('earlyStoppingPatience', config.earlyStoppingPatience > 0
    ? `not set: LLaMA-Factory's early_stopping_steps needs load_best_model_at_end with save_steps a multiple of eval_steps; add them by hand for a patience of ${config.earlyStoppingPatience}`
    : 'early stopping is off in this run');
  none('metricExamples', "the task metric is Lowrank Studio's own evaluation; run it on the imported adapter here");

  const sections = [
    { title: 'model', keys: ['model_name_or_path', 'adapter_name_or_path', 'quantization_bit', 'quantization_type', 'double_quantization'] },
    { title: 'method', keys: ['stage', 'do_train', 'finetuning_type', 'lora_target', 'lora_rank', 'lora_alpha', 'lora_dropout', 'use_rslora', 'use_dora', 'pissa_init', 'pissa_iter', 'pissa_convert', 'loraplus_lr_ratio', 'use_galore', 'galore_target', 'galore_rank', 'galore_update_interval', 'galore_scale', 'galore_proj_type', 'disable_gradient_checkpointing'] },
    { title: 'dataset', keys: ['dataset', 'dataset_dir', 'template', 'cutoff_len', 'train_on_prompt'] },
    { title: 'output', keys: ['output_dir', 'logging_steps', 'save_steps', 'overwrite_output_dir', 'report_to', 'run_name'] },
    { title: 'train', keys: ['per_device_train_batch_size', 'gradient_accumulation_steps', 'learning_rate', 'num_train_epochs', 'max_steps', 'lr_scheduler_type', 'warmup_steps', 'weight_decay', 'max_grad_norm', 'seed', 'bf16'] },
    { title: 'eval', keys: ['val_size', 'per_device_eval_batch_size', 'eval_strategy', 'eval_steps'] },
  ];
  const yaml = toYaml(doc, sections, [`LLaMA-Factory training config written by Lowrank Studio (method ${config.method}).`, `Start it from this folder: llamafactory-cli train ${LLAMAFACTORY_CONFIG}`]);
  const info = { [LLAMAFACTORY_DATASET]: datasetInfo(input.records, dataFile) };
  return {
    engine: 'llamafactory',
    doc,
    yaml,
    configFile: LLAMAFACTORY_CONFIG,
    files: new Map([['data/dataset_info.json', `${JSON.stringify(info, null, 2)}\n`]]),
    mappings,
    // pissa_convert writes the plain-LoRA form under output_dir/pissa_converted (train/callbacks.py).
    resultDir: method === 'pissa' ? `${input.outputDir}/pissa_converted` : input.outputDir,
    singleGpu: `llamafactory-cli train ${LLAMAFACTORY_CONFIG}`,
  };
}

function baseDtypeFields(config: FinetuneConfig): Record<string, YamlValue> {
  if (config.baseDtype === 'nf4') return { quantization_bit: 4, quantization_type: 'nf4', double_quantization: false, bf16: true };
  if (config.baseDtype === 'int8') return { quantization_bit: 8, bf16: true };
  return { bf16: true };
}
