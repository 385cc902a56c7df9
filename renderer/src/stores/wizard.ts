/** The new-run wizard's draft: one field per FinetuneConfig field, filled step by step. */
import { defineStore } from 'pinia';
import { computed, ref } from 'vue';
import { api } from '../api.ts';
import type { AppInfo, FinetuneConfigInput } from '../../../core/contract.ts';

export const WIZARD_STEPS = ['Base model', 'Dataset', 'Method', 'Training', 'Review'] as const;

export const useWizardStore = defineStore('wizard', () => {
  const step = ref(0);
  const info = ref<AppInfo | null>(null);
  const model = ref('');
  const data = ref('');
  const method = ref('lora');
  const params = ref<Record<string, number | boolean | string>>({});
  const targets = ref<string[] | 'all-linear'>(['q_proj', 'v_proj']);
  const training = ref<Omit<FinetuneConfigInput, 'model' | 'data' | 'method' | 'params' | 'targets'> | null>(null);
  const useSteps = ref(true);
  /** Who trains it: this app's engine, or LLaMA-Factory on this machine's GPU (wizard/LaunchElsewhereChoice.vue). */
  const engine = ref<'here' | 'llamafactory'>('here');
  /** Whether each step's input is usable (set by the step components). */
  const valid = ref<boolean[]>([false, false, true, true, true]);

  async function init() {
    if (info.value) return;
    info.value = await api.call('app.info', {});
    reset();
  }

  function reset() {
    if (!info.value) return;
    const { params: _p, targets: t, ...rest } = info.value.finetuneDefaults;
    step.value = 0;
    method.value = 'lora';
    params.value = {};
    targets.value = t;
    training.value = { ...rest, steps: 100, epochs: null, evalEvery: 20, checkpointEvery: 50, metricExamples: 20, name: '' };
    useSteps.value = true;
    engine.value = 'here';
    data.value = '';
    model.value = info.value.bundledModel ?? '';
  }

  const config = computed<FinetuneConfigInput | null>(() => {
    if (!training.value || !model.value || !data.value) return null;
    const t = training.value;
    return {
      ...t,
      model: model.value,
      data: data.value,
      method: method.value,
      params: { ...params.value },
      targets: targets.value,
      steps: useSteps.value ? t.steps ?? 100 : null,
      epochs: useSteps.value ? null : t.epochs ?? 1,
      name: t.name ? t.name : undefined,
    };
  });

  return { step, valid, info, model, data, method, params, targets, training, useSteps, engine, config, init, reset };
});
