/**
 * THE service contract (DESIGN.md "One contract, thin transports"): every call the UI can make,
 * its request schema (zod: validated at the edge, extra fields refused), its reply type, and
 * every event the engine pushes. Electron IPC (electron/preload.ts), the WebSocket bridge
 * (`lowrank serve`) and the renderer's client are all checked against `CALLS` and `Calls`.
 *
 * File paths: the renderer never names an arbitrary file to read. Paths it sends must be ones
 * the service listed (bundled resources, uploads, allowed roots) or that the user picked in a
 * system file dialog (Electron's main process grants those to the service).
 *
 * This module imports no Node API: the renderer bundles it.
 */
import { z } from 'zod';
import type { FinetuneEvent, FinetuneResult } from './train/finetune.ts';
import type { MemoryEstimate } from './train/memory.ts';
import type { DatasetPreview } from './data/dataset.ts';
import type { MethodInfo } from './methods/method.ts';
import type { MethodDescription } from './methods/descriptions.ts';
import type { Artifact, Checkpoint, LogEntry, Metric, Run, RunStatus, Sample } from './store/types.ts';
import type { LocalEngine } from './elsewhere/local-engine.ts';
import type { EngineId } from './elsewhere/job-spec.ts';
import type { Strategy } from './elsewhere/gpu-memory.ts';
import type { Recommendation } from './bakeoff/recommend.ts';

const path = z.string().min(1).max(4096);
const runId = z.string().regex(/^[0-9A-Za-z-]{1,64}$/);
const none = z.object({}).strict();
const methodParamValue = z.union([z.number(), z.boolean(), z.string().max(200)]);

/** The training configuration the wizard sends (core/train/finetune.ts FinetuneConfig). */
const finetuneConfigObject = z
  .object({
    model: path,
    data: path,
    method: z.string().min(1).max(64),
    params: z.record(z.string().max(64), methodParamValue),
    targets: z.union([z.array(z.string().min(1).max(64)).min(1).max(64), z.literal('all-linear')]),
    steps: z.number().int().min(1).max(10_000_000).nullable(),
    epochs: z.number().min(0.01).max(10_000).nullable(),
    batchSize: z.number().int().min(1).max(4096),
    seqLen: z.number().int().min(2).max(1 << 20),
    lr: z.number().min(0).max(10),
    schedule: z.enum(['constant', 'linear', 'cosine']),
    warmupSteps: z.number().int().min(0),
    weightDecay: z.number().min(0),
    clipNorm: z.number().min(0),
    gradientAccumulation: z.number().int().min(1).max(4096),
    seed: z.number().int().min(0).max(2 ** 31),
    evalEvery: z.number().int().min(1),
    checkpointEvery: z.number().int().min(1),
    earlyStoppingPatience: z.number().int().min(0),
    validation: z.number().min(0),
    format: z.enum(['auto', 'text', 'prompt-completion', 'alpaca', 'chat', 'sharegpt']),
    onBadLine: z.enum(['fail', 'skip']),
    trainOnPrompt: z.boolean(),
    adapter: path.nullable(),
    metricExamples: z.number().int().min(0),
    name: z.string().max(200).optional(),
    baseDtype: z.enum(['auto', 'f32', 'f16', 'bf16', 'int8', 'nf4']).optional(),
    gradientCheckpointing: z.enum(['auto', 'on', 'off']).optional(),
  })
  .strict();
export const finetuneConfigSchema = finetuneConfigObject.refine((c) => (c.steps === null) !== (c.epochs === null), { message: 'give steps or epochs, not both', path: ['steps'] });
export type FinetuneConfigInput = z.infer<typeof finetuneConfigSchema>;

/**
 * The playground's limits: the request schema enforces them and the playground shows them next to
 * each field (one definition, so the page never offers what the service refuses).
 */
