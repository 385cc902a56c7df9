/**
 * Activation checkpointing (recompute.ts) against the plain backward pass: the same loss and every
 * gradient within 1e-6 (LoRA with dropout on, so the recomputation must redraw the same masks; full
 * fine-tuning; GPT-2; a base frozen in native memory), no tensor left behind, and the peak tensor
 * bytes of a step lower by what the memory estimate predicts for it.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '../tf.ts';
import { initBackend } from '../backend/index.ts';
import { relativeError } from '../backend/cpu-parity.ts';
import { parseModelConfig } from './config.ts';
import { buildModel } from './load.ts';
import { initialWeights } from './init.ts';
import { checkpointPlan } from './recompute.ts';
import { attentionTuning } from './attention.ts';
import type { CausalLM } from './causal-lm.ts';
import { getMethod, resolveParams, resolveTargets, type AttachedMethod } from '../methods/index.ts';
import { adapterActivationFloats, estimateTrainingMemory } from '../train/memory.ts';
import { peakBufferBytes } from '../train/memory.test-helpers.ts';

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

const llama = (layers: number, hidden = 64) => ({
  architectures: ['LlamaForCausalLM'], hidden_size: hidden, intermediate_size: (hidden * 11) >> 2, num_attention_heads: 8, num_key_value_heads: 4,
  num_hidden_layers: layers, vocab_size: 1000, max_position_embeddings: 512, tie_word_embeddings: true,
});
const gpt2 = { architectures: ['GPT2LMHeadModel'], n_embd: 64, n_head: 4, n_layer: 3, n_positions: 256, vocab_size: 1000 };

function setUp(raw: Record<string, unknown>, mode: 'lora' | 'full', dropout = 0): { model: CausalLM; attached: AttachedMethod; targets: string[] } {
  const config = parseModelConfig(raw);
  const model = buildModel(config, initialWeights(config, 0));
  const method = getMethod(mode);
  const targets = mode === 'lora' ? resolveTargets(model, 'all-linear') : [];
  const attached = method.attach(model, resolveParams(mode, method.schema, mode === 'lora' ? { rank: 4, dropout } : {}), { targets, seed: 3 });
  // Nonzero B, so every adapter's gradient flows both ways.
  for (const [name, v] of attached.trainable) if (name.includes('lora_B')) tf.tidy(() => v.assign(tf.mul(tf.randomNormal(v.shape, 0, 1, 'float32', 5), 0.05)));
  model.training = true;
  return { model, attached, targets };
}

/** Loss and gradients of one step, with the method's random state rewound so both runs draw the same dropout masks. */
function lossAndGrads(model: CausalLM, attached: AttachedMethod, ids: tf.Tensor2D): { loss: number; grads: Float32Array[] } {
  const state = attached.getRandomState?.();
  const vars = [...attached.trainable.values()];
  const { value, grads } = tf.variableGrads(() => model.loss(ids, ids).loss, vars);
  if (state !== undefined) attached.setRandomState!(state);
  const out = { loss: value.dataSync()[0], grads: vars.map((v) => grads[v.name].dataSync() as Float32Array) };
  tf.dispose([value, ...Object.values(grads)]);
  return out;
}

function enable(model: CausalLM, attached: AttachedMethod): void {
  const random = attached.getRandomState ? { get: () => attached.getRandomState!(), set: (s: number) => attached.setRandomState!(s) } : undefined;
  model.checkpointing = checkpointPlan(attached.trainable, random);
}

