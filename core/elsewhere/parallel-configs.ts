/**
 * Multi-GPU config files for a job folder. DeepSpeed's JSON config (deepspeed.ai/docs/config-json):
 * "auto" values are filled in by transformers' DeepSpeed integration from the training arguments,
 * so the batch, accumulation, clipping and precision stay those of the job's YAML. FSDP through
 * accelerate's config file (`accelerate launch --config_file`, its FullyShardedDataParallelPlugin
 * keys), and axolotl's own `fsdp_version` / `fsdp_config` fields (docs/multi-gpu.qmd, FSDP2).
 */
import type { ModelConfig } from '../models/config.ts';
import type { YamlValue } from './yaml.ts';

const FROM_TRAINER = {
  train_batch_size: 'auto',
  train_micro_batch_size_per_gpu: 'auto',
  gradient_accumulation_steps: 'auto',
  gradient_clipping: 'auto',
  bf16: { enabled: 'auto' },
  fp16: { enabled: 'auto' },
  // GaLore, LoRA+ and the other optimizers the engines build are not on DeepSpeed's tested list.
  zero_allow_untested_optimizer: true,
};

/** ZeRO-2: optimizer state and gradients sharded across the GPUs, weights replicated. */
export const DEEPSPEED_ZERO2 = {
  ...FROM_TRAINER,
  zero_optimization: { stage: 2, overlap_comm: true, contiguous_gradients: true, reduce_scatter: true },
};

/** ZeRO-3: weights sharded too; gathered in 16 bits when the model is saved, so the output is one ordinary checkpoint. */
export const DEEPSPEED_ZERO3 = {
  ...FROM_TRAINER,
  zero_optimization: { stage: 3, overlap_comm: true, contiguous_gradients: true, stage3_gather_16bit_weights_on_model_save: true },
};

/** The decoder layer class FSDP wraps one at a time (transformers' modeling files). */
export function decoderLayerClass(model: ModelConfig | null): string {
  switch (model?.architecture) {
    case 'MistralForCausalLM':
      return 'MistralDecoderLayer';
    case 'Qwen2ForCausalLM':
      return 'Qwen2DecoderLayer';
    case 'GPT2LMHeadModel':
      return 'GPT2Block';
    default:
      return 'LlamaDecoderLayer';
  }
}

/** accelerate's FSDP config for LLaMA-Factory (FULL_SHARD across one machine's GPUs). */
export function llamaFactoryFsdpConfig(): { [key: string]: YamlValue } {
  return {
    compute_environment: 'LOCAL_MACHINE',
    distributed_type: 'FSDP',
    mixed_precision: 'bf16',
    num_machines: 1,
    num_processes: 4,
    machine_rank: 0,
    fsdp_config: {
      fsdp_sharding_strategy: 'FULL_SHARD',
      fsdp_auto_wrap_policy: 'TRANSFORMER_BASED_WRAP',
      fsdp_state_dict_type: 'FULL_STATE_DICT',
      fsdp_use_orig_params: true,
      fsdp_sync_module_states: true,
      fsdp_cpu_ram_efficient_loading: true,
      fsdp_offload_params: false,
    },
  };
}

/** axolotl's FSDP2 fields, added to the job's config. */
export function axolotlFsdpFields(model: ModelConfig | null): { [key: string]: YamlValue } {
  return {
    fsdp_version: 2,
    fsdp_config: {
      offload_params: false,
      cpu_ram_efficient_loading: true,
      auto_wrap_policy: 'TRANSFORMER_BASED_WRAP',
      transformer_layer_cls_to_wrap: decoderLayerClass(model),
      state_dict_type: 'FULL_STATE_DICT',
      reshard_after_forward: true,
    },
  };
}
