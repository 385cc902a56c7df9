/**
 * PELA, "Learning Parameter-Efficient Models with Low-Rank Approximation" (Guo, Wang and
 * Kankanhalli, CVPR 2024; guoyang9/PELA @48b8e50). Not an adapter: the model itself is compressed
 * and then trained whole.
 *  1. Compress (models/low_rank.py `ModuleLowRank`): every linear module with ≥ 10 outputs except the
 *     head becomes two, W [out, in] ≈ B·A with r = ⌊in·out / (c·(in + out))⌋, so each keeps at most
 *     1/c of its parameters; from the SVD W = U·Σ·Vᵀ, A = Σ_r^½·V_rᵀ [r, in] and B = U_r·Σ_r^½
 *     [out, r] (the code factorises Wᵀ; the bias stays with the second factor).
 *  2. Distil and regularise (ALBEF/Pretrain.py `train`): the compressed student, every parameter
 *     trainable, learns L = L_task + α·L_fd + λ·L_wp against the frozen original model as teacher:
 *       L_fd = mean over blocks of MSE(h_student, h_teacher) on each decoder block's output
 *       L_wp = mean over compressed modules of (max_ij |B·A − W₀|_ij − ε)²  (model_pretrain.py
 *              `inf_norm`: two-sided, residuals below ε are pushed up to it)
 *  3. Fine-tune: the compressed model trained on the task loss alone.
 * Defaults are the ALBEF (BERT text encoder) recipe, the paper's language-model setting: c = 3
 * (ModuleLowRank's default), α = 0.1, λ = 1, ε = 1e-3, AdamW lr 1e-4 (paperLearningRate), weight
 * decay 0.02 (configs/Pretrain.yaml). The logit-distillation term (β = 0 in both recipes) is left out.
 *
 * Choices where the code leaves the rule open for a single run on one dataset: the paper distils on
 * pre-training data and fine-tunes on the task afterwards; here both stages train on the run's data,
 * the first `distill_fraction` of the steps with the distillation and regulariser terms and the rest
 * with the task loss only. Block outputs are compared over every position of the batch, padding
 * included, as ALBEF's F.mse_loss over hidden_states is.
 *
 * The run logs `distill_loss` (L_fd) and `weight_perturbation` (L_wp) per step while distilling.
 * Export: merged only, W' = B·A for the compressed modules and every other trained weight as it is
 * (the factors hold the whole weight: PELA's update is no low-rank delta on W₀, so it has no PEFT form).
 */
import * as tf from '../tf.ts';
import { LowrankError } from '../errors.ts';
import { truncatedSvd } from '../linalg/svd.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import type { AttachedMethod, Method, PenaltyBatch, TrainingStep } from './method.ts';
import { InitialValues } from './initial-values.ts';
import { type LinearTarget, linearTargets, svdSchemaFields, weightOutIn64 } from './factored-adapter.ts';
import { fromOutIn, toOutIn, variableFrom } from './lora.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';


/** r = ⌊in·out / (c·(in + out))⌋ (ModuleLowRank._apply). */
export function pelaRank(inFeatures: number, outFeatures: number, compressRatio: number): number {
  return Math.floor((inFeatures * outFeatures) / (compressRatio * (inFeatures + outFeatures)));
}

/** The modules PELA compresses: every linear module but the head, with at least 10 outputs. */
export function pelaModules(model: CausalLM): LinearTarget[] {
  return linearTargets(model, 'pela', model.linearModules()).filter((t) => t.outFeatures >= 10);
}

interface CompressedModule {
  readonly target: LinearTarget;
  readonly r: number;
  readonly A: tf.Variable<tf.Rank.R2>; // [r, in]
  readonly B: tf.Variable<tf.Rank.R2>; // [out, r]
}

