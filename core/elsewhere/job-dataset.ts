/**
 * The run's dataset, read and checked exactly as training here reads it (readers.ts, formats.ts),
 * and written as JSON lines in the shape each engine registers: conversations as `messages`,
 * prompt/completion segments, or text. Bad records follow the run's --on-bad-line: refused with
 * their file:line, or left out and counted.
 */
import { LowrankError } from '../errors.ts';
import { readDatasetFile } from '../data/readers.ts';
import { detectFormat, normalizeRecord, RecordError, type DatasetFormat, type NormalizedRecord } from '../data/formats.ts';
import type { OnBadLine } from '../data/dataset.ts';
import type { EngineId, JobRecords } from './job-spec.ts';

export interface ReadJobRecords {
  format: DatasetFormat;
  records: JobRecords;
  skipped: Array<{ where: string; reason: string }>;
}

const LISTED = 3;

export async function readJobRecords(file: string, forced: DatasetFormat | 'auto', onBadLine: OnBadLine, hasChatTemplate: boolean): Promise<ReadJobRecords> {
  const raw = await readDatasetFile(file);
  const format: DatasetFormat = raw.kind === 'txt' ? 'text' : forced !== 'auto' ? forced : detectFormat(raw.entries, file);
  const normalized: NormalizedRecord[] = [];
  const skipped: Array<{ where: string; reason: string }> = [];
  for (const entry of raw.entries) {
    if (entry.problem !== undefined) {
      skipped.push({ where: entry.where, reason: entry.problem });
      continue;
    }
    try {
      normalized.push(normalizeRecord(entry.record, format, { hasChatTemplate }));
    } catch (e) {
      if (!(e instanceof RecordError)) throw e;
      skipped.push({ where: entry.where, reason: e.message });
    }
  }
  if (skipped.length && onBadLine === 'fail') {
    const listed = skipped.slice(0, LISTED).map((s) => `${s.where}: ${s.reason}`).join('; ');
    throw new LowrankError('BAD_DATA', `${file}: ${skipped.length} bad record${skipped.length === 1 ? '' : 's'} (${listed}); fix them, or start the run with --on-bad-line skip`);
  }
  if (normalized.length === 0) throw new LowrankError('BAD_DATA', `${file}: no usable records to hand over`);
  return { format, records: toJobRecords(normalized, file), skipped };
}

function toJobRecords(records: NormalizedRecord[], file: string): JobRecords {
  const kind = records[0].kind;
  if (records.some((r) => r.kind !== kind)) throw new LowrankError('BAD_DATA', `${file}: records of mixed kinds (${kind} and others); one dataset holds one format`);
  if (kind === 'chat') return { kind, rows: records.map((r) => ({ messages: (r as Extract<NormalizedRecord, { kind: 'chat' }>).messages })) };
  if (kind === 'text') return { kind, rows: records.map((r) => ({ text: (r as Extract<NormalizedRecord, { kind: 'text' }>).text })) };
  return {
    kind,
    rows: records.map((r) => {
      const { segments } = r as Extract<NormalizedRecord, { kind: 'segments' }>;
      // formats.ts makes exactly two: the untrained prompt, then the trained completion.
      return { prompt: segments.filter((s) => !s.train).map((s) => s.text).join(''), completion: segments.filter((s) => s.train).map((s) => s.text).join('') };
    }),
  };
}

/** The dataset file's lines in the shape the engine's registration names. */
export function engineDatasetLines(engine: EngineId, records: JobRecords): string {
  const rows: unknown[] =
    records.kind === 'segments' && engine === 'axolotl'
      ? // axolotl's input_output type: {"segments": [{"label": bool, "text": str}]} (prompt_strategies/input_output.py).
        records.rows.map((r) => ({ segments: [{ label: false, text: r.prompt }, { label: true, text: r.completion }] }))
      : records.rows;
  return rows.map((r) => JSON.stringify(r)).join('\n') + '\n';
}
