/**
 * How the app presents each method to a person: its display name, its group on the wizard's method
 * step, a plain-language explanation, the formula behind it (shown behind a disclosure) and human
 * labels for its hyper-parameters. The registry's `summary` and schema descriptions stay the precise,
 * paper-facing text; registry.test.ts checks that every registered method and parameter has an entry.
 *
 * Pure: no Node API (the service sends it with `methods.list`).
 */
import type { MethodFamily } from './method.ts';

export interface MethodDescription {
  displayName: string;
  /** What it does, for someone who has not read the paper. */
  help: string;
  /** The update it trains, in the paper's notation. */
  formula: string;
}

export const METHOD_GROUPS: Record<MethodFamily, string> = {
  adapter: 'Adapters: train a small add-on, keep the model frozen',
  optimizer: 'Low-memory optimizers: train every weight with less optimizer state',
  full: 'Full fine-tuning',
};

export const METHOD_DESCRIPTIONS: Record<string, MethodDescription> = {
  full: {
    displayName: 'Full fine-tuning',
    help: 'Every weight of the model learns. The strongest change, and the most memory: the weights, their gradients and two optimizer values per weight.',
    formula: 'W ← W − η · AdamW(∇W)',
  },
  lora: {
    displayName: 'LoRA',
    help: 'Adds two thin matrices beside each chosen layer and trains only those, so a run needs little memory and the result is a small adapter file. The usual first choice.',
    formula: 'W′ = W + (α / r) · B · A,  A: r × in, B: out × r, B starts at 0',
  },
  rslora: {
    displayName: 'rsLoRA',
    help: 'LoRA with a scaling that keeps high ranks learning; worth it when you raise the rank.',
    formula: 'W′ = W + (α / √r) · B · A',
  },
  loraplus: {
    displayName: 'LoRA+',
    help: 'LoRA where one of the two matrices learns faster than the other, which often trains in fewer steps.',
    formula: 'W′ = W + (α / r) · B · A,  lr(B) = λ · lr(A)',
  },
  dora: {
    displayName: 'DoRA',
    help: 'Splits each weight into a length and a direction; LoRA changes the direction and the length trains on its own. Closer to full fine-tuning for a little more memory.',
    formula: 'W′ = m · (W + (α / r) · B · A) / ‖W + (α / r) · B · A‖_col',
  },
  pissa: {
    displayName: 'PiSSA',
    help: 'LoRA started from the most important directions of each weight instead of from zero, so it learns faster at the start.',
    formula: 'W = U S Vᵀ;  A = √S_r · V_rᵀ, B = U_r · √S_r;  W_res = W − B · A frozen',
  },
  vera: {
    displayName: 'VeRA',
    help: 'One pair of random matrices shared by every layer; each layer trains only two short scaling vectors. Very few trainable numbers; needs a higher learning rate.',
    formula: 'W′ = W + Λ_b · B · Λ_d · A,  A, B shared and frozen',
  },
  randlora: {
    displayName: 'RandLoRA',
    help: 'Builds a full-rank update from many shared random low-rank pieces and trains only how much of each to use.',
    formula: 'ΔW = (α / r) · Σₙ Bₙ · Λₙ · A · Γₙ,  A, Bₙ shared and frozen',
  },
  loraxs: {
    displayName: 'LoRA-XS',
    help: 'Takes its two thin matrices from each weight’s main directions, freezes them, and trains only a small square between them: a tiny adapter.',
    formula: 'W′ = W + (α / r) · U_r S_r · R · V_rᵀ,  R: r × r trains',
  },
  lorasb: {
    displayName: 'LoRA-SB',
    help: 'LoRA-XS started from an estimate of the first full fine-tuning step, taken from a few training examples before the run.',
    formula: 'ΔW₀ ≈ −η · sign(G) (top-r SVD),  W′ = W + B · R · A,  R trains',
  },
  svfit: {
    displayName: 'SVFit',
    help: 'Trains only the largest singular values of each weight: a handful of numbers per layer. Needs a higher learning rate or many steps.',
    formula: 'W = U S Vᵀ;  W′ = U_r diag(s_r + δ) V_rᵀ + rest,  δ trains',
  },
  nola: {
    displayName: 'NOLA',
    help: 'LoRA whose matrices are mixtures of seeded random pieces; only the mixing weights train, so the adapter is a short list of numbers.',
    formula: 'A = Σᵢ αᵢ Aᵢ, B = Σⱼ βⱼ Bⱼ (seeded),  α, β train',
  },
  dylora: {
    displayName: 'DyLoRA',
    help: 'LoRA trained at a random rank each step, so one run gives an adapter that works at any rank up to the maximum; pick the rank at export.',
    formula: 'b ~ U{1..r}:  W′ = W + (α / b) · B[:, :b] · A[:b, :]',
  },
  sora: {
    displayName: 'SoRA',
    help: 'LoRA with an on/off gate per rank that training drives to zero where a rank is not needed: the adapter shrinks itself.',
    formula: 'W′ = W + B · diag(g) · A,  g ← soft-threshold(g − η ∇g, ξ)',
  },
  galore: {
    displayName: 'GaLore',
    help: 'Trains every weight like full fine-tuning, but keeps the optimizer’s memory small by working in a low-rank view of each gradient, refreshed every few hundred steps.',
    formula: 'G = ∇W;  P = top-r SVD(G);  W ← W − η · α · P · Adam(Pᵀ G)',
  },
  fira: {
    displayName: 'Fira',
    help: 'GaLore plus the part of each gradient GaLore drops, scaled to match: full-rank learning with GaLore’s memory.',
    formula: 'W ← W − η · (α · P · Adam(Pᵀ G) + φ · (G − P Pᵀ G))',
  },
  frugal: {
    displayName: 'FRUGAL',
    help: 'Adam on a low-rank part of each gradient and a memory-free sign step on the rest: every weight learns with little optimizer state.',
    formula: 'W ← W − η · (P · Adam(Pᵀ G) + s · sign(G − P Pᵀ G))',
  },
  'galore-dct': {
    displayName: 'GaLore (DCT)',
    help: 'GaLore with a fixed cosine basis instead of an SVD: no expensive decomposition, re-chosen every step.',
    formula: 'P = the r DCT columns best aligned with G;  W ← W − η · P · Adam(Pᵀ G)',
  },
  allora: {
    displayName: 'ALLoRA',
    help: 'LoRA without dropout or a scaling factor, whose learning slows per output row as that row of the update grows: fast at the start, steady later.',
    formula: 'W′ = W + B · A;  ∇A, ∇B scaled per row i by 1 / √(‖(BA)ᵢ‖ + 1/η²)',
  },
  switchlora: {
    displayName: 'SwitchLoRA',
    help: 'LoRA that keeps swapping a few of its rows and columns for fresh ones, folding the old ones into the model without changing its output, so over a run the update can reach full rank.',
    formula: 'W′ = W + s · B · A; every step a few (A row, B column) pairs are folded into W and replaced by candidates',
  },
  lorapro: {
    displayName: 'LoRA-Pro',
    help: 'LoRA whose two gradients are corrected so that the step they make together is the closest one to what full fine-tuning would do.',
    formula: 'g̃_A, g̃_B = argmin ‖s(B g_A + g_B A) − G‖ (closed form), then Adam on the equivalent gradient',
  },
  sara: {
    displayName: 'SaRA',
    help: 'Trains only the weights the model barely uses (the smallest in magnitude) as a sparse update, with a term that keeps the update low-rank; nothing is added to the model.',
    formula: 'W′ = W + M ⊙ Δ,  M = [|W| < ε];  loss + λ ‖Δ‖_*',
  },
  drslora: {
    displayName: 'CoDyRA (rank-selective LoRA)',
    help: 'LoRA with an on/off gate per rank: after a dense start a rising threshold switches off the ranks a layer does not need, so each layer ends with its own rank.',
    formula: 'W′ = W + B · diag(g) · A;  gᵢ ← 0 when |gᵢ| < 2κ, κ rising to κ_max',
  },
  sltrain: {
    displayName: 'SLTrain (sparse + low-rank)',
    help: 'Each weight learns a low-rank part plus a sparse part on a fixed random pattern, which together can express much more than low-rank alone.',
    formula: 'W′ = W₀ + s · B · A + S,  S on a fixed random support of δ · out · in entries',
  },
  lost: {
    displayName: 'LOST (SVD split: low-rank + sparse channels)',
    help: 'Splits each weight by its SVD: the strongest directions become a small low-rank pair, and a few whole input channels of what remains become a sparse part; both train in place of the weight. Starts from (nearly) the original model.',
    formula: 'W = U Σ Vᵀ;  y = γ · x Aᵀ Bᵀ + (1 − γ) · x[:, I] W_sᵀ,  B·A from the top r, I = top-ρ columns of the rest by L2 norm',
  },
  fedsvd: {
    displayName: 'FedSVD (federated LoRA)',
    help: 'Simulates several clients that each train on their own share of the data; a server averages their updates and re-factorises them by SVD. Optional differential privacy.',
    formula: 'B̄ = Σ nₖ Bₖ / Σ nₖ;  B̄ · A = U Σ Vᵀ → B = U Σ, A = Vᵀ',
  },
  diffora: {
    displayName: 'DiffoRA',
    help: 'Starts with LoRA on every layer behind a learnt gate, measures which layers matter on held-out data, then keeps LoRA only on the most useful share.',
    formula: 'W′ = W + σ(γ) · B · A during the search;  then mask = top-ρ of σ(γ)',
  },
  pela: {
    displayName: 'PELA (compress, then fine-tune)',
    help: 'Replaces every layer by a smaller low-rank pair, teaches it to copy the original model, then fine-tunes the smaller model on your data.',
    formula: 'W ≈ B · A (r(in+out) ≤ in·out / c);  loss + α · distill + λ · ‖BA − W₀‖ penalty',
  },
  loram: {
    displayName: 'LoRAM (train small, use large)',
    help: 'Trains LoRA on a pruned, much smaller copy of the model, then expands the adapter back to the full model for use.',
    formula: 'train B_p · A_p on W_p (pruned);  B, A = zero-fill(B_p, A_p) on the full W',
  },
};

