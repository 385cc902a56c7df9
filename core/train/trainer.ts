/**
 * The training loop, knowing nothing about models (minGPT's trainer.py shape): it asks for the
 * batch of a step, differentiates a loss function with respect to the trainable variables,
 * accumulates, clips, steps the optimizer on a schedule, and reports through hooks. Batches are
 * a pure function of the step so a resumed run sees exactly the data the uninterrupted run saw.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { clipByGlobalNorm } from '../optim/adamw.ts';
import type { Optimizer } from '../optim/registry.ts';
import type { PrivateGradients } from '../methods/method.ts';
import { learningRate, type ScheduleOptions } from './schedule.ts';

export interface Batch {
  /** [B, T] token ids. */
  ids: Int32Array;
  /** [B, T] labels, -100 where no loss is taken. */
  labels: Int32Array;
  /** [B, T] 1 for real tokens, 0 for padding; omitted when there is no padding. */
  attentionMask?: Int32Array;
  batchSize: number;
  seqLen: number;
}

export interface StepReport {
  step: number;
  totalSteps: number;
  loss: number;
  lr: number;
  gradNorm: number;
  /** Input tokens of the step (padding excluded) and, of those, the ones the loss was taken on. */
  tokens: number;
  trainedTokens: number;
  /** Over the last RECENT_STEPS steps' own compute time: loading, evaluations, checkpoints and pauses left out. */
  tokensPerSecond: number;
  elapsedSeconds: number;
  /**
   * Seconds left to the last step: the lower quartile of the recent steps' times (a pause or a few
   * slow first steps do not move it) times the steps left, plus the evaluations and checkpoints still
   * to come at their measured mean durations.
   */
  etaSeconds: number;
  /** Peak tfjs tensor bytes inside a step (measured with tf.profile on the first step run). */
  peakTensorBytes: number;
}

export interface TrainerOptions {
  totalSteps: number;
  /** First step to run (a resumed run starts after its checkpoint). */
  startStep?: number;
  gradientAccumulation?: number;
  clipNorm?: number;
  schedule: ScheduleOptions;
  evalEvery?: number;
  checkpointEvery?: number;
  /** DP-SGD: per-example clipping and noise instead of batch gradients and global clipping (method.ts). */
  privacy?: PrivateGradients;
  /** What an evaluation is expected to take before one has run here (the run's step-0 evaluation), for the ETA. */
  evalSecondsEstimate?: number;
  /**
   * Step times of this very configuration measured before the run (Review's timed steps): they fill
   * the ETA's window until the run has RECENT_STEPS of its own, so a few slow first steps (the app's
   * page loading beside them on a small machine) do not set the estimate alone.
   */
  priorStepSeconds?: number[];
}

export interface TrainerHooks {
  /** Before step `step` (0-based) computes its gradients, with its learning rate (DyLoRA samples its rank here). */
  beforeStep?(step: number, lr: number): void;
  /** Right after the optimizer updated the parameters in step `step` (SoRA's proximal gate update). */
  afterOptimizerStep?(step: number, lr: number): void;
  onStep?(report: StepReport): void;
  /** Called after step `step` (1-based count of finished steps) when evalEvery divides it, and at the end; after that step's checkpoint. */
  onEval?(step: number): void | Promise<void>;
  /** Called when checkpointEvery divides the step, at the end and when stopping; before that step's evaluation. */
  onCheckpoint?(step: number): void | Promise<void>;
  /** Polled between steps; true stops the loop after the current step (cancel, early stop). */
  shouldStop?(): boolean;
}

/**
 * A batch's loss and the token count it was taken on; `penalty`, when given, is differentiated with
 * the loss but left out of the reported loss (SoRA's sparsity term would otherwise dominate the curve).
 */
/** How many recent steps the throughput and the ETA are taken over. */
export const RECENT_STEPS = 10;

/** Step timings for the throughput and ETA of StepReport. */
class StepClock {
  constructor(
    private readonly evalSecondsEstimate = 0,
    private readonly prior: number[] = [],
  ) {}
  private readonly recent: Array<{ seconds: number; tokens: number }> = [];
  private evalSeconds: number[] = [];
  private checkpointSeconds: number[] = [];

  addStep(seconds: number, tokens: number): void {
    this.recent.push({ seconds, tokens });
    if (this.recent.length > RECENT_STEPS) this.recent.shift();
  }

  addEval(seconds: number): void {
    this.evalSeconds.push(seconds);
  }

  addCheckpoint(seconds: number): void {
    this.checkpointSeconds.push(seconds);
  }

  tokensPerSecond(): number {
    const seconds = this.recent.reduce((s, r) => s + r.seconds, 0);
    return this.recent.reduce((s, r) => s + r.tokens, 0) / Math.max(seconds, 1e-9);
  }

