/**
 * LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM: pre-norm decoder blocks with RMSNorm,
 * RoPE, grouped-query attention and a SwiGLU MLP (Touvron et al. arXiv:2302.13971; GQA, Ainslie et
 * al. arXiv:2305.13245). Mirrors transformers' modeling_llama.py; Qwen2 adds q/k/v biases and
 * Mistral a sliding attention window, both read from the config.
 */
import * as tf from '../tf.ts';
import { CausalLM, attentionBias, type ForwardOptions, type ForwardResult, type KVCache } from './causal-lm.ts';
import { applyRope, rmsNorm, swiGlu } from './fused-ops.ts';
import { ropeTables } from './rope.ts';

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

  forward(ids: tf.Tensor2D, opts: ForwardOptions = {}): ForwardResult {
    const c = this.config;
    const [B, T] = ids.shape;
    const H = c.numHeads;
    const KV = c.numKvHeads;
    const D = c.headDim;
    const groups = H / KV;
    const past = opts.cache?.length ?? 0;
    const S = past + T;

    let x = tf.gather(this.weight('model.embed_tokens.weight'), ids.reshape([B * T])) as tf.Tensor2D; // [B*T, C]
    const { cos, sin } = ropeTables(c, past, T); // [T, D]
    const bias = attentionBias(B, T, past, opts.attentionMask, c.slidingWindow); // [B|1, 1, T, S]
    const scale = 1 / Math.sqrt(D);
    const cache: KVCache = { keys: [], values: [], length: S };

    for (let i = 0; i < c.numLayers; i++) {
      const p = `model.layers.${i}`;
      const h = rmsNorm(x, this.weight(`${p}.input_layernorm.weight`), c.normEps);
      const heads = (t: tf.Tensor2D, n: number) => t.reshape([B, T, n, D]).transpose([0, 2, 1, 3]) as tf.Tensor4D;
      const q = applyRope(heads(this.linear(`${p}.self_attn.q_proj`, h), H), cos, sin); // [B, H, T, D]
      let k = applyRope(heads(this.linear(`${p}.self_attn.k_proj`, h), KV), cos, sin); // [B, KV, T, D]
      let v = heads(this.linear(`${p}.self_attn.v_proj`, h), KV);
      if (opts.cache) {
        k = tf.concat([opts.cache.keys[i], k], 2);
        v = tf.concat([opts.cache.values[i], v], 2);
      }
      cache.keys.push(k);
      cache.values.push(v);
      // Query heads h = g·groups + r share key/value head g (repeat_kv): fold the group into the
      // query rows so one batched matmul serves the group without copying k and v.
      const qg = q.reshape([B, KV, groups * T, D]);
      const scores = tf.mul(tf.matMul(qg, k, false, true), scale).reshape([B, H, T, S]); // [B, H, T, S]
      const probs = tf.softmax(tf.add(scores, bias)).reshape([B, KV, groups * T, S]);
      const attended = tf.matMul(probs, v) // [B, KV, groups*T, D]
        .reshape([B, H, T, D])
        .transpose([0, 2, 1, 3])
        .reshape([B * T, H * D]) as tf.Tensor2D;
      x = tf.add(x, this.linear(`${p}.self_attn.o_proj`, attended));

      const h2 = rmsNorm(x, this.weight(`${p}.post_attention_layernorm.weight`), c.normEps);
      const gate = this.linear(`${p}.mlp.gate_proj`, h2);
      const up = this.linear(`${p}.mlp.up_proj`, h2);
      x = tf.add(x, this.linear(`${p}.mlp.down_proj`, swiGlu(gate, up) as tf.Tensor2D));
    }

    const final = rmsNorm(x, this.weight('model.norm.weight'), c.normEps);
    const logits = c.tieWordEmbeddings
      ? tf.matMul(final, this.weight('model.embed_tokens.weight') as tf.Tensor2D, false, true)
      : this.linear('lm_head', final);
    return { logits: logits.reshape([B, T, c.vocabSize]), cache: opts.useCache || opts.cache ? cache : undefined };
  }
}
