/**
 * GPT2LMHeadModel (Radford et al. 2019): learned positions, pre-LayerNorm blocks, fused qkv,
 * GELU MLP. Its linear layers are `Conv1D` modules that store weights [in, out], so y = x·W + b.
 * Mirrors transformers' modeling_gpt2.py.
 */
import * as tf from '../tf.ts';
import { CausalLM, attentionBias, type ForwardOptions, type KVCache } from './causal-lm.ts';
import { layerNorm } from './fused-ops.ts';

/** gelu_new: the tanh approximation, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
function geluTanh(x: tf.Tensor2D): tf.Tensor2D {
  const inner = tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.pow(x, 3))));
  return tf.mul(tf.mul(0.5, x), tf.add(1, tf.tanh(inner)));
}

/** gelu: the exact form, 0.5·x·(1 + erf(x/√2)). */
function geluErf(x: tf.Tensor2D): tf.Tensor2D {
  return tf.mul(tf.mul(0.5, x), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
}

export class Gpt2Model extends CausalLM {
  linearModules(): string[] {
    const paths: string[] = [];
    for (let i = 0; i < this.config.numLayers; i++) {
      const p = `transformer.h.${i}`;
      paths.push(`${p}.attn.c_attn`, `${p}.attn.c_proj`, `${p}.mlp.c_fc`, `${p}.mlp.c_proj`);
    }
    return paths;
  }

  isTransposedLinear(path: string): boolean {
    return path !== 'lm_head';
  }

  headWeightName(): string {
    return this.config.tieWordEmbeddings ? 'transformer.wte.weight' : 'lm_head.weight';
  }

  hidden(ids: tf.Tensor2D, opts: ForwardOptions = {}): { hidden: tf.Tensor2D; cache?: KVCache } {
    const c = this.config;
    const [B, T] = ids.shape;
    const C = c.hiddenSize;
    const past = opts.cache?.length ?? 0;
    const wantCache = Boolean(opts.useCache || opts.cache);
    const positions = tf.range(past, past + T, 1, 'int32');
    const tokens = this.embed('transformer.wte.weight', ids.reshape([B * T])).reshape([B, T, C]);
    let x = tf.add(tokens, tf.gather(this.weight('transformer.wpe.weight'), positions)).reshape([B * T, C]) as tf.Tensor2D;
    const ctx: Gpt2LayerContext = {
      B,
      T,
      bias: attentionBias(B, T, past, opts.attentionMask, null), // [B|1, 1, T, S]
      past: opts.cache,
      cache: wantCache ? { keys: [], values: [], length: past + T } : null,
    };
    x = this.decoderStack(x, wantCache, [ctx.bias], (i, input, [bias]) => this.block(i, input, { ...ctx, bias: bias as tf.Tensor4D }));
    const final = layerNorm(x, this.weight('transformer.ln_f.weight'), this.weight('transformer.ln_f.bias'), c.normEps); // [B*T, C]
    return { hidden: final, cache: ctx.cache ?? undefined };
  }

  /** Block i: x [B*T, C] -> x + attn(ln_1(x)), then + mlp(ln_2(·)). */
  private block(i: number, x: tf.Tensor2D, ctx: Gpt2LayerContext): tf.Tensor2D {
    const c = this.config;
    const { B, T } = ctx;
    const H = c.numHeads;
    const D = c.headDim;
    const C = c.hiddenSize;
    const gelu = c.raw.activation_function === 'gelu' ? geluErf : geluTanh;
    const p = `transformer.h.${i}`;
    const w = (name: string) => this.weight(`${p}.${name}`);
    const h = layerNorm(x, w('ln_1.weight'), w('ln_1.bias'), c.normEps);
    const [q, k0, v0] = tf
      .split(this.linear(`${p}.attn.c_attn`, h), 3, 1)
      .map((t) => t.reshape([B, T, H, D]).transpose([0, 2, 1, 3]) as tf.Tensor4D); // [B, H, T, D]
    const k = ctx.past ? tf.concat([ctx.past.keys[i], k0], 2) : k0;
    const v = ctx.past ? tf.concat([ctx.past.values[i], v0], 2) : v0;
    if (ctx.cache) {
      ctx.cache.keys.push(k);
      ctx.cache.values.push(v);
    }
    const scores = tf.add(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(D)), ctx.bias); // [B, H, T, S]
    const attended = tf.matMul(tf.softmax(scores), v).transpose([0, 2, 1, 3]).reshape([B * T, C]) as tf.Tensor2D;
    x = tf.add(x, this.linear(`${p}.attn.c_proj`, attended));
    const h2 = layerNorm(x, w('ln_2.weight'), w('ln_2.bias'), c.normEps);
    return tf.add(x, this.linear(`${p}.mlp.c_proj`, gelu(this.linear(`${p}.mlp.c_fc`, h2))));
  }
}

/** What every block of one forward pass shares. */
interface Gpt2LayerContext {
  B: number;
  T: number;
  bias: tf.Tensor4D;
  past: KVCache | undefined;
  cache: KVCache | null;
}
