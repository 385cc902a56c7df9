/**
 * An axolotl job: the YAML `axolotl train` reads, with the dataset as a local `datasets:` entry.
 * Every field is one axolotl's config schema defines (axolotl-ai-cloud/axolotl@067b021,
 * src/axolotl/utils/schemas/):
 *   model.py     base_model, output_dir
 *   peft.py      adapter, lora_model_dir, lora_r, lora_alpha, lora_dropout, lora_target_modules,
 *                lora_target_linear, peft_use_dora, peft_use_rslora, peft_init_lora_weights, loraplus_lr_ratio
 *   training.py  micro_batch_size, gradient_accumulation_steps, num_epochs, learning_rate, lr_scheduler,
 *                weight_decay, max_grad_norm, optimizer, optim_args, optim_target_modules, train_on_inputs
 *   config.py    datasets, val_set_size, sequence_len, sample_packing, seed, bf16, gradient_checkpointing,
 *                chat_template, logging_steps, save_steps, eval_steps, max_steps, warmup_steps, load_in_4bit, ...
 *   datasets.py  SFTDataset: path, ds_type, type, field, field_messages, message_property_mappings
 * Dataset types: `chat_template` (docs/dataset-formats/conversation.qmd), `input_output` for
 * template-free segments (docs/dataset-formats/template_free.qmd), `completion` for raw text
 * (prompt_strategies/completion.py, field `text`).
 */
import {
  galoreRank, integerAlpha, requireJobMethod, schedulerName, targetList, type EngineJob, type JobInput, type JobRecords, type SettingMapping,
} from './job-spec.ts';
import { toYaml, type YamlValue } from './yaml.ts';

export const AXOLOTL_CONFIG = 'axolotl.yaml';

function datasetEntry(records: JobRecords, file: string): Record<string, YamlValue> {
  const local = { path: file, ds_type: 'json' };
  switch (records.kind) {
    case 'chat':
      return { ...local, type: 'chat_template', field_messages: 'messages', message_property_mappings: { role: 'role', content: 'content' } };
    case 'segments':
      return { ...local, type: 'input_output' };
    case 'text':
      return { ...local, type: 'completion', field: 'text' };
  }
}

