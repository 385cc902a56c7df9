// Sanity checks of the float64 reference models on the tiny fixtures; nothing here touches the project's code.
import { describe, expect, it } from 'vitest';
import { makeTinyCheckpoint, TINY_CHECKPOINT_KINDS, type TinyCheckpointKind } from '../fixtures/tiny-checkpoints.ts';
import { causalLmLossFromLogits, referenceLogits, referenceLoss, weightsFromTensors } from './reference-lm.ts';
import { layerNorm, linear, logSumExp, softmax } from './reference-ops.ts';

const IDS = [5, 17, 3, 42, 8, 8, 29, 1, 60, 11, 7, 33];

function load(kind: TinyCheckpointKind, seed = 1) {
  const checkpoint = makeTinyCheckpoint(kind, seed);
  return { config: checkpoint.config, ...weightsFromTensors(checkpoint.tensors) };
}

function maxAbsDiff(a: number[][], b: number[][]): number {
  let m = 0;
  a.forEach((row, t) => row.forEach((v, i) => (m = Math.max(m, Math.abs(v - b[t][i])))));
  return m;
}

function rowDiff(a: number[][], b: number[][], t: number): number {
  return Math.max(...a[t].map((v, i) => Math.abs(v - b[t][i])));
}

describe.each(TINY_CHECKPOINT_KINDS)('%s', (kind) => {
  const { config, weights, shapes } = load(kind);
  const vocab = config.vocab_size as number;
  const logits = referenceLogits(config, weights, shapes, IDS);

  it('gives finite, non-trivial logits [T][V]', () => {
    expect(logits.length).toBe(IDS.length);
    for (const row of logits) {
      expect(row.length).toBe(vocab);
      expect(row.every(Number.isFinite)).toBe(true);
      const mean = row.reduce((a, b) => a + b, 0) / vocab;
      const std = Math.sqrt(row.reduce((a, b) => a + (b - mean) ** 2, 0) / vocab);
      expect(std).toBeGreaterThan(0.3); // spread enough for a parity test to notice a wrong weight
      expect(std).toBeLessThan(20);
    }
  });

  it('is causal: changing later tokens leaves earlier logits unchanged', () => {
    const changed = [...IDS.slice(0, 6), ...IDS.slice(6).map((id) => (id + 9) % vocab)];
    const other = referenceLogits(config, weights, shapes, changed);
    for (let t = 0; t < 6; t++) expect(rowDiff(logits, other, t)).toBeLessThan(1e-12);
    expect(rowDiff(logits, other, 6)).toBeGreaterThan(1e-3);
    const prefix = referenceLogits(config, weights, shapes, IDS.slice(0, 4));
    expect(maxAbsDiff(prefix, logits.slice(0, 4))).toBeLessThan(1e-12);
  });

  it('is deterministic in (kind, seed)', () => {
    const again = makeTinyCheckpoint(kind, 1);
    const other = makeTinyCheckpoint(kind, 2);
    const first = makeTinyCheckpoint(kind, 1);
    expect(again.tensors.map((t) => t.name)).toEqual(first.tensors.map((t) => t.name));
    expect(again.tensors[0].data).toEqual(first.tensors[0].data);
    expect(other.tensors[0].data).not.toEqual(first.tensors[0].data);
  });
});

