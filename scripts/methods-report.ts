/**
 * `npm run methods-report` → docs/methods.md: a bake-off that is fair to every registered method.
 * Each method trains on the bundled task (the demo's review-sentiment data on the bundled model)
 * with the same seed and step budget, once at its own paper learning rate (MethodInfo
 * .paperLearningRate) and at a small sweep of rates around it; the report gives both, the sweep
 * itself, why any method stays at 0 %, the papers' claims beside what this scale measures, and the
 * app's recommendation rule (core/bakeoff/recommend.ts) applied to the best runs.
 * Methods come from the registry, so every method registered later appears without a change here.
 *
 *   npm run methods-report -- [--steps 150] [--batch-size 8] [--sweep 1,5,25] [--methods lora,dora] [--metric-examples 40]
 *   npm run methods-report -- --real smollm2-135m [--steps 10]      (a random-weight checkpoint in a
 *       published shape, test/fixtures/real-shapes.ts: memory and speed at real size, paper lr only,
 *       written to docs/methods-real.md)
 *   npm run methods-report -- --shard 1/2 --json a.json   then   --shard 2/2 --json b.json   then
 *   npm run methods-report -- --from a.json,b.json         (the methods split between processes run side
 *       by side on a multi-core machine; --from writes the document from their raw figures)
 *
 * A report, not a test: the default budget is the wizard's (core/train/recommend.ts DEFAULT_RUN_BUDGET:
 * 150 steps of batch 8, the budget that takes the default LoRA run past 70 %), at sequence length 64
 * (the reviews are shorter), for every method at 3 rates: about an hour on a quiet 2-core machine in
 * two shards.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { listMethods, type Method } from '../core/methods/index.ts';
import { openStore, type RunStore } from '../core/store/index.ts';
import { EVAL_METRIC_EXAMPLES, FINETUNE_DEFAULTS, loadTrainedRun, runFinetune, type FinetuneConfig, type PreparedRun } from '../core/train/finetune.ts';
import { exactMatch, hasCompletionTask, validationLoss } from '../core/train/evaluate.ts';
import { demoConfig } from '../core/cli/demo.ts';
import { formatBytes } from '../core/train/memory.ts';
import { jacobiSvd } from '../core/linalg/svd.ts';
import { weightOutIn64 } from '../core/methods/factored-adapter.ts';
import { recommend, RECOMMENDATION_TOLERANCE, type BakeoffEntry } from '../core/bakeoff/recommend.ts';
import { isLowrankError } from '../core/errors.ts';
import { DEFAULT_RUN_BUDGET } from '../core/train/recommend.ts';
import { getMethod } from '../core/methods/index.ts';
import * as tf from '../core/tf.ts';

const ROOT = path.resolve(import.meta.dirname, '..');

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}
const realShape = flag('real');
/** --depth N with --real: the published layer shapes and vocabulary at N layers (all of them without it). */
const depth = flag('depth') === undefined ? null : Number(flag('depth'));
const steps = Number(flag('steps') ?? (realShape ? 10 : DEFAULT_RUN_BUDGET.steps));
// The paper's own rate (×1) is always one point of the sweep.
const multipliers = realShape ? [1] : [...new Set([1, ...(flag('sweep') ?? '1,5,25').split(',').map(Number)])].sort((a, b) => a - b);
const metricExamples = Number(flag('metric-examples') ?? (realShape ? 0 : DEFAULT_RUN_BUDGET.metricExamples));
const only = flag('methods')?.split(',');
const BATCH = Number(flag('batch-size') ?? (realShape ? 4 : DEFAULT_RUN_BUDGET.batchSize));
const SEQ_LEN = 64;
const shardFlag = flag('shard');
const shard = shardFlag ? /^(\d+)\/(\d+)$/.exec(shardFlag) : null;
const fromFiles = flag('from')?.split(',');

const jsonOut = path.resolve(flag('json') ?? path.join(os.tmpdir(), `methods-report-${realShape ?? 'bundled'}${shard ? `-${shard[1]}of${shard[2]}` : ''}.json`));
if ((depth !== null && (!realShape || !Number.isInteger(depth) || depth < 1)) || !(steps >= 1) || !(BATCH >= 1) || multipliers.some((m) => !(m > 0)) || !(metricExamples >= 0) || (shardFlag && (!shard || Number(shard[1]) < 1 || Number(shard[1]) > Number(shard[2])))) {
  console.error('methods-report: --depth N (N ≥ 1 layers) goes with --real; --steps and --batch-size must be ≥ 1, --sweep a list of positive multipliers (e.g. 1,3,10), --metric-examples ≥ 0, --shard i/n with 1 ≤ i ≤ n');
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
  /** The base model's accuracy at step 0 (the run's first evaluation, on its first held-out answers). */
  baseAccuracy?: number | null;
}

