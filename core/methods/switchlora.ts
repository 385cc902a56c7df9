/**
 * SwitchLoRA: Switched Low-Rank Adaptation Can Learn Full-Rank Information (Zhou et al.,
 * arXiv:2406.06564), as the official code runs it (asfsdsf/SwitchLoRA: switchlora/switch_lora.py
 * `_init_candidates`, `switch`, `_select_indices`, `_switch_chosen_indices`, `zero_lora_states`,
 * `correct_switched_lora`, `_get_switch_rate`, `_get_switch_replace_num`; lora_utils.py
 * `get_init_lora_bound`; optimizer.py `StepAdamW`; ALGORITHMS.md "SwitchLoRA"):
 *   h = W·x + s·B·A·x,  s = lora_alpha / r with lora_alpha = 1; W frozen, changed only by switches.
 *   Candidates: K = min(out, in) vectors for A's rows (in R^in) and K for B's columns (in R^out),
 *   ~ U(−√3·std, √3·std), std_A = (√out·r / in^{3/2})^{1/4}·√gain, std_B = (r / √(out·in))^{1/4}·√gain,
 *   gain = √(1/3); A's rows start as candidates K−r..K−1, B's as the same list rotated by r/2;
 *   pointers p_A = 0, p_B = r/2.
 *   Each optimizer step t (after backward and clipping, before the update): n = r / interval,
 *   interval = 40 / 0.3^{(t+1)/D}, D = descent·T, stochastically rounded, capped by the slots not
 *   frozen; rows p_A..p_A+n−1 of A take the candidates after the one before them, cyclically; for
 *   each, W += s·B[:, i]·(A[i] − c)ᵀ (so W + s·B·A and the output do not change), the old row goes back
 *   to the pool, and B's column i is frozen for N_w = 5 steps with its Adam moments and step reset;
 *   then B's columns p_B.. the same way, freezing A's rows.
 *   StepAdamW: AdamW with a step count per row of A and per column of B for the bias corrections.
 * Fine-tuning a trained base (the paper pre-trains from a random W): W starts at W₀ − s·B₀·A₀, so the
 * model starts as the base (as PiSSA's residual); W − W₀ then collects full-rank information.
 * The rank defaults to a quarter of min(out, in) per module (the 350M run: r = 256 of 1024); a rank
 * ≥ min(out, in) leaves no candidate to switch in.
 *
 * State kept across steps: W (held as a non-trainable variable `<path>.switchlora_weight` among the
 * method's tensors, so checkpoints, resume and the export carry it), and, in the optimizer state,
 * the candidate pools, selected indices, pointers, frozen counters, moments and per-row steps.
 * Export: W_final − W₀ is full rank, so no PEFT LoRA represents it: merged W + s·B·A only.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import type { AdamWOptions } from '../optim/adamw.ts';
import type { Optimizer, OptimizerState } from '../optim/registry.ts';
import type { AttachedMethod, Method, TrainingStep } from './method.ts';
import { linearTargets, type LinearTarget } from './factored-adapter.ts';
import { fromOutIn, toOutIn, variableFrom } from './lora.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

const WEIGHT = 'switchlora_weight';

/** A variable that gets no gradient, holding `initial`'s values; `initial` is disposed. */
function stateVariable<R extends tf.Rank>(initial: tf.Tensor<R>): tf.Variable<R> {
  const v = tf.variable(initial, false);
  initial.dispose();
  return v;
}
const GAIN = Math.sqrt(1 / 3); // calculate_gain('leaky_relu', √5)

/** get_init_lora_bound: the candidates' uniform bounds (√3·std). */
export function candidateBounds(inFeatures: number, outFeatures: number, r: number): { boundA: number; boundB: number } {
  const stdA = ((Math.sqrt(outFeatures) * r) / inFeatures ** 1.5) ** 0.25 * Math.sqrt(GAIN);
  const stdB = (r / Math.sqrt(outFeatures * inFeatures)) ** 0.25 * Math.sqrt(GAIN);
  return { boundA: Math.sqrt(3) * stdA, boundB: Math.sqrt(3) * stdB };
}

