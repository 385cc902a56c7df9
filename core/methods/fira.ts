/**
 * Fira as a training method (family `optimizer`): GaLore's method (core/methods/galore.ts) with
 * Fira's optimizer (core/optim/fira.ts), which adds the norm-scaled gradient residual outside the
 * subspace, so the update is full rank, and the norm-growth limiter. Defaults: the official C4
 * scripts' (ALGORITHMS.md §2), γ as hard-coded there.
 */
import { defineLowRankOptimizerMethod, lowRankOptimizerSchema } from './galore.ts';
import { registerMethod } from './registry.ts';

export const fira = defineLowRankOptimizerMethod(
  {
    id: 'fira',
    paper: { title: 'Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?', year: 2024, url: 'https://arxiv.org/abs/2410.01623' },
    paperLearningRate: { value: 1e-2, source: 'xichen-fy/Fira pre_training_c4/scripts/*.sh (lr 0.01, α = 0.25 up to 350M; ALGORITHMS.md Fira (c))' },
    summary: 'GaLore plus the gradient outside the subspace, scaled by the low-rank Adam/gradient norm ratio and growth-limited: a full-rank update with GaLore\'s optimizer memory (+1 float per matrix).',
    schema: [
      ...lowRankOptimizerSchema.map((field) =>
        field.name === 'scale' ? { ...field, description: `${field.description}; called alpha in Fira's code, and it also scales the subspace part subtracted from the residual` } : field,
      ),
      {
        name: 'gamma', type: 'number', default: 1.01, min: 1, max: 10,
        description: 'γ of the norm-growth limiter: the scaled residual\'s norm may grow by at most this factor per step (1.01, hard-coded in the official code)',
      },
    ],
  },
  'fira',
);

registerMethod(fira);
