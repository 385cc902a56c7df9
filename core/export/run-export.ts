/**
 * Exports a stored fine-tuning run: rebuilds base + method from the run's config, loads its last
 * checkpoint, and writes a PEFT adapter, a merged Hugging Face folder or GGUF (+ Modelfile); the
 * artifact is recorded in the run store.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LowrankError } from '../errors.ts';
import type { RunStore } from '../store/store.ts';
import { loadTrainedRun } from '../train/finetune.ts';
import { writePeftAdapter } from './peft.ts';
import { exportMerged } from './merged.ts';
import { exportGguf, type GgufQuant } from './gguf.ts';
import { mergedOntoOriginal } from './weights.ts';
import { baseModelReference, modelCard } from './model-card.ts';
import { hubIdOfFolder } from '../hub/cache.ts';
import type * as tf from '../tf.ts';
import type { MethodParams } from '../methods/method.ts';
import { getMethod, resolveParams } from '../methods/index.ts';

export interface ExportRequest {
  runId: string;
  format: 'peft' | 'merged' | 'gguf';
  out: string;
  quant?: GgufQuant;
  /** Merged weights' storage: the base's dtype (default: a BF16 base stays BF16) or float32. */
  dtype?: 'float32' | 'base';
  /** Export-time method parameters (MethodInfo.exportParams, e.g. DyLoRA's export_rank); the run's own otherwise. */
  params?: MethodParams;
}

export interface ExportResult {
  runId: string;
  format: ExportRequest['format'];
  path: string;
  bytes: number;
  step: number;
  /** The files in `path` (an export is one flat folder). */
  files: Array<{ name: string; bytes: number }>;
}

function folderFiles(dir: string): Array<{ name: string; bytes: number }> {
  return fs
    .readdirSync(dir)
    .sort()
    .map((name) => ({ name, bytes: fs.statSync(path.join(dir, name)).size }));
}

export async function exportRun(store: RunStore, request: ExportRequest, log: (message: string) => void = () => {}): Promise<ExportResult> {
  // Refuse a bad destination before the (slow) rebuild of the run.
  if (fs.existsSync(request.out)) throw new LowrankError('BAD_ARGUMENT', `${request.out} already exists; choose another --out or delete it`);
  // A format the run's method parameters rule out (LOST with SiLU has no merged form), before the rebuild too.
  const run = store.getRun(request.runId);
  const method = run.kind === 'finetune' ? getMethod(run.method) : null;
  const runParams = (run.config as { params?: MethodParams }).params ?? {};
  // Export-time overrides count where the method allows them; loadTrainedRun refuses the others with its own words.
  const overrides = Object.fromEntries(Object.entries(request.params ?? {}).filter(([name]) => method?.exportParams?.includes(name)));
  const refusal = method?.unavailableExports?.(resolveParams(method.id, method.schema, { ...runParams, ...overrides }))[request.format];
  if (refusal) throw new LowrankError('BAD_ARGUMENT', `run ${request.runId} cannot be exported as ${request.format}: ${refusal}`);
  log(`loading run ${request.runId}`);
  const prepared = await loadTrainedRun(store, request.runId, request.params);
  const { attached, config, model } = prepared;
  const dispose = (m: Map<string, tf.Tensor>) => m.forEach((t) => t.dispose());
  try {
    let detail: string;
    if (request.format === 'peft') {
      if (!attached.peftAdapter) {
        throw new LowrankError('BAD_ARGUMENT', `method ${attached.method.id} has no PEFT form; export it with --format merged or gguf`);
      }
      const adapter = attached.peftAdapter();
      try {
        // A base from the Hugging Face cache is named by its Hub id, so AutoPeftModel finds it.
        await writePeftAdapter(request.out, adapter, baseModelReference(config.model));
      } finally {
        dispose(adapter.tensors);
      }
      detail = `${String(adapter.config.peft_type)} r=${String(adapter.config.r)}`;
    } else {
      const merged = attached.mergedWeights();
      try {
        // A quantized base: the update goes onto the original-precision weights (weights.ts), unless
        // the method's merged weights replace the base's outright (LOST: exactly W_eff).
        const weights = attached.replacesWeights ? merged : mergedOntoOriginal(model, merged, config.model);
        if (request.format === 'merged') {
          const r = await exportMerged(request.out, config.model, weights, { dtype: request.dtype ?? 'base', modelCard: modelCard(prepared.run, prepared.step) });
          detail = `${r.dtype}, ${r.replaced} merged tensors`;
        } else {
          const quant = request.quant ?? 'f16';
          const r = await exportGguf(request.out, { baseDir: config.model, weights }, { quant, name: `${path.basename(hubIdOfFolder(config.model)?.repo ?? config.model)}-${request.runId}`, log });
          for (const note of r.notes) log(note);
          detail = quant;
        }
      } finally {
        dispose(merged);
      }
    }
    const files = folderFiles(request.out);
    const bytes = files.reduce((n, f) => n + f.bytes, 0);
    store.addArtifact(request.runId, { kind: request.format, path: request.out, formatDetail: detail, bytes });
    return { runId: request.runId, format: request.format, path: request.out, bytes, step: prepared.step, files };
  } finally {
    attached.detach();
    model.dispose();
  }
}
