/**
 * FedSVD: federated LoRA whose server re-factorises the aggregated update by SVD, so A stays
 * orthonormal (2025), as the authors' code runs it (sw-programmer/FedSVD: fedmm/fedavg/
 * server.py `update`, `aggregate` ffa branch, `on_round_complete`; misc/utils.py `reinit_lora`;
 * fedmm/fedavg/client.py `dp_train`, `get_optimizer`; modules/multiprocs.py; ALGORITHMS.md batch 2 §5).
 * The clients are simulated inside one run, one after another:
 *   LoRA pair per module, A [r, in] ~ kaiming-uniform(a=√5), B [out, r] = 0, s = α/r:
 *     h = W₀x + s·B·A·dropout(x)
 *   round t: m = round(N·fraction) of the N clients, drawn by a permutation seeded by (seed, t);
 *     each runs `local_steps` optimizer steps on B only, from the server's B_t, on its own data shard
 *     (A is frozen on clients: `--model ffa`), with a fresh optimizer (the code re-creates it every round);
 *     server: B̄ = B_t + Σ_k (n_k/Σn)·(B_k − B_t), n_k the clients' example counts, A unchanged;
 *     every `svd_period` rounds, thin SVD B̄·A = U·Σ·Vᵀ and A ← V_rᵀ (orthonormal rows), B ← U_r·Σ_r:
 *     the product is kept exactly, since rank(B̄·A) ≤ r.
 * One optimizer step of the run is one local step of one client, so a run of S steps is
 * S / (m·local_steps) rounds; a run that stops inside a round aggregates the clients it trained
 * (the current one with the steps it ran) after its last step, so the exported adapter is a server model.
 * A run cancelled inside a round keeps the current client's B (on the server's A) until it is resumed.
 * Choices where the code leaves one open for this app, and why:
 *   - Data shards: the code reads non-IID Dirichlet(0.5) splits of labelled GLUE data; causal-LM text
 *     has no labels, so client k owns the k-th contiguous block of the training set in file order
 *     (a file grouped by source or topic then gives non-IID clients, as federated data is).
 *   - Client optimizer: the code uses SGD for RoBERTa/ViT and AdamW for any other backbone
 *     (`get_optimizer`); these are decoder LMs, so AdamW by default, SGD selectable. Learning rate: the
 *     code's default 3e-4 (parser.py); its published RoBERTa runs use SGD at 0.5. The code's clients
 *     run a constant rate (--scheduler-type constant): `--schedule constant` matches it; the run's
 *     schedule otherwise spans all rounds. Non-private clients clip the global gradient norm to 1
 *     (--clip-grad-norm), the run's default --clip-norm.
 *   - DP-SGD: per-example clipping to C = 2 (`--max-grad-norm`) and Gaussian noise σ·C, as Opacus with
 *     fixed-size batches instead of Poisson sampling. The code derives σ from (ε = 6, δ = 1e-5) with
 *     Opacus' PRV accountant over its whole run; no accountant here, so σ is a parameter (default 0:
 *     clipping without noise is not private; set σ from your own accountant).
 * State a resumed run needs (A, the server's B_t and the round's weighted client-update sum) is kept
 * in variables that nothing differentiates (trainable = false), so checkpoints carry them.
 * Export: the server's (B, A) is a plain LoRA with scale α/r: PEFT and merged, both exact.
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { Random } from '../random.ts';
import { jacobiSvd } from '../linalg/svd.ts';
import { AdamW, type AdamWOptions } from '../optim/adamw.ts';
import type { Optimizer, OptimizerState } from '../optim/registry.ts';
import type { AttachedMethod, DataShards, Method, TrainingStep } from './method.ts';
import { InitialValues, PEFT_KEY_PREFIX } from './initial-values.ts';
import { linearTargets, type LinearTarget } from './factored-adapter.ts';
import { assignValues, fromOutIn, peftLoraConfig, sortedKeys, toOutIn, variableFrom } from './lora.ts';
import { dropoutField, resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';

/** Clients per round: multiprocs.py's round(n_clients·frac), at least one. */
export function clientsPerRound(clients: number, fraction: number): number {
  return Math.min(clients, Math.max(1, Math.round(clients * fraction)));
}