/** _get_switch_rate ("exponential"): 0.3 at step D, max(·, 1e-8). */
export function switchRate(step: number, descendSteps: number): number {
  return Math.max((0.3 ** (1 / descendSteps)) ** (step + 1), 1e-8);
}

/** The rank of a module: the given one, or for 0 a quarter of min(out, in); refused above min(out, in). */
function moduleRank(rank: number, target: LinearTarget): number {
  const K = Math.min(target.inFeatures, target.outFeatures);
  const r = rank || Math.max(1, Math.floor(K / 4));
  if (r > K) throw new LowrankError('BAD_ARGUMENT', `method switchlora: rank ${r} exceeds min(out, in) = ${K} of ${target.path}; choose rank ≤ ${K} (0 picks a quarter of it)`);
  return r;
}

/** One wrapped module's state. */
export interface SwitchLayer {
  readonly target: LinearTarget;
  readonly r: number;
  readonly K: number;
  readonly s: number;
  readonly A: tf.Variable<tf.Rank.R2>; // [r, in]
  readonly B: tf.Variable<tf.Rank.R2>; // [out, r]
  readonly weight: tf.Variable<tf.Rank.R2>; // W, stored layout
  readonly candidatesA: tf.Variable<tf.Rank.R2>; // [K, in]
  readonly candidatesB: tf.Variable<tf.Rank.R2>; // [K, out]
  selectedA: number[];
  selectedB: number[];
  pointerA: number;
  pointerB: number;
  frozenA: number[]; // steps A's row i stays frozen
  frozenB: number[]; // steps B's column i stays frozen
  readonly original?: tf.Tensor;
}

/** The settings of the switching schedule. */
export interface SwitchSchedule {
  interval: number;
  descent: number;
  warmSteps: number;
}

/** _select_indices (continuous): slot i of `slots` takes candidate (sel[slots[0] − 1] + 1 + i) mod K. */
function selectCandidates(slots: number[], selected: number[], K: number): number[] {
  const r = selected.length;
  const begin = selected[(slots[0] - 1 + r) % r] + 1;
  return slots.map((_, i) => (begin + i) % K);
}

/**
 * `switch` for one module at 0-based step `step` of `totalSteps`; returns the (A rows, B columns)
 * whose counterparts were frozen (their Adam state must be reset).
 */
export function switchModule(layer: SwitchLayer, step: number, totalSteps: number, schedule: SwitchSchedule, random: Random): { rowsA: number[]; columnsB: number[] } {
  const { r, K, s } = layer;
  if (K - r <= 0) return { rowsA: [], columnsB: [] };
  const interval = schedule.interval / switchRate(step, Math.max(schedule.descent * totalSteps, 1e-9));
  const exact = r / interval;
  let count = Math.floor(exact) + (random.next() < exact - Math.floor(exact) ? 1 : 0);
  const frozenA = layer.frozenA.filter((n) => n > 0).length;
  const frozenB = layer.frozenB.filter((n) => n > 0).length;
  const mod = (x: number) => ((x % r) + r) % r;
  count = Math.min(count, mod(layer.pointerA - frozenA - layer.pointerB), mod(layer.pointerB - frozenB - layer.pointerA));
  if (count <= 0) return { rowsA: [], columnsB: [] };
  const slotsA = Array.from({ length: count }, (_, i) => (layer.pointerA + i) % r);
  const slotsB = Array.from({ length: count }, (_, i) => (layer.pointerB + i) % r);
  layer.pointerA = (layer.pointerA + count) % r;
  layer.pointerB = (layer.pointerB + count) % r;
  switchRows(layer, 'A', slotsA, selectCandidates(slotsA, layer.selectedA, K), s, schedule.warmSteps);
  switchRows(layer, 'B', slotsB, selectCandidates(slotsB, layer.selectedB, K), s, schedule.warmSteps);
  return { rowsA: slotsB, columnsB: slotsA };
}

/**
 * _switch_chosen_indices for A's rows (or B's columns): W += s·B[:, i]·(A[i] − c)ᵀ (for B:
 * s·(B[:, j] − c)·A[j]ᵀ), the old vectors back into the pool, the new ones in, counterparts frozen.
 */
