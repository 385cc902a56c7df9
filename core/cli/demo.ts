/**
 * `npm run demo`: the headless fine-tune. LoRA on the bundled base model with the bundled review
 * sentiment dataset; prints exact-match accuracy on a held-out split and two samples before and
 * after, stores the run and exports the merged model next to it.
 */
import * as path from 'node:path';
import { openStore } from '../store/index.ts';
import { FINETUNE_DEFAULTS, runFinetune, sampleCompletions, type FinetuneConfig } from '../train/finetune.ts';
import { exportRun } from '../export/run-export.ts';
import { BUNDLED_MODEL_DIR, RESOURCES_DIR } from '../resources.ts';
import { formatBytes } from '../train/memory.ts';
import { ProgressBar, formatDuration } from '../progress.ts';
import type { Flags } from '../cli.ts';
import { numberFlag } from './flags.ts';

export const DEMO_DATASET = path.join(RESOURCES_DIR, 'datasets', 'review-sentiment.jsonl');

export function demoConfig(steps: number): FinetuneConfig {
  return {
    ...FINETUNE_DEFAULTS,
    model: BUNDLED_MODEL_DIR,
    data: DEMO_DATASET,
    method: 'lora',
    params: { rank: 8, alpha: 16, dropout: 0 },
    targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj'],
    steps,
    epochs: null,
    batchSize: 8,
    seqLen: 64,
    lr: 3e-3,
    warmupSteps: 10,
    validation: 0.15,
    evalEvery: 50,
    checkpointEvery: 50,
    metricExamples: 120,
    seed: 0,
    name: 'demo: LoRA on review sentiment',
  };
}

export async function demoCommand(flags: Flags): Promise<void> {
  const started = performance.now();
  const store = openStore();
  const steps = numberFlag(flags, 'steps', 150, { integer: true, min: 1 });
  const config = demoConfig(steps);
  console.log(`Lowrank Studio demo: LoRA (rank 8 on q,k,v,o) on ${path.relative(process.cwd(), config.model) || config.model}`);
  console.log(`dataset: ${path.relative(process.cwd(), config.data)} (does a short review read positive or negative?)\n`);
  let before: Array<{ prompt: string; output: string }> = [];
  let after: Array<{ prompt: string; output: string }> = [];
  let bar: ProgressBar | null = null;
  try {
    const result = await runFinetune(
      store,
      config,
      (e) => {
        if (e.type === 'run-started') {
          console.log(`run ${e.runId}: ${e.trainableParams.toLocaleString('en-US')} trainable parameters, estimated peak ${formatBytes(e.estimate.processBytes)}`);
          bar = new ProgressBar('train', e.totalSteps, process.stdout);
        } else if (e.type === 'step') {
          bar?.update(e.step, `loss ${e.loss.toFixed(4)} ${Math.round(e.tokensPerSecond)} tok/s`);
        } else if (e.type === 'eval') {
          bar?.log(`step ${e.step}: validation loss ${e.valLoss.toFixed(4)}`);
        }
      },
      {
        metricBefore: true,
        beforeTraining: (p) => (before = sampleCompletions(p.model, p.tokenizer, p.dataset.validation)),
        afterTraining: (p) => (after = sampleCompletions(p.model, p.tokenizer, p.dataset.validation)),
      },
    );
    (bar as ProgressBar | null)?.finish();
    const metric = result.taskMetric!;
    const pct = (v: number | null) => (v === null ? '-' : `${(100 * v).toFixed(1)} %`);
    console.log(`\nexact-match accuracy on ${config.metricExamples} held-out reviews: before ${pct(metric.before)} -> after ${pct(metric.after)}`);
    console.log(`train loss ${result.trainLoss.toFixed(4)}, validation loss ${result.valLoss.toFixed(4)}, ${Math.round(result.tokensPerSecond)} tokens/s, peak memory ${formatBytes(result.peakRssBytes)}`);
    for (let i = 0; i < before.length; i++) {
      const prompt = before[i].prompt.replace(/\s+/g, ' ').trim();
      console.log(`\nsample ${i + 1}: ${JSON.stringify(prompt)}`);
      console.log(`  before: ${JSON.stringify(before[i].output)}`);
      console.log(`  after:  ${JSON.stringify(after[i]?.output ?? '')}`);
    }
    const out = path.join(store.runDir(result.runId), 'merged');
    const exported = await exportRun(store, { runId: result.runId, format: 'merged', out });
    console.log(`\nstored run ${result.runId} in ${store.layout.home}; merged model exported to ${exported.path}`);
    console.log(`try it: npx lowrank generate --model ${exported.path} --prompt "..."`);
    console.log(`demo finished in ${formatDuration((performance.now() - started) / 1000)}`);
  } finally {
    store.close();
  }
}
