/**
 * Row types of the run store as the rest of the engine sees them: camelCase, times as Unix
 * milliseconds, JSON columns parsed. The snake_case SQLite rows live in store.ts only.
 */

export const RUN_STATUSES = ['queued', 'running', 'paused', 'completed', 'failed', 'cancelled', 'interrupted'] as const;
export type RunStatus = (typeof RUN_STATUSES)[number];
export type RunKind = 'finetune' | 'pretrain';
/** Where a run was trained: here, elsewhere and imported, or by another engine launched from here. */
export const RUN_ORIGINS = ['local', 'imported', 'launched'] as const;
export type RunOrigin = (typeof RUN_ORIGINS)[number];
export type MetricSplit = 'train' | 'val';
export type ArtifactKind = 'peft' | 'merged' | 'gguf';
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

/** Measurements that can be filled in during or at the end of a run. */
export interface RunMeasurements {
  trainableParams: number | null;
  totalParams: number | null;
  /** Bytes of trainable parameters + optimizer state (the method's `stateBytes`). */
  stateBytes: number | null;
  estimatedPeakBytes: number | null;
  measuredPeakRss: number | null;
  measuredPeakTensorBytes: number | null;
  tokensPerSecond: number | null;
  wallSeconds: number | null;
  finalTrainLoss: number | null;
  finalValLoss: number | null;
  taskMetricName: string | null;
  taskMetricValue: number | null;
  backend: string | null;
  hardware: JsonObject | null;
}

export interface Run extends RunMeasurements {
  /** `YYYYMMDD-HHMMSS-xxxx` (UTC time of creation + 4 hex digits): sorts by creation time. */
  id: string;
  name: string;
  status: RunStatus;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  method: string;
  kind: RunKind;
  baseModelPath: string | null;
  baseModelFingerprint: string | null;
  datasetPath: string | null;
  datasetFingerprint: string | null;
  config: JsonObject;
  errorCode: string | null;
  errorMessage: string | null;
  pid: number | null;
  heartbeatAt: number | null;
  parentRunId: string | null;
  origin: RunOrigin;
}

export interface CreateRunInput extends Partial<RunMeasurements> {
  method: string;
  kind: RunKind;
  config: JsonObject;
  /** Defaults to the run id. */
  name?: string;
  baseModelPath?: string | null;
  baseModelFingerprint?: string | null;
  datasetPath?: string | null;
  datasetFingerprint?: string | null;
  parentRunId?: string | null;
  /** Defaults to 'local'. */
  origin?: RunOrigin;
}

export type RunPatch = Partial<RunMeasurements> & { name?: string };

export interface FinishRunInput extends RunPatch {
  status: 'completed' | 'cancelled';
}

export interface FailRunInput {
  code: string;
  message: string;
}

export interface ListRunsFilter {
  status?: RunStatus | RunStatus[];
  method?: string;
  kind?: RunKind;
  /** Newest first; default: all. */
  limit?: number;
}

export interface MetricInput {
  step: number;
  split: MetricSplit;
  name: string;
  /** NaN is kept (a diverged loss is information): stored as NULL, read back as NaN. */
  value: number;
  at?: number;
}

export interface Metric {
  runId: string;
  step: number;
  split: MetricSplit;
  name: string;
  value: number;
  at: number;
}

export interface MetricsFilter {
  name?: string;
  split?: MetricSplit;
}

export interface SampleInput {
  step: number;
  prompt: string;
  output: string;
  seed?: number | null;
  /** The answer the validation record gives (null where there is none). */
  expected?: string | null;
}

export interface Sample extends Required<SampleInput> {
  id: number;
  runId: string;
  at: number;
}

export interface CheckpointInput {
  step: number;
  path: string;
  bytes?: number | null;
}

export interface Checkpoint extends Required<CheckpointInput> {
  id: number;
  runId: string;
  createdAt: number;
}

export interface ArtifactInput {
  kind: ArtifactKind;
  path: string;
  /** e.g. `q8_0` for GGUF, `safetensors f16` for a merged folder. */
  formatDetail?: string | null;
  bytes?: number | null;
}

export interface Artifact extends Required<ArtifactInput> {
  id: number;
  runId: string;
  createdAt: number;
}

export interface LogEntry {
  id: number;
  runId: string;
  at: number;
  level: LogLevel;
  message: string;
}

export interface StoreLayout {
  home: string;
  databasePath: string;
  runsDir: string;
}

export interface RunStoreOptions {
  /** Milliseconds since the epoch; tests inject a clock. */
  clock?: () => number;
  /**
   * A 'running' run whose heartbeat is older than this is interrupted even if its pid is alive
   * (the pid may have been reused after a reboot). The trainer must heartbeat more often.
   */
  staleHeartbeatMs?: number;
}
