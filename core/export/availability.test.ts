/**
 * The Export dialog's formats: what each method can be written as, with the reason in words when it
 * cannot, and GGUF refused for a base the writer refuses (GPT-2) with the writer's own words.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getMethod } from '../methods/index.ts';
import { writeTinyCheckpoint } from '../../test/fixtures/tiny-checkpoints.ts';
import { exportOptions } from './availability.ts';
import { scratch, writeTinyLlama } from './test-models.ts';

const root = scratch('availability');
const llama = path.join(root, 'llama');
const gpt2 = path.join(root, 'gpt2');

beforeAll(async () => {
  fs.mkdirSync(llama);
  await writeTinyLlama(llama, { tied: true, ropeScaling: null, seed: 3 });
  writeTinyCheckpoint(gpt2, 'gpt2', 3);
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const byFormat = (o: ReturnType<typeof exportOptions>) => Object.fromEntries(o.formats.map((f) => [f.format, f]));

describe('export options', () => {
  it('an adapter on a Llama: every format, no reasons, the base dtype and all quantisations', () => {
    const o = exportOptions(getMethod('lora'), llama);
    expect(o.formats.map((f) => [f.format, f.available, f.reason])).toEqual([
      ['peft', true, null],
      ['merged', true, null],
      ['gguf', true, null],
    ]);
    expect(o.baseDtype).toBe('F32');
    expect(o.quants).toEqual(['f32', 'f16', 'q8_0', 'q4_0', 'q4_K_M']);
    expect(o.adapter).toBe(true);
  });

  it('GaLore and full fine-tuning: no PEFT adapter, and the reason says why', () => {
    const galore = byFormat(exportOptions(getMethod('galore'), llama));
    expect(galore.peft!.available).toBe(false);
    expect(galore.peft!.reason).toMatch(/galore is a low-memory optimizer: it trains the model's own weights, so there is no adapter to save/);
    expect(galore.merged!.available && galore.gguf!.available).toBe(true);
    const full = exportOptions(getMethod('full'), llama);
    expect(byFormat(full).peft!.reason).toMatch(/^Full fine-tuning changes every weight/);
    expect(full.adapter).toBe(false);
  });

  it('LOST: the run\'s parameters decide (linear branch: merged and GGUF; SiLU branch: nothing, with the reason)', () => {
    const linear = byFormat(exportOptions(getMethod('lost'), llama, {}));
    expect([linear.peft!.available, linear.merged!.available, linear.gguf!.available]).toEqual([false, true, true]);
    expect(linear.peft!.reason).toMatch(/W_eff − W is not low-rank/);
    const silu = byFormat(exportOptions(getMethod('lost'), llama, { activation: 'silu' }));
    expect([silu.peft!.available, silu.merged!.available, silu.gguf!.available]).toEqual([false, false, false]);
    expect(silu.merged!.reason).toMatch(/^lost with activation silu puts SiLU between its two factors/);
    expect(silu.gguf!.reason).toBe(silu.merged!.reason);
  });

  it('a GPT-2 base: GGUF unavailable with the writer\'s reason, the other formats open', () => {
    const o = byFormat(exportOptions(getMethod('lora'), gpt2));
    expect(o.gguf!.available).toBe(false);
    expect(o.gguf!.reason).toBe(
      `GGUF export writes LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM models; ${gpt2} is GPT2LMHeadModel. Export a merged Hugging Face folder and convert it with llama.cpp's convert_hf_to_gguf.py`,
    );
    expect(o.peft!.available && o.merged!.available).toBe(true);
  });
});