describe('fixture layout', () => {
  const names = (kind: TinyCheckpointKind) => makeTinyCheckpoint(kind, 1).tensors.map((t) => t.name);
  const shape = (kind: TinyCheckpointKind, name: string) => makeTinyCheckpoint(kind, 1).tensors.find((t) => t.name === name)?.shape;

  it('tied checkpoints have no lm_head.weight, untied ones do', () => {
    for (const kind of TINY_CHECKPOINT_KINDS) {
      const { config } = makeTinyCheckpoint(kind, 1);
      const tied = config.model_type === 'gpt2' ? config.tie_word_embeddings !== false : config.tie_word_embeddings === true;
      expect(names(kind).some((n) => n.endsWith('lm_head.weight'))).toBe(!tied);
    }
  });

  it('uses the key names and shapes transformers saves', () => {
    expect(names('llama-gqa-tied')).toContain('model.layers.1.self_attn.k_proj.weight');
    expect(shape('llama-gqa-tied', 'model.layers.0.self_attn.k_proj.weight')).toEqual([16, 32]); // 2 kv heads x 8
    expect(shape('mistral', 'model.layers.0.self_attn.q_proj.weight')).toEqual([64, 32]); // head_dim 16 given
    expect(shape('mistral', 'model.layers.0.self_attn.o_proj.weight')).toEqual([32, 64]);
    expect(names('qwen2')).toContain('model.layers.0.self_attn.q_proj.bias');
    expect(names('qwen2')).not.toContain('model.layers.0.self_attn.o_proj.bias');
    expect(names('llama-untied')).not.toContain('model.layers.0.self_attn.q_proj.bias');
    expect(shape('gpt2', 'h.0.attn.c_attn.weight')).toEqual([32, 96]);
    expect(shape('gpt2', 'h.0.mlp.c_fc.weight')).toEqual([32, 128]);
    expect(shape('gpt2', 'h.0.mlp.c_proj.weight')).toEqual([128, 32]);
    expect(shape('gpt2', 'h.1.attn.bias')).toEqual([1, 1, 128, 128]);
    expect(names('gpt2-prefixed').every((n) => n.startsWith('transformer.'))).toBe(true);
    expect(names('gpt2-prefixed').some((n) => n.endsWith('.attn.bias'))).toBe(false);
  });

  it('writes config.json fields with transformers names', () => {
    const llama = makeTinyCheckpoint('llama3-rope', 1).config;
    expect(llama).toMatchObject({ model_type: 'llama', architectures: ['LlamaForCausalLM'], num_key_value_heads: 2, torch_dtype: 'float32' });
    expect(llama.rope_scaling).toMatchObject({ rope_type: 'llama3', original_max_position_embeddings: 64 });
    expect(Object.keys(llama)).toEqual(Object.keys(llama).sort());
    const gpt2 = makeTinyCheckpoint('gpt2-prefixed', 1).config;
    expect(gpt2).toMatchObject({ n_embd: 48, n_head: 4, n_layer: 2, n_positions: 128, n_inner: null, activation_function: 'gelu_new' });
  });
});