export const PLAYGROUND_LIMITS = {
  maxNewTokens: 512,
  temperature: 2,
  topK: 1000,
  systemChars: 4000,
  messageChars: 4000,
  turns: 64,
} as const;

export const GGUF_QUANT_CHOICES = ['f32', 'f16', 'q8_0', 'q4_0', 'q4_K_M'] as const;
export type ExportFormatId = 'peft' | 'merged' | 'gguf';

/** Request schemas, one per call. */
export const CALLS = {
  'app.info': none,
  'models.list': none,
  'models.inspect': z.object({ path }).strict(),
  /** Downloads a Hub model (`org/name[@revision]`) into the Hugging Face cache; progress comes as `model-pull` events. */
  'models.pull': z.object({ id: z.string().regex(/^[A-Za-z0-9][\w.-]*\/[\w.-]+(@[\w./-]+)?$/, 'a Hub id: org/name or org/name@revision').max(300) }).strict(),
  'datasets.list': none,
  /** Serve mode's upload: the file's text, written under the store's uploads/ folder. */
  'datasets.upload': z.object({ name: z.string().min(1).max(200), content: z.string().max(64 * 1024 * 1024) }).strict(),
  'datasets.preview': z
    .object({
      model: path,
      data: path,
      seqLen: z.number().int().min(2).max(1 << 20),
      format: finetuneConfigObject.shape.format,
      count: z.number().int().min(1).max(20),
      validation: z.number().min(0),
    })
    .strict(),
  /** Deletes an uploaded dataset (serve mode's uploads folder only). */
  'datasets.delete': z.object({ path }).strict(),
  'files.browse': z.object({ dir: path.optional() }).strict(),
  'methods.list': none,
  /** Every method's cost for the wizard's draft (the chosen method with its targets and parameters, the others with their defaults). */
  /**
   * Every method's estimate: for the wizard's whole config (the method cards, Review: the dataset's
   * real sequence length), or for a model alone before a dataset is chosen (the model step's fit).
   */
  'methods.estimates': z.union([
    z.object({ config: finetuneConfigSchema }).strict(),
    z.object({ model: path, batchSize: z.number().int().min(1), seqLen: z.number().int().min(2), targets: finetuneConfigObject.shape.targets }).strict(),
  ]),
  'runs.estimate': z.object({ config: finetuneConfigSchema }).strict(),
  'runs.start': z.object({ config: finetuneConfigSchema }).strict(),
  'runs.list': z
    .object({ status: z.enum(['queued', 'running', 'paused', 'completed', 'failed', 'cancelled', 'interrupted']).optional(), method: z.string().max(64).optional(), limit: z.number().int().min(1).max(1000).optional() })
    .strict(),
  'runs.get': z.object({ runId }).strict(),
  'runs.pause': z.object({ runId }).strict(),
  'runs.resume': z.object({ runId }).strict(),
  'runs.cancel': z.object({ runId }).strict(),
  'runs.delete': z.object({ runId }).strict(),
  /** Deletes an export's files (in the store's exports folder or a granted one) and its record. */
  'runs.deleteExport': z.object({ runId, artifactId: z.number().int().min(1) }).strict(),
  'runs.compare': z.object({ runIds: z.array(runId).min(2).max(8) }).strict(),
  'runs.exportOptions': z.object({ runId }).strict(),
  /**
   * "Compare methods on my data": trains each method on the config's model, data, seed and budget,
   * one after another (queued), each at its paper learning rate (`paper`, where it has one) or at
   * the config's (`config`). The config's own method keeps its params; the others take their defaults.
   */
  'bakeoffs.start': z
    .object({
      config: finetuneConfigSchema,
      methods: z.array(z.string().min(1).max(64)).min(2).max(8).refine((m) => new Set(m).size === m.length, { message: 'each method once' }),
      learningRate: z.enum(['paper', 'config']),
    })
    .strict(),
  'bakeoffs.get': z.object({ bakeoffId: runId }).strict(),
  'runs.export': z
    .object({
      runId,
      format: z.enum(['peft', 'merged', 'gguf']),
      quant: z.enum(GGUF_QUANT_CHOICES).optional(),
      /** Merged weights' storage; default the base model's dtype. */
      dtype: z.enum(['base', 'float32']).optional(),
      /** A folder granted by a dialog; absent: the store's exports/ folder. */
      destinationDir: path.optional(),
      name: z.string().regex(/^[\w.-]{1,100}$/).optional(),
    })
    .strict(),
  /** Whether LLaMA-Factory and a CUDA or Metal GPU are here (the wizard's "Run with LLaMA-Factory" choice). */
  'elsewhere.local': none,
  /** A run as a job folder for another engine (core/elsewhere/export-job.ts). */
  'runs.exportJob': z
    .object({ runId, engine: z.enum(['llamafactory', 'axolotl']), destinationDir: path.optional() })
    .strict(),
  /** The wizard's config trained by LLaMA-Factory on this machine, followed as a live run. */
  'runs.launchElsewhere': z.object({ config: finetuneConfigSchema, engine: z.literal('llamafactory') }).strict(),
  /**
   * One assistant turn of a chat with a run's model: the conversation so far (ending with a user
   * message) rendered through the model's chat template, streamed as `playground-token` events
   * tagged with `requestId`; `compareBase` also answers with the base model alone.
   */
  'playground.generate': z
    .object({
      runId,
      requestId: z.string().regex(/^[\w-]{1,64}$/),
      system: z.string().max(PLAYGROUND_LIMITS.systemChars),
      messages: z
        .array(z.object({ role: z.enum(['user', 'assistant']), content: z.string().max(PLAYGROUND_LIMITS.messageChars) }).strict())
        .min(1)
        .max(PLAYGROUND_LIMITS.turns)
        .refine((m) => m[m.length - 1]!.role === 'user' && m[m.length - 1]!.content.trim() !== '', { message: 'the last message must be a non-empty user message' }),
      seed: z.number().int().min(0).max(2 ** 31),
      maxNewTokens: z.number().int().min(1).max(PLAYGROUND_LIMITS.maxNewTokens),
      temperature: z.number().min(0).max(PLAYGROUND_LIMITS.temperature),
      topP: z.number().gt(0).max(1),
      /** 0: no top-k cut. */
      topK: z.number().int().min(0).max(PLAYGROUND_LIMITS.topK),
      compareBase: z.boolean(),
    })
    .strict(),
  /** Stops a playground answer being generated; what streamed so far is its reply. */
  'playground.stop': z.object({ requestId: z.string().regex(/^[\w-]{1,64}$/) }).strict(),
} as const;

