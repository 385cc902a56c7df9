/**
 * Training logs of other engines, as metrics of the run store:
 *  - LLaMA-Factory's `trainer_log.jsonl` (train/callbacks.py LogCallback.on_log): one JSON object per
 *    logging step with `current_steps`, `total_steps`, `loss`, `eval_loss`, `lr`, `epoch`, ...;
 *  - transformers' `trainer_state.json` (what axolotl and any Trainer save with each checkpoint):
 *    `log_history` entries with `step`, `loss` / `eval_loss`, `learning_rate`, and `max_steps`.
 * The follower reads a growing trainer_log.jsonl from where it stopped, so a live run streams it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import type { MetricInput } from '../store/types.ts';

export interface TrainerLogEntry {
  step: number;
  totalSteps: number | null;
  loss: number | null;
  evalLoss: number | null;
  lr: number | null;
  /** `elapsed_time` ("H:MM:SS", LogCallback's timedelta) in seconds, and `throughput` (input tokens/s) where logged. */
  elapsedSeconds: number | null;
  /** `remaining_time` in seconds: the engine's own ETA. */
  remainingSeconds: number | null;
  tokensPerSecond: number | null;
}

function seconds(value: unknown): number | null {
  const m = typeof value === 'string' ? /^(?:(\d+) days?, )?(\d+):(\d\d):(\d\d)$/.exec(value) : null;
  return m ? Number(m[1] ?? 0) * 86400 + Number(m[2]) * 3600 + Number(m[3]) * 60 + Number(m[4]) : null;
}

function numberOrNull(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : value === null || value === undefined ? null : NaN;
}

/** One line of trainer_log.jsonl; `where` is file:line for the error. */
export function parseTrainerLogLine(line: string, where: string): TrainerLogEntry {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    throw new LowrankError('BAD_DATA', `${where}: not a JSON object (LLaMA-Factory's trainer_log.jsonl has one per line)`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new LowrankError('BAD_DATA', `${where}: expected a JSON object`);
  const r = raw as Record<string, unknown>;
  if (!Number.isInteger(r.current_steps) || (r.current_steps as number) < 0) {
    throw new LowrankError('BAD_DATA', `${where}: field "current_steps" must be a step number, got ${JSON.stringify(r.current_steps)}; is this LLaMA-Factory's trainer_log.jsonl?`);
  }
  return {
    step: r.current_steps as number,
    totalSteps: Number.isInteger(r.total_steps) ? (r.total_steps as number) : null,
    loss: numberOrNull(r.loss),
    evalLoss: numberOrNull(r.eval_loss),
    lr: numberOrNull(r.lr),
    elapsedSeconds: seconds(r.elapsed_time), remainingSeconds: seconds(r.remaining_time),
    tokensPerSecond: typeof r.throughput === 'number' ? r.throughput : null,
  };
}

/** transformers' trainer_state.json: its log history as entries. */
export function parseTrainerState(text: string, file: string): TrainerLogEntry[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new LowrankError('BAD_DATA', `${file}: not valid JSON`);
  }
  const history = (raw as { log_history?: unknown })?.log_history;
  if (!Array.isArray(history)) throw new LowrankError('BAD_DATA', `${file}: no "log_history" list; is this a transformers trainer_state.json?`);
  const maxSteps = (raw as { max_steps?: unknown }).max_steps;
  return history.flatMap((h: Record<string, unknown>, i) => {
    if (!Number.isInteger(h?.step)) throw new LowrankError('BAD_DATA', `${file}: log_history[${i}].step must be a step number`);
    if (h.loss === undefined && h.eval_loss === undefined) return [];
    return [{ step: h.step as number, totalSteps: Number.isInteger(maxSteps) ? (maxSteps as number) : null, loss: numberOrNull(h.loss), evalLoss: numberOrNull(h.eval_loss), lr: numberOrNull(h.learning_rate), elapsedSeconds: null, remainingSeconds: null, tokensPerSecond: null }];
  });
}