describe('architecture details', () => {
  it('GQA equals multi-head attention with each kv head repeated for its query heads', () => {
    const { config, weights, shapes } = load('llama-gqa-tied');
    const mhaWeights = new Map(weights);
    const mhaShapes = new Map(shapes);
    const headDim = 8;
    for (let l = 0; l < 2; l++) {
      for (const proj of ['k_proj', 'v_proj']) {
        const name = `model.layers.${l}.self_attn.${proj}.weight`;
        const w = weights.get(name)!; // [2 * 8, 32]
        const repeated = new Float64Array(4 * headDim * 32); // [4 * 8, 32]: kv head j serves query heads 2j, 2j+1
        for (let h = 0; h < 4; h++) repeated.set(w.subarray(Math.floor(h / 2) * headDim * 32, (Math.floor(h / 2) + 1) * headDim * 32), h * headDim * 32);
        mhaWeights.set(name, repeated);
        mhaShapes.set(name, [32, 32]);
      }
    }
    const gqa = referenceLogits(config, weights, shapes, IDS);
    const mha = referenceLogits({ ...config, num_key_value_heads: 4 }, mhaWeights, mhaShapes, IDS);
    expect(maxAbsDiff(gqa, mha)).toBeLessThan(1e-12);
  });

  it('tie_word_embeddings uses embed_tokens as lm_head', () => {
    const { config, weights, shapes } = load('llama-gqa-tied');
    const untiedWeights = new Map(weights).set('lm_head.weight', weights.get('model.embed_tokens.weight')!);
    const untiedShapes = new Map(shapes).set('lm_head.weight', [96, 32]);
    const tied = referenceLogits(config, weights, shapes, IDS);
    const untied = referenceLogits({ ...config, tie_word_embeddings: false }, untiedWeights, untiedShapes, IDS);
    expect(maxAbsDiff(tied, untied)).toBe(0);
    expect(() => referenceLogits({ ...config, tie_word_embeddings: false }, weights, shapes, IDS)).toThrow(/lm_head.weight/);
  });

  it("Mistral's sliding window bounds the receptive field to L*(w-1) tokens back", () => {
    const { config, weights, shapes } = load('mistral'); // window 4, 2 layers: position t sees tokens > t - 7
    const changed = [(IDS[0] + 1) % 96, ...IDS.slice(1)];
    const base = referenceLogits(config, weights, shapes, IDS);
    const other = referenceLogits(config, weights, shapes, changed);
    expect(rowDiff(base, other, 6)).toBeGreaterThan(1e-4);
    for (let t = 7; t < IDS.length; t++) expect(rowDiff(base, other, t)).toBe(0);
    const full = { ...config, sliding_window: null };
    const fullChanged = referenceLogits(full, weights, shapes, changed);
    expect(rowDiff(referenceLogits(full, weights, shapes, IDS), fullChanged, IDS.length - 1)).toBeGreaterThan(1e-6);
  });

  it('Qwen2 ignores sliding_window unless use_sliding_window, then only from max_window_layers on', () => {
    const { config, weights, shapes } = load('qwen2');
    const base = referenceLogits(config, weights, shapes, IDS);
    expect(maxAbsDiff(base, referenceLogits({ ...config, sliding_window: 2 }, weights, shapes, IDS))).toBe(0);
    const beyond = { ...config, sliding_window: 2, use_sliding_window: true, max_window_layers: 2 };
    expect(maxAbsDiff(base, referenceLogits(beyond, weights, shapes, IDS))).toBe(0);
    const lastLayer = { ...config, sliding_window: 2, use_sliding_window: true, max_window_layers: 1 };
    expect(maxAbsDiff(base, referenceLogits(lastLayer, weights, shapes, IDS))).toBeGreaterThan(1e-4);
    const viaTypes = { ...config, sliding_window: 2, layer_types: ['full_attention', 'sliding_attention'] };
    expect(maxAbsDiff(referenceLogits(lastLayer, weights, shapes, IDS), referenceLogits(viaTypes, weights, shapes, IDS))).toBe(0);
  });

  it("transformers v5's rope_parameters read the same as rope_theta + rope_scaling", () => {
    const { config, weights, shapes } = load('llama3-rope');
    const v5: Record<string, unknown> = { ...config, rope_parameters: { rope_theta: config.rope_theta, ...(config.rope_scaling as object) } };
    delete v5.rope_theta;
    delete v5.rope_scaling;
    expect(maxAbsDiff(referenceLogits(config, weights, shapes, IDS), referenceLogits(v5, weights, shapes, IDS))).toBe(0);
    const unscaled = referenceLogits({ ...config, rope_scaling: null }, weights, shapes, IDS);
    expect(maxAbsDiff(referenceLogits(config, weights, shapes, IDS), unscaled)).toBeGreaterThan(1e-4);
  });

  it('GPT-2 reads the same weights with or without the transformer. prefix, ignoring attn.bias buffers', () => {
    const hub = makeTinyCheckpoint('gpt2', 3);
    const prefixed = hub.tensors.filter((t) => !t.name.endsWith('.attn.bias')).map((t) => ({ ...t, name: `transformer.${t.name}` }));
    const a = weightsFromTensors(hub.tensors);
    const b = weightsFromTensors(prefixed);
    expect(maxAbsDiff(referenceLogits(hub.config, a.weights, a.shapes, IDS), referenceLogits(hub.config, b.weights, b.shapes, IDS))).toBe(0);
  });

  it('GPT-2 Conv1D weights are [in, out] and c_attn packs q | k | v (checked against nn.Linear projections)', () => {
    // One block, 2 heads, C = 4: Linear-orientation projections [out, in], packed into Conv1D [in, out] by hand.
    const c = 4;
    const vocab = 6;
    const rand = (n: number, k: number) => Float64Array.from({ length: n }, (_, i) => Math.sin(1.7 * i + k) * 0.6);
    const [wq, wk, wv, wo] = [1, 2, 3, 4].map((k) => rand(c * c, k)); // [C, C] each, nn.Linear layout
    const [bq, bk, bv, bo] = [5, 6, 7, 8].map((k) => rand(c, k));
    const wFc = rand(4 * c * c, 9); // [4C, C]
    const wProj = rand(c * 4 * c, 10); // [C, 4C]
    const wte = rand(vocab * c, 11);
    const wpe = rand(8 * c, 12);
    const ones = new Float64Array(c).fill(1);
    const zeros = new Float64Array(c);
    const cAttn = new Float64Array(c * 3 * c); // [C, 3C]: column o of block b is row o of W_b
    [wq, wk, wv].forEach((w, block) => {
      for (let i = 0; i < c; i++) for (let o = 0; o < c; o++) cAttn[i * 3 * c + block * c + o] = w[o * c + i];
    });
    const transpose = (w: Float64Array, out: number, inp: number) => {
      const t = new Float64Array(out * inp);
      for (let o = 0; o < out; o++) for (let i = 0; i < inp; i++) t[i * out + o] = w[o * inp + i];
      return t;
    };
    const tensors = new Map<string, [number[], Float64Array]>([
      ['wte.weight', [[vocab, c], wte]], ['wpe.weight', [[8, c], wpe]],
      ['h.0.ln_1.weight', [[c], ones]], ['h.0.ln_1.bias', [[c], zeros]], ['h.0.ln_2.weight', [[c], ones]], ['h.0.ln_2.bias', [[c], zeros]],
      ['h.0.attn.c_attn.weight', [[c, 3 * c], cAttn]], ['h.0.attn.c_attn.bias', [[3 * c], Float64Array.from([...bq, ...bk, ...bv])]],
      ['h.0.attn.c_proj.weight', [[c, c], transpose(wo, c, c)]], ['h.0.attn.c_proj.bias', [[c], bo]],
      ['h.0.mlp.c_fc.weight', [[c, 4 * c], transpose(wFc, 4 * c, c)]], ['h.0.mlp.c_fc.bias', [[4 * c], new Float64Array(4 * c)]],
      ['h.0.mlp.c_proj.weight', [[4 * c, c], transpose(wProj, c, 4 * c)]], ['h.0.mlp.c_proj.bias', [[c], zeros]],
      ['ln_f.weight', [[c], ones]], ['ln_f.bias', [[c], zeros]],
    ]);
    const config = { architectures: ['GPT2LMHeadModel'], n_embd: c, n_head: 2, n_layer: 1, n_positions: 8, vocab_size: vocab, layer_norm_epsilon: 1e-5 };
    const ids = [3, 0, 5, 2];
    const got = referenceLogits(config, new Map([...tensors].map(([k, [, d]]) => [k, d])), new Map([...tensors].map(([k, [s]]) => [k, s])), ids);

    // Expected, written out with nn.Linear projections and per-head loops.
    const t = ids.length;
    let h = Float64Array.from(ids.flatMap((id, p) => [...wte.subarray(id * c, id * c + c)].map((v, i) => v + wpe[p * c + i])));
    const x = layerNorm(h, t, ones, zeros, 1e-5);
    const [q, k, v] = [[wq, bq], [wk, bk], [wv, bv]].map(([w, b]) => linear(x, t, w, c, c, b));
    const attended = new Float64Array(t * c);
    for (let head = 0; head < 2; head++) {
      for (let i = 0; i < t; i++) {
        const scores = Array.from({ length: i + 1 }, (_, j) => (q[i * c + 2 * head] * k[j * c + 2 * head] + q[i * c + 2 * head + 1] * k[j * c + 2 * head + 1]) / Math.SQRT2);
        softmax(scores).forEach((p, j) => {
          for (let d = 0; d < 2; d++) attended[i * c + 2 * head + d] += p * v[j * c + 2 * head + d];
        });
      }
    }
    h = h.map((val, i) => val + linear(attended, t, wo, c, c, bo)[i]);
    const fc = linear(layerNorm(h, t, ones, zeros, 1e-5), t, wFc, 4 * c, c).map((z) => 0.5 * z * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (z + 0.044715 * z ** 3))));
    h = h.map((val, i) => val + linear(fc, t, wProj, c, 4 * c)[i]);
    const logits = linear(layerNorm(h, t, ones, zeros, 1e-5), t, wte, vocab, c);
    const expected = Array.from({ length: t }, (_, i) => Array.from(logits.subarray(i * vocab, (i + 1) * vocab)));
    expect(maxAbsDiff(got, expected)).toBeLessThan(1e-12);
  });
});