export type CallName = keyof typeof CALLS;
export type Request<K extends CallName> = z.infer<(typeof CALLS)[K]>;

export interface ModelEntry {
  /** The folder (for a Hub model, its snapshot in the Hugging Face cache). */
  path: string;
  name: string;
  bundled: boolean;
  /** Where it was found: the bundled model, an allowed or picked folder, the HF cache, a run's merged export. */
  source: 'bundled' | 'folder' | 'hf-cache' | 'export';
  /** `org/name` for a model of the Hugging Face cache. */
  hubId: string | null;
  architecture: string | null;
  parameters: number | null;
  /** Size on disk. */
  bytes: number;
  /** Why the engine cannot load it (unsupported architecture, missing files), or null. */
  problem: string | null;
}

export interface ModelInfo {
  path: string;
  name: string;
  architecture: string;
  parameters: number;
  dtype: string;
  layers: number;
  hiddenSize: number;
  vocabSize: number;
  maxPositions: number;
  targetableModules: string[];
}

export interface DatasetEntry {
  path: string;
  name: string;
  bytes: number;
  source: 'bundled' | 'uploaded' | 'picked' | 'root';
}

export interface BrowseEntry {
  path: string;
  name: string;
  kind: 'dir' | 'file';
  /** A folder with config.json: selectable as a model. */
  isModel: boolean;
}

