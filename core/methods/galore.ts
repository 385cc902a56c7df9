/**
 * GaLore as a training method (family `optimizer`): the base weights are trained as `full` trains
 * them (its attach is reused), but the targets' 2-D weights are stepped by GaLore's low-rank
 * projected Adam and everything else (embeddings, norms, lm_head, biases) by AdamW, in one
 * optimizer (core/optim/galore.ts). The result is a whole new set of weights: exported merged,
 * never as a PEFT adapter. Defaults are the official C4 pre-training scripts' (ALGORITHMS.md §1).
 */
import type { SchemaField, Method, MethodInfo, MethodParams } from './method.ts';
import { full } from './full.ts';
import { resolveParams } from './params.ts';
import { registerMethod } from './registry.ts';
import { createOptimizer, type OptimizerOptions } from '../optim/registry.ts';
import { lowRankStateBytes, type LowRankOptions, type ProjectionType, type SubspaceRank, type SvdMethod } from '../optim/galore.ts';

/** The hyper-parameters GaLore and Fira share, named as the official scripts name them (rank_ratio is this project's: see its description). */
export const lowRankOptimizerSchema: SchemaField[] = [
  {
    name: 'rank_ratio', type: 'number', default: 0.25, min: 0.001, max: 1,
    description: 'r as a share of the smaller side of each matrix, r = round(ratio·min(m, n)): the official C4 scripts\' 128 of 512 (60M) and 256 of 1024 (350M) wide models are 1/4, so a 256-wide model projects at 64 (its 128-wide k/v at 32) instead of at full rank',
  },
  {
    name: 'rank', type: 'integer', default: 0, min: 0, max: 65536,
    description: 'a fixed rank r for every matrix instead of rank_ratio (0 = use rank_ratio); clamped to the smaller side of each matrix',
  },
  {
    name: 'update_proj_gap', type: 'integer', default: 200, min: 1,
    description: 'T: steps between projector refreshes; the projector is recomputed from the SVD of the current gradient whenever the step count is a multiple of T',
  },
  {
    name: 'scale', type: 'number', default: 0.25, min: 0, max: 100,
    description: 'α: scale of the back-projected update (official scripts 0.25 up to 350M, 0.0625 at 1B; GLUE 4)',
  },
  {
    name: 'proj_type', type: 'enum', default: 'std', choices: ['std', 'reverse_std', 'left', 'right'],
    description: "which side of each gradient is projected: 'std' projects the smaller dimension (right singular vectors of a tall matrix, left of a wide one)",
  },
  {
    name: 'svd', type: 'enum', default: 'auto', choices: ['auto', 'exact', 'randomized'],
    description: "SVD of the gradient at each refresh: 'auto' = exact (Jacobi) for small matrices, randomized subspace iteration for large ones",
  },
  { name: 'svd_niter', type: 'integer', default: 4, min: 0, max: 64, description: 'subspace iterations of the randomized SVD' },
];

/** How a low-rank optimizer method turns its resolved parameters into its optimizer's settings and state bytes. */
export interface LowRankOptimizerSpec {
  /** Registry id of the optimizer (core/optim/registry.ts). */
  optimizerId: string;
  /** The optimizer's own settings (lowRank, fira, frugal); the run's AdamW settings are added at creation. */
  options(params: MethodParams, projected: string[], seed: number): OptimizerOptions;
  /** Which target weights are projected (default: every 2-D one); the rest take AdamW. */
  projects?(shape: number[]): boolean;
  /** Exact optimizer-state bytes over the trainable shapes, without allocating it. */
  stateBytes(shapes: Map<string, number[]>, options: OptimizerOptions): number;
}

/** The rank setting: a fixed `rank` when given (> 0), else `rank_ratio` of each matrix's smaller side. */
export function subspaceRankFrom(params: MethodParams): SubspaceRank {
  const fixed = params.rank as number;
  return fixed > 0 ? fixed : { density: params.rank_ratio as number };
}

/** GaLore's low-rank settings from the shared schema (rank, update_proj_gap, scale, proj_type, svd, svd_niter). */
export function lowRankOptionsFrom(params: MethodParams, projected: string[], seed: number): LowRankOptions {
  return {
    projected,
    rank: subspaceRankFrom(params),
    updateProjGap: params.update_proj_gap as number,
    scale: params.scale as number,
    projType: params.proj_type as ProjectionType,
    svd: params.svd as SvdMethod,
    svdNiter: params.svd_niter as number,
    seed,
  };
}

const SPECS: Record<'galore' | 'fira', LowRankOptimizerSpec> = {
  galore: {
    optimizerId: 'galore',
    options: (params, projected, seed) => ({ lowRank: lowRankOptionsFrom(params, projected, seed) }),
    stateBytes: (shapes, options) => lowRankStateBytes(shapes, options.lowRank!),
  },
  fira: {
    optimizerId: 'fira',
    options: (params, projected, seed) => ({ lowRank: lowRankOptionsFrom(params, projected, seed), fira: { gamma: params.gamma as number } }),
    stateBytes: (shapes, options) => lowRankStateBytes(shapes, options.lowRank!, 1),
  },
};

/**
 * A method that trains the base weights with a low-rank projected optimizer from core/optim: `full`'s
 * variables, the registry's optimizer over them, the targets' weights projected.
 */
export function defineLowRankOptimizerMethod(info: Omit<MethodInfo, 'family' | 'parameterPrefix' | 'mergeable' | 'exportFormats'>, optimizer: 'galore' | 'fira' | LowRankOptimizerSpec): Method {
  const spec = typeof optimizer === 'string' ? SPECS[optimizer] : optimizer;
  const method: Method = {
    ...info,
    family: 'optimizer',
    parameterPrefix: '',
    defaultTargets: info.defaultTargets ?? 'all-linear',
    mergeable: true,
    exportFormats: ['merged'],
    attach(model, given, ctx) {
      const params = resolveParams(info.id, info.schema, given);
      const projected = ctx.targets.map((path) => `${path}.weight`).filter((name) => {
        const shape = model.hasWeight(name) ? model.weightShape(name) : undefined;
        return shape?.length === 2 && (spec.projects?.(shape) ?? true);
      });
      const options = spec.options(params, projected, ctx.seed);
      const attached = full.attach(model, {}, ctx);
      const shapes = new Map([...attached.trainable].map(([name, v]) => [name, v.shape]));
      return {
        ...attached,
        method,
        params,
        createOptimizer: (adam) => createOptimizer(spec.optimizerId, attached.trainable, { ...adam, ...options }),
        optimizerStateBytes: () => spec.stateBytes(shapes, options),
      };
    },
  };
  return method;
}

export const galore = defineLowRankOptimizerMethod(
  {
    id: 'galore',
    paper: { title: 'GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection', year: 2024, url: 'https://arxiv.org/abs/2403.03507' },
    paperLearningRate: { value: 1e-2, source: 'jiaweizzhao/GaLore scripts/benchmark_c4/*.sh (lr 0.01 with scale α = 0.25; ALGORITHMS.md GaLore (c))' },
    summary: 'Train every weight; Adam runs on each attention/MLP gradient projected to its top-r singular subspace (refreshed every T steps), so its optimizer state is r·min(m,n) + 2r·max(m,n) floats per m×n matrix instead of 2mn.',
    schema: lowRankOptimizerSchema,
  },
  'galore',
);

registerMethod(galore);