/** A 32-bit mix of (seed, round), so rounds draw unrelated client sets (np.random.seed(seed + round) in the code). */
function roundSeed(seed: number, round: number): number {
  let h = Math.imul((seed >>> 0) ^ 0x3c6ef372, 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13) ^ (round >>> 0), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** Where step `step` is in the federated schedule, and the client's own step count before it. */
export interface ClientStep {
  round: number;
  /** Position of the client in its round (0 … m − 1). */
  slot: number;
  client: number;
  localStep: number;
  /** Local steps the client ran in earlier rounds plus localStep: its data shard's batch cursor. */
  cursor: number;
}

/** The deterministic schedule of rounds, sampled clients and local steps (a pure function of the seed). */
export class FederatedSchedule {
  private readonly rounds: number[][] = [];

  constructor(
    readonly clients: number,
    readonly perRound: number,
    readonly localSteps: number,
    private readonly seed: number,
  ) {}

  /** The clients of round t, in the order they train. */
  selected(round: number): number[] {
    while (this.rounds.length <= round) {
      const all = Array.from({ length: this.clients }, (_, k) => k);
      this.rounds.push(new Random(roundSeed(this.seed, this.rounds.length)).shuffle(all).slice(0, this.perRound));
    }
    return this.rounds[round];
  }

  at(step: number): ClientStep {
    const stepsPerRound = this.perRound * this.localSteps;
    const round = Math.floor(step / stepsPerRound);
    const slot = Math.floor((step % stepsPerRound) / this.localSteps);
    const localStep = step % this.localSteps;
    const client = this.selected(round)[slot];
    let earlier = 0;
    for (let t = 0; t < round; t++) if (this.selected(t).includes(client)) earlier++;
    return { round, slot, client, localStep, cursor: earlier * this.localSteps + localStep };
  }
}

/**
 * X = Q·R for the k columns of X (each `rows` long, rows ≥ k): modified Gram–Schmidt, twice per column
 * for float64 orthogonality. A column already in the span of the previous ones gets R's diagonal 0 and
 * a unit vector orthogonal to them, so Q's columns are always orthonormal.
 */
export function thinQr(columns: Float64Array[], rows: number): { q: Float64Array[]; r: Float64Array } {
  const k = columns.length;
  const q: Float64Array[] = [];
  const r = new Float64Array(k * k);
  const scale = Math.max(1e-300, ...columns.map((c) => Math.sqrt(c.reduce((s, x) => s + x * x, 0))));
  const orthogonalise = (v: Float64Array, into?: number) => {
    for (let pass = 0; pass < 2; pass++) {
      for (let i = 0; i < q.length; i++) {
        let dot = 0;
        for (let t = 0; t < rows; t++) dot += q[i][t] * v[t];
        if (into !== undefined) r[i * k + into] += dot;
        for (let t = 0; t < rows; t++) v[t] -= dot * q[i][t];
      }
    }
    return Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  };
  for (let j = 0; j < k; j++) {
    const v = Float64Array.from(columns[j]);
    const norm = orthogonalise(v, j);
    if (norm > 1e-12 * scale) {
      r[j * k + j] = norm;
      q.push(v.map((x) => x / norm));
      continue;
    }
    for (let e = 0; e < rows; e++) {
      const unit = new Float64Array(rows);
      unit[e] = 1;
      const left = orthogonalise(unit);
      if (left > 0.5) {
        q.push(unit.map((x) => x / left));
        break;
      }
    }
  }
  return { q, r };
}

/**
 * The server's re-factorisation (`reinit_lora`): B·A = U·Σ·Vᵀ, returned as A' = V_rᵀ [r, n] and
 * B' = U_r·Σ_r [m, r], row-major. Through B = Q_B·R_B and Aᵀ = Q_A·R_A only the r×r core R_B·R_Aᵀ
 * needs an SVD, so the cost is O((m + n)·r²), never an m×n matrix.
 */
export function refactorise(b: Float64Array, a: Float64Array, m: number, n: number, r: number): { A: Float64Array; B: Float64Array } {
  const bColumns = Array.from({ length: r }, (_, t) => Float64Array.from({ length: m }, (_, i) => b[i * r + t]));
  const aColumns = Array.from({ length: r }, (_, t) => a.slice(t * n, (t + 1) * n)); // columns of Aᵀ
  const qb = thinQr(bColumns, m);
  const qa = thinQr(aColumns, n);
  const core = new Float64Array(r * r); // R_B·R_Aᵀ
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      let sum = 0;
      for (let t = 0; t < r; t++) sum += qb.r[i * r + t] * qa.r[j * r + t];
      core[i * r + j] = sum;
    }
  }
  const svd = jacobiSvd(core, r, r);
  const A = new Float64Array(r * n);
  const B = new Float64Array(m * r);
  for (let t = 0; t < r; t++) {
    for (let c = 0; c < n; c++) {
      let sum = 0;
      for (let j = 0; j < r; j++) sum += qa.q[j][c] * svd.Vt[t * r + j];
      A[t * n + c] = sum;
    }
    for (let row = 0; row < m; row++) {
      let sum = 0;
      for (let i = 0; i < r; i++) sum += qb.q[i][row] * svd.U[i * r + t];
      B[row * r + t] = sum * svd.S[t];
    }
  }
  return { A, B };
}

