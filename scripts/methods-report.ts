/**
 * `npm run methods-report` → docs/methods.md: a bake-off that is fair to every registered method.
 * Each method trains on the bundled task (the demo's review-sentiment data on the bundled model)
 * with the same seed and step budget, once at its own paper learning rate (MethodInfo
 * .paperLearningRate) and at a small sweep of rates around it; the report gives both, the sweep
 * itself, why any method stays at 0 %, the papers' claims beside what this scale measures, and the
 * app's recommendation rule (core/bakeoff/recommend.ts) applied to the best runs.
 * Methods come from the registry, so every method registered later appears without a change here.
 *
 *   npm run methods-report -- [--steps 24] [--sweep 1,5,25] [--methods lora,dora] [--metric-examples 32]
 *   npm run methods-report -- --real smollm2-135m [--steps 10]      (a random-weight checkpoint in a
 *       published shape, test/fixtures/real-shapes.ts: memory and speed at real size, paper lr only,
 *       written to docs/methods-real.md)
 *
 * A report, not a test: the default budget (18 methods × 3 rates × 24 steps of 4 × 64 tokens) takes
 * about 20 minutes on a quiet 2-core machine (each run also loads the model and evaluates).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { listMethods, type Method } from '../core/methods/index.ts';
import { openStore, type RunStore } from '../core/store/index.ts';
import { FINETUNE_DEFAULTS, loadTrainedRun, runFinetune, type FinetuneConfig, type PreparedRun } from '../core/train/finetune.ts';
import { exactMatch, hasCompletionTask, validationLoss } from '../core/train/evaluate.ts';
import { demoConfig } from '../core/cli/demo.ts';
import { formatBytes } from '../core/train/memory.ts';
import { jacobiSvd } from '../core/linalg/svd.ts';
import { weightOutIn64 } from '../core/methods/factored-adapter.ts';
import { recommend, RECOMMENDATION_TOLERANCE, type BakeoffEntry } from '../core/bakeoff/recommend.ts';
import { isLowrankError } from '../core/errors.ts';
import * as tf from '../core/tf.ts';

const ROOT = path.resolve(import.meta.dirname, '..');

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}
const realShape = flag('real');
const steps = Number(flag('steps') ?? (realShape ? 10 : 24));
// The paper's own rate (×1) is always one point of the sweep.
const multipliers = realShape ? [1] : [...new Set([1, ...(flag('sweep') ?? '1,5,25').split(',').map(Number)])].sort((a, b) => a - b);
const metricExamples = Number(flag('metric-examples') ?? (realShape ? 0 : 32));
const only = flag('methods')?.split(',');
const BATCH = 4;
const out = path.resolve(flag('out') ?? path.join(ROOT, 'docs', realShape ? 'methods-real.md' : 'methods.md'));
if (!(steps >= 1) || multipliers.some((m) => !(m > 0)) || !(metricExamples >= 0)) {
  console.error('methods-report: --steps must be ≥ 1, --sweep a list of positive multipliers (e.g. 1,3,10), --metric-examples ≥ 0');
  process.exit(2);
}

/** One training run of the sweep: what it measured, or why it stopped. */
interface Trial {
  lr: number;
  runId: string | null;
  trainLoss: number;
  valLoss: number;
  accuracy: number | null;
  tokensPerSecond: number;
  peakTensorBytes: number;
  estimatedRssBytes: number;
  wallSeconds: number;
  trainableParams: number;
  stateBytes: number;
  /** Set when the run failed (a diverged run stops with NUMERIC). */
  failure: string | null;
  /** What the claim probes read off the trained method (rank of ΔW, pruned gates). */
  probe: Record<string, number>;
}

interface MethodResult {
  method: Method;
  paperLr: number | null;
  paper: Trial;
  sweep: Trial[];
  best: Trial;
}

const started = performance.now();
const home = fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-methods-report-'));
const store = openStore(home);
const modelDir = realShape ? await realShapeFolder(realShape) : demoConfig(steps).model;

