/**
 * What a job for another engine is made of, whichever engine: the run's settings (a fine-tuning
 * config with its method parameters resolved), the base model as the engine should name it, and
 * the dataset as records in one of three shapes. The engine files (llamafactory.ts, axolotl.ts)
 * turn this into their YAML; each says, for every setting of the run, which of its fields carries
 * it or why none does, so nothing is dropped without a word.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { getMethod } from '../methods/index.ts';
import type { FinetuneConfig } from '../train/finetune.ts';
import type { ChatMessage } from '../tokenize/tokenizer.ts';
import type { YamlValue } from './yaml.ts';

export const ENGINES = ['llamafactory', 'axolotl'] as const;
export type EngineId = (typeof ENGINES)[number];
export const ENGINE_NAMES: Record<EngineId, string> = { llamafactory: 'LLaMA-Factory', axolotl: 'axolotl' };

/** The methods both engines train with their own options (each engine file maps them). */
export const JOB_METHODS = ['lora', 'rslora', 'dora', 'pissa', 'loraplus', 'galore', 'full'] as const;
export type JobMethod = (typeof JOB_METHODS)[number];

/**
 * The dataset in the shape the engines take it: conversations (rendered by the model's chat
 * template, as here), text segments with the prompt untrained and the completion trained
 * (prompt/completion records, and Alpaca where the model has no chat template: its prompt is
 * already rendered), or plain text for packing.
 */
export type JobRecords =
  | { kind: 'chat'; rows: Array<{ messages: ChatMessage[] }> }
  | { kind: 'segments'; rows: Array<{ prompt: string; completion: string }> }
  | { kind: 'text'; rows: Array<{ text: string }> };

export interface JobInput {
  /** The run's settings with the method's parameters resolved (defaults filled in). */
  config: FinetuneConfig;
  /** How the engine should load the base model: a Hub id (`org/name`) or a path. */
  model: string;
  modelIsHubId: boolean;
  records: JobRecords;
  /** Where the engine writes its output, relative to the job folder. */
  outputDir: string;
  /** The adapter the run continues from, copied into the job folder (relative path), or null. */
  adapterDir: string | null;
  /** The base's hidden size when its config.json is here (GaLore's rank_ratio needs it), else null. */
  hiddenSize: number | null;
}

/** One setting of the run and the engine field that carries it, or why none does. */
export interface SettingMapping {
  setting: string;
  /** Engine field(s) that carry it; empty when none does. */
  fields: string[];
  /** Why it is not carried, or how it is carried differently. */
  note?: string;
}

export interface EngineJob {
  engine: EngineId;
  /** The YAML document as an object (what the engine's parser sees). */
  doc: { [key: string]: YamlValue };
  yaml: string;
  configFile: string;
  /** Files beside the config: path relative to the job folder -> contents. */
  files: Map<string, string>;
  mappings: SettingMapping[];
  /** Where the engine writes the adapter (or the full model) it trains, relative to the job folder. */
  resultDir: string;
  /** The command that starts it on one GPU, from the job folder. */
  singleGpu: string;
}

/** Refuses a method the engines have no equivalent for, naming what they do offer. */
export function requireJobMethod(methodId: string, engine: EngineId): JobMethod {
  if ((JOB_METHODS as readonly string[]).includes(methodId)) return methodId as JobMethod;
  const method = getMethod(methodId);
  throw new LowrankError(
    'BAD_ARGUMENT',
    `method ${methodId} (${method.paper.title}) has no equivalent in ${ENGINE_NAMES[engine]}: its options cover ${JOB_METHODS.join(', ')}; ` +
      'train this run here (lowrank train), or pick one of those methods for a job elsewhere',
  );
}

/** `org/name` or `org/name@revision`, as the Hugging Face Hub names a model repository. */
const HUB_ID = /^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$/;

/**
 * How the engine should name the base model: the run's model string when it is a Hub id and no
 * such local folder exists; the repository id of a folder inside a Hugging Face cache
 * (`models--org--name/snapshots/<rev>`, the layout transformers writes); otherwise the folder's
 * absolute path, which the README says to copy to the GPU machine.
 */
export function engineModelName(model: string): { name: string; hubId: boolean } {
  if (HUB_ID.test(model) && !fs.existsSync(model)) return { name: model, hubId: true };
  const absolute = path.resolve(model);
  const cached = /(?:^|[\\/])models--([^\\/]+?)--([^\\/]+)[\\/]snapshots[\\/][^\\/]+[\\/]?$/.exec(absolute);
  if (cached) return { name: `${cached[1]}/${cached[2]}`, hubId: true };
  return { name: absolute, hubId: false };
}

/** `q_proj,v_proj` or every linear layer, as the run chose its targets. */
export function targetList(config: FinetuneConfig): string[] | 'all-linear' {
  return config.targets === 'all-linear' ? 'all-linear' : [...config.targets];
}

/** transformers' scheduler names (SchedulerType): "constant" ignores warm-up, "constant_with_warmup" keeps it. */
export function schedulerName(config: FinetuneConfig): string {
  if (config.schedule === 'constant') return config.warmupSteps > 0 ? 'constant_with_warmup' : 'constant';
  return config.schedule;
}

/** LoRA's α must be an integer in both engines (LLaMA-Factory `lora_alpha: int | None`, axolotl `lora_alpha: int | None`). */
/**
 * GaLore's one rank for every matrix, as both engines take it: a fixed `rank` as is; for rank 0
 * (this project's default, `rank_ratio` of each matrix's smaller side) `rank_ratio` × the hidden
 * size, the smaller side of q, o and the MLP matrices (k and v, narrower under GQA, are clamped to
 * their own side by the SVD's slice in galore_torch as here).
 */
export function galoreRank(input: JobInput, engine: EngineId): { rank: number; note?: string; ratioNote: string } {
  const p = input.config.params;
  const fixed = p.rank as number;
  if (fixed > 0) return { rank: fixed, ratioNote: 'unused: a fixed rank is set' };
  const ratio = p.rank_ratio as number;
  if (input.hiddenSize == null) {
    throw new LowrankError('BAD_ARGUMENT', `GaLore's rank_ratio ${ratio} needs the model's hidden size, and ${input.config.model} is not on this machine; set a fixed rank (--param rank=N) or download the model first`);
  }
  const rank = Math.max(1, Math.round(ratio * input.hiddenSize));
  return {
    rank,
    note: `rank_ratio ${ratio} × hidden size ${input.hiddenSize}: ${engine === 'llamafactory' ? 'LLaMA-Factory' : 'transformers'} takes one rank for every matrix`,
    ratioNote: `carried as the rank (${rank})`,
  };
}

export function integerAlpha(config: FinetuneConfig, engine: EngineId): number {
  const alpha = Number(config.params.alpha);
  if (!Number.isInteger(alpha)) {
    throw new LowrankError('BAD_ARGUMENT', `alpha = ${alpha}: ${ENGINE_NAMES[engine]}'s lora_alpha is an integer; start the run with an integer --alpha to hand it over`);
  }
  return alpha;
}