export interface MethodEstimate {
  id: string;
  trainableParams: number;
  estimate: MemoryEstimate;
  error: string | null;
}

export interface RunEstimate {
  totalSteps: number;
  trainableParams: number;
  estimate: MemoryEstimate;
  availableBytes: number;
  /** Seconds to the last step, from timed steps of this configuration, earlier runs, or the model size. */
  estimatedSeconds: number;
  /** Where estimatedSeconds comes from, in words. */
  timeBasis: string;
  trainExamples: number;
  validationExamples: number;
}

/** What the service knows of a run being trained now (beyond the store). */
export interface LiveRun {
  runId: string;
  totalSteps: number;
  step: number;
  paused: boolean;
  startedAt: number;
}

export interface RunDetail {
  run: Run;
  metrics: Metric[];
  samples: Sample[];
  checkpoints: Checkpoint[];
  artifacts: Artifact[];
  logs: LogEntry[];
  live: LiveRun | null;
  /** For a failed run: what to do about it. */
  fix: string | null;
  /** How the base model is named to a person: its Hub id (and commit) for a Hugging Face cache snapshot, else its folder's name. */
  baseModel: { name: string; hubId: string | null };
}

export interface RunComparison {
  runs: Run[];
  configDiff: Record<string, unknown[]>;
  curves: Record<string, { train: Array<[number, number]>; val: Array<[number, number]> }>;
  samples: Record<string, Sample[]>;
}

/** One method of a bake-off: queued (`waiting`), then its run. */
export interface BakeoffEntry {
  method: string;
  lr: number;
  /** Where the rate came from: the method's paper (with the source) or the wizard's setting. */
  lrSource: string;
  runId: string | null;
  status: RunStatus | 'waiting' | 'not-started';
  /** Why the run could not start or failed. */
  error: string | null;
}

/** A bake-off as the app shows it: the queue, and once every run ended, the comparison and the pick. */
export interface Bakeoff {
  id: string;
  createdAt: number;
  seed: number;
  steps: number | null;
  epochs: number | null;
  entries: BakeoffEntry[];
  done: boolean;
  /** The finished runs side by side (at least two), as runs.compare gives them. */
  comparison: RunComparison | null;
  recommendation: Recommendation | null;
}

export interface ExportReply {
  runId: string;
  format: 'peft' | 'merged' | 'gguf';
  path: string;
  bytes: number;
  step: number;
  /** The files written in `path`, for download links in browser mode. */
  files: Array<{ name: string; bytes: number }>;
}

/** Whether a run can be exported in a format, and if not, why (shown in the Export dialog). */
export interface ExportOption {
  format: ExportFormatId;
  available: boolean;
  reason: string | null;
}

export interface ExportOptions {
  formats: ExportOption[];
  /** The dtype the base stores its weights in (BF16, F16, F32): a merged export's default. */
  baseDtype: string;
  quants: Array<(typeof GGUF_QUANT_CHOICES)[number]>;
  /** True when the method trains an adapter; false for full fine-tuning and low-memory optimizers. */
  adapter: boolean;
}

export interface PlaygroundReply {
  /** The run's model: base + adapter, or the fine-tuned weights. */
  adapted: string;
  /** The base model's answer, when asked for. */
  base: string | null;
  /** True when playground.stop cut the answer short. */
  stopped: boolean;
  promptTokens: number;
  seconds: number;
}

export interface ExportJobReply {
  runId: string;
  engine: EngineId;
  dir: string;
  configFile: string;
  model: string;
  modelIsHubId: boolean;
  records: number;
  skipped: number;
  commands: Array<{ title: string; command: string }>;
  memory: Array<{ strategy: Strategy; gpus: number; bytes: number }> | null;
  memoryNote: string | null;
  /** Settings of the run no engine field carries, and why. */
  notCarried: Array<{ setting: string; note: string }>;
}