/** A whole log file, either kind (told apart by its name: .jsonl lines, else trainer_state.json). */
export function readTrainerLog(file: string): TrainerLogEntry[] {
  if (!fs.existsSync(file)) throw new LowrankError('FILE_NOT_FOUND', `${file}: no such file (the engine writes trainer_log.jsonl or trainer_state.json in its output folder)`);
  const text = fs.readFileSync(file, 'utf8');
  if (!file.endsWith('.jsonl')) return parseTrainerState(text, file);
  return text.split('\n').flatMap((line, i) => (line.trim() ? [parseTrainerLogLine(line, `${file}:${i + 1}`)] : []));
}

/** Store rows: train loss and learning rate at each logged step, validation loss where evaluated. */
export function logMetrics(entries: readonly TrainerLogEntry[]): MetricInput[] {
  return entries.flatMap((e) => [
    ...(e.loss !== null ? [{ step: e.step, split: 'train' as const, name: 'loss', value: e.loss }] : []),
    ...(e.lr !== null ? [{ step: e.step, split: 'train' as const, name: 'lr', value: e.lr }] : []),
    ...(e.evalLoss !== null ? [{ step: e.step, split: 'val' as const, name: 'loss', value: e.evalLoss }] : []),
  ]);
}

/** transformers' Trainer's `checkpoint-<step>` folders in an output folder, oldest first. */
export function engineCheckpoints(outputDir: string): Array<{ step: number; dir: string }> {
  if (!fs.existsSync(outputDir)) return [];
  return fs.readdirSync(outputDir)
    .map((name) => ({ name, m: /^checkpoint-(\d+)$/.exec(name) }))
    .filter((e) => e.m && fs.statSync(path.join(outputDir, e.name)).isDirectory())
    .map((e) => ({ step: Number(e.m![1]), dir: path.join(outputDir, e.name) }))
    .sort((a, b) => a.step - b.step);
}

/**
 * The log an engine left in its output folder: LLaMA-Factory's trainer_log.jsonl, else the
 * trainer_state.json of the newest checkpoint (axolotl, like any transformers Trainer, writes it
 * with each checkpoint only); null when there is neither.
 */
export function findEngineLog(outputDir: string): string | null {
  const jsonl = path.join(outputDir, 'trainer_log.jsonl');
  if (fs.existsSync(jsonl)) return jsonl;
  for (const c of engineCheckpoints(outputDir).reverse()) {
    const state = path.join(c.dir, 'trainer_state.json');
    if (fs.existsSync(state)) return state;
  }
  const top = path.join(outputDir, 'trainer_state.json');
  return fs.existsSync(top) ? top : null;
}

/** Reads the lines appended to a trainer_log.jsonl since the last poll (a partial last line waits). */
export class TrainerLogFollower {
  private offset = 0;
  private line = 0;
  private pending = '';

  constructor(readonly file: string) {}

  poll(): TrainerLogEntry[] {
    let size: number;
    try {
      size = fs.statSync(this.file).size;
    } catch {
      return [];
    }
    // LLaMA-Factory removes an old log when a run starts over (LogCallback.on_init_end).
    if (size < this.offset) {
      this.offset = 0;
      this.pending = '';
    }
    if (size === this.offset) return [];
    const fd = fs.openSync(this.file, 'r');
    const bytes = Buffer.alloc(size - this.offset);
    try {
      fs.readSync(fd, bytes, 0, bytes.length, this.offset);
    } finally {
      fs.closeSync(fd);
    }
    this.offset = size;
    const lines = (this.pending + bytes.toString('utf8')).split('\n');
    this.pending = lines.pop() ?? '';
    return lines.flatMap((l) => {
      this.line++;
      return l.trim() ? [parseTrainerLogLine(l, `${this.file}:${this.line}`)] : [];
    });
  }
}