/** Human labels for hyper-parameters, shared across methods (the schema name is shown beside them). */
export const PARAMETER_LABELS: Record<string, string> = {
  rank: 'Rank (size of the update)',
  alpha: 'Scaling α',
  dropout: 'Dropout on the adapter input',
  use_rslora: 'Rank-stabilised scaling (α/√r)',
  loraplus_lr_ratio: 'How much faster B learns than A',
  svd: 'How to compute the SVD',
  svd_niter: 'SVD refinement passes',
  d_initial: 'Starting value of the per-layer scaling',
  projection_prng_key: 'Random seed of the shared matrices',
  sparse: 'Sparse random bases',
  very_sparse: 'Very sparse random bases',
  grad_samples: 'Examples for the starting-point estimate',
  grad_batch_size: 'Batch size of that estimate',
  init_lr: 'Learning rate of the estimated first step',
  num_basis: 'Random pieces per matrix',
  export_rank: 'Rank of the exported adapter',
  sparse_lambda: 'Strength of the pruning term',
  threshold: 'Pruning threshold',
  threshold_mode: 'Threshold from',
  threshold_schedule: 'Threshold schedule',
  threshold_max: 'Last threshold of the schedule',
  threshold_stages: 'Threshold steps in the schedule',
  gate_lr_ratio: 'Gate learning-rate multiplier',
  update_proj_gap: 'Projection refresh every … steps',
  scale: 'Update scale α',
  proj_type: 'Which side to project',
  gamma: 'Growth limit of the residual update',
  density: 'Density (share of entries: the gradient Adam sees, or the sparse part)',
  rule: 'Update rule for the rest of the gradient',
  reset_statistics: 'Reset Adam when the projection changes',
  proj_params_lr_scale: 'Learning-rate multiplier of the projected part',
  inactive_lr_scale: 'Learning-rate multiplier of the rest',
  rank_rule: 'How the rank of each matrix is chosen',
  energy: 'Share of the singular-value energy kept',
  rank_ratio: 'Rank as a share of each matrix\'s smaller side',
  base: 'Keep the base weights, or replace them',
  clients: 'Simulated clients',
  client_fraction: 'Share of clients per round',
  local_steps: 'Steps each client trains per round',
  svd_period: 'Re-factorise by SVD every … rounds',
  client_optimizer: 'Clients\' optimizer',
  dp: 'Differential privacy (DP-SGD)',
  dp_clip: 'Per-example gradient bound',
  noise_multiplier: 'Privacy noise multiplier',
  selection_ratio: 'Share of layers that keep LoRA',
  search_fraction: 'Share of the run spent searching',
  selection_scope: 'Choose layers over the model or per block',
  pruning: 'How units are pruned',
  prune_ratio_attn: 'Share of attention heads pruned',
  prune_ratio_mlp: 'Share of MLP channels pruned',
  prune_first_kept: 'First layers left whole',
  prune_last_kept: 'Last layers left whole',
  calibration_samples: 'Examples used to rank units',
  compress_ratio: 'Compression factor',
  distill_weight: 'Weight of copying the original model',
  perturbation_weight: 'Weight of staying close to the original weights',
  perturbation_eps: 'Allowed distance from the original weights',
  distill_fraction: 'Share of the run spent copying the original',
  eta: 'Learning-speed limit η',
  switch_interval: 'Switch interval (rows swapped per step)',
  switch_descent: 'Share of the run before switching slows',
  frozen_steps: 'Steps a switched pair stays frozen',
  selection: 'How trained entries are chosen',
  fraction: 'Share of each matrix that trains',
  nuclear_lambda: 'Strength of the low-rank term',
  nuclear_min_dim: 'Smallest matrix the low-rank term looks at',
  progressive_at: 'When growing entries freeze (share of the run)',
  max_kappa: 'Final gate threshold',
  dense_fraction: 'Share of the run trained with every rank',
  kappa_stages: 'Threshold steps',
  svd_rank_extra: 'Singular directions the sparse channels come from',
  channel_ratio: 'Share of input channels in the sparse part',
  blend_gamma: 'Weight γ of the low-rank part (1 − γ: sparse part)',
  activation: 'Function between the low-rank factors',
  sparse_init: 'Starting values of the sparse part',
};

export function methodDisplayName(id: string): string {
  return METHOD_DESCRIPTIONS[id]?.displayName ?? id;
}
