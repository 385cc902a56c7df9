/**
 * GGUF export read back by a byte-level parser written here from ggml's docs/gguf.md (not from the
 * writer): header, typed metadata, tensor infos and alignment, and tensor data (F32 exact, F16 to
 * half precision, Q8_0 dequantised within one quantisation step). The q/k row permutation is checked
 * by what it is for: Hugging Face's rotate_half RoPE on the original rows gives the same attention
 * scores as llama.cpp's adjacent-pair RoPE on the written rows.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LowrankError } from '../errors.ts';
import { float16BitsToFloat32 } from '../io/dtype.ts';
import { parseModelConfig } from '../models/config.ts';
import { inverseFrequencies } from '../models/rope.ts';
import { writeTinyCheckpoint } from '../../test/fixtures/tiny-checkpoints.ts';
import { exportGguf, type GgufQuant } from './gguf.ts';
import { scratch, writeTinyLlama, type TinyLlama } from './test-models.ts';

const root = scratch('gguf');
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// The parser (docs/gguf.md): little-endian; strings are u64 length + UTF-8; arrays are item type,
// u64 count, items; tensor infos are name, n_dims, ne[n_dims] (innermost first), type, offset.

type Value = number | bigint | boolean | string | Value[];
interface Parsed {
  version: number;
  metadata: Map<string, { type: number; value: Value }>;
  tensors: Map<string, { ne: number[]; type: number; offset: number; data: Buffer }>;
  dataStart: number;
}

function parseGguf(file: string): Parsed {
  const b = fs.readFileSync(file);
  let at = 0;
  const u32 = () => ((at += 4), b.readUInt32LE(at - 4));
  const u64 = () => ((at += 8), Number(b.readBigUInt64LE(at - 8)));
  const str = () => {
    const n = u64();
    at += n;
    return b.toString('utf8', at - n, at);
  };
  const value = (type: number): Value => {
    switch (type) {
      case 0: return b.readUInt8(at++);
      case 1: return b.readInt8(at++);
      case 4: return u32();
      case 5: return ((at += 4), b.readInt32LE(at - 4));
      case 6: return ((at += 4), b.readFloatLE(at - 4));
      case 7: return b.readUInt8(at++) === 1;
      case 8: return str();
      case 9: {
        const itemType = u32();
        return Array.from({ length: u64() }, () => value(itemType));
      }
      case 10: return u64();
      default: throw new Error(`parser: value type ${type}`);
    }
  };
  expect(b.toString('latin1', 0, 4)).toBe('GGUF');
  at = 4;
  const version = u32();
  const tensorCount = u64();
  const kvCount = u64();
  const metadata = new Map<string, { type: number; value: Value }>();
  for (let i = 0; i < kvCount; i++) {
    const key = str();
    const type = u32();
    metadata.set(key, { type, value: value(type) });
  }
  const infos: { name: string; ne: number[]; type: number; offset: number }[] = [];
  for (let i = 0; i < tensorCount; i++) {
    const name = str();
    const ne = Array.from({ length: u32() }, () => u64());
    infos.push({ name, ne, type: u32(), offset: u64() });
  }
  const alignment = (metadata.get('general.alignment')?.value as number | undefined) ?? 32;
  const dataStart = Math.ceil(at / alignment) * alignment;
  expect(b.subarray(at, dataStart).every((x) => x === 0)).toBe(true);
  const bytesOf = (ne: number[], type: number) => {
    const n = ne.reduce((x, y) => x * y, 1);
    return type === 0 ? n * 4 : type === 1 ? n * 2 : type === 8 ? (n / 32) * 34 : NaN;
  };
  const tensors = new Map<string, { ne: number[]; type: number; offset: number; data: Buffer }>();
  let expectedOffset = 0;
  for (const t of infos) {
    expect(t.offset % alignment).toBe(0);
    expect(t.offset).toBe(expectedOffset); // gguf.cpp insists on tightly packed, aligned tensors
    const size = bytesOf(t.ne, t.type);
    tensors.set(t.name, { ...t, data: b.subarray(dataStart + t.offset, dataStart + t.offset + size) });
    expectedOffset = Math.ceil((t.offset + size) / alignment) * alignment;
  }
  expect(b.length).toBe(dataStart + expectedOffset);
  return { version, metadata, tensors, dataStart };
}

/** Values of a parsed tensor as float32, in row-major order (ne reversed). */
function dequantize(t: { ne: number[]; type: number; data: Buffer }): Float32Array {
  const n = t.ne.reduce((x, y) => x * y, 1);
  const out = new Float32Array(n);
  if (t.type === 0) for (let i = 0; i < n; i++) out[i] = t.data.readFloatLE(4 * i);
  else if (t.type === 1) for (let i = 0; i < n; i++) out[i] = float16BitsToFloat32(t.data.readUInt16LE(2 * i));
  else {
    for (let block = 0; block < n / 32; block++) {
      const d = float16BitsToFloat32(t.data.readUInt16LE(34 * block));
      for (let j = 0; j < 32; j++) out[block * 32 + j] = d * t.data.readInt8(34 * block + 2 + j);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

let tiny: TinyLlama;
beforeAll(async () => {
  const dir = path.join(root, 'tiny');
  fs.mkdirSync(dir);
  tiny = await writeTinyLlama(dir, { tied: false, ropeScaling: null, seed: 7 });
});

const HF_TO_GGUF: [RegExp, string][] = [
  [/^model\.embed_tokens\.weight$/, 'token_embd.weight'],
  [/^model\.norm\.weight$/, 'output_norm.weight'],
  [/^lm_head\.weight$/, 'output.weight'],
  [/^model\.layers\.(\d+)\.input_layernorm\.weight$/, 'blk.$1.attn_norm.weight'],
  [/^model\.layers\.(\d+)\.post_attention_layernorm\.weight$/, 'blk.$1.ffn_norm.weight'],
  [/^model\.layers\.(\d+)\.self_attn\.q_proj\.weight$/, 'blk.$1.attn_q.weight'],
  [/^model\.layers\.(\d+)\.self_attn\.k_proj\.weight$/, 'blk.$1.attn_k.weight'],
  [/^model\.layers\.(\d+)\.self_attn\.v_proj\.weight$/, 'blk.$1.attn_v.weight'],
  [/^model\.layers\.(\d+)\.self_attn\.o_proj\.weight$/, 'blk.$1.attn_output.weight'],
  [/^model\.layers\.(\d+)\.mlp\.gate_proj\.weight$/, 'blk.$1.ffn_gate.weight'],
  [/^model\.layers\.(\d+)\.mlp\.up_proj\.weight$/, 'blk.$1.ffn_up.weight'],
  [/^model\.layers\.(\d+)\.mlp\.down_proj\.weight$/, 'blk.$1.ffn_down.weight'],
];
const ggufName = (hf: string) => {
  for (const [re, to] of HF_TO_GGUF) if (re.test(hf)) return hf.replace(re, to);
  throw new Error(hf);
};

/** Row `new` of a permuted q/k weight holds original row h·D + (new % 2)·D/2 + (new % D) >> 1. */
function unpermutedRow(row: number, headDim: number): number {
  const head = Math.floor(row / headDim);
  const within = row % headDim;
  return head * headDim + (within % 2) * (headDim / 2) + (within >> 1);
}

describe('GGUF export', () => {
  for (const quant of ['f32', 'f16', 'q8_0'] as const) {
    it(`${quant}: header, metadata, tokenizer and tensors read back`, async () => {
      const out = path.join(root, `out-${quant}`);
      const result = await exportGguf(out, tiny.dir, { quant, name: 'Tiny Llama' });
      expect(result.ggufFile).toBe(`Tiny-Llama-${quant}.gguf`);
      expect(fs.readdirSync(out).sort()).toEqual(['Modelfile', result.ggufFile]);
      const g = parseGguf(path.join(out, result.ggufFile));
      expect(g.version).toBe(3);
      const meta = (key: string) => g.metadata.get(key)?.value;
      const typeOf = (key: string) => g.metadata.get(key)?.type;
      const vocab = tiny.config.vocab_size as number;
      expect(meta('general.architecture')).toBe('llama');
      expect(meta('general.name')).toBe('Tiny Llama');
      expect(meta('general.file_type')).toBe({ f32: 0, f16: 1, q8_0: 7 }[quant]);
      for (const [key, want] of [
        ['llama.context_length', 128], ['llama.embedding_length', 64], ['llama.block_count', 2],
        ['llama.feed_forward_length', 128], ['llama.attention.head_count', 4], ['llama.attention.head_count_kv', 2],
        ['llama.rope.dimension_count', 16], ['llama.vocab_size', vocab],
      ] as const) {
        expect(meta(key), key).toBe(want);
        expect(typeOf(key), key).toBe(4); // uint32
      }
      expect(meta('llama.rope.freq_base')).toBe(10000);
      expect(meta('llama.attention.layer_norm_rms_epsilon')).toBe(Math.fround(1e-5));
      expect(typeOf('llama.attention.layer_norm_rms_epsilon')).toBe(6); // float32

      const tokenizerJson = JSON.parse(fs.readFileSync(path.join(tiny.dir, 'tokenizer.json'), 'utf8'));
      expect(meta('tokenizer.ggml.model')).toBe('gpt2');
      expect(meta('tokenizer.ggml.pre')).toBe('gpt-2');
      const tokens = meta('tokenizer.ggml.tokens') as string[];
      const types = meta('tokenizer.ggml.token_type') as number[];
      expect(tokens.length).toBe(vocab);
      for (const [token, id] of Object.entries(tokenizerJson.model.vocab as Record<string, number>)) expect(tokens[id]).toBe(token);
      expect(types.slice(0, 3)).toEqual([3, 3, 3]); // the special tokens are CONTROL
      expect(types[3]).toBe(1);
      for (let id = tiny.tokenizerSize; id < vocab; id++) {
        expect(tokens[id]).toBe(`[PAD${id}]`);
        expect(types[id]).toBe(5); // UNUSED
      }
      expect(meta('tokenizer.ggml.merges')).toEqual(tokenizerJson.model.merges);
      expect(meta('tokenizer.ggml.bos_token_id')).toBe(0);
      expect(meta('tokenizer.ggml.eos_token_id')).toBe(0);
      expect(meta('tokenizer.ggml.add_bos_token')).toBe(false);
      expect(meta('tokenizer.chat_template')).toContain('<|im_start|>');

      const expectedNames = [...tiny.weights.keys()].map(ggufName).sort();
      expect([...g.tensors.keys()].sort()).toEqual(expectedNames);
      for (const [hf, w] of tiny.weights) {
        const t = g.tensors.get(ggufName(hf))!;
        expect(t.ne).toEqual([...w.shape].reverse());
        const isMatrix = w.shape.length === 2;
        const wantType = !isMatrix ? 0 : { f32: 0, f16: 1, q8_0: 8 }[quant];
        expect(t.type, hf).toBe(wantType);
        const headDim = 16;
        const permuted = /q_proj|k_proj/.test(hf);
        const cols = w.shape[1] ?? 1;
        const original = new Float32Array(w.data.length);
        const got = dequantize(t);
        for (let row = 0; row < w.data.length / cols; row++) {
          const from = permuted ? unpermutedRow(row, headDim) : row;
          original.set(w.data.subarray(from * cols, (from + 1) * cols), row * cols);
        }
        let worst = 0;
        let outside = 0; // F32 values not bit-exact, F16 values beyond half-precision rounding
        for (let i = 0; i < got.length; i++) {
          const err = Math.abs(got[i]! - original[i]!);
          if (t.type === 0) outside += Object.is(got[i], original[i]) ? 0 : 1;
          else if (t.type === 1) outside += err <= Math.abs(original[i]!) * 2 ** -11 + 2 ** -25 ? 0 : 1;
          else {
            const block = Math.floor(i / 32) * 32;
            let amax = 0;
            for (let j = block; j < block + 32; j++) amax = Math.max(amax, Math.abs(original[j]!));
            worst = Math.max(worst, err / (amax / 127)); // in quantisation steps
          }
        }
        // Rounding to nearest is half a step; the scale stored as f16 (relative error <= 2^-11) moves
        // the largest code (127) by up to 127·2^-11 steps more.
        if (t.type === 8) expect(worst, hf).toBeLessThanOrEqual(0.5 + 127 * 2 ** -11 + 1e-6);
        expect(outside, hf).toBe(0);
      }

      const modelfile = fs.readFileSync(path.join(out, 'Modelfile'), 'utf8');
      expect(modelfile).toContain(`FROM ./${result.ggufFile}\n`);
      expect(modelfile).toContain('TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"""');
      expect(modelfile).toContain('PARAMETER stop "<|im_end|>"');
      expect(modelfile).toContain('PARAMETER stop "<|endoftext|>"');
    });
  }

  it('permuted q/k rows give llama.cpp-style RoPE the attention scores of Hugging Face RoPE', async () => {
    const out = path.join(root, 'rope-check');
    const result = await exportGguf(out, tiny.dir, { quant: 'f32' });
    const g = parseGguf(path.join(out, result.ggufFile));
    const [D, H, KV, C] = [16, 4, 2, 64];
    const wq = dequantize(g.tensors.get('blk.1.attn_q.weight')!);
    const wk = dequantize(g.tensors.get('blk.1.attn_k.weight')!);
    const hfQ = tiny.weights.get('model.layers.1.self_attn.q_proj.weight')!.data;
    const hfK = tiny.weights.get('model.layers.1.self_attn.k_proj.weight')!.data;
    const matVec = (w: Float32Array, x: number[], rows: number) => Array.from({ length: rows }, (_, r) => x.reduce((s, xi, c) => s + w[r * C + c]! * xi, 0));
    const theta = (i: number) => Math.pow(10000, (-2 * i) / D);
    // Hugging Face: pairs (i, i + D/2). llama.cpp LLAMA (rope mode 0): pairs (2i, 2i + 1).
    const ropeHf = (v: number[], pos: number) =>
      v.map((_, j) => {
        const i = j % (D / 2);
        const [c, s] = [Math.cos(pos * theta(i)), Math.sin(pos * theta(i))];
        return j < D / 2 ? v[j]! * c - v[j + D / 2]! * s : v[j]! * c + v[j - D / 2]! * s;
      });
    const ropeGgml = (v: number[], pos: number) =>
      v.map((_, j) => {
        const i = j >> 1;
        const [c, s] = [Math.cos(pos * theta(i)), Math.sin(pos * theta(i))];
        return j % 2 === 0 ? v[j]! * c - v[j + 1]! * s : v[j]! * c + v[j - 1]! * s;
      });
    const x = Array.from({ length: C }, (_, i) => Math.sin(i * 1.3));
    const y = Array.from({ length: C }, (_, i) => Math.cos(i * 0.7));
    const scores = (wQ: Float32Array, wK: Float32Array, rope: typeof ropeHf, pq: number, pk: number) => {
      const q = matVec(wQ, x, H * D);
      const k = matVec(wK, y, KV * D);
      return Array.from({ length: H }, (_, h) => {
        const qh = rope(q.slice(h * D, (h + 1) * D), pq);
        const kh = rope(k.slice(Math.floor(h / (H / KV)) * D, (Math.floor(h / (H / KV)) + 1) * D), pk);
        return qh.reduce((s, v, j) => s + v * kh[j]!, 0);
      });
    };
    for (const [pq, pk] of [[0, 0], [5, 2], [37, 11]]) {
      const want = scores(hfQ, hfK, ropeHf, pq, pk);
      const got = scores(wq, wk, ropeGgml, pq, pk);
      for (let h = 0; h < H; h++) expect(got[h]).toBeCloseTo(want[h]!, 4);
    }
    // And the permutation is not the identity: unpermuted rows would score differently.
    const wrong = scores(hfQ, hfK, ropeGgml, 37, 11);
    expect(Math.max(...wrong.map((v, h) => Math.abs(v - scores(hfQ, hfK, ropeHf, 37, 11)[h]!)))).toBeGreaterThan(1e-2);
  });

  it('tied embeddings, llama3 rope factors and a Q8_0 fallback to F16 for rows not a multiple of 32', async () => {
    const dir = path.join(root, 'tied');
    fs.mkdirSync(dir);
    const ropeScaling = { factor: 8, high_freq_factor: 4, low_freq_factor: 1, original_max_position_embeddings: 64, rope_type: 'llama3' };
    const model = await writeTinyLlama(dir, { tied: true, ropeScaling, seed: 3, hidden: 48 });
    const out = path.join(root, 'tied-out');
    const result = await exportGguf(out, dir, { quant: 'q8_0' });
    const g = parseGguf(path.join(out, result.ggufFile));
    expect(g.tensors.has('output.weight')).toBe(false); // llama.cpp reuses token_embd
    expect(g.tensors.get('blk.0.attn_q.weight')!.type).toBe(1); // rows of 48: F16
    expect(g.tensors.get('blk.0.ffn_down.weight')!.type).toBe(8); // rows of 128: Q8_0
    expect(g.metadata.get('llama.attention.key_length')?.value).toBe(16); // 4 heads x 16 != 48
    // llama.cpp divides each base frequency by its factor; our RoPE (rope.ts) applies llama3 directly.
    const config = parseModelConfig(model.config);
    const scaled = inverseFrequencies(config);
    const plain = inverseFrequencies({ ...config, ropeScaling: null });
    const factors = dequantize(g.tensors.get('rope_freqs.weight')!);
    expect(factors.length).toBe(8);
    for (let i = 0; i < 8; i++) expect(factors[i]).toBeCloseTo(plain[i]! / scaled[i]!, 4);
    expect(new Set(factors).size).toBeGreaterThan(2); // kept, smoothed and divided bands all occur
  });

  it('refuses other architectures and sentencepiece-style tokenizers, writing nothing', async () => {
    const gpt2 = path.join(root, 'gpt2');
    writeTinyCheckpoint(gpt2, 'gpt2', 1);
    const attempt = async (dir: string, out: string) => {
      try {
        await exportGguf(out, dir, { quant: 'f16' });
      } catch (e) {
        expect(e).toBeInstanceOf(LowrankError);
        expect(fs.existsSync(out)).toBe(false);
        return e as LowrankError;
      }
      throw new Error('expected an error');
    };
    const arch = await attempt(gpt2, path.join(root, 'no-gpt2'));
    expect(arch.code).toBe('UNKNOWN_ARCHITECTURE');
    expect(arch.message).toContain('GPT2LMHeadModel');

    const spm = path.join(root, 'spm');
    fs.cpSync(tiny.dir, spm, { recursive: true });
    const tokenizerFile = path.join(spm, 'tokenizer.json');
    const json = JSON.parse(fs.readFileSync(tokenizerFile, 'utf8'));
    json.model.byte_fallback = true;
    fs.writeFileSync(tokenizerFile, JSON.stringify(json));
    const tok = await attempt(spm, path.join(root, 'no-spm'));
    expect(tok.code).toBe('BAD_TOKENIZER');
    expect(tok.message).toContain('sentencepiece');
  });
});