function switchRows(layer: SwitchLayer, which: 'A' | 'B', slots: number[], destinations: number[], s: number, warmSteps: number): void {
  const isA = which === 'A';
  const pool = isA ? layer.candidatesA : layer.candidatesB;
  const selected = isA ? layer.selectedA : layer.selectedB;
  const width = pool.shape[1];
  const poolValues = pool.dataSync().slice() as Float32Array;
  const rows = isA ? layer.A : tf.transpose(layer.B);
  const current = rows.dataSync().slice() as Float32Array; // [r, width]
  if (!isA) rows.dispose();
  const incoming = destinations.map((c) => poolValues.slice(c * width, (c + 1) * width));
  const difference = new Float32Array(slots.length * width); // old − new, one row per slot
  slots.forEach((slot, k) => {
    for (let j = 0; j < width; j++) difference[k * width + j] = current[slot * width + j] - incoming[k][j];
  });
  tf.tidy(() => {
    const index = tf.tensor1d(slots, 'int32');
    const diff = tf.tensor2d(difference, [slots.length, width]);
    // [out, in] update: B[:, slots]·diff for A's rows, diffᵀ·A[slots] for B's columns.
    const update = isA ? tf.matMul(tf.gather(layer.B, index, 1), diff) : tf.matMul(diff, tf.gather(layer.A, index, 0), true, false);
    layer.weight.assign(tf.add(layer.weight, fromOutIn(layer.target, tf.mul(update, s) as tf.Tensor2D)) as tf.Tensor2D);
  });
  slots.forEach((slot, k) => {
    poolValues.set(current.subarray(slot * width, (slot + 1) * width), selected[slot] * width);
    current.set(incoming[k], slot * width);
    selected[slot] = destinations[k];
    (isA ? layer.frozenB : layer.frozenA)[slot] = warmSteps;
  });
  tf.tidy(() => {
    pool.assign(tf.tensor2d(poolValues, pool.shape));
    const next = tf.tensor2d(current, [layer.r, width]);
    if (isA) layer.A.assign(next);
    else layer.B.assign(tf.transpose(next));
  });
}

interface StepAdamState {
  m: tf.Variable;
  v: tf.Variable;
  steps: tf.Variable; // [r, 1] for A, [1, r] for B
}

/** StepAdamW over every module's A and B, with the switching before each update. */
export class SwitchLoraOptimizer implements Optimizer {
  private t = 0;
  private readonly state = new Map<SwitchLayer, { A: StepAdamState; B: StepAdamState }>();

  constructor(
    private readonly layers: SwitchLayer[],
    private readonly schedule: SwitchSchedule,
    private readonly random: Random,
    private readonly totalSteps: () => number,
    private readonly options: AdamWOptions,
  ) {
    const zeros = (shape: number[]) => stateVariable(tf.zeros(shape));
    for (const l of layers) {
      this.state.set(l, {
        A: { m: zeros(l.A.shape), v: zeros(l.A.shape), steps: zeros([l.r, 1]) },
        B: { m: zeros(l.B.shape), v: zeros(l.B.shape), steps: zeros([1, l.r]) },
      });
    }
  }

  get stepCount(): number {
    return this.t;
  }

  stateBytes(): number {
    let n = 0;
    for (const [l, { A, B }] of this.state) n += A.m.size + A.v.size + A.steps.size + B.m.size + B.v.size + B.steps.size + l.candidatesA.size + l.candidatesB.size + 4 * l.r + 2;
    return 4 * n;
  }

