/**
 * Which method to pick after a bake-off (the app's "compare methods on my data" and
 * `npm run methods-report`): the best quality per trainable parameter, per MB of memory and per
 * minute of training, among the methods whose quality is close to the best. The ratio alone
 * would crown a method that learned almost nothing with almost no parameters, so only methods
 * within `tolerance` of the best compete; the reply says so in words, with the figures.
 *
 * Quality is the held-out task accuracy where every run has one (exact match on prompt/completion
 * data), else the validation loss (lower is better; then the cheapest near-best run wins).
 * Plain data in, plain data out: the renderer imports it too.
 */

export interface BakeoffEntry {
  method: string;
  /** Share of held-out answers right, 0–1; null where the data has no answer to score. */
  accuracy: number | null;
  valLoss: number | null;
  trainableParams: number;
  /** Peak memory of the run (measured process RSS in the app; the estimate in the report). */
  memoryBytes: number;
  wallSeconds: number;
}

export interface Pick {
  method: string;
  /** Quality per unit of cost (accuracy per parameter, per MB, per minute), or the cost itself for loss-ranked runs. */
  value: number;
  text: string;
}

export interface Recommendation {
  quality: 'accuracy' | 'validation loss';
  /** The best quality reached and by which method. */
  best: { method: string; value: number };
  /** Methods close enough to the best to compete on cost. */
  candidates: string[];
  perParameter: Pick;
  perMegabyte: Pick;
  perMinute: Pick;
  /** How the choice was made, in one paragraph. */
  explanation: string;
}

/** Points of accuracy (0.05 = 5 points) or relative validation loss (5 %) a candidate may trail the best by. */
export const RECOMMENDATION_TOLERANCE = 0.05;

const MB = 1024 * 1024;
const pct = (v: number) => `${(100 * v).toFixed(1)} %`;
const count = (n: number) => n.toLocaleString('en-US');

/** Null when there is nothing to recommend: no finished entry, or no method answered anything right. */
export function recommend(entries: BakeoffEntry[], tolerance = RECOMMENDATION_TOLERANCE): Recommendation | null {
  const usable = entries.filter((e) => e.trainableParams > 0 && e.wallSeconds > 0 && e.memoryBytes > 0);
  if (usable.length === 0) return null;
  const byAccuracy = usable.every((e) => e.accuracy !== null);
  if (byAccuracy) {
    const best = usable.reduce((a, b) => ((b.accuracy as number) > (a.accuracy as number) ? b : a));
    const top = best.accuracy as number;
    if (top <= 0) return null;
    const candidates = usable.filter((e) => (e.accuracy as number) > 0 && (e.accuracy as number) >= top - tolerance);
    const pick = (cost: (e: BakeoffEntry) => number, unit: string, scale: number, costText: (e: BakeoffEntry) => string): Pick => {
      const winner = candidates.reduce((a, b) => ((b.accuracy as number) / cost(b) > (a.accuracy as number) / cost(a) ? b : a));
      const value = (winner.accuracy as number) / cost(winner);
      return { method: winner.method, value, text: `${winner.method}: ${pct(winner.accuracy as number)} with ${costText(winner)} (${(100 * value * scale).toPrecision(3)} points per ${unit})` };
    };
    const perParameter = pick((e) => e.trainableParams, '1,000 trainable parameters', 1000, (e) => `${count(e.trainableParams)} trainable parameters`);
    const perMegabyte = pick((e) => e.memoryBytes / MB, 'MB', 1, (e) => `${(e.memoryBytes / MB).toFixed(0)} MB peak memory`);
    const perMinute = pick((e) => e.wallSeconds / 60, 'minute', 1, (e) => `${(e.wallSeconds / 60).toFixed(1)} min of training`);
    const explanation =
      `Quality is held-out exact-match accuracy. The best is ${best.method} at ${pct(top)}; the methods within ${(100 * tolerance).toFixed(0)} points of it ` +
      `(${candidates.map((c) => `${c.method} ${pct(c.accuracy as number)}`).join(', ')}) compete on cost, so a method that learned little with few parameters cannot win on the ratio alone. ` +
      `Among them, accuracy divided by trainable parameters, by peak memory and by training minutes picks: ${perParameter.method} per parameter, ${perMegabyte.method} per MB, ${perMinute.method} per minute.`;
    return { quality: 'accuracy', best: { method: best.method, value: top }, candidates: candidates.map((c) => c.method), perParameter, perMegabyte, perMinute, explanation };
  }
  const withLoss = usable.filter((e) => e.valLoss !== null && Number.isFinite(e.valLoss));
  if (withLoss.length === 0) return null;
  const best = withLoss.reduce((a, b) => ((b.valLoss as number) < (a.valLoss as number) ? b : a));
  const top = best.valLoss as number;
  const candidates = withLoss.filter((e) => (e.valLoss as number) <= top * (1 + tolerance));
  const cheapest = (cost: (e: BakeoffEntry) => number, costText: (e: BakeoffEntry) => string): Pick => {
    const winner = candidates.reduce((a, b) => (cost(b) < cost(a) ? b : a));
    return { method: winner.method, value: cost(winner), text: `${winner.method}: validation loss ${(winner.valLoss as number).toFixed(3)} with ${costText(winner)}` };
  };
  const perParameter = cheapest((e) => e.trainableParams, (e) => `${count(e.trainableParams)} trainable parameters`);
  const perMegabyte = cheapest((e) => e.memoryBytes, (e) => `${(e.memoryBytes / MB).toFixed(0)} MB peak memory`);
  const perMinute = cheapest((e) => e.wallSeconds, (e) => `${(e.wallSeconds / 60).toFixed(1)} min of training`);
  const explanation =
    `This data has no answers to score, so quality is the validation loss (lower is better). The best is ${best.method} at ${top.toFixed(3)}; the methods within ` +
    `${(100 * tolerance).toFixed(0)} % of it (${candidates.map((c) => `${c.method} ${(c.valLoss as number).toFixed(3)}`).join(', ')}) compete on cost: the fewest trainable parameters ` +
    `(${perParameter.method}), the least peak memory (${perMegabyte.method}) and the shortest training (${perMinute.method}).`;
  return { quality: 'validation loss', best: { method: best.method, value: top }, candidates: candidates.map((c) => c.method), perParameter, perMegabyte, perMinute, explanation };
}
