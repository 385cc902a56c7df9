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
import type { Artifact, Checkpoint, LogEntry, Metric, Run, RunStatus, Sample } from './store/types.ts';
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

/** Request schemas, one per call. */
export const CALLS = {
  'app.info': none,
  'models.list': none,
  'models.inspect': z.object({ path }).strict(),
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
  'files.browse': z.object({ dir: path.optional() }).strict(),
  'methods.list': none,
  'methods.estimates': z
    .object({ model: path, batchSize: z.number().int().min(1), seqLen: z.number().int().min(2), targets: finetuneConfigObject.shape.targets })
    .strict(),
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
  'runs.compare': z.object({ runIds: z.array(runId).min(2).max(8) }).strict(),
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
      quant: z.enum(['f32', 'f16', 'q8_0']).optional(),
      /** A folder granted by a dialog; absent: the store's exports/ folder. */
      destinationDir: path.optional(),
      name: z.string().regex(/^[\w.-]{1,100}$/).optional(),
    })
    .strict(),
  'playground.generate': z
    .object({
      runId,
      prompt: z.string().min(1).max(4000),
      seed: z.number().int().min(0).max(2 ** 31),
      maxNewTokens: z.number().int().min(1).max(512),
      temperature: z.number().min(0).max(5),
    })
    .strict(),
} as const;

export type CallName = keyof typeof CALLS;
export type Request<K extends CallName> = z.infer<(typeof CALLS)[K]>;

export interface ModelEntry {
  path: string;
  name: string;
  bundled: boolean;
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
  /** A rough figure from the model size and the tokens to train on. */
  estimatedSeconds: number;
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

/** Reply types, one per call. */
export interface Replies {
  'app.info': AppInfo;
  'models.list': ModelEntry[];
  'models.inspect': ModelInfo;
  'datasets.list': DatasetEntry[];
  'datasets.upload': DatasetEntry;
  'datasets.preview': DatasetPreview & { trainExamples: number; validationExamples: number };
  'files.browse': { dir: string | null; parent: string | null; entries: BrowseEntry[] };
  'methods.list': Array<Omit<MethodInfo, never>>;
  'methods.estimates': MethodEstimate[];
  'runs.estimate': RunEstimate;
  'runs.start': { runId: string };
  'runs.list': Run[];
  'runs.get': RunDetail;
  'runs.pause': { status: RunStatus };
  'runs.resume': { status: RunStatus };
  'runs.cancel': { status: RunStatus };
  'runs.delete': { deleted: true };
  'runs.compare': RunComparison;
  'bakeoffs.start': { bakeoffId: string };
  'bakeoffs.get': Bakeoff;
  'runs.export': ExportReply;
  'playground.generate': { base: string; adapted: string; seconds: number };
}

export type Calls = { [K in CallName]: (request: Request<K>) => Promise<Replies[K]> };

/** Events the engine pushes: the fine-tuning events plus lifecycle and export progress. */
export type StudioEvent =
  | FinetuneEvent
  | { type: 'run-status'; runId: string; status: RunStatus }
  | { type: 'export-progress'; runId: string; message: string };
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