/** max |A·Aᵀ − I| of A [r, n], row-major (A's rows are orthonormal after a re-factorisation). */
export function orthonormalError(a: ArrayLike<number>, r: number, n: number): number {
  let worst = 0;
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      let dot = 0;
      for (let c = 0; c < n; c++) dot += a[i * n + c] * a[j * n + c];
      worst = Math.max(worst, Math.abs(dot - (i === j ? 1 : 0)));
    }
  }
  return worst;
}

/** torch.optim.SGD without momentum: p ← p − lr·(g + λ·p). No state. */
class Sgd implements Optimizer {
  private t = 0;
  constructor(
    private readonly params: Map<string, tf.Variable>,
    private readonly options: AdamWOptions,
  ) {}
  get stepCount(): number {
    return this.t;
  }
  step(grads: Map<string, tf.Tensor>, lr: number): void {
    this.t += 1;
    const decay = this.options.weightDecay ?? 0;
    tf.tidy(() => {
      for (const [name, p] of this.params) {
        const g = grads.get(name);
        if (!g) continue;
        const rate = lr * (this.options.lrScale?.(name) ?? 1);
        p.assign(tf.sub(p, tf.mul(decay > 0 ? tf.add(g, tf.mul(p, decay)) : g, rate)));
      }
    });
  }
  stateBytes(): number {
    return 0;
  }
  getWeights(): OptimizerState {
    return { step: this.t, tensors: new Map() };
  }
  setWeights(state: OptimizerState): void {
    this.t = state.step;
  }
  dispose(): void {}
}

/** The client optimizer over B, re-created when a client starts its local steps. */
class ClientOptimizer implements Optimizer {
  private inner: Optimizer;
  constructor(private readonly make: () => Optimizer) {
    this.inner = make();
  }
  reset(): void {
    this.inner.dispose();
    this.inner = this.make();
  }
  get stepCount(): number {
    return this.inner.stepCount;
  }
  step(grads: Map<string, tf.Tensor>, lr: number): void {
    this.inner.step(grads, lr);
  }
  stateBytes(): number {
    return this.inner.stateBytes();
  }
  getWeights(): OptimizerState {
    return this.inner.getWeights();
  }
  setWeights(state: OptimizerState): void {
    this.inner.setWeights(state);
  }
  dispose(): void {
    this.inner.dispose();
  }
}

/** A variable that checkpoints carry but nothing differentiates (trainable = false); `initial` is disposed. */
function stateVariable<R extends tf.Rank>(initial: tf.Tensor<R>): tf.Variable<R> {
  const v = tf.variable(initial, false);
  initial.dispose();
  return v;
}

interface FedLayer {
  readonly target: LinearTarget;
  readonly A: tf.Variable<tf.Rank.R2>; // [r, in], not trainable
  readonly B: tf.Variable<tf.Rank.R2>; // [out, r], the client's
  readonly serverB: tf.Variable<tf.Rank.R2>; // B_t, not trainable
  readonly roundSum: tf.Variable<tf.Rank.R2>; // Σ n_k·(B_k − B_t) over the round's finished clients, not trainable
}

