/**
 * Base models the app can open (bundled, Hugging Face cache, the runs' merged exports, picked
 * folders), the inspected details and memory estimate of one, and a Hub download in progress.
 */
import { defineStore } from 'pinia';
import { ref } from 'vue';
import { api, errorText } from '../api.ts';
import type { MethodEstimate, ModelEntry, ModelInfo, ModelPullEvent } from '../../../core/contract.ts';

export interface EstimateQuery {
  method: string;
  batchSize: number;
  seqLen: number;
  targets: string[] | 'all-linear';
}

export const useModelsStore = defineStore('models', () => {
  const list = ref<ModelEntry[]>([]);
  const info = ref<Record<string, ModelInfo>>({});
  const errors = ref<Record<string, string>>({});
  /** The estimator's figure for a model under the chosen method, keyed by path + query. */
  const estimates = ref<Record<string, MethodEstimate | { error: string }>>({});
  /** The download in progress (or the last one), from the engine's model-pull events. */
  const pull = ref<ModelPullEvent | null>(null);
  const pullError = ref('');
  let subscribed = false;

  async function refresh() {
    list.value = await api.call('models.list', {});
  }
  async function inspect(path: string): Promise<ModelInfo | null> {
    if (info.value[path]) return info.value[path];
    try {
      const i = await api.call('models.inspect', { path });
      info.value = { ...info.value, [path]: i };
      delete errors.value[path];
      return i;
    } catch (e) {
      errors.value = { ...errors.value, [path]: errorText(e) };
      return null;
    }
  }

  const estimateKey = (path: string, q: EstimateQuery) => JSON.stringify([path, q.method, q.batchSize, q.seqLen, q.targets]);
  function estimateOf(path: string, q: EstimateQuery) {
    return estimates.value[estimateKey(path, q)] ?? null;
  }
  async function estimate(path: string, q: EstimateQuery): Promise<void> {
    const key = estimateKey(path, q);
    if (estimates.value[key]) return;
    try {
      const all = await api.call('methods.estimates', { model: path, batchSize: q.batchSize, seqLen: q.seqLen, targets: q.targets });
      const mine = all.find((e) => e.id === q.method);
      estimates.value = { ...estimates.value, [key]: mine && !mine.error ? mine : { error: mine?.error ?? `no estimate for ${q.method}` } };
    } catch (e) {
      estimates.value = { ...estimates.value, [key]: { error: errorText(e) } };
    }
  }

  /** Downloads a Hub model into the HF cache; resolves with its entry (null on failure, see pullError). */
  async function download(id: string): Promise<ModelEntry | null> {
    if (!subscribed) {
      subscribed = true;
      api.onEvent((e) => {
        if (e.type === 'model-pull' && (pull.value === null || pull.value.id === e.id)) pull.value = e;
      });
    }
    pullError.value = '';
    pull.value = { type: 'model-pull', id, file: null, bytes: 0, totalBytes: 0, bytesPerSecond: 0, etaSeconds: null, done: false, error: null };
    try {
      const entry = await api.call('models.pull', { id });
      await refresh();
      return entry;
    } catch (e) {
      pullError.value = errorText(e);
      return null;
    }
  }
  return { list, info, errors, estimates, pull, pullError, refresh, inspect, estimate, estimateOf, download };
});
