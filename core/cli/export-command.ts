/** `lowrank export --run ID --format peft|merged|gguf --out DIR`. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import { openStore } from '../store/index.ts';
import { exportRun, type ExportRequest } from '../export/run-export.ts';
import type { Flags } from '../cli.ts';
import { printJson, requireString } from './flags.ts';
import { methodParams } from './train-commands.ts';

export async function exportCommand(flags: Flags): Promise<void> {
  const format = requireString(flags, 'format', 'peft, merged or gguf');
  if (!['peft', 'merged', 'gguf'].includes(format)) throw new LowrankError('BAD_ARGUMENT', `--format must be peft, merged or gguf, got "${format}"`);
  const quant = String(flags.quant ?? 'f16');
  const dtype = String(flags.dtype ?? 'base');
  if (dtype !== 'float32' && dtype !== 'base') throw new LowrankError('BAD_ARGUMENT', `--dtype must be float32 or base, got "${dtype}"`);
  const request: ExportRequest = {
    runId: requireString(flags, 'run', 'the run to export (see `lowrank runs list`)'),
    format: format as ExportRequest['format'],
    out: path.resolve(requireString(flags, 'out', 'the destination folder (must not exist)')),
    quant: quant as ExportRequest['quant'],
    dtype,
  };
  const store = openStore();
  try {
    // --param name=value: the method's export-time parameters (DyLoRA's export_rank), typed by its schema.
    if (flags.param !== undefined) request.params = methodParams(store.getRun(request.runId).method, { param: flags.param });
    const result = await exportRun(store, request, (message) => !flags.json && console.error(message));
    if (flags.json) return printJson(result);
    console.log(`exported run ${request.runId} as ${format} to ${result.path}`);
    for (const f of fs.readdirSync(result.path)) console.log(`  ${f}`);
  } finally {
    store.close();
  }
}
