/** Datasets the app can open (bundled, uploaded, picked) and the preview of the chosen one. */
import { defineStore } from 'pinia';
import { ref } from 'vue';
import { api } from '../api.ts';
import type { DatasetEntry } from '../../../core/contract.ts';

export const useDatasetsStore = defineStore('datasets', () => {
  const list = ref<DatasetEntry[]>([]);
  async function refresh() {
    list.value = await api.call('datasets.list', {});
  }
  async function upload(file: File): Promise<DatasetEntry> {
    const entry = await api.call('datasets.upload', { name: file.name, content: await file.text() });
    await refresh();
    return entry;
  }
  return { list, refresh, upload };
});
