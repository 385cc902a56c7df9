/**
 * What a run can be exported as, and in words why not: the Export dialog shows a format it cannot
 * write greyed out with its reason, rather than failing after the user picked it. The reasons are
 * the refusals the writers themselves give (gguf.ts, gguf-vocab.ts), checked up front.
 */
import type { ExportOption, ExportOptions } from '../contract.ts';
import type { MethodInfo, MethodParams } from '../methods/method.ts';
import { openCheckpoint } from '../models/load.ts';
import { GGUF_QUANTS, ggufUnsupportedReason, type GgufQuant } from './gguf.ts';
import { ggufTokenizerUnsupportedReason } from './gguf-vocab.ts';

/** Why a method has no PEFT adapter, by what it trains. */
function noAdapterReason(method: MethodInfo): string {
  if (method.family === 'full') return 'Full fine-tuning changes every weight of the model: there is no separate adapter to save. Export the merged model or GGUF instead.';
  if (method.family === 'optimizer') {
    return `${method.id} is a low-memory optimizer: it trains the model's own weights, so there is no adapter to save. Export the merged model or GGUF instead.`;
  }
  return `${method.id} has no PEFT adapter format. Export the merged model or GGUF instead.`;
}

/** `params`: the run's method parameters, for methods whose parameters rule a format out (MethodInfo.unavailableExports). */
export function exportOptions(method: MethodInfo, baseDir: string, params: MethodParams = {}): ExportOptions {
  const { config, reader, dtypes } = openCheckpoint(baseDir);
  reader.close();
  const refused = method.unavailableExports?.(params) ?? {};
  const peftReason = refused.peft ?? (method.exportFormats.includes('peft') ? null : noAdapterReason(method));
  const mergedReason = refused.merged ?? (method.exportFormats.includes('merged') ? null : `${method.id} cannot fold its update into the base weights, so there is no merged model to write.`);
  const ggufReason = refused.gguf ?? mergedReason ?? ggufUnsupportedReason(config, baseDir) ?? ggufTokenizerUnsupportedReason(baseDir);
  const formats: ExportOption[] = [
    { format: 'peft', available: peftReason === null, reason: peftReason },
    { format: 'merged', available: mergedReason === null, reason: mergedReason },
    { format: 'gguf', available: ggufReason === null, reason: ggufReason },
  ];
  return { formats, baseDtype: [...dtypes].join(', '), quants: [...GGUF_QUANTS], adapter: method.family === 'adapter' };
}

// The contract's quant choices and the writer's must be the same set.
type ContractQuant = ExportOptions['quants'][number];
const sameQuants: [ContractQuant, GgufQuant] extends [GgufQuant, ContractQuant] ? true : never = true;
void sameQuants;