/** The checkpoint of a published shape (test/fixtures/real-shapes.ts), generated once into the temp folder. */
async function realShapeFolder(shape: string): Promise<string> {
  const { REAL_SHAPES, writeRealShape } = await import('../test/fixtures/real-shapes.ts');
  if (!Object.hasOwn(REAL_SHAPES, shape)) {
    console.error(`methods-report: --real ${shape} is not a shape of test/fixtures/real-shapes.ts; choose one of ${Object.keys(REAL_SHAPES).join(', ')}`);
    process.exit(2);
  }
  process.stderr.write(`writing (or reusing) the random-weight ${shape} checkpoint ...\n`);
  return writeRealShape(path.join(os.tmpdir(), 'lowrank-methods-report-shapes', shape), shape as Parameters<typeof writeRealShape>[1]);
}

function configFor(method: Method, lr: number, params: FinetuneConfig['params'] = {}): FinetuneConfig {
  const base = demoConfig(steps);
  return {
    ...base,
    model: modelDir,
    method: method.id,
    params,
    targets: method.defaultTargets ?? base.targets,
    lr,
    batchSize: BATCH,
    warmupSteps: Math.max(1, Math.round(steps / 10)),
    evalEvery: steps,
    checkpointEvery: steps,
    metricExamples,
    name: `${method.id} lr ${lr}`,
  };
}

/** Numerical rank of ΔW = merged − base for one module: σ above 1e-6 of the largest. */
function updateRank(prepared: PreparedRun, modulePath: string): { rank: number; most: number } {
  const { model } = prepared;
  const [rows, cols] = model.weightShape(`${modulePath}.weight`);
  const transposed = model.isTransposedLinear(modulePath);
  const target = { path: modulePath, transposed, inFeatures: transposed ? rows : cols, outFeatures: transposed ? cols : rows };
  const merged = prepared.attached.mergedWeights();
  try {
    const base = weightOutIn64(prepared.model, target);
    const after = merged.get(`${modulePath}.weight`)!.dataSync();
    const { outFeatures: m, inFeatures: n, transposed } = target;
    const delta = Float64Array.from(base, (w, k) => (transposed ? after[(k % n) * m + Math.floor(k / n)] : after[k]) - w);
    const { S } = jacobiSvd(delta, m, n);
    return { rank: S.filter((s) => s > 1e-6 * S[0]).length, most: Math.min(m, n) };
  } finally {
    tf.dispose([...merged.values()]);
  }
}

/** Facts the paper-claim table needs, read off a trained method before it is detached. */
function probe(prepared: PreparedRun): Record<string, number> {
  const { attached } = prepared;
  const result: Record<string, number> = {};
  const firstTarget = [...attached.trainable.keys()].map((k) => /^(.*)\.(lora_|randlora_)/.exec(k)?.[1]).find(Boolean);
  if (attached.method.id === 'randlora' && firstTarget) {
    const { rank, most } = updateRank(prepared, firstTarget);
    result.updateRank = rank;
    result.updateRankMax = most;
  }
  if (attached.method.id === 'sora') {
    let kept = 0;
    let total = 0;
    for (const [name, v] of attached.trainable) {
      if (!name.endsWith('lora_gate')) continue;
      const g = v.dataSync();
      total += g.length;
      kept += g.filter((x) => x !== 0).length;
    }
    result.gatesKept = kept;
    result.gatesTotal = total;
  }
  return result;
}

async function train(method: Method, lr: number, params: FinetuneConfig['params'] = {}): Promise<Trial> {
  const config = configFor(method, lr, params);
  let runId: string | null = null;
  let found: Record<string, number> = {};
  const t0 = performance.now();
  try {
    const r = await runFinetune(store, config, (e) => {
      if (e.type === 'run-started') runId = e.runId;
    }, { afterTraining: (p) => (found = probe(p)) });
    const run = store.getRun(r.runId);
    return {
      lr, runId: r.runId, trainLoss: r.trainLoss, valLoss: r.valLoss, accuracy: r.taskMetric?.after ?? null, tokensPerSecond: r.tokensPerSecond,
      peakTensorBytes: r.peakTensorBytes, estimatedRssBytes: r.estimate.processBytes, wallSeconds: run.wallSeconds ?? (performance.now() - t0) / 1000,
      trainableParams: run.trainableParams ?? 0, stateBytes: run.stateBytes ?? 0, failure: null, probe: found,
    };
  } catch (e) {
    const run = runId ? store.getRun(runId) : null;
    return {
      lr, runId, trainLoss: run?.finalTrainLoss ?? NaN, valLoss: NaN, accuracy: null, tokensPerSecond: 0, peakTensorBytes: 0, estimatedRssBytes: 0,
      wallSeconds: (performance.now() - t0) / 1000, trainableParams: run?.trainableParams ?? 0, stateBytes: run?.stateBytes ?? 0,
      failure: isLowrankError(e) ? `${e.code}: ${e.message}` : String(e), probe: {},
    };
  }
}