  step(grads: Map<string, tf.Tensor>, lr: number): void {
    const step = this.t++;
    const b1 = this.options.beta1 ?? 0.9;
    const b2 = this.options.beta2 ?? 0.999;
    const eps = this.options.epsilon ?? 1e-8;
    const decay = this.options.weightDecay ?? 0;
    for (const layer of this.layers) {
      const state = this.state.get(layer)!;
      const { rowsA, columnsB } = switchModule(layer, step, this.totalSteps(), this.schedule, this.random);
      // zero_lora_states: the frozen counterparts start their Adam state (moments and step) anew.
      resetSlices(state.A, rowsA, 0);
      resetSlices(state.B, columnsB, 1);
      // correct_switched_lora: frozen rows / columns get no gradient this step.
      const maskA = layer.frozenA.map((n) => (n > 0 ? 0 : 1));
      const maskB = layer.frozenB.map((n) => (n > 0 ? 0 : 1));
      layer.frozenA = layer.frozenA.map((n) => Math.max(n - 1, 0));
      layer.frozenB = layer.frozenB.map((n) => Math.max(n - 1, 0));
      for (const [which, variable, mask, shape] of [
        ['A', layer.A, maskA, [layer.r, 1]],
        ['B', layer.B, maskB, [1, layer.r]],
      ] as const) {
        const name = `${layer.target.path}.lora_${which}.weight`;
        const g = grads.get(name);
        if (!g) continue;
        const adam = state[which];
        const rate = lr * (this.options.lrScale?.(name) ?? 1);
        tf.tidy(() => {
          const grad = tf.mul(g, tf.tensor2d(mask, [...shape]));
          const steps = tf.add(adam.steps, 1);
          const m1 = tf.add(tf.mul(adam.m, b1), tf.mul(grad, 1 - b1));
          const v1 = tf.add(tf.mul(adam.v, b2), tf.mul(tf.square(grad), 1 - b2));
          const correction1 = tf.sub(1, tf.pow(tf.scalar(b1), steps));
          const correction2 = tf.sqrt(tf.sub(1, tf.pow(tf.scalar(b2), steps)));
          const decayed = decay > 0 && !this.options.noDecay?.(name) ? tf.mul(variable, 1 - rate * decay) : variable;
          const update = tf.div(tf.div(m1, correction1), tf.add(tf.div(tf.sqrt(v1), correction2), eps));
          adam.m.assign(m1);
          adam.v.assign(v1);
          adam.steps.assign(steps);
          variable.assign(tf.sub(decayed, tf.mul(update, rate)) as tf.Tensor2D);
        });
      }
    }
  }

  getWeights(): OptimizerState {
    const tensors = new Map<string, tf.Tensor>();
    for (const [l, { A, B }] of this.state) {
      const p = l.target.path;
      tensors.set(`${p}.lora_A.weight.exp_avg`, A.m);
      tensors.set(`${p}.lora_A.weight.exp_avg_sq`, A.v);
      tensors.set(`${p}.lora_A.weight.step`, A.steps);
      tensors.set(`${p}.lora_B.weight.exp_avg`, B.m);
      tensors.set(`${p}.lora_B.weight.exp_avg_sq`, B.v);
      tensors.set(`${p}.lora_B.weight.step`, B.steps);
      tensors.set(`${p}.switchlora_candidates_A`, l.candidatesA);
      tensors.set(`${p}.switchlora_candidates_B`, l.candidatesB);
      // Indices, pointers and frozen counters are small integers, exact in float32.
      const control = [...l.selectedA, ...l.selectedB, ...l.frozenA, ...l.frozenB, l.pointerA, l.pointerB];
      const held = this.control.get(l);
      held?.dispose();
      const fresh = tf.tensor1d(control);
      this.control.set(l, fresh);
      tensors.set(`${p}.switchlora_control`, fresh);
    }
    return { step: this.t, tensors };
  }

  private readonly control = new Map<SwitchLayer, tf.Tensor>();

  setWeights(saved: OptimizerState): void {
    this.t = saved.step;
    for (const [l, { A, B }] of this.state) {
      const p = l.target.path;
      const get = (key: string) => {
        const t = saved.tensors.get(`${p}.${key}`);
        if (!t) throw new LowrankError('MISSING_WEIGHT', `optimizer state has no "${p}.${key}"; the checkpoint belongs to another run`);
        return t;
      };
      A.m.assign(get('lora_A.weight.exp_avg'));
      A.v.assign(get('lora_A.weight.exp_avg_sq'));
      A.steps.assign(get('lora_A.weight.step'));
      B.m.assign(get('lora_B.weight.exp_avg'));
      B.v.assign(get('lora_B.weight.exp_avg_sq'));
      B.steps.assign(get('lora_B.weight.step'));
      l.candidatesA.assign(get('switchlora_candidates_A') as tf.Tensor2D);
      l.candidatesB.assign(get('switchlora_candidates_B') as tf.Tensor2D);
      const c = Array.from(get('switchlora_control').dataSync());
      const r = l.r;
      l.selectedA = c.slice(0, r);
      l.selectedB = c.slice(r, 2 * r);
      l.frozenA = c.slice(2 * r, 3 * r);
      l.frozenB = c.slice(3 * r, 4 * r);
      l.pointerA = c[4 * r];
      l.pointerB = c[4 * r + 1];
    }
  }

