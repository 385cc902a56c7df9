/**
 * Evaluation of a model on tokenized examples: mean validation loss over the trained tokens, and
 * exact-match accuracy of greedy completions against the reference completions (the task metric
 * of the demo). An example's prompt is every token before its first trained (label != -100) token;
 * its reference is the trained tokens, decoded.
 */
import * as tf from '../tf.ts';
import type { CausalLM } from '../models/causal-lm.ts';
import { generate } from '../models/generate.ts';
import type { Tokenizer } from '../tokenize/tokenizer.ts';

export interface TokenizedExample {
  ids: Int32Array;
  labels: Int32Array;
}

/** Token-weighted mean loss over the examples' trained tokens, in batches of `batchSize`. */
export function validationLoss(model: CausalLM, examples: TokenizedExample[], batchSize: number, progress?: (done: number, total: number) => void): number {
  let lossSum = 0;
  let tokens = 0;
  for (let b = 0; b < examples.length; b += batchSize) {
    progress?.(b, examples.length);
    const rows = examples.slice(b, b + batchSize);
    const T = Math.max(...rows.map((r) => r.ids.length));
    const ids = new Int32Array(rows.length * T);
    const labels = new Int32Array(rows.length * T).fill(-100);
    const mask = new Int32Array(rows.length * T);
    rows.forEach((r, i) => {
      ids.set(r.ids, i * T);
      labels.set(r.labels, i * T);
      mask.fill(1, i * T, i * T + r.ids.length);
    });
    const [loss, count] = tf.tidy(() => {
      const l = model.loss(tf.tensor2d(ids, [rows.length, T], 'int32'), tf.tensor2d(labels, [rows.length, T], 'int32'), {
        attentionMask: tf.tensor2d(mask, [rows.length, T], 'int32'),
      });
      return [l.loss.dataSync()[0], l.tokens.dataSync()[0]];
    });
    lossSum += loss * count;
    tokens += count;
  }
  return tokens ? lossSum / tokens : NaN;
}

export function splitPrompt(example: TokenizedExample): { prompt: number[]; reference: number[] } {
  const first = example.labels.findIndex((l) => l !== -100);
  if (first < 0) return { prompt: Array.from(example.ids), reference: [] };
  // labels[t] is the token at t (transformers shifts inside the loss), so the prompt ends before it.
  const reference = Array.from(example.labels.subarray(first)).filter((l) => l !== -100);
  return { prompt: Array.from(example.ids.subarray(0, first)), reference };
}

/** True when the example has a prompt to complete and a reference to compare with (not plain text trained from its first token). */
export function hasCompletionTask(example: TokenizedExample): boolean {
  const { prompt, reference } = splitPrompt(example);
  return prompt.length > 0 && reference.length > 0;
}

/** Longest prefix of a plain-text example used as a sample prompt. */
const TEXT_SAMPLE_PROMPT_TOKENS = 16;

/**
 * The prompt a sample continues: the example's prompt, or, for text trained from its first token
 * (plain-text data with a tokenizer that adds no BOS: Qwen, Llama 3's byte-level BPE without
 * add_bos), its first quarter, at most 16 tokens and at least one.
 */
export function samplePrompt(example: TokenizedExample): number[] {
  const { prompt } = splitPrompt(example);
  if (prompt.length > 0 || example.ids.length === 0) return prompt;
  const length = Math.max(1, Math.min(TEXT_SAMPLE_PROMPT_TOKENS, Math.ceil(example.ids.length / 4)));
  return Array.from(example.ids.subarray(0, length));
}

/** Token ids that end a completion: eos and chat end-of-turn markers the vocabulary has. */
export function stopTokenIds(tokenizer: Tokenizer): number[] {
  const ids = new Set<number>();
  if (tokenizer.eosTokenId !== undefined) ids.add(tokenizer.eosTokenId);
  for (const marker of ['<|im_end|>', '<|eot_id|>', '</s>', '<|endoftext|>']) {
    const id = tokenizer.tokenToId(marker);
    if (id !== undefined) ids.add(id);
  }
  return [...ids];
}

export interface CompletionResult {
  prompt: string;
  reference: string;
  output: string;
  correct: boolean;
}

/** Greedy completions of each example's prompt, compared (trimmed) with its reference; examples without a prompt or a reference are not scored. */
export function exactMatch(
  model: CausalLM,
  tokenizer: Tokenizer,
  examples: TokenizedExample[],
  opts: { maxNewTokens?: number } = {},
): { accuracy: number; results: CompletionResult[] } {
  examples = examples.filter(hasCompletionTask);
  const stops = stopTokenIds(tokenizer);
  const clean = (ids: number[]) => tokenizer.decode(ids.filter((id) => !stops.includes(id)), { skipSpecialTokens: true }).trim();
  const results: CompletionResult[] = examples.map((example) => {
    const { prompt, reference } = splitPrompt(example);
    const out = generate(model, prompt, {
      maxNewTokens: opts.maxNewTokens ?? reference.length + 2,
      temperature: 0,
      stopTokenIds: stops,
    });
    const expected = clean(reference);
    const output = clean(out);
    return { prompt: tokenizer.decode(prompt, { skipSpecialTokens: false }), reference: expected, output, correct: output === expected };
  });
  const correct = results.filter((r) => r.correct).length;
  return { accuracy: results.length ? correct / results.length : NaN, results };
}