  /** `done` steps finished of `total`; the hooks of step `done` itself are still to run. */
  etaSeconds(done: number, total: number, evalEvery: number | undefined, checkpointEvery: number | undefined): number {
    const own = this.recent.map((r) => r.seconds);
    const sorted = [...this.prior.slice(0, Math.max(0, RECENT_STEPS - own.length)), ...own].sort((a, b) => a - b);
    // The lower quartile: steps slowed by something else on the machine (the app's page loading beside
    // the first ones, a pause, a collection) do not set it; steady steps vary by ~±15 %, so it runs
    // ~10 % under their mean (measured on the bundled task: 0.079 s against a mean of 0.094 s).
    const typical = sorted.length ? sorted[Math.floor((sorted.length - 1) / 4)] : 0;
    const mean = (xs: number[], otherwise = 0) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : otherwise);
    // Hooks run after steps that their interval divides, and after the last step.
    const hooksLeft = (every: number | undefined) => (every ? Math.floor(total / every) - Math.floor((done - 1) / every) + (total % every === 0 ? 0 : 1) : 0);
    return (
      (total - done) * typical +
      hooksLeft(evalEvery) * mean(this.evalSeconds, this.evalSecondsEstimate) +
      hooksLeft(checkpointEvery) * mean(this.checkpointSeconds)
    );
  }
}

export type LossFunction = (batch: Batch) => { loss: tf.Scalar; tokens: tf.Scalar; penalty?: tf.Scalar };

/** Example b of a batch, as a batch of one (DP-SGD differentiates each example on its own). */
export function exampleOf(batch: Batch, b: number): Batch {
  const from = b * batch.seqLen;
  const to = from + batch.seqLen;
  return {
    ids: batch.ids.subarray(from, to),
    labels: batch.labels.subarray(from, to),
    ...(batch.attentionMask ? { attentionMask: batch.attentionMask.subarray(from, to) } : {}),
    batchSize: 1,
    seqLen: batch.seqLen,
  };
}

/** Adds `add` into the running sums (taking ownership of it). */
function accumulate(sums: Map<string, tf.Tensor>, name: string, add: tf.Tensor): void {
  const prev = sums.get(name);
  if (!prev) {
    sums.set(name, add);
    return;
  }
  sums.set(name, tf.add(prev, add));
  prev.dispose();
  add.dispose();
}