export function axolotlJob(input: JobInput, dataFile: string): EngineJob {
  const { config } = input;
  const method = requireJobMethod(config.method, 'axolotl');
  const p = config.params;
  const doc: Record<string, YamlValue> = {};
  const mappings: SettingMapping[] = [];
  const map = (setting: string, fields: Record<string, YamlValue>, note?: string) => {
    Object.assign(doc, fields);
    mappings.push({ setting, fields: Object.keys(fields), note });
  };
  const none = (setting: string, note: string) => mappings.push({ setting, fields: [], note });
  const adapterMethod = method !== 'full' && method !== 'galore';
  const quantized = config.baseDtype === 'nf4' || config.baseDtype === 'int8';

  map('model', { base_model: input.model }, input.modelIsHubId ? undefined : 'a local folder: copy it to the GPU machine and change this path');
  if (input.adapterDir) map('adapter', { lora_model_dir: input.adapterDir }, 'training continues from the copied adapter');
  else none('adapter', 'the run starts from a new adapter');

  if (adapterMethod) {
    map('method', { adapter: config.baseDtype === 'nf4' ? 'qlora' : 'lora', ...(method === 'dora' ? { peft_use_dora: true } : {}) });
    const targets = targetList(config);
    map('targets', targets === 'all-linear' ? { lora_target_linear: true } : { lora_target_modules: targets });
    map('params.rank', { lora_r: p.rank as number });
    map('params.alpha', { lora_alpha: integerAlpha(config, 'axolotl') });
    map('params.dropout', { lora_dropout: p.dropout as number });
    map('params.use_rslora', { peft_use_rslora: Boolean(p.use_rslora) });
    if (method === 'loraplus') map('params.loraplus_lr_ratio', { loraplus_lr_ratio: p.loraplus_lr_ratio as number });
    if (method === 'pissa') {
      // peft's LoraConfig.init_lora_weights: "pissa" (exact SVD) or "pissa_niter_N" (fast SVD, N iterations).
      map('params.svd', { peft_init_lora_weights: p.svd === 'exact' ? 'pissa' : `pissa_niter_${p.svd_niter as number}` },
        'axolotl saves the PiSSA adapter as trained (against the residual base); convert it with peft before importing');
      if (p.svd !== 'exact') mappings.push({ setting: 'params.svd_niter', fields: ['peft_init_lora_weights'] });
      else none('params.svd_niter', 'the exact SVD takes no iterations');
    }
  } else if (method === 'galore') {
    // transformers' GaLore optimizers read rank, update_proj_gap, scale and proj_type from optim_args.
    const targets = targetList(config);
    map('method', { optimizer: 'galore_adamw' });
    map('targets', { optim_target_modules: targets === 'all-linear' ? 'all_linear' : targets });
    const galore = galoreRank(input, 'axolotl');
    mappings.push({ setting: 'params.rank_ratio', fields: galore.note ? ['optim_args'] : [], note: galore.ratioNote });
    map('params.rank', { optim_args: { rank: galore.rank, update_proj_gap: p.update_proj_gap as number, scale: p.scale as number, proj_type: p.proj_type as string } }, galore.note);
    mappings.push({ setting: 'params.update_proj_gap', fields: ['optim_args'] }, { setting: 'params.scale', fields: ['optim_args'] }, { setting: 'params.proj_type', fields: ['optim_args'] });
    none('params.svd', "transformers' GaLore projector takes the exact SVD of each gradient");
    none('params.svd_niter', "transformers' GaLore projector takes the exact SVD of each gradient");
  } else {
    none('method', 'no adapter: axolotl trains every weight');
    none('targets', 'full fine-tuning trains every weight');
  }

  map('baseDtype', quantized
    ? { ...(config.baseDtype === 'nf4' ? { load_in_4bit: true, bnb_config_kwargs: { bnb_4bit_quant_type: 'nf4', bnb_4bit_use_double_quant: false } } : { load_in_8bit: true }), bf16: 'auto' }
    : { bf16: 'auto' }, 'bf16 on GPUs that have it; int8/nf4 quantize the frozen base with bitsandbytes as here');
  map('gradientCheckpointing', { gradient_checkpointing: config.gradientCheckpointing !== 'off' },
    "'auto' here checkpoints only as many layers as memory needs; axolotl checkpoints all or none");

  map('data', { datasets: [datasetEntry(input.records, `data/${dataFile}`)], dataset_prepared_path: 'prepared' }, `copied to data/${dataFile}`);
  if (input.records.kind === 'chat') map('format', { chat_template: 'tokenizer_default' }, "conversations rendered with the tokenizer's chat template, as here");
  else none('format', input.records.kind === 'segments' ? 'template-free segments (input_output): prompt untrained, completion trained' : 'raw text (completion)');
  map('seqLen', { sequence_len: config.seqLen, sample_packing: input.records.kind === 'text' }, input.records.kind === 'text' ? 'text is packed, as here' : undefined);
  map('trainOnPrompt', { train_on_inputs: config.trainOnPrompt });
  none('onBadLine', 'applied while copying: the copied file holds only the records that read');

  map('checkpointEvery', { output_dir: input.outputDir, save_steps: config.checkpointEvery, logging_steps: 1, save_safetensors: true });
  map('batchSize', { micro_batch_size: config.batchSize }, 'per GPU: on N GPUs the global batch is N times larger');
  map('gradientAccumulation', { gradient_accumulation_steps: config.gradientAccumulation });
  map('lr', { learning_rate: config.lr });
  if (config.steps !== null) {
    map('steps', { max_steps: config.steps, num_epochs: 1 }, 'max_steps overrides num_epochs');
    none('epochs', 'the run is given in steps');
  } else {
    map('epochs', { num_epochs: config.epochs ?? 1 });
    none('steps', 'the run is given in epochs');
  }
  map('schedule', { lr_scheduler: schedulerName(config) });
  map('warmupSteps', { warmup_steps: config.warmupSteps });
  map('weightDecay', { weight_decay: config.weightDecay });
  map('clipNorm', { max_grad_norm: config.clipNorm });
  map('seed', { seed: config.seed });
  if (config.name) map('name', { wandb_name: config.name }, 'axolotl names a run only for Weights & Biases');
  else none('name', 'the run has no name');
  if (config.validation > 0) {
    map('validation', { val_set_size: config.validation });
    map('evalEvery', { eval_steps: config.evalEvery });
  } else {
    map('validation', { val_set_size: 0 });
    none('evalEvery', 'no validation split to evaluate');
  }
  if (config.earlyStoppingPatience > 0) map('earlyStoppingPatience', { early_stopping_patience: config.earlyStoppingPatience });
  else none('earlyStoppingPatience', 'early stopping is off in this run');
  none('metricExamples', "the task metric is Lowrank Studio's own evaluation; run it on the imported adapter here");

  const sections = [
    { title: 'model', keys: ['base_model', 'load_in_4bit', 'load_in_8bit', 'bnb_config_kwargs'] },
    { title: 'method', keys: ['adapter', 'lora_model_dir', 'lora_r', 'lora_alpha', 'lora_dropout', 'lora_target_modules', 'lora_target_linear', 'peft_use_rslora', 'peft_use_dora', 'peft_init_lora_weights', 'loraplus_lr_ratio', 'optimizer', 'optim_target_modules', 'optim_args', 'gradient_checkpointing'] },
    { title: 'dataset', keys: ['datasets', 'dataset_prepared_path', 'chat_template', 'sequence_len', 'sample_packing', 'train_on_inputs', 'val_set_size'] },
    { title: 'output', keys: ['output_dir', 'logging_steps', 'save_steps', 'save_safetensors', 'wandb_name'] },
    { title: 'train', keys: ['micro_batch_size', 'gradient_accumulation_steps', 'learning_rate', 'num_epochs', 'max_steps', 'lr_scheduler', 'warmup_steps', 'weight_decay', 'max_grad_norm', 'seed', 'bf16', 'eval_steps', 'early_stopping_patience'] },
  ];
  const yaml = toYaml(doc, sections, [`axolotl training config written by Lowrank Studio (method ${config.method}).`, `Start it from this folder: axolotl train ${AXOLOTL_CONFIG}`]);
  return {
    engine: 'axolotl',
    doc,
    yaml,
    configFile: AXOLOTL_CONFIG,
    files: new Map(),
    mappings,
    resultDir: input.outputDir,
    singleGpu: `axolotl train ${AXOLOTL_CONFIG}`,
  };
}