/** Better = higher accuracy, then lower validation loss; failed runs last. */
function better(a: Trial, b: Trial): boolean {
  if (a.failure || b.failure) return !a.failure && !!b.failure;
  const accA = a.accuracy ?? -1;
  const accB = b.accuracy ?? -1;
  if (accA !== accB) return accA > accB;
  return a.valLoss < b.valLoss;
}

const methods = listMethods().filter((m) => !only || only.includes(m.id));
const results: MethodResult[] = [];
for (const method of methods) {
  const paperLr = method.paperLearningRate?.value ?? null;
  const centre = paperLr ?? FINETUNE_DEFAULTS.lr;
  const rates = [...new Set(multipliers.map((k) => Number((centre * k).toPrecision(3))))];
  const sweep: Trial[] = [];
  for (const lr of rates) {
    process.stderr.write(`${method.id} lr ${lr}: ${steps} steps ... `);
    const trial = await train(method, lr);
    sweep.push(trial);
    process.stderr.write(trial.failure ? `failed (${trial.failure.slice(0, 80)})\n` : `loss ${trial.trainLoss.toFixed(3)}, accuracy ${fmtAcc(trial.accuracy)}, ${trial.wallSeconds.toFixed(0)} s\n`);
  }
  const paper = sweep.find((t) => t.lr === Number(centre.toPrecision(3)))!;
  const best = sweep.reduce((a, b) => (better(b, a) ? b : a));
  results.push({ method, paperLr, paper, sweep, best });
}

/** The claims that need runs of their own: LoRA-SB at a rank far below LoRA's parameters, DyLoRA at each rank. */
const lorasb = results.find((r) => r.method.id === 'lorasb');
const lora = results.find((r) => r.method.id === 'lora');
let lorasbSmall: Trial | null = null;
if (lorasb && lora && !realShape) {
  process.stderr.write(`lorasb rank 16 at lr ${lorasb.best.lr} ... `);
  lorasbSmall = await train(lorasb.method, lorasb.best.lr, { rank: 16 });
  process.stderr.write(lorasbSmall.failure ? `failed (${lorasbSmall.failure})\n` : `accuracy ${fmtAcc(lorasbSmall.accuracy)}\n`);
}
const dylora = results.find((r) => r.method.id === 'dylora');
const dyloraRanks: Array<{ rank: number; accuracy: number; valLoss: number }> = [];
if (dylora?.best.runId && !realShape) {
  const rMax = Number(dylora.method.schema.find((f) => f.name === 'rank')?.default ?? 8);
  for (let rank = 1; rank <= rMax; rank *= 2) {
    process.stderr.write(`dylora evaluated at rank ${rank} ... `);
    let loaded: Awaited<ReturnType<typeof loadTrainedRun>>;
    try {
      loaded = await loadTrainedRun(store, dylora.best.runId, { export_rank: rank });
    } catch (e) {
      process.stderr.write(`failed (${e instanceof Error ? e.message : String(e)})\n`);
      continue;
    }
    try {
      const metricSet = loaded.dataset.validation.filter(hasCompletionTask).slice(0, metricExamples);
      const accuracy = exactMatch(loaded.model, loaded.tokenizer, metricSet).accuracy;
      const valLoss = validationLoss(loaded.model, loaded.dataset.validation.slice(0, 256), loaded.config.batchSize);
      dyloraRanks.push({ rank, accuracy, valLoss });
      process.stderr.write(`accuracy ${fmtAcc(accuracy)}\n`);
    } finally {
      loaded.attached.detach();
      loaded.model.dispose();
    }
  }
}
// The raw figures, in case the document needs writing again without retraining.
fs.writeFileSync(path.join(os.tmpdir(), `methods-report-${realShape ?? 'bundled'}.json`), JSON.stringify({ steps, multipliers, results: results.map((r) => ({ ...r, method: r.method.id })), lorasbSmall, dyloraRanks }, null, 1));
store.close();
fs.rmSync(home, { recursive: true, force: true });
const minutes = (performance.now() - started) / 60000;

