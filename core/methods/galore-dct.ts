/**
 * SVD-free low-rank AdamW (DCT subspaces) as a training method (family `optimizer`): GaLore's method
 * (core/methods/galore.ts) with the DCT optimizer (core/optim/galore-dct.ts), which picks each
 * target's subspace as the r columns of a fixed orthonormal DCT basis best aligned with the gradient
 * and stores only their indices. Defaults: the official class's (ALGORITHMS.md §4); the paper's
 * experimental ranks and T are not pinned down, so the rank follows GaLore's share of the width (1/4).
 */
import { defineLowRankOptimizerMethod, lowRankOptimizerSchema, subspaceRankFrom } from './galore.ts';
import type { SchemaField } from './method.ts';
import { registerMethod } from './registry.ts';
import { dctStateBytes } from '../optim/galore-dct.ts';
import type { LowRankOptions } from '../optim/galore.ts';

/** Matrices with a side this long or longer take plain AdamW (the class's max_shape: a d×d basis that large is not built). */
export const DCT_MAX_SHAPE = 32000;

export const galoreDct = defineLowRankOptimizerMethod(
  {
    id: 'galore-dct',
    paper: { title: 'SVD-Free Low-Rank Adaptive Gradient Optimization for Large Language Models', year: 2025, url: 'https://arxiv.org/abs/2505.17967' },
    summary: 'Train every weight; Adam runs on each attention/MLP gradient projected onto the r columns of a shared DCT basis with the largest ℓ1 alignment, re-chosen every step without any SVD; per matrix only r indices and the low-rank moments are stored.',
    schema: [
      {
        ...lowRankOptimizerSchema.find((field) => field.name === 'rank_ratio')!,
        description: 'number of DCT columns (rows, for a wide matrix) selected per matrix as a share of its smaller side (the paper does not pin a default: GaLore\'s 1/4, as its scripts\' 128 of 512)',
      } as SchemaField,
      lowRankOptimizerSchema.find((field) => field.name === 'rank')!,
      {
        name: 'update_proj_gap', type: 'integer', default: 1, min: 1,
        description: 'T: the columns are re-selected at step 1 and whenever the step count is a multiple of T; 1 (the official class default) re-selects every step, which is cheap because it is one matrix product, not an SVD',
      },
    ],
  },
  {
    optimizerId: 'galore-dct',
    projects: (shape) => Math.max(...shape) < DCT_MAX_SHAPE,
    options: (params, projected, _seed) => {
      const lowRank: LowRankOptions = { projected, rank: subspaceRankFrom(params), updateProjGap: params.update_proj_gap as number, scale: 1, projType: 'std' };
      return { lowRank };
    },
    stateBytes: (shapes, options) => dctStateBytes(shapes, options.lowRank!),
  },
);

registerMethod(galoreDct);