describe('activation checkpointing per decoder layer', () => {
  it.each([
    ['llama, LoRA on every linear with dropout 0.1', llama(3), 'lora', 0.1],
    ['llama, full fine-tuning', llama(2), 'full', 0],
    ['gpt2, LoRA with dropout 0.1', gpt2, 'lora', 0.1],
  ] as const)('%s: same loss and gradients (≤ 1e-6) as the plain backward pass', (_name, raw, mode, dropout) => {
    const { model, attached } = setUp(raw, mode, dropout);
    const ids = tf.tensor2d(Int32Array.from({ length: 2 * 24 }, (_, i) => (i * 37 + 5) % 1000), [2, 24], 'int32');
    const plain = lossAndGrads(model, attached, ids);
    enable(model, attached);
    const before = tf.memory().numTensors;
    const checkpointed = lossAndGrads(model, attached, ids);
    expect(tf.memory().numTensors).toBe(before);
    expect(checkpointed.loss).toBe(plain.loss);
    expect(checkpointed.grads.length).toBe(plain.grads.length);
    checkpointed.grads.forEach((g, i) => expect(relativeError(g, plain.grads[i])).toBeLessThanOrEqual(1e-6));
    // The outer tape survives the nested one: a plain step afterwards still works.
    model.checkpointing = null;
    expect(lossAndGrads(model, attached, ids).loss).toBe(plain.loss);
    ids.dispose();
    attached.detach();
    model.dispose();
  });

  it('llama with chunked attention (and with checkpointing on top): same loss and gradients as plain attention, padded batch', () => {
    const { model, attached } = setUp(llama(2), 'lora', 0.1);
    const [B, T] = [2, 40];
    const ids = tf.tensor2d(Int32Array.from({ length: B * T }, (_, i) => (i * 37 + 5) % 1000), [B, T], 'int32');
    const labels = tf.tensor2d(Int32Array.from({ length: B * T }, (_, i) => (i % T >= 33 && i >= T ? -100 : (i * 37 + 5) % 1000)), [B, T], 'int32');
    const mask = tf.tensor2d(Int32Array.from({ length: B * T }, (_, i) => (i % T >= 33 && i >= T ? 0 : 1)), [B, T], 'int32');
    const run = () => {
      const state = attached.getRandomState!();
      const vars = [...attached.trainable.values()];
      const { value, grads } = tf.variableGrads(() => model.loss(ids, labels, { attentionMask: mask }).loss, vars);
      attached.setRandomState!(state);
      const out = { loss: value.dataSync()[0], grads: vars.map((v) => grads[v.name].dataSync() as Float32Array) };
      tf.dispose([value, ...Object.values(grads)]);
      return out;
    };
    const plain = run();
    const saved = attentionTuning.chunkedAboveScores;
    attentionTuning.chunkedAboveScores = 0;
    try {
      for (const checkpointing of [false, true]) {
        if (checkpointing) enable(model, attached);
        const chunked = run();
        expect(Math.abs(chunked.loss - plain.loss) / plain.loss).toBeLessThan(1e-6);
        chunked.grads.forEach((g, i) => expect(relativeError(g, plain.grads[i])).toBeLessThan(1e-5));
      }
    } finally {
      attentionTuning.chunkedAboveScores = saved;
    }
    tf.dispose([ids, labels, mask]);
    attached.detach();
    model.dispose();
  });

  it('refuses a trainable tensor that belongs to no layer (its gradient would be lost)', () => {
    const v = tf.variable(tf.zeros([2]));
    expect(() => checkpointPlan(new Map([['shared.scale', v]]))).toThrow(/belongs to no decoder layer/);
    v.dispose();
  });

  it('lowers the peak tensor bytes of a LoRA step by what the memory estimate predicts (±20 %)', async () => {
    const raw = llama(6, 128);
    const { model, attached, targets } = setUp(raw, 'lora');
    const [B, T] = [4, 128];
    const ids = tf.tensor2d(Int32Array.from({ length: B * T }, (_, i) => (i * 37) % 1000), [B, T], 'int32');
    const vars = [...attached.trainable.values()];
    // Bytes of distinct buffers alive at the step's peak (memory.test-helpers.ts).
    const peak = () =>
      peakBufferBytes(() => {
        const { value, grads } = tf.variableGrads(() => model.loss(ids, ids).loss, vars);
        tf.dispose([value, ...Object.values(grads)]);
      });
    const plain = peak();
    enable(model, attached);
    const checkpointed = peak();
    const estimate = (checkpointing: boolean) =>
      estimateTrainingMemory({
        config: model.config, batchSize: B, seqLen: T, trainableParameters: attached.trainableParameterCount(), optimizerStateBytes: 0,
        trainsBaseWeights: false, adapterActivationFloatsPerToken: adapterActivationFloats(model, targets, 4, 0), checkpointing,
      }).activationBytes;
    const predicted = estimate(false) - estimate(true);
    const measured = plain - checkpointed;
    expect(checkpointed).toBeLessThan(plain / 3);
    expect(measured / predicted).toBeGreaterThan(0.8);
    expect(measured / predicted).toBeLessThan(1.2);
    ids.dispose();
    attached.detach();
    model.dispose();
  });
});