function fmtAcc(v: number | null): string {
  return v === null ? '–' : `${(100 * v).toFixed(1)} %`;
}
function fmtLoss(v: number): string {
  return Number.isFinite(v) ? v.toFixed(3) : '–';
}
/** 2e-4, 2.4e-3: one decimal where the sweep needs it. */
function fmtLr(v: number): string {
  return v.toExponential(1).replace('.0e', 'e').replace('e+0', '');
}
function row(r: MethodResult, t: Trial, extra: string[] = []): string {
  if (t.failure) return `| \`${r.method.id}\` | ${[...extra, `failed: ${t.failure.replace(/\|/g, '/').slice(0, 120)}`].join(' | ')} | | | | | | | |`;
  return (
    `| \`${r.method.id}\` | ${[...extra, t.trainableParams.toLocaleString('en-US'), formatBytes(t.stateBytes), formatBytes(t.estimatedRssBytes), formatBytes(t.peakTensorBytes),
      String(Math.round(t.tokensPerSecond)), fmtLoss(t.trainLoss), fmtLoss(t.valLoss), fmtAcc(t.accuracy)].join(' | ')} |`
  );
}
const sweepText = (r: MethodResult) => r.sweep.map((t) => `${fmtLr(t.lr)}: ${t.failure ? 'diverged' : fmtAcc(t.accuracy)}`).join(' · ');
const HEAD = 'trainable params | state (params + optimizer) | peak RSS (estimated) | peak tensor memory (measured) | tokens/s | train loss | val loss | accuracy';

