#!/usr/bin/env python3
"""
Test helper for torch_lora.py: writes a tiny random Hugging Face model folder (config.json +
model.safetensors, or two shards + model.safetensors.index.json) with numpy only.

    python3 scripts/peer/make_tiny_checkpoint.py OUT [--arch llama|qwen2|mistral] [--dtype BF16|F16|F32]
        [--tied] [--rope llama3|linear] [--head-dim 16] [--shards 2] [--std 0.02] [--seed 0]

make(...) returns (config, weights) where weights are float64 numpy arrays holding exactly the
stored values (after rounding to BF16/F16), for check_parity.py's independent reference.
"""
import argparse
import json
import os
import struct

import numpy as np


def to_bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even (as torch does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def encode(x, dtype):
    """(bytes, exact stored values as float64)."""
    if dtype == 'F32':
        a = x.astype('<f4')
        return a.tobytes(), a.astype(np.float64)
    if dtype == 'F16':
        a = x.astype('<f2')
        return a.tobytes(), a.astype(np.float64)
    bits = to_bf16_bits(x).astype('<u2')
    return bits.tobytes(), (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def write_safetensors(path, tensors, dtype):
    """tensors: name -> float array. Returns name -> stored float64 values."""
    header, chunks, stored, offset = {'__metadata__': {'format': 'pt'}}, [], {}, 0
    for name, x in tensors.items():
        data, stored[name] = encode(x, dtype)
        header[name] = {'dtype': dtype, 'shape': list(x.shape), 'data_offsets': [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    h += b' ' * (-len(h) % 8)  # the format pads the header with spaces to 8-byte alignment
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for data in chunks:
            f.write(data)
    return stored


def make(out, arch='llama', dtype='BF16', tied=False, rope=None, head_dim=None, shards=1, std=0.02, seed=0,
         vocab=96, hidden=48, inter=80, layers=2, heads=4, kv_heads=2, sliding_window=4096):
    rng = np.random.default_rng(seed)
    config = {
        'architectures': [{'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM', 'mistral': 'MistralForCausalLM'}[arch]],
        'model_type': arch,
        'vocab_size': vocab,
        'hidden_size': hidden,
        'intermediate_size': inter,
        'num_hidden_layers': layers,
        'num_attention_heads': heads,
        'num_key_value_heads': kv_heads,
        'rms_norm_eps': 1e-5,
        'rope_theta': 10000.0,
        'hidden_act': 'silu',
        'tie_word_embeddings': tied,
        'torch_dtype': 'bfloat16',
    }
    D = head_dim or hidden // heads
    if head_dim:
        config['head_dim'] = head_dim
    if rope == 'llama3':
        # Small original context so the 8 frequencies of head_dim 16 fall in all three bands.
        config['rope_scaling'] = {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                                  'high_freq_factor': 4.0, 'original_max_position_embeddings': 32}
    elif rope == 'linear':
        config['rope_scaling'] = {'type': 'linear', 'factor': 4.0}
    if arch == 'mistral':
        config['sliding_window'] = sliding_window

    w = lambda *shape: rng.normal(0, std, shape)
    norm = lambda: 1 + rng.normal(0, 0.1, (hidden,))
    t = {'model.embed_tokens.weight': w(vocab, hidden)}
    for i in range(layers):
        p = f'model.layers.{i}'
        t[f'{p}.input_layernorm.weight'] = norm()
        t[f'{p}.self_attn.q_proj.weight'] = w(heads * D, hidden)
        t[f'{p}.self_attn.k_proj.weight'] = w(kv_heads * D, hidden)
        t[f'{p}.self_attn.v_proj.weight'] = w(kv_heads * D, hidden)
        if arch == 'qwen2':
            t[f'{p}.self_attn.q_proj.bias'] = w(heads * D)
            t[f'{p}.self_attn.k_proj.bias'] = w(kv_heads * D)
            t[f'{p}.self_attn.v_proj.bias'] = w(kv_heads * D)
        t[f'{p}.self_attn.o_proj.weight'] = w(hidden, heads * D)
        t[f'{p}.post_attention_layernorm.weight'] = norm()
        t[f'{p}.mlp.gate_proj.weight'] = w(inter, hidden)
        t[f'{p}.mlp.up_proj.weight'] = w(inter, hidden)
        t[f'{p}.mlp.down_proj.weight'] = w(hidden, inter)
    t['model.norm.weight'] = norm()
    if not tied:
        t['lm_head.weight'] = w(vocab, hidden)

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    names = list(t)
    if shards == 1:
        stored = write_safetensors(os.path.join(out, 'model.safetensors'), t, dtype)
    else:
        stored, weight_map = {}, {}
        for s in range(shards):
            file = f'model-{s + 1:05d}-of-{shards:05d}.safetensors'
            part = {n: t[n] for n in names[s::shards]}
            stored.update(write_safetensors(os.path.join(out, file), part, dtype))
            weight_map.update({n: file for n in part})
        with open(os.path.join(out, 'model.safetensors.index.json'), 'w') as f:
            json.dump({'metadata': {}, 'weight_map': weight_map}, f, indent=2)
    return config, stored


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('out')
    ap.add_argument('--arch', default='llama', choices=['llama', 'qwen2', 'mistral'])
    ap.add_argument('--dtype', default='BF16', choices=['BF16', 'F16', 'F32'])
    ap.add_argument('--tied', action='store_true')
    ap.add_argument('--rope', choices=['llama3', 'linear'])
    ap.add_argument('--head-dim', type=int)
    ap.add_argument('--shards', type=int, default=1)
    ap.add_argument('--std', type=float, default=0.02)
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    make(a.out, a.arch, a.dtype, a.tied, a.rope, a.head_dim, a.shards, a.std, a.seed)
    print(a.out)
