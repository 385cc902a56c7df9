/**
 * FRUGAL as a training method (family `optimizer`): GaLore's method (core/methods/galore.ts) with
 * FRUGAL's optimizer (core/optim/frugal.ts): AdamW in the top-r SVD subspace of each target's
 * gradient, r = round(ρ·k), and a state-free signSGD step on the rest of the gradient, so the update
 * is full rank with GaLore's optimizer memory. Defaults: the authors' code (ALGORITHMS.md §3), with
 * inactive_lr_scale at its fine-tuning value 0.1.
 */
import { defineLowRankOptimizerMethod, lowRankOptimizerSchema } from './galore.ts';
import { registerMethod } from './registry.ts';
import { lowRankStateBytes, type ProjectionType, type SvdMethod } from '../optim/galore.ts';
import type { StateFreeRule } from '../optim/frugal.ts';
import type { SchemaField } from './method.ts';

const shared = (name: string) => lowRankOptimizerSchema.find((field) => field.name === name)!;

export const frugal = defineLowRankOptimizerMethod(
  {
    id: 'frugal',
    paper: { title: 'FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training', year: 2024, url: 'https://arxiv.org/abs/2411.07837' },
    paperLearningRate: { value: 1e-3, source: "the authors' FRUGAL code, torchrun_main.py and scripts/benchmark_c4 (lr 1e-3; ALGORITHMS.md FRUGAL (c))" },
    summary: 'Train every weight; AdamW runs on each attention/MLP gradient projected to its top-r SVD subspace (r = density × the projected side), and a state-free signSGD step on the rest: a full-rank update with GaLore\'s optimizer memory.',
    schema: [
      {
        name: 'density', type: 'number', default: 0.25, min: 0.001, max: 1,
        description: 'ρ: share of the projected side kept in the state-full subspace, r = round(ρ·k) with k the smaller side of each matrix under proj_type std (at least 1)',
      },
      {
        name: 'update_proj_gap', type: 'integer', default: 200, min: 1,
        description: 'T: steps between subspace changes; the projector is recomputed from the SVD of the current gradient whenever the step count is a multiple of T',
      },
      {
        name: 'rule', type: 'enum', default: 'sign_sgd', choices: ['sign_sgd', 'sgd', 'no'],
        description: "state-free update of the gradient outside the subspace: 'sign_sgd' (−lr·s_p·s_i·sign), 'sgd' (−lr·s_p·s_i·G_res) or 'no' (dropped, as GaLore)",
      },
      {
        name: 'reset_statistics', type: 'boolean', default: true,
        description: 'zero the Adam moments (and restart their bias correction) whenever the subspace changes, since they were accumulated in the old one',
      },
      {
        name: 'proj_params_lr_scale', type: 'number', default: 1, min: 0, max: 100,
        description: 's_p: learning-rate scale of the projected weights, both parts (GaLore\'s α; the code\'s GaLore baseline uses 0.25)',
      },
      {
        name: 'inactive_lr_scale', type: 'number', default: 0.1, min: 0, max: 100,
        description: 's_i: extra learning-rate scale of the state-free part (the authors use 0.1 for fine-tuning, 1 for pre-training)',
      },
      {
        ...shared('proj_type'),
        description: "which side of each gradient is projected: 'std' projects the smaller dimension (right singular vectors of a tall matrix, left of a wide one)",
      } as SchemaField,
      shared('svd'),
      shared('svd_niter'),
    ],
  },
  {
    optimizerId: 'frugal',
    options: (params, projected, seed) => ({
      lowRank: {
        projected,
        rank: { density: params.density as number },
        updateProjGap: params.update_proj_gap as number,
        scale: params.proj_params_lr_scale as number,
        projType: params.proj_type as ProjectionType,
        svd: params.svd as SvdMethod,
        svdNiter: params.svd_niter as number,
        seed,
      },
      frugal: { rule: params.rule as StateFreeRule, resetStatistics: params.reset_statistics as boolean, inactiveLrScale: params.inactive_lr_scale as number },
    }),
    // The state-free part holds nothing: exactly GaLore's state.
    stateBytes: (shapes, options) => lowRankStateBytes(shapes, options.lowRank!),
  },
);

registerMethod(frugal);
