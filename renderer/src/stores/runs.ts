/** Stored runs, and the live state of the runs this window watches (fed by engine events). */
import { defineStore } from 'pinia';
import { ref } from 'vue';
import { api } from '../api.ts';
import type { RunDetail, StudioEvent } from '../../../core/contract.ts';
import type { Run } from '../../../core/store/types.ts';

export interface LiveState {
  step: number;
  totalSteps: number;
  lr: number | null;
  tokensPerSecond: number | null;
  elapsedSeconds: number | null;
  /** From the engine's recent steps (trainer.ts), and when it was reported (the view counts down from it). */
  etaSeconds: number | null;
  etaAt: number;
  /** What the run is doing before its first step or between steps (loading, evaluating). */
  phase: string | null;
  train: Array<[number, number]>;
  val: Array<[number, number]>;
  /** The task metric (exact match) at each evaluation, step 0 being the base model. */
  metric: Array<[number, number]>;
  samples: Array<{ step: number; prompt: string; output: string; expected: string | null }>;
  logs: string[];
  error: { code: string; message: string } | null;
}

export const useRunsStore = defineStore('runs', () => {
  const list = ref<Run[]>([]);
  const details = ref<Record<string, RunDetail>>({});
  const live = ref<Record<string, LiveState>>({});
  let subscribed = false;

  function liveOf(runId: string): LiveState {
    if (!live.value[runId]) {
      live.value[runId] = {
        step: 0, totalSteps: 0, lr: null, tokensPerSecond: null, elapsedSeconds: null, etaSeconds: null, etaAt: 0, phase: null,
        train: [], val: [], metric: [], samples: [], logs: [], error: null,
      };
    }
    return live.value[runId];
  }

  function onEvent(e: StudioEvent) {
    if (!('runId' in e)) return;
    const s = liveOf(e.runId);
    switch (e.type) {
      case 'run-started':
        s.totalSteps = e.totalSteps;
        s.logs.push(`started: ${e.totalSteps} steps, ${e.trainableParams.toLocaleString('en-US')} trainable parameters`);
        // The stored run now has its trainable count and memory estimate.
        void load(e.runId);
        break;
      case 'step':
        s.step = e.step;
        // A run followed from another engine's log has no run-started event: its steps carry the total.
        s.totalSteps = e.totalSteps || s.totalSteps;
        s.lr = e.lr;
        s.tokensPerSecond = e.tokensPerSecond;
        s.elapsedSeconds = e.elapsedSeconds;
        s.etaSeconds = Number.isFinite(e.etaSeconds) ? e.etaSeconds : null;
        s.etaAt = Date.now();
        s.phase = null;
        s.train.push([e.step, e.loss]);
        break;
      case 'eval':
        s.val.push([e.step, e.valLoss]);
        if (e.metric) s.metric.push([e.step, e.metric.value]);
        s.logs.push(`step ${e.step}: validation loss ${e.valLoss.toFixed(4)}${e.metric ? `, accuracy ${(100 * e.metric.value).toFixed(1)} % on ${e.metric.examples} held-out answers` : ''}`);
        s.phase = null;
        break;
      case 'sample':
        s.samples.push({ step: e.step, prompt: e.prompt, output: e.output, expected: e.expected });
        break;
      case 'checkpoint':
        s.logs.push(`step ${e.step}: checkpoint saved`);
        break;
      case 'log':
        s.logs.push(e.message);
        break;
      case 'progress':
        s.phase = e.message;
        // One line that moves, not one per layer.
        if (s.logs.at(-1)?.startsWith(`step ${e.step}/`)) s.logs[s.logs.length - 1] = e.message;
        else s.logs.push(e.message);
        break;
      case 'run-failed':
        s.phase = null;
        s.error = { code: e.code, message: e.message };
        s.logs.push(`failed: ${e.message}`);
        void load(e.runId);
        break;
      case 'run-finished':
        s.phase = null;
        s.logs.push(`${e.result.status}: train loss ${e.result.trainLoss.toFixed(4)}`);
        void load(e.runId);
        break;
      case 'run-status':
        void load(e.runId);
        break;
      default:
        break;
    }
  }

  function subscribe() {
    if (subscribed) return;
    subscribed = true;
    api.onEvent(onEvent);
  }

  async function refresh() {
    list.value = await api.call('runs.list', { limit: 200 });
  }

  /** Loads a run from the store and seeds its live state from the stored metrics. */
  async function load(runId: string): Promise<RunDetail> {
    const d = await api.call('runs.get', { runId });
    details.value = { ...details.value, [runId]: d };
    const s = liveOf(runId);
    const train = d.metrics.filter((m) => m.split === 'train' && m.name === 'loss').map((m) => [m.step, m.value] as [number, number]);
    if (train.length >= s.train.length) s.train = train;
    const val = d.metrics.filter((m) => m.split === 'val' && m.name === 'loss').map((m) => [m.step, m.value] as [number, number]);
    if (val.length >= s.val.length) s.val = val;
    const metric = d.metrics.filter((m) => m.split === 'val' && m.name === 'exact_match').map((m) => [m.step, m.value] as [number, number]);
    if (metric.length >= s.metric.length) s.metric = metric;
    if (d.samples.length >= s.samples.length) s.samples = d.samples.map((x) => ({ step: x.step, prompt: x.prompt, output: x.output, expected: x.expected }));
    const lastLr = d.metrics.filter((m) => m.name === 'lr').at(-1);
    if (lastLr && s.lr === null) s.lr = lastLr.value;
    if (d.live) {
      s.totalSteps = d.live.totalSteps;
      s.step = Math.max(s.step, d.live.step);
    } else if (train.length) {
      s.step = Math.max(s.step, train.at(-1)![0]);
      s.totalSteps = Math.max(s.totalSteps, s.step);
    }
    if (s.logs.length === 0) s.logs = d.logs.map((l) => l.message);
    if (d.run.status === 'failed' && d.run.errorCode) s.error = { code: d.run.errorCode, message: d.run.errorMessage ?? '' };
    return d;
  }

  /** Deletes a stored run (its files and its exports in the store's folder); a training run is refused by the service. */
  async function remove(runId: string) {
    await api.call('runs.delete', { runId });
    delete details.value[runId];
    delete live.value[runId];
    await refresh();
  }

  return { list, details, live, subscribe, refresh, load, liveOf, remove };
});
