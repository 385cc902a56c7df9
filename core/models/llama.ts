/**
 * LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM: pre-norm decoder blocks with RMSNorm,
 * RoPE, grouped-query attention and a SwiGLU MLP (Touvron et al. arXiv:2302.13971; GQA, Ainslie et
 * al. arXiv:2305.13245). Mirrors transformers' modeling_llama.py; Qwen2 adds q/k/v biases and
 * Mistral a sliding attention window, both read from the config.
 */
import * as tf from '../tf.ts';
import { CausalLM, attentionBias, type ForwardOptions, type KVCache } from './causal-lm.ts';
import { applyRope, maskedSoftmax, rmsNorm, swiGlu } from './fused-ops.ts';
import { ropeTables } from './rope.ts';
import { attentionChunked, attentionTuning } from './attention.ts';

export class LlamaModel extends CausalLM {
  linearModules(): string[] {
    const paths: string[] = [];
    for (let i = 0; i < this.config.numLayers; i++) {
      for (const m of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) paths.push(`model.layers.${i}.self_attn.${m}`);
      for (const m of ['gate_proj', 'up_proj', 'down_proj']) paths.push(`model.layers.${i}.mlp.${m}`);
    }
    return paths;
  }

  isTransposedLinear(): boolean {
    return false;
  }

  headWeightName(): string {
    return this.config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
  }

  hidden(ids: tf.Tensor2D, opts: ForwardOptions = {}): { hidden: tf.Tensor2D; cache?: KVCache } {
    const c = this.config;
    const [B, T] = ids.shape;
    const past = opts.cache?.length ?? 0;
    const wantCache = Boolean(opts.useCache || opts.cache);
    // Long sequences attend in blocks with an online softmax (attention.ts): memory linear in T.
    const chunked = T * (past + T) > attentionTuning.chunkedAboveScores;
    const ctx: LayerContext = {
      B,
      T,
      rope: ropeTables(c, past, T), // cos, sin [T, D]
      bias: chunked ? null : attentionBias(B, T, past, opts.attentionMask, c.slidingWindow), // [B|1, 1, T, S]
      mask: opts.attentionMask,
      pastLength: past,
      past: opts.cache,
      cache: wantCache ? { keys: [], values: [], length: past + T } : null,
    };
    const x0 = this.embed('model.embed_tokens.weight', ids.reshape([B * T])); // [B*T, C]
    // The RoPE tables and the mask (or, on the chunked path, the padding mask) as the layers' constants.
    const constants = ([ctx.rope.cos, ctx.rope.sin, ctx.bias ?? ctx.mask] as Array<tf.Tensor | null | undefined>).filter((t): t is tf.Tensor => t != null);
    const x = this.decoderStack(x0, wantCache, constants, (i, input, [cos, sin, third]) =>
      this.decoderLayer(i, input, {
        ...ctx,
        rope: { cos: cos as tf.Tensor2D, sin: sin as tf.Tensor2D },
        bias: ctx.bias ? (third as tf.Tensor4D) : null,
        mask: ctx.bias ? ctx.mask : (third as tf.Tensor2D | undefined),
      }),
    );
    const final = rmsNorm(x, this.weight('model.norm.weight'), c.normEps); // [B*T, C]
    return { hidden: final, cache: ctx.cache ?? undefined };
  }

  /** Decoder layer i: x [B*T, C] -> x + attention(norm(x)), then + mlp(norm(·)). */
  private decoderLayer(i: number, x: tf.Tensor2D, ctx: LayerContext): tf.Tensor2D {
    const c = this.config;
    const { B, T } = ctx;
    const H = c.numHeads;
    const KV = c.numKvHeads;
    const D = c.headDim;
    const groups = H / KV;
    const { cos, sin } = ctx.rope;
    const p = `model.layers.${i}`;
    const h = rmsNorm(x, this.weight(`${p}.input_layernorm.weight`), c.normEps);
    const heads = (t: tf.Tensor2D, n: number) => t.reshape([B, T, n, D]).transpose([0, 2, 1, 3]) as tf.Tensor4D;
    const q = applyRope(heads(this.linear(`${p}.self_attn.q_proj`, h), H), cos, sin); // [B, H, T, D]
    let k = applyRope(heads(this.linear(`${p}.self_attn.k_proj`, h), KV), cos, sin); // [B, KV, T, D]
    let v = heads(this.linear(`${p}.self_attn.v_proj`, h), KV);
    if (ctx.past) {
      k = tf.concat([ctx.past.keys[i], k], 2);
      v = tf.concat([ctx.past.values[i], v], 2);
    }
    if (ctx.cache) {
      ctx.cache.keys.push(k);
      ctx.cache.values.push(v);
    }
    const S = k.shape[2];
    let heads4: tf.Tensor4D; // [B, H, T, D]
    if (ctx.bias) {
      // Query heads h = g·groups + r share key/value head g (repeat_kv): fold the group into the
      // query rows so one batched matmul serves the group without copying k and v.
      const qg = q.reshape([B, KV, groups * T, D]);
      const scores = tf.matMul(qg, k, false, true).reshape([B, H, T, S]) as tf.Tensor4D; // [B, H, T, S]
      const probs = maskedSoftmax(scores, ctx.bias, 1 / Math.sqrt(D)).reshape([B, KV, groups * T, S]);
      heads4 = tf.matMul(probs, v).reshape([B, H, T, D]); // [B, KV, groups*T, D] -> [B, H, T, D]
    } else {
      heads4 = attentionChunked(q, k, v, { scale: 1 / Math.sqrt(D), past: ctx.pastLength, attentionMask: ctx.mask, slidingWindow: c.slidingWindow });
    }
    const attended = heads4.transpose([0, 2, 1, 3]).reshape([B * T, H * D]) as tf.Tensor2D;
    x = tf.add(x, this.linear(`${p}.self_attn.o_proj`, attended));

    const h2 = rmsNorm(x, this.weight(`${p}.post_attention_layernorm.weight`), c.normEps);
    const gate = this.linear(`${p}.mlp.gate_proj`, h2);
    const up = this.linear(`${p}.mlp.up_proj`, h2);
    return tf.add(x, this.linear(`${p}.mlp.down_proj`, swiGlu(gate, up) as tf.Tensor2D));
  }
}

/** What every decoder layer of one forward pass shares. */
interface LayerContext {
  B: number;
  T: number;
  rope: { cos: tf.Tensor2D; sin: tf.Tensor2D };
  /** The additive mask of the plain attention path; null on the chunked path, which builds its blocks' own from `mask`. */
  bias: tf.Tensor4D | null;
  mask: tf.Tensor2D | undefined;
  pastLength: number;
  /** The cache passed in (read), and the one being built (when asked for). */
  past: KVCache | undefined;
  cache: KVCache | null;
}