interface MethodResult {
  method: Method;
  paperLr: number | null;
  paper: Trial;
  sweep: Trial[];
  best: Trial;
}

const started = performance.now();
// Training happens unless the document is written from earlier raw figures (--from).
const home = fromFiles ? '' : fs.mkdtempSync(path.join(os.tmpdir(), 'lowrank-methods-report-'));
const store = fromFiles ? (null as unknown as RunStore) : openStore(home);
const modelDir = fromFiles ? '' : realShape ? await realShapeFolder(realShape) : demoConfig(steps).model;

/** The checkpoint of a published shape (test/fixtures/real-shapes.ts), generated once into the temp folder. */
async function realShapeFolder(shape: string): Promise<string> {
  const { REAL_SHAPES, writeRealShape } = await import('../test/fixtures/real-shapes.ts');
  if (!Object.hasOwn(REAL_SHAPES, shape)) {
    console.error(`methods-report: --real ${shape} is not a shape of test/fixtures/real-shapes.ts; choose one of ${Object.keys(REAL_SHAPES).join(', ')}`);
    process.exit(2);
  }
  process.stderr.write(`writing (or reusing) the random-weight ${shape} checkpoint ...\n`);
  return writeRealShape(path.join(os.tmpdir(), 'lowrank-methods-report-shapes', `${shape}${depth ? `-${depth}-layers` : ''}`), shape as Parameters<typeof writeRealShape>[1], depth ? { layers: depth } : {});
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
    seqLen: SEQ_LEN,
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
      baseAccuracy: store.metrics(r.runId, { split: 'val', name: 'exact_match' }).find((m) => m.step === 0)?.value ?? null,
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

/** What one process measured (or several, merged by --from): the raw figures the document is written from. */
interface Collected {
  steps: number;
  multipliers: number[];
  metricExamples: number;
  batch: number;
  seqLen: number;
  realShape: string | null;
  /** Layers of the real shape when fewer than published (--depth). */
  depth: number | null;
  /** Wall minutes of the longest process, and how many processes ran side by side. */
  minutes: number;
  processes: number;
  results: MethodResult[];
  lorasbSmall: Trial | null;
  dyloraRanks: Array<{ rank: number; accuracy: number; valLoss: number }>;
}

async function collect(): Promise<Collected> {
  const all = listMethods().filter((m) => !only || only.includes(m.id));
  // Shard i of n takes every n-th method, so the slow optimizer methods spread over the processes.
  const methods = shard ? all.filter((_, k) => k % Number(shard[2]) === Number(shard[1]) - 1) : all;
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

  // The claims that need runs of their own: LoRA-SB at a rank far below LoRA's parameters, DyLoRA at each rank.
  const lorasb = results.find((r) => r.method.id === 'lorasb');
  let lorasbSmall: Trial | null = null;
  if (lorasb && !realShape) {
    process.stderr.write(`lorasb rank 16 at lr ${lorasb.best.lr} ... `);
    lorasbSmall = await train(lorasb.method, lorasb.best.lr, { rank: 16 });
    process.stderr.write(lorasbSmall.failure ? `failed (${lorasbSmall.failure})\n` : `accuracy ${fmtAcc(lorasbSmall.accuracy)}\n`);
  }
  const dylora = results.find((r) => r.method.id === 'dylora');
  const dyloraRanks: Collected['dyloraRanks'] = [];
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
  store.close();
  fs.rmSync(home, { recursive: true, force: true });
  return {
    steps, multipliers, metricExamples, batch: BATCH, seqLen: SEQ_LEN, realShape: realShape ?? null, depth,
    minutes: (performance.now() - started) / 60000, processes: 1, results, lorasbSmall, dyloraRanks,
  };
}

/** The raw figures of one or more processes (--from), merged in the registry's order; their budgets must agree. */
function readCollected(files: string[]): Collected {
  const parts = files.map((f) => {
    let raw: Omit<Collected, 'results'> & { results: Array<Omit<MethodResult, 'method'> & { method: string }> };
    try {
      raw = JSON.parse(fs.readFileSync(f, 'utf8'));
    } catch (e) {
      console.error(`methods-report: --from ${f}: ${e instanceof Error ? e.message : String(e)} (give the files that --json wrote)`);
      process.exit(2);
    }
    return raw;
  });
  const budget = (c: (typeof parts)[number]) => JSON.stringify([c.steps, c.multipliers, c.metricExamples, c.batch, c.seqLen, c.realShape, c.depth ?? null]);
  const differing = parts.findIndex((c) => budget(c) !== budget(parts[0]));
  if (differing > 0) {
    console.error(`methods-report: --from ${files[differing]} was run with another budget than ${files[0]} (steps, sweep, metric examples, batch, sequence length, shape): ${budget(parts[differing])} vs ${budget(parts[0])}`);
    process.exit(2);
  }
  const order = listMethods().map((m) => m.id);
  const results = parts
    .flatMap((c) => c.results)
    .map((r) => ({ ...r, method: getMethod(r.method) }))
    .sort((a, b) => order.indexOf(a.method.id) - order.indexOf(b.method.id));
  return {
    ...parts[0],
    minutes: Math.max(...parts.map((c) => c.minutes)),
    processes: parts.reduce((n, c) => n + c.processes, 0),
    results,
    lorasbSmall: parts.map((c) => c.lorasbSmall).find(Boolean) ?? null,
    dyloraRanks: parts.map((c) => c.dyloraRanks).find((d) => d.length) ?? [],
  };
}

const data = fromFiles ? readCollected(fromFiles) : await collect();
if (!fromFiles) {
  fs.writeFileSync(jsonOut, JSON.stringify({ ...data, results: data.results.map((r) => ({ ...r, method: r.method.id })) }, null, 1));
  process.stderr.write(`raw figures: ${jsonOut}\n`);
}
if (shard) {
  console.log(`shard ${shard[1]}/${shard[2]}: ${data.results.length} methods in ${data.minutes.toFixed(1)} min; write the document with --from and every shard's --json file`);
  process.exit(0);
}
const { results, lorasbSmall, dyloraRanks, minutes } = data;
const lora = results.find((r) => r.method.id === 'lora');
const lorasb = results.find((r) => r.method.id === 'lorasb');
const dylora = results.find((r) => r.method.id === 'dylora');

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
  if (t.failure) return `| \`${r.method.id}\` | ${[...extra, `failed: ${t.failure.replace(/\|/g, '/').slice(0, 120)}`].join(' | ')} | | | | | | | | |`;
  return (
    `| \`${r.method.id}\` | ${[...extra, t.trainableParams.toLocaleString('en-US'), formatBytes(t.stateBytes), formatBytes(t.estimatedRssBytes), formatBytes(t.peakTensorBytes),
      String(Math.round(t.tokensPerSecond)), `${Math.round(t.wallSeconds)} s`, fmtLoss(t.trainLoss), fmtLoss(t.valLoss), fmtAcc(t.accuracy)].join(' | ')} |`
  );
}
const sweepText = (r: MethodResult) => r.sweep.map((t) => `${fmtLr(t.lr)}: ${t.failure ? 'diverged' : fmtAcc(t.accuracy)}`).join(' · ');
const HEAD = 'trainable params | state (params + optimizer) | peak RSS (estimated) | peak tensor memory (measured) | tokens/s | training time (steps and evaluations as the run records them; loading and set-up not counted) | train loss | val loss | accuracy';