describe('loss', () => {
  const { config, weights, shapes } = load('llama-untied');
  const logits = referenceLogits(config, weights, shapes, IDS);
  const ce = (t: number, target: number) => logSumExp(logits[t]) - logits[t][target];

  it('is the mean next-token cross-entropy, labels shifted inside', () => {
    const expected = IDS.slice(1).reduce((s, target, t) => s + ce(t, target), 0) / (IDS.length - 1);
    expect(referenceLoss(config, weights, shapes, IDS, IDS)).toBeCloseTo(expected, 12);
  });

  it('skips positions whose shifted label is -100', () => {
    const labels = IDS.map((id, t) => (t < 5 ? -100 : id)); // only targets at t >= 5 count: predicted from t - 1
    const expected = [5, 6, 7, 8, 9, 10, 11].reduce((s, t) => s + ce(t - 1, IDS[t]), 0) / 7;
    expect(causalLmLossFromLogits(logits, labels)).toBeCloseTo(expected, 12);
    expect(Number.isNaN(causalLmLossFromLogits(logits, IDS.map(() => -100)))).toBe(true);
  });

  it('of uniform logits is log V', () => {
    const flat = IDS.map(() => new Array(80).fill(0.5));
    expect(causalLmLossFromLogits(flat, IDS)).toBeCloseTo(Math.log(80), 12);
  });
});
