/** Base models the app can open, and the inspected details of one. */
import { defineStore } from 'pinia';
import { ref } from 'vue';
import { api, errorText } from '../api.ts';
import type { ModelEntry, ModelInfo } from '../../../core/contract.ts';

export const useModelsStore = defineStore('models', () => {
  const list = ref<ModelEntry[]>([]);
  const info = ref<Record<string, ModelInfo>>({});
  const errors = ref<Record<string, string>>({});

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
  return { list, info, errors, refresh, inspect };
});