/** Why a method ends at 0 % in every run of its sweep, from its own figures. */
function whyZero(r: MethodResult): string {
  const lowest = r.sweep.filter((t) => !t.failure).reduce<Trial | null>((a, t) => (!a || t.valLoss < a.valLoss ? t : a), null);
  const diverged = r.sweep.filter((t) => t.failure).map((t) => fmtLr(t.lr));
  const reference = lora?.best;
  const parts = [`every rate of the sweep (${sweepText(r)}) leaves the greedy answer wrong after ${steps} steps`];
  if (lowest) parts.push(`its lowest validation loss is ${fmtLoss(lowest.valLoss)} at lr ${fmtLr(lowest.lr)}${reference ? `, against LoRA's ${fmtLoss(reference.valLoss)}` : ''}: the loss falls, the answer token has not yet become the most likely one`);
  if (diverged.length) parts.push(`diverged at ${diverged.join(', ')}`);
  parts.push(`with ${lowest?.trainableParams.toLocaleString('en-US') ?? '?'} trainable values it needs more steps or a larger rate than this budget gives; a budget, not a defect (its property tests pass)`);
  return parts.join('; ');
}

function claims(): string[] {
  const get = (id: string) => results.find((r) => r.method.id === id);
  const lines: string[] = [];
  const acc = (t: Trial | undefined | null) => fmtAcc(t?.accuracy ?? null);
  const fullBest = get('full')?.best;
  if (lorasb && lora) {
    const small = lorasbSmall;
    const ratio = small && small.trainableParams ? lora.best.trainableParams / small.trainableParams : NaN;
    lines.push(
      `| LoRA-SB: 27–90× fewer trainable parameters than LoRA at equal quality | LoRA-SB r = 16: ${small?.trainableParams.toLocaleString('en-US') ?? '–'} parameters (${ratio.toFixed(0)}× fewer than LoRA's ${lora.best.trainableParams.toLocaleString('en-US')}), ${acc(small)} against LoRA's ${acc(lora.best)} (both at their best rate); at its default r = 96 (${lorasb.best.trainableParams.toLocaleString('en-US')} parameters, more than LoRA on this 256-wide model) ${acc(lorasb.best)} | ${small && small.accuracy !== null && lora.best.accuracy !== null ? (small.accuracy >= lora.best.accuracy - RECOMMENDATION_TOLERANCE ? 'holds' : 'not at this budget') : 'not measured'} |`,
    );
  } else lines.push('| LoRA-SB: 27–90× fewer parameters than LoRA at equal quality | lorasb or lora not in this run | – |');
  const svfit = get('svfit');
  if (svfit && lora) {
    const ratio = lora.best.trainableParams / Math.max(1, svfit.best.trainableParams);
    lines.push(
      `| SVFit: 16× fewer trainable parameters than LoRA, better quality | ${svfit.best.trainableParams.toLocaleString('en-US')} singular values (99 % energy rule) against LoRA's ${lora.best.trainableParams.toLocaleString('en-US')}: ${ratio.toFixed(1)}× fewer; ${acc(svfit.best)} against ${acc(lora.best)} | ${svfit.best.accuracy !== null && lora.best.accuracy !== null && svfit.best.accuracy >= lora.best.accuracy - RECOMMENDATION_TOLERANCE ? 'holds' : 'fewer parameters yes, equal quality not at this budget'} |`,
    );
  }
  if (dylora) {
    const text = dyloraRanks.map((d) => `ρ = ${d.rank}: ${fmtAcc(d.accuracy)} (val ${fmtLoss(d.valLoss)})`).join(', ');
    const working = dyloraRanks.filter((d) => d.accuracy > 0).length;
    lines.push(`| DyLoRA: one training gives working adapters at every rank ≤ r | the best run evaluated at each rank: ${text || '–'} | ${dyloraRanks.length ? `${working} of ${dyloraRanks.length} ranks answer right` : 'not measured'} |`);
  }
  const sora = get('sora');
  if (sora) {
    const p = sora.best.probe;
    lines.push(`| SoRA: the gates prune ranks | ${p.gatesTotal ? `${p.gatesTotal - p.gatesKept} of ${p.gatesTotal} gate entries at exactly 0 after ${steps} steps (best run)` : '–'} | ${p.gatesTotal ? (p.gatesKept < p.gatesTotal ? 'holds' : `no rank pruned in ${steps} steps (the threshold needs more steps)`) : 'not measured'} |`);
  }
  const lorapro = get('lorapro');
  if (lorapro && lora && fullBest) {
    const gap = (t: Trial) => (fullBest.accuracy ?? 0) - (t.accuracy ?? 0);
    lines.push(`| LoRA-Pro closes the gap to full fine-tuning | gap to full FT (${acc(fullBest)}): LoRA ${(100 * gap(lora.best)).toFixed(1)} points, LoRA-Pro ${(100 * gap(lorapro.best)).toFixed(1)} points | ${gap(lorapro.best) <= gap(lora.best) ? 'holds' : 'not at this budget'} |`);
  } else lines.push('| LoRA-Pro closes the gap to full fine-tuning | `lorapro` is not registered in this build | – |');
  const randlora = get('randlora');
  if (randlora) {
    const p = randlora.best.probe;
    const r = Number(randlora.method.schema.find((f) => f.name === 'rank')?.default);
    lines.push(`| RandLoRA: full-rank update from rank-r bases | rank(ΔW) of the first wrapped module after training: ${p.updateRank ?? '–'} of ${p.updateRankMax ?? '–'} (r = ${r}) | ${p.updateRank !== undefined ? (p.updateRank > r ? 'holds' : 'no') : 'not measured'} |`);
  }
  return lines;
}

function recommendationText(): string {
  const entries: BakeoffEntry[] = results
    .filter((r) => !r.best.failure)
    .map((r) => ({ method: r.method.id, accuracy: r.best.accuracy, valLoss: r.best.valLoss, trainableParams: r.best.trainableParams, memoryBytes: r.best.estimatedRssBytes, wallSeconds: r.best.wallSeconds }));
  const rec = recommend(entries);
  if (!rec) return 'No method answered a held-out example right, so there is nothing to recommend.';
  return `${rec.explanation}\n\n- per trainable parameter: ${rec.perParameter.text}\n- per MB: ${rec.perMegabyte.text}\n- per minute: ${rec.perMinute.text}`;
}

/** A section whose code fails says so in the document instead of losing the tables above it. */
function safely(what: string, section: () => string): string {
  try {
    return section();
  } catch (e) {
    return `(${what} could not be written: ${e instanceof Error ? e.message : String(e)})`;
  }
}

const zero = results.filter((r) => !r.best.failure && (r.best.accuracy ?? 0) === 0);
const setup = realShape
  ? `a random-weight checkpoint in the published shape of \`${realShape}\` (test/fixtures/real-shapes.ts, BF16), batch ${BATCH}, sequence length 64, ${steps} steps at each method's paper learning rate. Random weights answer nothing: this table is for trainable parameters, state, memory and speed at real size; accuracy is not measured.`
  : `the bundled model (\`resources/models/brown-llama\`, 4 layers, 256 wide) and the bundled review-sentiment dataset (\`resources/datasets/review-sentiment.jsonl\`, 15 % held out), seed 0, ${steps} steps of batch ${BATCH} × sequence length 64, cosine schedule with ${Math.max(1, Math.round(steps / 10))} warm-up steps, every method at its schema defaults on its default targets (adapters: q, k, v, o; optimizer methods: every attention and MLP linear). Accuracy is exact match of the greedy answer on ${metricExamples} held-out reviews; the base model scores 0 %.`;

const doc = `# Methods ${realShape ? `at real size (${realShape})` : 'on the bundled task'}

Every registered method (${results.length}), trained on ${setup}

Each method runs at **its paper's learning rate** (\`paperLearningRate\` in its registry entry: the
rate of the paper's or official code's runs, with the source on the method card and in \`lowrank methods\`;
methods without one take ${FINETUNE_DEFAULTS.lr}) and${multipliers.length > 1 ? ` at a sweep of ${multipliers.length} rates, ${multipliers.map((k) => `${k}×`).join(', ')} that rate, with the same budget and seed; the second table keeps each method's best (highest accuracy, then lowest validation loss). Paper rates were tuned for thousands of steps on models 100–1000× larger; in ${steps} steps a rate moves the weights about rate × steps, so the sweep goes up from the paper's rate, not down, and shows how much each method gains (a rate that diverges is listed as such)` : ' no sweep'}.

State bytes are the trainable values plus their optimizer state, exactly as the run stored them. Peak RSS is the
estimator's figure for the run (all runs share one process here, whose heap never shrinks, so a
measured RSS would carry over from run to run); peak tensor memory is measured. Tokens/s is as measured
on this machine beside other work; \`npm run bench\` has the careful speed figures.

Regenerate with \`npm run methods-report -- --steps ${steps}${multipliers.length > 1 ? ` --sweep ${multipliers.join(',')}` : ''}${realShape ? ` --real ${realShape}` : ''}\` (${os.cpus().length} CPU cores, wasm backend, ${new Date().toISOString().slice(0, 10)}; this run took ${minutes.toFixed(1)} min).

## At each paper's learning rate

| method | paper lr | ${HEAD} |
|---|---|---|---|---|---|---|---|---|---|
${results.map((r) => row(r, r.paper, [r.paperLr === null ? `not pinned (${fmtLr(r.paper.lr)} used)` : fmtLr(r.paperLr)])).join('\n')}
${multipliers.length > 1 ? `
## At the best rate of the sweep

| method | best lr | ${HEAD} | the sweep (lr: accuracy) |
|---|---|---|---|---|---|---|---|---|---|---|
${results.map((r) => `${row(r, r.best, [`${fmtLr(r.best.lr)} (${(r.best.lr / r.paper.lr).toPrecision(2)}×)`])} ${sweepText(r)} |`).join('\n')}

## Methods at 0 %

${safely('the 0 % list', () => (zero.length === 0 ? 'None: every method answers some held-out reviews right at its best rate.' : zero.map((r) => `- \`${r.method.id}\`: ${whyZero(r)}.`).join('\n')))}

## The papers' claims at this scale

| claim | measured here | verdict |
|---|---|---|
${safely('the claims table', () => claims().join('\n'))}

## Which method to pick (the app's rule)

${safely('the recommendation', recommendationText)}
` : ''}
## Where each paper learning rate comes from

${results.map((r) => `- \`${r.method.id}\`: ${r.method.paperLearningRate ? `${r.method.paperLearningRate.value} — ${r.method.paperLearningRate.source}` : 'not pinned: no source read states one (SVFit has no official code; the DCT optimizer class takes lr as a required argument)'}`).join('\n')}
`;
fs.mkdirSync(path.dirname(out), { recursive: true });
fs.writeFileSync(out, doc);
console.log(`wrote ${out} in ${minutes.toFixed(1)} min`);
