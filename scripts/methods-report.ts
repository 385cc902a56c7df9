/**
 * Writes docs/methods.md: every registered method fine-tuned on the bundled task (the demo's
 * review-sentiment data on the bundled model) with the same seed, steps and learning rate, and
 * what each measured: trainable parameters, state bytes, peak memory, tokens/s, final losses and
 * held-out exact-match accuracy. A report, not a test: it takes a few minutes per method.
 *
 *   npx tsx scripts/methods-report.ts [--steps 150]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { listMethods } from '../core/methods/index.ts';
import { openStore } from '../core/store/index.ts';
import { runFinetune, type FinetuneConfig } from '../core/train/finetune.ts';
import { demoConfig } from '../core/cli/demo.ts';
import { formatBytes } from '../core/train/memory.ts';

const stepsFlag = process.argv.indexOf('--steps');
const steps = stepsFlag > 0 ? Number(process.argv[stepsFlag + 1]) : 150;
/**
 * Learning rates: adapters take the demo's, full fine-tuning a smaller one; GaLore and Fira train
 * the same weights as full but apply α = 0.25 on back-projection, so 1e-3 gives the same α·lr scale.
 * FRUGAL takes its code's lr 1e-3 (s_p = 1, the state-free part at 0.1·lr); the DCT optimizer has no
 * α, so it takes full fine-tuning's rate.
 */
const LR: Record<string, number> = { full: 3e-4, galore: 1e-3, fira: 1e-3, frugal: 1e-3, 'galore-dct': 3e-4 };

const home = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-methods-report-'));
const store = openStore(home);
const rows: string[] = [];
for (const method of listMethods()) {
  const base = demoConfig(steps);
  const params: FinetuneConfig['params'] = method.id === 'lora' || method.variantOf === 'lora' ? { rank: 8, dropout: 0 } : {};
  const config: FinetuneConfig = { ...base, method: method.id, params, targets: method.defaultTargets ?? base.targets, lr: LR[method.id] ?? base.lr };
  process.stderr.write(`${method.id}: ${steps} steps ... `);
  const r = await runFinetune(store, config, () => {}, { metricBefore: false });
  const run = store.getRun(r.runId);
  process.stderr.write(`loss ${r.trainLoss.toFixed(3)}, accuracy ${((r.taskMetric?.after ?? 0) * 100).toFixed(1)} %\n`);
  rows.push(
    `| \`${method.id}\` | ${run.trainableParams?.toLocaleString('en-US')} | ${formatBytes(run.stateBytes ?? 0)} | ${formatBytes(r.peakTensorBytes)} | ` +
      `${Math.round(r.tokensPerSecond)} | ${r.trainLoss.toFixed(3)} | ${r.valLoss.toFixed(3)} | ${((r.taskMetric?.after ?? 0) * 100).toFixed(1)} % |`,
  );
}
store.close();
fs.rmSync(home, { recursive: true, force: true });

const doc = `# Methods on the bundled task

Every method of the registry fine-tuned with the same seed (0), ${steps} steps, batch 8, sequence
length 64, on the bundled model (\`resources/models/brown-llama\`) and the bundled review-sentiment
dataset (\`resources/datasets/review-sentiment.jsonl\`, 15 % held out). Adapters wrap q, k, v and o
with lr 3e-3: the LoRA family at rank 8 (PiSSA at its paper's α = r), the others at their schema
defaults (VeRA r = 256, RandLoRA r = 32 with α = 640, LoRA-XS, LoRA-SB r = 96, SVFit, NOLA k = 512). Full fine-tuning uses lr 3e-4; the optimizer
methods (GaLore, Fira, FRUGAL, DCT) train every attention and MLP weight at their defaults with the
lr in scripts/methods-report.ts. Accuracy is exact match of the greedy answer on 120 held-out
reviews; the base model scores 0 %.

One shared adapter lr is not every method's best: methods with very few trainable parameters
(SVFit: r scalars per matrix; VeRA: two vectors; NOLA: 2k coefficients) move little at lr 3e-3 in
${steps} steps; their papers use higher rates or many more steps. The table compares methods under the same
budget; it does not tune each one. DyLoRA's row is at rank r (export_rank = r): each step trains one
sampled component, so each of the 8 gets about 1 step in 8, far less training than plain LoRA's (the
official runs train 30 epochs). SoRA's train loss leaves its sparsity term out, as every row's does.
The tokens/s column is as measured here, possibly beside other work; \`npm run bench\` has the speed figures.

Regenerate with \`npx tsx scripts/methods-report.ts --steps ${steps}\` (${os.cpus().length} CPU cores, wasm backend, ${new Date().toISOString().slice(0, 10)}).

| method | trainable params | state (params + optimizer) | peak tensor bytes | tokens/s | train loss | val loss | accuracy |
|---|---|---|---|---|---|---|---|
${rows.join('\n')}
`;
const out = path.resolve(import.meta.dirname, '..', 'docs', 'methods.md');
fs.mkdirSync(path.dirname(out), { recursive: true });
fs.writeFileSync(out, doc);
console.log(`wrote ${out}`);