export interface AppInfo {
  version: string;
  transport: 'electron' | 'websocket';
  /** True where a system file dialog exists (Electron). */
  fileDialog: boolean;
  bundledModel: string | null;
  totalMemoryBytes: number;
  freeMemoryBytes: number;
  cpus: number;
  home: string;
  /** The engine's defaults for a new run (FINETUNE_DEFAULTS): the wizard starts from these. */
  finetuneDefaults: Omit<FinetuneConfigInput, 'model' | 'data' | 'method'>;
}

/** A method as the wizard shows it: the registry's facts and its presentation (core/methods/descriptions.ts). */
export type MethodListing = MethodInfo & MethodDescription & {
  /** Group heading on the method step. */
  group: string;
  /** Human label per hyper-parameter name. */
  labels: Record<string, string>;
};

/** Reply types, one per call. */
export interface Replies {
  'app.info': AppInfo;
  'models.list': ModelEntry[];
  'models.inspect': ModelInfo;
  'models.pull': ModelEntry;
  'datasets.list': DatasetEntry[];
  'datasets.upload': DatasetEntry;
  'datasets.delete': { deleted: true };
  'datasets.preview': DatasetPreview & { trainExamples: number; validationExamples: number };
  'files.browse': { dir: string | null; parent: string | null; entries: BrowseEntry[] };
  'methods.list': MethodListing[];
  'methods.estimates': MethodEstimate[];
  'runs.estimate': RunEstimate;
  'runs.start': { runId: string };
  'runs.list': Run[];
  'runs.get': RunDetail;
  'runs.pause': { status: RunStatus };
  'runs.resume': { status: RunStatus };
  'runs.cancel': { status: RunStatus };
  'runs.delete': { deleted: true };
  'runs.deleteExport': { deleted: true };
  'runs.compare': RunComparison;
  'runs.exportOptions': ExportOptions;
  'bakeoffs.start': { bakeoffId: string };
  'bakeoffs.get': Bakeoff;
  'runs.export': ExportReply;
  'elsewhere.local': LocalEngine;
  'runs.exportJob': ExportJobReply;
  'runs.launchElsewhere': { runId: string };
  'playground.generate': PlaygroundReply;
  'playground.stop': { stopped: boolean };
}

export type Calls = { [K in CallName]: (request: Request<K>) => Promise<Replies[K]> };

/** Events the engine pushes: the fine-tuning events plus lifecycle and export progress. */
export type StudioEvent =
  | FinetuneEvent
  | { type: 'run-status'; runId: string; status: RunStatus }
  | { type: 'export-progress'; runId: string; message: string }
  /** The text a playground answer has so far (whole, not a delta: a token may end mid-character). */
  | { type: 'playground-token'; requestId: string; source: 'adapted' | 'base'; text: string }
  | ModelPullEvent;

/** A Hub download's progress (≤ 10/s), and its end: `done` with the error, if any. */
export interface ModelPullEvent {
  type: 'model-pull';
  id: string;
  file: string | null;
  bytes: number;
  totalBytes: number;
  bytesPerSecond: number;
  /** null while no rate is known. */
  etaSeconds: number | null;
  done: boolean;
  error: string | null;
}
export type { FinetuneEvent, FinetuneResult };

/** How errors cross a transport. */
export interface WireError {
  code: string;
  message: string;
}

/** WebSocket / IPC frames. */
export type ClientFrame = { id: number; call: string; request: unknown };
export type ServerFrame =
  | { id: number; ok: true; reply: unknown }
  | { id: number; ok: false; error: WireError }
  | { event: StudioEvent };

/** Turns a zod failure into one line naming the fields at fault. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((i) => `${i.path.length ? i.path.join('.') : 'request'}: ${i.message}`)
    .join('; ');
}