  dispose(): void {
    for (const { A, B } of this.state.values()) for (const t of [A.m, A.v, A.steps, B.m, B.v, B.steps]) t.dispose();
    for (const t of this.control.values()) t.dispose();
  }
}

/** Zeroes moments and step of rows (axis 0, A) or columns (axis 1, B) `indices`. */
function resetSlices(adam: StepAdamState, indices: number[], axis: 0 | 1): void {
  if (indices.length === 0) return;
  tf.tidy(() => {
    const n = adam.steps.shape[axis]!;
    const keep = Array.from({ length: n }, (_, i) => (indices.includes(i) ? 0 : 1));
    const mask = tf.tensor2d(keep, axis === 0 ? [n, 1] : [1, n]);
    adam.m.assign(tf.mul(adam.m, mask));
    adam.v.assign(tf.mul(adam.v, mask));
    adam.steps.assign(tf.mul(adam.steps, mask));
  });
}

/** An attached SwitchLoRA: its modules, for the tests. */
export interface SwitchLoraAttached extends AttachedMethod {
  readonly layers: SwitchLayer[];
}

export const switchlora: Method = {
  id: 'switchlora',
  family: 'adapter',
  paper: { title: 'SwitchLoRA: Switched Low-Rank Adaptation Can Learn Full-Rank Information', year: 2024, url: 'https://arxiv.org/abs/2406.06564' },
  summary: 'LoRA that keeps swapping a few rows of A and columns of B for fresh candidates, folding the old ones into W without changing the output, so the update learns full rank.',
  paperLearningRate: { value: 0.02, source: 'asfsdsf/SwitchLoRA llama/examples/basic/run_switchlora_350m.sh (lr 0.02, r = 256, cosine; a pre-training rate; ALGORITHMS.md SwitchLoRA (d))' },
  parameterPrefix: 'switchlora_',
  // llama/examples/basic/run_switchlora_350m.sh and the argparse defaults.
  schema: [
    { name: 'rank', type: 'integer', default: 0, min: 0, max: 4096, description: 'r per module; 0: a quarter of min(out, in) (the 350M run’s 256 of 1024)' },
    { name: 'switch_interval', type: 'number', default: 40, min: 10, description: 'interval₀: at first r/interval₀ rows switch per step (--switch_lora_interval)' },
    { name: 'switch_descent', type: 'number', default: 0.1, min: 1e-6, max: 1, description: 'the switch rate falls to 0.3 after this share of the run (--switch_lora_descent_rate)' },
    { name: 'frozen_steps', type: 'integer', default: 5, min: 0, max: 1000, description: 'N_w: steps a switched vector’s counterpart stays frozen (--adam_warm_step)' },
  ],
  mergeable: true,
  exportFormats: ['merged'],

  // No countTrainable: the wizard attaches, so its state figure holds the candidate pools and
  // per-row steps too (AdamW's 8 bytes per trainable value would leave them out).

  attach(model, given, ctx): SwitchLoraAttached {
    const params = resolveParams('switchlora', switchlora.schema, given);
    if (ctx.initial) throw new LowrankError('BAD_ARGUMENT', 'method switchlora cannot start from a saved adapter (its switched weights are not in one); continue a run with --resume');
    const targets = linearTargets(model, 'switchlora', ctx.targets);
    const schedule: SwitchSchedule = { interval: params.switch_interval as number, descent: params.switch_descent as number, warmSteps: params.frozen_steps as number };
    const initRandom = new Random(ctx.seed);
    const switchRandom = new Random((ctx.seed ^ 0x51c4) >>> 0);
    const layers: SwitchLayer[] = [];
    const trainable = new Map<string, tf.Variable>();
    let totalSteps = 1;

    const detach = () => {
      for (const l of layers) {
        model.adapters.delete(l.target.path);
        const name = `${l.target.path}.weight`;
        if (l.original) model.weights.set(name, l.original);
        else model.weights.delete(name);
        for (const t of [l.A, l.B, l.weight, l.candidatesA, l.candidatesB]) t.dispose();
      }
      layers.length = 0;
      trainable.clear();
    };

    try {
      for (const target of targets) {
        const { path, inFeatures: n, outFeatures: m } = target;
        const K = Math.min(m, n);
        const r = moduleRank(params.rank as number, target);
        const s = 1 / r; // lora_alpha = 1
        const { boundA, boundB } = candidateBounds(n, m, r);
        const uniform = (count: number, bound: number) => Float32Array.from({ length: count }, () => (2 * initRandom.next() - 1) * bound);
        const poolA = uniform(K * n, boundA);
        const poolB = uniform(K * m, boundB);
        const selectedA = Array.from({ length: r }, (_, i) => K - r + i);
        const half = Math.floor(r / 2);
        const selectedB = Array.from({ length: r }, (_, i) => selectedA[(i - half + r) % r]);
        const a = new Float32Array(r * n);
        selectedA.forEach((c, i) => a.set(poolA.subarray(c * n, (c + 1) * n), i * n));
        const b = new Float32Array(m * r);
        selectedB.forEach((c, j) => {
          for (let i = 0; i < m; i++) b[i * r + j] = poolB[c * m + i];
        });
        const name = `${path}.weight`;
        const original = model.weights.get(name);
        const A = variableFrom(tf.tensor2d(a, [r, n]));
        const B = variableFrom(tf.tensor2d(b, [m, r]));
        // W = W₀ − s·B₀·A₀: the model starts as the base.
        const weight = stateVariable(tf.tidy(() => fromOutIn(target, tf.sub(toOutIn(target, model.weight(name) as tf.Tensor2D), tf.mul(tf.matMul(B, A), s)) as tf.Tensor2D)));
        const layer: SwitchLayer = {
          target,
          r,
          K,
          s,
          A,
          B,
          weight,
          candidatesA: stateVariable(tf.tensor2d(poolA, [K, n])),
          candidatesB: stateVariable(tf.tensor2d(poolB, [K, m])),
          selectedA,
          selectedB,
          pointerA: 0,
          pointerB: half,
          frozenA: new Array(r).fill(0),
          frozenB: new Array(r).fill(0),
          original,
        };
        layers.push(layer);
        model.weights.set(name, weight);
        trainable.set(`${path}.lora_A.weight`, A);
        trainable.set(`${path}.lora_B.weight`, B);
        trainable.set(`${path}.${WEIGHT}`, weight); // not trainable: carried for checkpoints and export
        model.adapters.set(path, {
          apply: (x, base) => tf.add(base(x), tf.matMul(tf.matMul(x, A, false, true), tf.mul(B, s), false, true)),
        });
      }
    } catch (e) {
      detach();
      throw e;
    }

    return {
      method: switchlora,
      params,
      trainable,
      layers,
      lrScale: () => 1,
      createOptimizer: (options) => new SwitchLoraOptimizer(layers, schedule, switchRandom, () => totalSteps, options),
      optimizerStateBytes: () => layers.reduce((n, l) => {
        const [m, k] = [l.target.outFeatures, l.target.inFeatures];
        return n + 4 * (2 * l.r * (m + k) + 2 * l.r + l.K * (m + k) + 4 * l.r + 2);
      }, 0),
      getRandomState: () => switchRandom.getState(),
      setRandomState: (state) => switchRandom.setState(state),
      trainableParameterCount: () => layers.reduce((n, l) => n + l.A.size + l.B.size, 0),
      beforeStep({ totalSteps: total }: TrainingStep) {
        totalSteps = total;
      },
      mergedWeights() {
        const merged = new Map<string, tf.Tensor>();
        for (const l of layers) {
          merged.set(`${l.target.path}.weight`, tf.tidy(() => fromOutIn(l.target, tf.add(toOutIn(l.target, l.weight), tf.mul(tf.matMul(l.B, l.A), l.s)) as tf.Tensor2D)));
        }
        return merged;
      },
      detach,
    };
  },
};

registerMethod(switchlora);