/** Why a method ends at 0 % in every run of its sweep, from its own figures. */
function whyZero(r: MethodResult): string {
  const lowest = r.sweep.filter((t) => !t.failure).reduce<Trial | null>((a, t) => (!a || t.valLoss < a.valLoss ? t : a), null);
  const diverged = r.sweep.filter((t) => t.failure).map((t) => fmtLr(t.lr));
  const reference = lora?.best;
  const parts = [`every rate of the sweep (${sweepText(r)}) leaves the greedy answer wrong after ${data.steps} steps`];
  if (lowest) parts.push(`its lowest validation loss is ${fmtLoss(lowest.valLoss)} at lr ${fmtLr(lowest.lr)}${reference ? `, against LoRA's ${fmtLoss(reference.valLoss)}` : ''}: the loss falls, the answer token has not yet become the most likely one`);
  if (diverged.length) parts.push(`diverged at ${diverged.join(', ')}`);
  // LoRAM's train loss is the pruned model's, its validation and accuracy the full model's after recovery.
  if (r.method.id === 'loram' && lowest) parts.push(`LoRAM trains on the structurally pruned model (train loss ${fmtLoss(lowest.trainLoss)}) and is scored recovered onto the full one (validation ${fmtLoss(lowest.valLoss)}); the paper first aligns the pruned model by continual pre-training, which this budget does not include`);
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
    lines.push(`| SoRA: the gates prune ranks | ${p.gatesTotal ? `${p.gatesTotal - p.gatesKept} of ${p.gatesTotal} gate entries at exactly 0 after ${data.steps} steps (best run)` : '–'} | ${p.gatesTotal ? (p.gatesKept < p.gatesTotal ? 'holds' : `no rank pruned in ${data.steps} steps (the threshold needs more steps)`) : 'not measured'} |`);
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

/** The base model's step-0 accuracy, as the runs measured it (the same weights and examples in every run). */
function baseText(): string {
  const base = [...new Set(results.flatMap((r) => r.sweep).map((t) => t.baseAccuracy).filter((v): v is number => typeof v === 'number'))];
  if (!base.length) return 'the base model was not scored';
  return `the base model scores ${base.map((v) => fmtAcc(v)).join(' / ')} at step 0 (the first ${Math.min(data.metricExamples, EVAL_METRIC_EXAMPLES)} of them)`;
}

const REAL_LAYERS = data.realShape ? (await import('../test/fixtures/real-shapes.ts')).REAL_SHAPES[data.realShape as 'smollm2-135m'].layers : 0;
const zero = results.filter((r) => !r.best.failure && (r.best.accuracy ?? 0) === 0);
const setup = data.realShape
  ? `a random-weight checkpoint in the published shape of \`${data.realShape}\` (test/fixtures/real-shapes.ts, BF16)${data.depth ? `, its layer shapes and vocabulary at ${data.depth} of its ${REAL_LAYERS} layers (the SVD-initialised methods' set-up grows with every layer; each layer's shapes, and the embedding and head, are the published ones)` : ''}, batch ${data.batch}, sequence length ${data.seqLen}, ${data.steps} steps at each method's paper learning rate. Random weights answer nothing: this table is for trainable parameters, state, memory and speed at real size; accuracy is not measured.`
  : `the bundled model (\`resources/models/brown-llama\`, 4 layers, 256 wide) and the bundled review-sentiment dataset (\`resources/datasets/review-sentiment.jsonl\`, 15 % held out), seed 0, ${data.steps} steps of batch ${data.batch} × sequence length ${data.seqLen}, cosine schedule with ${Math.max(1, Math.round(data.steps / 10))} warm-up steps, every method at its schema defaults on its default targets (adapters: q, k, v, o; optimizer methods: every attention and MLP linear). Accuracy is exact match of the greedy answer on ${data.metricExamples} held-out reviews; ${baseText()}.`;

const doc = `# Methods ${data.realShape ? `at real size (${data.realShape})` : 'on the bundled task'}

${results.length === listMethods().length ? `Every registered method (${results.length})` : `${results.length} of the ${listMethods().length} registered methods (${listMethods().filter((m) => !results.some((r) => r.method.id === m.id)).map((m) => `\`${m.id}\``).join(', ')} not in this run)`}, trained on ${setup}

Each method runs at **its paper's learning rate** (\`paperLearningRate\` in its registry entry: the
rate of the paper's or official code's runs, with the source on the method card and in \`lowrank methods\`;
methods without one take ${FINETUNE_DEFAULTS.lr}) and${data.multipliers.length > 1 ? ` at a sweep of ${data.multipliers.length} rates, ${data.multipliers.map((k) => `${k}×`).join(', ')} that rate, with the same budget and seed; the second table keeps each method's best (highest accuracy, then lowest validation loss). Paper rates were tuned for thousands of steps on models 100–1000× larger; in ${data.steps} steps a rate moves the weights about rate × steps, so the sweep goes up from the paper's rate, not down, and shows how much each method gains (a rate that diverges is listed as such)` : ' no sweep'}.

State bytes are the trainable values plus their optimizer state, exactly as the run stored them. Peak RSS is the
estimator's figure for the run (all runs share one process here, whose heap never shrinks, so a
measured RSS would carry over from run to run); peak tensor memory is measured. Tokens/s is as measured
on this machine beside other work; \`npm run bench\` has the careful speed figures.

Regenerate with \`npm run methods-report -- --steps ${data.steps} --batch-size ${data.batch}${data.multipliers.length > 1 ? ` --sweep ${data.multipliers.join(',')}` : ''}${data.realShape ? ` --real ${data.realShape}` : ''}${data.depth ? ` --depth ${data.depth}` : ''}\`${data.processes > 1 ? ` (here in ${data.processes} processes side by side, each given its methods with \`--shard i/n\` or \`--methods\` and \`--json FILE\`, their figures joined with \`--from\`)` : ''} (${os.cpus().length} CPU cores, wasm backend, ${new Date().toISOString().slice(0, 10)}; this run took ${minutes.toFixed(1)} min).

## At each paper's learning rate

| method | paper lr | ${HEAD} |
|---|---|---|---|---|---|---|---|---|---|---|
${results.map((r) => row(r, r.paper, [r.paperLr === null ? `not pinned (${fmtLr(r.paper.lr)} used)` : fmtLr(r.paperLr)])).join('\n')}
${data.multipliers.length > 1 ? `
## At the best rate of the sweep

| method | best lr | ${HEAD} | the sweep (lr: accuracy) |
|---|---|---|---|---|---|---|---|---|---|---|---|
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
// --from writes where its figures belong: docs/methods-real.md for a real shape's, docs/methods.md otherwise.
const out = path.resolve(flag('out') ?? path.join(ROOT, 'docs', data.realShape ? 'methods-real.md' : 'methods.md'));
fs.mkdirSync(path.dirname(out), { recursive: true });
fs.writeFileSync(out, doc);
console.log(`wrote ${out} in ${minutes.toFixed(1)} min`);
