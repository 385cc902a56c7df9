/**
 * LoRA on a 4-bit NF4 base (the QLoRA recipe) against the same run on a bf16 base, on the bundled
 * task: the validation loss comes within 5 % of the bf16 run's, and the merged export is built on the
 * original-precision weights (untouched weights byte-identical to the base, adapted ones = base +
 * the trained update), not on the quantized ones.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initBackend } from '../core/backend/index.ts';
import { needs } from './helpers/optional-parts.ts';
import { runFinetune, type FinetuneResult } from '../core/train/finetune.ts';
import { demoConfig } from '../core/cli/demo.ts';
import { openStore } from '../core/store/index.ts';
import { exportRun } from '../core/export/run-export.ts';
import { CheckpointReader, SafetensorsFile } from '../core/io/safetensors.ts';
import { BUNDLED_MODEL_DIR } from '../core/resources.ts';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-qlora-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

const STEPS = 60;

describe('LoRA on an NF4 base (QLoRA)', needs('native'), () => {
  const store = () => openStore(path.join(root, 'home'));
  const results = new Map<string, FinetuneResult>();
  const trainOn = async (baseDtype: 'bf16' | 'nf4') => {
    const s = store();
    const config = { ...demoConfig(STEPS), baseDtype, metricExamples: 0, evalEvery: 1000, checkpointEvery: 1000, name: `qlora ${baseDtype}` };
    const result = await runFinetune(s, config, () => undefined);
    s.close();
    results.set(baseDtype, result);
    return result;
  };

  it('reaches a validation loss within 5 % of the same run on a bf16 base', async () => {
    const bf16 = await trainOn('bf16');
    const nf4 = await trainOn('nf4');
    expect(bf16.valLoss).toBeLessThan(3); // it learned: the untrained model is near 9 here
    expect(Math.abs(nf4.valLoss - bf16.valLoss) / bf16.valLoss).toBeLessThan(0.05);
    // The quantized base really is different: the two curves are not the same run.
    expect(nf4.valLoss).not.toBe(bf16.valLoss);
    console.log(`validation loss after ${STEPS} steps: bf16 base ${bf16.valLoss.toFixed(4)}, nf4 base ${nf4.valLoss.toFixed(4)}`);
  });

  it('exports the merged model on the original-precision weights', async () => {
    const runId = results.get('nf4')!.runId;
    const s = store();
    const merged = path.join(root, 'merged');
    const peft = path.join(root, 'peft');
    // float32, so the merge itself is checked at float32 precision (the default keeps the base's F16).
    await exportRun(s, { runId, format: 'merged', out: merged, dtype: 'float32' });
    await exportRun(s, { runId, format: 'peft', out: peft });
    s.close();
    const base = CheckpointReader.open(BUNDLED_MODEL_DIR);
    const out = CheckpointReader.open(merged);
    const adapter = SafetensorsFile.open(path.join(peft, 'adapter_model.safetensors'));
    const config = JSON.parse(fs.readFileSync(path.join(peft, 'adapter_config.json'), 'utf8')) as { lora_alpha: number; r: number };
    const scaling = config.lora_alpha / config.r;
    let adapted = 0;
    for (const name of base.names()) {
      const original = base.readFloat32(name);
      const exported = out.readFloat32(name);
      const key = `base_model.model.${name.replace(/\.weight$/, '')}`;
      if (!adapter.tensors.has(`${key}.lora_A.weight`)) {
        expect(Buffer.from(exported.buffer).equals(Buffer.from(original.buffer)), name).toBe(true);
        continue;
      }
      adapted++;
      const A = adapter.readFloat32(`${key}.lora_A.weight`);
      const B = adapter.readFloat32(`${key}.lora_B.weight`);
      const [rows, cols] = base.info(name).shape;
      const r = A.length / cols;
      let worst = 0;
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < cols; j++) {
          let delta = 0;
          for (let t = 0; t < r; t++) delta += B[i * r + t] * A[t * cols + j];
          worst = Math.max(worst, Math.abs(exported[i * cols + j] - (original[i * cols + j] + scaling * delta)));
        }
      }
      expect(worst, name).toBeLessThan(1e-5);
    }
    expect(adapted).toBe(4 * 4);
    for (const r of [base, out, adapter]) r.close();
  });
});