export const pela: Method = {
  id: 'pela',
  family: 'full',
  paper: { title: 'PELA: Learning Parameter-Efficient Models with Low-Rank Approximation', year: 2024, url: 'https://github.com/guoyang9/PELA' },
  paperLearningRate: { value: 1e-4, source: 'guoyang9/PELA ALBEF/configs/Pretrain.yaml optimizer lr (AdamW, weight decay 0.02)' },
  summary: 'Compress every linear layer to a low-rank pair (1/3 of its parameters), distil the original model into it, then fine-tune the small model.',
  parameterPrefix: 'pela_',
  schema: [
    { name: 'compress_ratio', type: 'number', default: 3, min: 1, description: 'c; each compressed layer keeps r(in+out) ≤ in·out/c parameters (ModuleLowRank\'s default 3; DeiT uses 2)' },
    { name: 'distill_weight', type: 'number', default: 0.1, min: 0, description: 'α, the weight of the block-output distillation loss (ALBEF\'s 0.1)' },
    { name: 'perturbation_weight', type: 'number', default: 1, min: 0, description: 'λ, the weight of the weight-perturbation regulariser (ALBEF\'s 1; DeiT\'s scripts 0)' },
    { name: 'perturbation_eps', type: 'number', default: 1e-3, min: 0, description: 'ε, the largest |B·A − W₀| entry the regulariser aims at' },
    { name: 'distill_fraction', type: 'number', default: 0.5, min: 0, max: 1, description: 'share of the steps trained with distillation and regulariser; the rest fine-tunes on the task loss alone' },
    ...svdSchemaFields(10, 'PELA takes an exact SVD (np.linalg.svd); auto picks it for all but large matrices'),
  ],
  mergeable: true,
  exportFormats: ['merged'],

  attach(model, given, ctx): AttachedMethod {
    const params = resolveParams('pela', pela.schema, given);
    const c = params.compress_ratio as number;
    const alpha = params.distill_weight as number;
    const lambda = params.perturbation_weight as number;
    const eps = params.perturbation_eps as number;
    const distillFraction = params.distill_fraction as number;
    if (model.layerOutputs) throw new LowrankError('BAD_ARGUMENT', 'method pela: the model already has a layer-output observer (another distilling method is attached); detach it first');
    const targets = pelaModules(model);
    for (const t of targets) {
      if (pelaRank(t.inFeatures, t.outFeatures, c) < 1) {
        throw new LowrankError('BAD_ARGUMENT', `method pela: compress_ratio ${c} leaves rank 0 for ${t.path} [${t.outFeatures}, ${t.inFeatures}]; choose compress_ratio ≤ ${((t.inFeatures * t.outFeatures) / (t.inFeatures + t.outFeatures)).toFixed(2)}`);
      }
    }
    const initial = InitialValues.from(ctx.initial);
    const compressedNames = new Set(targets.map((t) => `${t.path}.weight`));
    // The teacher's weights: the model's own tensors, never updated (every other weight trains as a variable).
    const originals = new Map(model.weights);
    const trainable = new Map<string, tf.Variable>();
    const modules: CompressedModule[] = [];
    let teacherMode = false;
    let distilling = false;
    const studentBlocks: tf.Tensor2D[] = [];
    const teacherBlocks: tf.Tensor2D[] = [];
    let sums = { distill: 0, perturbation: 0, count: 0 };
    const before = targets.reduce((n, t) => n + t.inFeatures * t.outFeatures, 0);
    const after = targets.reduce((n, t) => n + pelaRank(t.inFeatures, t.outFeatures, c) * (t.inFeatures + t.outFeatures), 0);
    const logLines = [
      `compressed ${targets.length} linear layers to rank ⌊in·out/(${c}·(in+out))⌋: ${after} of their ${before} parameters (${((100 * after) / before).toFixed(1)} %)`,
    ];

    const detach = () => {
      for (const m of modules) model.adapters.delete(m.target.path);
      for (const [name, weight] of originals) model.weights.set(name, weight);
      for (const v of trainable.values()) v.dispose();
      if (model.layerOutputs === observe) model.layerOutputs = null;
      modules.length = 0;
      trainable.clear();
    };
    const observe = (_layer: number, x: tf.Tensor2D) => {
      if (teacherMode) teacherBlocks.push(x);
      else if (model.training && distilling) studentBlocks.push(x);
    };

    try {
      for (const [name, weight] of originals) {
        if (compressedNames.has(name)) continue;
        const start = initial ? tf.tensor(initial.take(name, weight.shape), weight.shape) : weight;
        const v = tf.variable(start);
        if (start !== weight) start.dispose();
        trainable.set(name, v);
        model.weights.set(name, v);
      }
      for (const target of targets) {
        const { path, outFeatures: m, inFeatures: n } = target;
        const r = pelaRank(n, m, c);
        let a: Float32Array;
        let b: Float32Array;
        if (initial) {
          a = initial.take(`${path}.pela_A`, [r, n]);
          b = initial.take(`${path}.pela_B`, [m, r]);
        } else {
          const svd = truncatedSvd(weightOutIn64(model, target), m, n, r, { method: params.svd as 'auto' | 'exact' | 'randomized', niter: params.svd_niter as number, seed: ctx.seed });
          const half = Array.from(svd.S, Math.sqrt);
          a = Float32Array.from(svd.Vt, (v, k) => half[Math.floor(k / n)] * v); // Σ_r^½·V_rᵀ
          b = Float32Array.from(svd.U, (u, k) => u * half[k % r]); // U_r·Σ_r^½
        }
        const module: CompressedModule = { target, r, A: variableFrom(tf.tensor2d(a, [r, n])), B: variableFrom(tf.tensor2d(b, [m, r])) };
        modules.push(module);
        trainable.set(`${path}.pela_A`, module.A);
        trainable.set(`${path}.pela_B`, module.B);
        const biasName = `${path}.bias`;
        model.adapters.set(path, {
          apply(x, base): tf.Tensor2D {
            if (teacherMode) return base(x); // the original layer
            const y: tf.Tensor2D = tf.matMul(tf.matMul(x, module.A, false, true), module.B, false, true); // [N, out]
            const bias = model.weights.get(biasName);
            return bias ? (tf.add(y, bias) as tf.Tensor2D) : y;
          },
        });
      }
      initial?.assertAllUsed();
      model.layerOutputs = observe;
    } catch (e) {
      detach();
      throw e;
    }

    /** The teacher's block outputs on `batch`: the original weights, no compression, no tape of their own. */
    const teacherOutputs = (batch: PenaltyBatch): tf.Tensor2D[] => {
      const ids = tf.tensor2d(batch.ids, [batch.batchSize, batch.seqLen], 'int32');
      const mask = batch.attentionMask ? tf.tensor2d(batch.attentionMask, [batch.batchSize, batch.seqLen], 'int32') : undefined;
      const wasTraining = model.training;
      for (const [name, weight] of originals) model.weights.set(name, weight);
      teacherMode = true;
      model.training = false;
      try {
        model.hidden(ids, { attentionMask: mask });
        // Constants of the step: nothing in the teacher's pass reads a trainable tensor.
        return teacherBlocks.splice(0);
      } finally {
        for (const [name, v] of trainable) if (model.weights.has(name)) model.weights.set(name, v);
        teacherMode = false;
        model.training = wasTraining;
      }
    };

    return {
      method: pela,
      params,
      trainable,
      lrScale: () => 1,
      trainableParameterCount: () => [...trainable.values()].reduce((n, v) => n + v.size, 0),
      beforeStep(step: TrainingStep) {
        const distillSteps = Math.round(distillFraction * step.totalSteps);
        distilling = step.step < distillSteps;
        if (step.step === distillSteps - 1) logLines.push(`distillation ends after this step; fine-tuning on the task loss alone for the remaining ${step.totalSteps - distillSteps} of ${step.totalSteps} steps`);
        studentBlocks.length = 0;
        sums = { distill: 0, perturbation: 0, count: 0 };
      },
      trainingPenalty(batch) {
        const student = studentBlocks.splice(0);
        if (!distilling) return tf.scalar(0);
        if (!batch) throw new Error('internal: method pela: trainingPenalty needs the batch the loss was taken on');
        const teacher = teacherOutputs(batch);
        if (student.length !== teacher.length) throw new Error(`internal: method pela: ${student.length} student block outputs against ${teacher.length} of the teacher`);
        const distill = tf.div(tf.addN(student.map((h, l) => tf.mean(tf.squaredDifference(h, teacher[l])))), student.length) as tf.Scalar;
        const perturbation = tf.div(
          tf.addN(modules.map((m) => tf.square(tf.sub(tf.max(tf.abs(tf.sub(tf.matMul(m.B, m.A), toOutIn(m.target, originals.get(`${m.target.path}.weight`) as tf.Tensor2D)))), eps)))),
          modules.length,
        ) as tf.Scalar;
        sums.distill += distill.dataSync()[0];
        sums.perturbation += perturbation.dataSync()[0];
        sums.count++;
        return tf.add(tf.mul(distill, alpha), tf.mul(perturbation, lambda)) as tf.Scalar;
      },
      takeLogLines: () => logLines.splice(0),
      stepMetrics: (): Record<string, number> => (sums.count ? { distill_loss: sums.distill / sums.count, weight_perturbation: sums.perturbation / sums.count } : {}),
      mergedWeights() {
        const merged = new Map<string, tf.Tensor>();
        for (const [name, v] of trainable) if (model.weights.get(name) === v) merged.set(name, tf.clone(v));
        for (const m of modules) merged.set(`${m.target.path}.weight`, tf.tidy(() => fromOutIn(m.target, tf.matMul(m.B, m.A))));
        return merged;
      },
      detach,
    };
  },
};

registerMethod(pela);