/** An attached FedSVD: its schedule, for tests and the run view. */
export interface FedsvdAttached extends AttachedMethod {
  readonly schedule: FederatedSchedule;
}

export const fedsvd: Method = {
  id: 'fedsvd',
  variantOf: 'lora',
  family: 'adapter',
  paper: { title: 'FedSVD: Adaptive Orthogonalization for Private Federated Learning with LoRA', year: 2025 },
  summary: 'Federated LoRA, simulated: clients train B on their own data shards, the server averages B and re-factorises B·A by SVD so A stays orthonormal; optional DP-SGD.',
  paperLearningRate: { value: 3e-4, source: "sw-programmer/FedSVD parser.py --lr default, the clients' AdamW for non-RoBERTa backbones (client.py get_optimizer); its RoBERTa runs in readme.md use SGD at 0.5" },
  parameterPrefix: 'lora_',
  // readme.md's runs: r = 8, α = 8, dropout 0.05, 6 clients with frac 0.5, 10 local iterations, SVD every round, --max-grad-norm 2.
  schema: [
    { name: 'rank', type: 'integer', default: 8, min: 1, max: 4096, description: 'r, the rank of B·A' },
    { name: 'alpha', type: 'number', default: 8, min: 0, description: 'α; the update is scaled by α/r' },
    dropoutField(0.05),
    { name: 'clients', type: 'integer', default: 6, min: 1, max: 10000, description: 'N, simulated clients; client k trains on the k-th contiguous block of the training set' },
    { name: 'client_fraction', type: 'number', default: 0.5, min: 0, max: 1, description: 'share of the clients sampled each round (round(N·fraction), at least one)' },
    { name: 'local_steps', type: 'integer', default: 10, min: 1, max: 100000, description: 'optimizer steps each sampled client runs per round' },
    { name: 'svd_period', type: 'integer', default: 1, min: 0, max: 100000, description: 're-factorise B·A by SVD every this many rounds (0: never, plain frozen-A FedAvg)' },
    { name: 'client_optimizer', type: 'enum', default: 'adamw', choices: ['adamw', 'sgd'], description: 'the clients’ optimizer, fresh every round (the code: SGD for RoBERTa, AdamW otherwise)' },
    { name: 'dp', type: 'boolean', default: false, description: 'DP-SGD on the clients: per-example gradient clipping and Gaussian noise' },
    { name: 'dp_clip', type: 'number', default: 2, min: 1e-9, description: 'C, the per-example gradient norm bound under dp' },
    { name: 'noise_multiplier', type: 'number', default: 0, min: 0, description: 'σ under dp: noise N(0, σ²C²) on the summed clipped gradients (from your privacy accountant; 0 is not private)' },
  ],
  mergeable: true,
  exportFormats: ['peft', 'merged'],
  countTrainable(model, given, paths) {
    const r = resolveParams('fedsvd', fedsvd.schema, given).rank as number;
    return linearTargets(model, 'fedsvd', paths).reduce((n, t) => n + t.outFeatures * r, 0);
  },

  attach(model, given, ctx): FedsvdAttached {
    const params = resolveParams('fedsvd', fedsvd.schema, given);
    const r = params.rank as number;
    const alpha = params.alpha as number;
    const rate = params.dropout as number;
    const svdPeriod = params.svd_period as number;
    const scaling = alpha / r;
    const targets = linearTargets(model, 'fedsvd', ctx.targets);
    for (const t of targets) {
      if (r > Math.min(t.inFeatures, t.outFeatures)) {
        throw new LowrankError('BAD_ARGUMENT', `method fedsvd: rank ${r} exceeds min(out, in) = ${Math.min(t.inFeatures, t.outFeatures)} of ${t.path}, so A cannot have orthonormal rows; choose rank ≤ ${Math.min(t.inFeatures, t.outFeatures)}`);
      }
    }
    const clients = params.clients as number;
    const schedule = new FederatedSchedule(clients, clientsPerRound(clients, params.client_fraction as number), params.local_steps as number, ctx.seed);
    const initial = InitialValues.from(ctx.initial);
    const initRandom = new Random(ctx.seed);
    // Dropout seeds and DP noise, one generator saved in checkpoints.
    const random = new Random((ctx.seed ^ 0x5bd1e995) >>> 0);
    let shardSizes: number[] = Array.from({ length: clients }, () => 1);
    const layers: FedLayer[] = [];
    const trainable = new Map<string, tf.Variable>();
    const onlyB = new Map<string, tf.Variable>();
    let optimizer: ClientOptimizer | null = null;
    const logLines: string[] = [];

    const detach = () => {
      for (const layer of layers) {
        model.adapters.delete(layer.target.path);
        for (const v of [layer.A, layer.B, layer.serverB, layer.roundSum]) v.dispose();
      }
      layers.length = 0;
      trainable.clear();
      onlyB.clear();
    };

    try {
      for (const target of targets) {
        const { path, inFeatures: n, outFeatures: m } = target;
        const bound = 1 / Math.sqrt(n);
        let a: Float32Array = Float32Array.from({ length: r * n }, () => (2 * initRandom.next() - 1) * bound);
        let b: Float32Array = new Float32Array(m * r);
        if (initial) {
          a = initial.take(`${path}.lora_A.weight`, [r, n]);
          b = initial.take(`${path}.lora_B.weight`, [m, r]);
        }
        const layer: FedLayer = {
          target,
          A: stateVariable(tf.tensor2d(a, [r, n])),
          B: variableFrom(tf.tensor2d(b, [m, r])),
          serverB: stateVariable(tf.tensor2d(b, [m, r])),
          roundSum: stateVariable(tf.zeros([m, r])),
        };
        layers.push(layer);
        trainable.set(`${path}.lora_A.weight`, layer.A);
        trainable.set(`${path}.lora_B.weight`, layer.B);
        trainable.set(`${path}.lora_server_B.weight`, layer.serverB);
        trainable.set(`${path}.lora_round_update.weight`, layer.roundSum);
        onlyB.set(`${path}.lora_B.weight`, layer.B);
        const dropout = (x: tf.Tensor2D) => tf.dropout(x, rate, undefined, random.int(2 ** 31)) as tf.Tensor2D;
        model.adapters.set(path, {
          apply(x, base, _weight, training) {
            const input = training && rate > 0 ? dropout(x) : x;
            const update = tf.matMul(tf.matMul(input, layer.A, false, true), tf.mul(layer.B, scaling), false, true); // [N, out]
            return tf.add(base(x), update);
          },
        });
      }
      initial?.assertAllUsed();
    } catch (e) {
      detach();
      throw e;
    }

    /** The client of `at` is done: add n_k·(B_k − B_t) to the round's sum, and put B back to B_t. */
    const finishClient = (client: number) => {
      for (const layer of layers) {
        tf.tidy(() => layer.roundSum.assign(tf.add(layer.roundSum, tf.mul(tf.sub(layer.B, layer.serverB), shardSizes[client]))));
        layer.B.assign(layer.serverB);
      }
    };

    /** The server: B̄ = B_t + Σ n_k·ΔB_k / Σ n_k, then (every svd_period rounds) B̄·A re-factorised. */
    const finishRound = (round: number, finished: number[]) => {
      const weight = finished.reduce((sum, k) => sum + shardSizes[k], 0);
      const refactor = svdPeriod > 0 && (round + 1) % svdPeriod === 0;
      let worstOrthonormal = 0;
      for (const layer of layers) {
        const averaged = tf.tidy(() => tf.add(layer.serverB, tf.div(layer.roundSum, weight)) as tf.Tensor2D);
        if (refactor) {
          const { outFeatures: m, inFeatures: n } = layer.target;
          const next = refactorise(Float64Array.from(averaged.dataSync()), Float64Array.from(layer.A.dataSync()), m, n, r);
          assignValues(layer.A, Float32Array.from(next.A));
          assignValues(layer.B, Float32Array.from(next.B));
          worstOrthonormal = Math.max(worstOrthonormal, orthonormalError(layer.A.dataSync(), r, n));
        } else {
          layer.B.assign(averaged);
        }
        averaged.dispose();
        layer.serverB.assign(layer.B);
        tf.tidy(() => layer.roundSum.assign(tf.zerosLike(layer.roundSum)));
      }
      logLines.push(
        `round ${round + 1}: B averaged over clients ${finished.join(', ')}` +
          (refactor ? `; B·A re-factorised, max |A·Aᵀ − I| = ${worstOrthonormal.toExponential(1)}` : ''),
      );
    };

    const dataShards: DataShards = {
      count: clients,
      setSizes(sizes) {
        if (sizes.length !== clients) throw new LowrankError('BAD_ARGUMENT', `method fedsvd: ${sizes.length} shard sizes for ${clients} clients`);
        const empty = sizes.findIndex((s) => s < 1);
        if (empty >= 0) {
          throw new LowrankError('BAD_DATA', `method fedsvd: client ${empty} of ${clients} gets no training example (${sizes.reduce((a, b) => a + b, 0)} in all); use fewer clients or more data`);
        }
        shardSizes = [...sizes];
      },
      shardAt(step) {
        const at = schedule.at(step);
        return { shard: at.client, cursor: at.cursor };
      },
    };

    return {
      method: fedsvd,
      params,
      trainable,
      schedule,
      dataShards,
      ...(params.dp
        ? {
            privateGradients: {
              clipNorm: params.dp_clip as number,
              noiseMultiplier: params.noise_multiplier as number,
              normal: (shape: number[]) => tf.tensor(Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => random.normal()), shape),
            },
          }
        : {}),
      lrScale: () => 1,
      getRandomState: () => random.getState(),
      setRandomState: (state) => random.setState(state),
      trainableParameterCount: () => [...onlyB.values()].reduce((count, v) => count + v.size, 0),
      createOptimizer(options) {
        const make = (): Optimizer => (params.client_optimizer === 'sgd' ? new Sgd(onlyB, options) : new AdamW(onlyB, options));
        optimizer = new ClientOptimizer(make);
        return optimizer;
      },
      // The clients' optimizer over B, plus the server's B_t and the round's update sum (float32).
      optimizerStateBytes() {
        const bElements = [...onlyB.values()].reduce((count, v) => count + v.size, 0);
        return (params.client_optimizer === 'sgd' ? 0 : 8 * bElements) + 8 * bElements;
      },
      beforeStep({ step }: TrainingStep) {
        // A client starts its local steps with a fresh optimizer (client.py re-creates it every round).
        if (schedule.at(step).localStep === 0 && step > 0) optimizer?.reset();
      },
      takeLogLines: () => logLines.splice(0),
      afterOptimizerStep({ step, totalSteps }: TrainingStep) {
        const at = schedule.at(step);
        const lastOfRun = step === totalSteps - 1;
        if (at.localStep !== schedule.localSteps - 1 && !lastOfRun) return;
        finishClient(at.client);
        if (at.slot === schedule.perRound - 1 || lastOfRun) finishRound(at.round, schedule.selected(at.round).slice(0, at.slot + 1));
      },
      mergedWeights() {
        const merged = new Map<string, tf.Tensor>();
        for (const layer of layers) {
          const name = `${layer.target.path}.weight`;
          merged.set(name, tf.tidy(() => fromOutIn(layer.target, tf.add(toOutIn(layer.target, model.weight(name) as tf.Tensor2D), tf.matMul(tf.mul(layer.B, scaling), layer.A)))));
        }
        return merged;
      },
      peftAdapter() {
        const tensors = new Map<string, tf.Tensor>();
        for (const layer of layers) {
          tensors.set(`${PEFT_KEY_PREFIX}${layer.target.path}.lora_A.weight`, tf.clone(layer.A));
          tensors.set(`${PEFT_KEY_PREFIX}${layer.target.path}.lora_B.weight`, tf.clone(layer.B));
        }
        const config = peftLoraConfig(model, layers.map((l) => l.target), { r, alpha, dropout: rate, useRslora: false });
        return { config: sortedKeys(config), tensors };
      },
      detach,
    };
  },
};

registerMethod(fedsvd);
