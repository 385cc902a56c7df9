/**
 * Learning-rate schedules as transformers' get_scheduler defines them: linear warm-up from 0,
 * then constant, linear decay to 0, or cosine decay to minRatio·lr.
 */
export type ScheduleKind = 'constant' | 'linear' | 'cosine';

export interface ScheduleOptions {
  kind: ScheduleKind;
  lr: number;
  totalSteps: number;
  warmupSteps?: number;
  /** Floor of the cosine schedule as a fraction of lr (0 = decay to zero). */
  minRatio?: number;
}

/** Learning rate for optimizer step `step` (0-based). */
export function learningRate(o: ScheduleOptions, step: number): number {
  const warmup = o.warmupSteps ?? 0;
  if (step < warmup) return (o.lr * (step + 1)) / warmup;
  if (o.kind === 'constant') return o.lr;
  const progress = Math.min(1, (step - warmup) / Math.max(1, o.totalSteps - warmup));
  if (o.kind === 'linear') return o.lr * (1 - progress);
  const minRatio = o.minRatio ?? 0;
  return o.lr * (minRatio + (1 - minRatio) * 0.5 * (1 + Math.cos(Math.PI * progress)));
}
