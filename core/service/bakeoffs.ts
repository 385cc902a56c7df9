/**
 * "Compare methods on my data" (contract `bakeoffs.*`): N methods trained one after another on the
 * same model, data, seed and budget, then shown side by side with a recommendation
 * (core/bakeoff/recommend.ts). The queue lives in the service for the session; its runs are
 * ordinary runs in the store (named `<name>: <method>`), so they stay listed and comparable after a
 * restart even though the bake-off itself is not kept.
 */
import { randomUUID } from 'node:crypto';
import { LowrankError } from '../errors.ts';
import { getMethod, resolveParams } from '../methods/index.ts';
import { recommend, type BakeoffEntry as RecommendationInput } from '../bakeoff/recommend.ts';
import type { Bakeoff, BakeoffEntry, FinetuneConfigInput, Request, RunComparison } from '../contract.ts';
import type { RunStore } from '../store/index.ts';

/** One planned run: the method's config, its learning rate and where that rate is from. */
export interface PlannedRun {
  method: string;
  config: FinetuneConfigInput;
  lrSource: string;
}

/**
 * The config of each method: the wizard's model, data, seed, budget and batch for all; the
 * wizard's method keeps its params and targets, the others take their schema defaults and their
 * paper's default targets (GaLore: every linear) where they name one, else the wizard's targets.
 */
export function planBakeoff(request: Request<'bakeoffs.start'>): PlannedRun[] {
  const { config, methods, learningRate } = request;
  const base = config.name ? config.name : 'compare';
  return methods.map((id) => {
    const method = getMethod(id);
    const own = id === config.method;
    const params = own ? config.params : {};
    resolveParams(id, method.schema, params); // refuses a bad setting before anything runs
    const paper = method.paperLearningRate;
    const usePaper = learningRate === 'paper' && paper !== undefined;
    return {
      method: id,
      lrSource: usePaper ? `paper: ${paper.source}` : learningRate === 'paper' ? 'no paper rate pinned: the wizard\'s' : 'the wizard\'s',
      config: {
        ...config,
        method: id,
        params,
        targets: own ? config.targets : (method.defaultTargets ?? config.targets),
        lr: usePaper ? paper.value : config.lr,
        name: `${base}: ${id}`,
      },
    };
  });
}

interface BakeoffState {
  id: string;
  createdAt: number;
  request: Request<'bakeoffs.start'>;
  entries: BakeoffEntry[];
  done: boolean;
}

export interface BakeoffDeps {
  store: RunStore;
  /** Starts a training job; `onStarted` gets its run id; resolves once the run has ended (any status). */
  trainToEnd(config: FinetuneConfigInput, onStarted: (runId: string) => void): Promise<void>;
  compare(runIds: string[]): RunComparison;
  /** False once the service is closing: the queue stops starting runs. */
  isOpen(): boolean;
}

export class Bakeoffs {
  private readonly all = new Map<string, BakeoffState>();

  constructor(private readonly deps: BakeoffDeps) {}

  /** Plans every run (refusing bad settings up front), then trains them in order in the background. */
  start(request: Request<'bakeoffs.start'>): { bakeoffId: string } {
    const plan = planBakeoff(request);
    const state: BakeoffState = {
      id: randomUUID(),
      createdAt: Date.now(),
      request,
      entries: plan.map((p) => ({ method: p.method, lr: p.config.lr, lrSource: p.lrSource, runId: null, status: 'waiting', error: null })),
      done: false,
    };
    this.all.set(state.id, state);
    void this.run(state, plan);
    return { bakeoffId: state.id };
  }

  private async run(state: BakeoffState, plan: PlannedRun[]): Promise<void> {
    for (let i = 0; i < plan.length; i++) {
      const entry = state.entries[i];
      if (!this.deps.isOpen()) break;
      try {
        await this.deps.trainToEnd(plan[i].config, (runId) => (entry.runId = runId));
      } catch (e) {
        // A run that could not start (the config does not fit this method): the queue goes on.
        entry.status = 'not-started';
        entry.error = e instanceof Error ? e.message : String(e);
      }
    }
    state.done = true;
  }

  get(bakeoffId: string): Bakeoff {
    const state = this.all.get(bakeoffId);
    if (!state) throw new LowrankError('BAD_ARGUMENT', `no method comparison ${bakeoffId} in this session (the app was restarted?); its runs are in the Runs list`);
    const { store } = this.deps;
    const entries = state.entries.map((e) => {
      if (!e.runId) return { ...e };
      const run = store.getRun(e.runId);
      return { ...e, status: run.status, error: run.errorCode ? `${run.errorCode}: ${run.errorMessage}` : e.error };
    });
    const finished = entries.filter((e) => e.status === 'completed' && e.runId);
    const runs = finished.map((e) => store.getRun(e.runId!));
    const inputs: RecommendationInput[] = runs.map((r) => ({
      method: r.method,
      accuracy: r.taskMetricValue,
      valLoss: r.finalValLoss,
      trainableParams: r.trainableParams ?? 0,
      memoryBytes: r.measuredPeakRss ?? 0,
      wallSeconds: r.wallSeconds ?? 0,
    }));
    return {
      id: state.id,
      createdAt: state.createdAt,
      seed: state.request.config.seed,
      steps: state.request.config.steps,
      epochs: state.request.config.epochs,
      entries,
      done: state.done,
      comparison: state.done && runs.length >= 2 ? this.deps.compare(runs.map((r) => r.id)) : null,
      recommendation: state.done ? recommend(inputs) : null,
    };
  }
}