export async function train(
  params: Map<string, tf.Variable>,
  optimizer: Optimizer,
  batchAt: (step: number, micro: number) => Batch,
  lossFn: LossFunction,
  opts: TrainerOptions,
  hooks: TrainerHooks = {},
): Promise<{ stepsRun: number; lastLoss: number }> {
  const accumulation = opts.gradientAccumulation ?? 1;
  const names = [...params.keys()];
  const vars = names.map((n) => params.get(n)!);
  const started = performance.now();
  const clock = new StepClock(opts.evalSecondsEstimate, (opts.priorStepSeconds ?? []).filter((x) => Number.isFinite(x) && x > 0));
  let lastLoss = NaN;
  let stepsRun = 0;
  let peakTensorBytes = 0;
  for (let step = opts.startStep ?? 0; step < opts.totalSteps; step++) {
    const stepStarted = performance.now();
    let grads = new Map<string, tf.Tensor>();
    let lossSum = 0;
    let tokenSum = 0;
    let trainedSum = 0;
    const lr = learningRate(opts.schedule, step);
    hooks.beforeStep?.(step, lr);
    let examples = 0;
    // The reported loss (without the method's penalty), the gradients of loss + penalty, and the token count.
    const lossAndGrads = (batch: Parameters<typeof lossFn>[0]) =>
      tf.tidy(() => {
        let tokenCount: tf.Scalar | undefined;
        let reported: tf.Scalar | undefined;
        const result = tf.variableGrads(() => {
          const out = lossFn(batch);
          tokenCount = tf.keep(out.tokens);
          if (!out.penalty) return out.loss;
          reported = tf.keep(out.loss);
          return tf.add(out.loss, out.penalty) as tf.Scalar;
        }, vars);
        return { value: reported ?? result.value, grads: result.grads, tokens: tokenCount! };
      });
    const privacy = opts.privacy;
    // DP-SGD: each example's gradient, scaled to L2 norm ≤ C over all parameters (Opacus' factor
    // min(1, C / (‖g‖ + 1e-6))), is added to the sums; its loss counts as one example's.
    const privateMicroStep = (micro: number) => {
      const batch = batchAt(step, micro);
      for (let b = 0; b < batch.batchSize; b++) {
        const example = exampleOf(batch, b);
        const { value, grads: g, tokens } = lossAndGrads(example);
        lossSum += value.dataSync()[0] / batch.batchSize;
        trainedSum += tokens.dataSync()[0];
        value.dispose();
        tokens.dispose();
        const present = names.map((name, i) => [name, g[vars[i].name]] as const).filter(([, gi]) => gi);
        const norm = tf.tidy(() => tf.sqrt(tf.addN(present.map(([, gi]) => tf.sum(tf.square(gi!)))))).dataSync()[0];
        const factor = Math.min(1, privacy!.clipNorm / (norm + 1e-6));
        for (const [name, gi] of present) {
          accumulate(grads, name, tf.mul(gi!, factor));
          gi!.dispose();
        }
      }
      tokenSum += batch.attentionMask ? batch.attentionMask.reduce((n, m) => n + m, 0) : batch.batchSize * batch.seqLen;
      examples += batch.batchSize;
    };
    const microStep = (micro: number) => {
      if (privacy) return privateMicroStep(micro);
      const batch = batchAt(step, micro);
      const { value, grads: g, tokens } = lossAndGrads(batch);
      lossSum += value.dataSync()[0];
      trainedSum += tokens.dataSync()[0];
      // Throughput counts every real (non-padding) input token, as it is all computed.
      tokenSum += batch.attentionMask ? batch.attentionMask.reduce((n, m) => n + m, 0) : batch.batchSize * batch.seqLen;
      value.dispose();
      tokens.dispose();
      // Sum micro-batch gradients, averaged below.
      for (let i = 0; i < names.length; i++) {
        const name = names[i];
        const gi = g[vars[i].name];
        if (!gi) continue;
        const prev = grads.get(name);
        grads.set(name, prev ? tf.tidy(() => tf.add(prev, gi)) : gi);
        if (prev) {
          prev.dispose();
          gi.dispose();
        }
      }
    };
    // The first step runs under tf.profile, which reports the peak of live tensor bytes inside it:
    // the measured counterpart of the memory estimate (activations live only within a step).
    if (stepsRun === 0) {
      const profile = await tf.profile(() => microStep(0));
      peakTensorBytes = profile.peakBytes;
    } else {
      microStep(0);
    }
    for (let micro = 1; micro < accumulation; micro++) microStep(micro);
    if (privacy) {
      // Noise N(0, (σ·C)²) on the sum of clipped gradients, then the mean over the step's examples.
      const noised = new Map<string, tf.Tensor>();
      for (const [name, g] of grads) {
        const noise = privacy.noiseMultiplier > 0 ? privacy.normal(g.shape) : null;
        noised.set(name, tf.tidy(() => tf.div(noise ? tf.add(g, tf.mul(noise, privacy.noiseMultiplier * privacy.clipNorm)) : g, examples)));
        noise?.dispose();
        g.dispose();
      }
      grads = noised;
    } else if (accumulation > 1) {
      const averaged = new Map<string, tf.Tensor>();
      for (const [name, g] of grads) {
        averaged.set(name, tf.div(g, accumulation));
        g.dispose();
      }
      grads = averaged;
    }
    const clipped = clipByGlobalNorm(grads, privacy ? 0 : (opts.clipNorm ?? 0));
    const loss = lossSum / accumulation;
    // One NaN or infinite gradient turns every weight it reaches into NaN, and the run would train on
    // (and checkpoint) garbage: stop before the optimizer applies it, so the weights stay as they were.
    if (!Number.isFinite(loss) || !Number.isFinite(clipped.norm)) {
      for (const g of clipped.grads.values()) g.dispose();
      throw new LowrankError(
        'NUMERIC',
        `step ${step + 1}: the loss is ${loss} and the gradient norm ${clipped.norm}: training diverged; ` +
          `start again with a lower learning rate (it was ${lr} at this step)${opts.clipNorm ? '' : ' or with gradient clipping on'}`,
      );
    }
    optimizer.step(clipped.grads, lr);
    for (const g of clipped.grads.values()) g.dispose();
    hooks.afterOptimizerStep?.(step, lr);

    stepsRun++;
    lastLoss = loss;
    const now = performance.now();
    const elapsedSeconds = (now - started) / 1000;
    clock.addStep((now - stepStarted) / 1000, tokenSum);
    hooks.onStep?.({
      step: step + 1,
      totalSteps: opts.totalSteps,
      loss: lastLoss,
      lr,
      gradNorm: clipped.norm,
      tokens: tokenSum,
      trainedTokens: trainedSum,
      tokensPerSecond: clock.tokensPerSecond(),
      elapsedSeconds,
      etaSeconds: clock.etaSeconds(step + 1, opts.totalSteps, opts.evalEvery, opts.checkpointEvery),
      peakTensorBytes,
    });
    const done = step + 1;
    const last = done === opts.totalSteps;
    // A step runs synchronously (dataSync), so a stop request, which arrives as a message on the
    // job's channel (a forked process's, an engine window's IPC), is only seen once the event
    // loop gets a turn: give it one per step.
    await new Promise((resolve) => setTimeout(resolve, 0));
    const stopping = hooks.shouldStop?.() ?? false;
    // The checkpoint comes before the evaluation: whatever follows the trained weights (evaluation,
    // samples, and after the last step the final metrics and exports) cannot lose them.
    if (opts.checkpointEvery && (done % opts.checkpointEvery === 0 || last || stopping)) {
      const t0 = performance.now();
      await hooks.onCheckpoint?.(done);
      clock.addCheckpoint((performance.now() - t0) / 1000);
    }
    if (opts.evalEvery && (done % opts.evalEvery === 0 || last)) {
      const t0 = performance.now();
      await hooks.onEval?.(done);
      clock.addEval((performance.now() - t0) / 1000);
    }
    if (stopping) break;
  }
  return { stepsRun, lastLoss };
}
