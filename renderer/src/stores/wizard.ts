/** The new-run wizard's draft: one field per FinetuneConfig field, filled step by step. */
import { defineStore } from 'pinia';
import { computed, ref } from 'vue';
import { api } from '../api.ts';
import type { AppInfo, FinetuneConfigInput, MethodListing, ModelInfo } from '../../../core/contract.ts';
import { DEFAULT_RUN_BUDGET, recommendedSettings } from '../../../core/train/recommend.ts';

export const WIZARD_STEPS = ['Base model', 'Dataset', 'Method', 'Training', 'Review'] as const;

type Training = Omit<FinetuneConfigInput, 'model' | 'data' | 'method' | 'params' | 'targets'>;

export const useWizardStore = defineStore('wizard', () => {
  const step = ref(0);
  const info = ref<AppInfo | null>(null);
  const methods = ref<MethodListing[]>([]);
  const model = ref('');
  const data = ref('');
  const method = ref('lora');
  const params = ref<Record<string, number | boolean | string>>({});
  const targets = ref<string[] | 'all-linear'>(['q_proj', 'v_proj']);
  /** Each method keeps the targets chosen for it: picking another method does not carry them over. */
  const targetsByMethod = ref<Record<string, string[] | 'all-linear'>>({});
  const training = ref<Training | null>(null);
  const useSteps = ref(true);
  /** Who trains it: this app's engine, or LLaMA-Factory on this machine's GPU (wizard/LaunchElsewhereChoice.vue). */
  const engine = ref<'here' | 'llamafactory'>('here');
  /** The learning rate follows the method and model until the person types one. */
  const lrChosen = ref(false);
  const nameChosen = ref(false);
  /** Why the learning rate is what it is (recommend.ts), shown under the field. */
  const lrWhy = ref('');
  /** Whether each step's input is usable (set by the step components). */
  const valid = ref<boolean[]>([false, false, true, true, true]);

  async function init() {
    if (info.value) return;
    [info.value, methods.value] = await Promise.all([api.call('app.info', {}), api.call('methods.list', {})]);
    reset();
  }

  function reset() {
    if (!info.value) return;
    const { params: _p, targets: t, ...rest } = info.value.finetuneDefaults;
    step.value = 0;
    method.value = 'lora';
    params.value = {};
    targets.value = t;
    targetsByMethod.value = {};
    training.value = { ...rest, ...DEFAULT_RUN_BUDGET, epochs: null, name: '' };
    useSteps.value = true;
    engine.value = 'here';
    lrChosen.value = false;
    nameChosen.value = false;
    data.value = '';
    model.value = info.value.bundledModel ?? '';
    valid.value = [false, false, true, true, true];
  }

  /** The method's and the model's starting settings (recommend.ts), where the person has not chosen their own. */
  function recommend(modelInfo: ModelInfo | undefined) {
    const listing = methods.value.find((m) => m.id === method.value);
    if (!listing || !modelInfo || !training.value) return;
    const r = recommendedSettings(listing, modelInfo);
    if (!lrChosen.value) training.value.lr = r.lr;
    lrWhy.value = r.why;
    targets.value = targetsByMethod.value[method.value] ?? r.targets;
    training.value.seqLen = Math.min(training.value.seqLen, modelInfo.maxPositions);
  }

  function chooseMethod(id: string, modelInfo: ModelInfo | undefined) {
    if (method.value === id) return;
    targetsByMethod.value[method.value] = targets.value;
    method.value = id;
    params.value = {};
    recommend(modelInfo);
  }

  function setTargets(next: string[] | 'all-linear') {
    targets.value = next;
    targetsByMethod.value[method.value] = next;
  }

  /** A name no stored run has: "<method> on <dataset> #n". */
  function suggestName(existing: string[]) {
    if (nameChosen.value || !training.value) return;
    const display = methods.value.find((m) => m.id === method.value)?.displayName ?? method.value;
    const dataset = data.value.split(/[\\/]/).pop()?.replace(/\.\w+$/, '') ?? 'data';
    const stem = `${display} on ${dataset}`;
    let n = 1;
    while (existing.includes(`${stem} #${n}`)) n++;
    training.value.name = `${stem} #${n}`;
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
      steps: useSteps.value ? t.steps ?? DEFAULT_RUN_BUDGET.steps : null,
      epochs: useSteps.value ? null : t.epochs ?? 1,
      name: t.name ? t.name : undefined,
    };
  });

  return {
    step, valid, info, methods, model, data, method, params, targets, training, useSteps, engine, lrChosen, nameChosen, lrWhy, config,
    init, reset, recommend, chooseMethod, setTargets, suggestName,
  };
});
