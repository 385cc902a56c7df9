#!/usr/bin/env python3
"""
Checks for torch_lora.py on tiny random checkpoints (make_tiny_checkpoint.py), no network:

1. forward parity: the script's float32 logits and loss against a float64 numpy model written
   here from the formulas (RMSNorm, RoPE rotate_half + linear/llama3 scaling, GQA, causal
   softmax, SwiGLU, tied head, q/k/v biases, LoRA), for Llama/Qwen2/Mistral, BF16/F16/F32,
   single and sharded files;
2. training: first_loss ≈ ln(vocab) for near-zero weights, and the loss falls on a fixed batch;
3. errors: exit status 2 and one stderr line for a missing folder, an unsupported architecture
   and a missing tensor.

    /usr/bin/python3 scripts/peer/check_parity.py    # prints one line per check, exit 1 on failure
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import make_tiny_checkpoint  # noqa: E402
import torch_lora as tl  # noqa: E402  (re-runs this script under /usr/bin/python3 if torch is missing)
import torch  # noqa: E402

SCRIPT = os.path.join(HERE, 'torch_lora.py')
failures = []


def check(ok, what):
    print(f'{"ok  " if ok else "FAIL"} {what}')
    if not ok:
        failures.append(what)


# ----------------------------------------------------------------------------------------------
# float64 numpy reference, from the formulas (not from torch_lora.py)

def ref_inv_freq(cfg, D):
    inv = np.array([1.0 / cfg.get('rope_theta', 10000.0) ** (2 * i / D) for i in range(D // 2)])
    s = cfg.get('rope_scaling')
    if not s:
        return inv
    kind = s.get('rope_type', s.get('type'))
    if kind == 'linear':
        return inv / s['factor']
    old, lo, hi, factor = s['original_max_position_embeddings'], s['low_freq_factor'], s['high_freq_factor'], s['factor']
    out = inv.copy()
    for i, f in enumerate(inv):
        wavelen = 2 * math.pi / f
        if wavelen > old / lo:  # long wavelengths: slowed down by factor
            out[i] = f / factor
        elif wavelen >= old / hi:  # between: interpolated
            smooth = (old / wavelen - lo) / (hi - lo)
            out[i] = (1 - smooth) * f / factor + smooth * f
    return out


def ref_logits(cfg, W, ids, lora=None):
    """ids [B, T] -> logits [B, T, V], float64. lora: prefix -> (A [r, in], B [out, r], scale)."""
    H, KV = cfg['num_attention_heads'], cfg['num_key_value_heads']
    D = cfg.get('head_dim') or cfg['hidden_size'] // H
    eps = cfg['rms_norm_eps']
    B, T = ids.shape

    def linear(x, p):
        y = x @ W[p + '.weight'].T
        if p + '.bias' in W:
            y = y + W[p + '.bias']
        if lora and p in lora:
            a, b, s = lora[p]
            y = y + s * ((x @ a.T) @ b.T)
        return y

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    ang = np.arange(T)[:, None] * ref_inv_freq(cfg, D)[None, :]
    ang = np.concatenate([ang, ang], -1)  # [T, D]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):  # [..., T, D]
        x1, x2 = x[..., :D // 2], x[..., D // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    x = W['model.embed_tokens.weight'][ids]  # [B, T, C]
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    hidden = j > i  # causal: a query sees itself and earlier keys,
    if cfg.get('model_type') == 'mistral' and cfg.get('sliding_window'):
        hidden |= i - j >= cfg['sliding_window']  # and, for Mistral, only the last `window` of them
    for l in range(cfg['num_hidden_layers']):
        p = f'model.layers.{l}'
        h = rms(x, W[f'{p}.input_layernorm.weight'])
        q = rope(linear(h, f'{p}.self_attn.q_proj').reshape(B, T, H, D).transpose(0, 2, 1, 3))
        k = rope(linear(h, f'{p}.self_attn.k_proj').reshape(B, T, KV, D).transpose(0, 2, 1, 3))
        v = linear(h, f'{p}.self_attn.v_proj').reshape(B, T, KV, D).transpose(0, 2, 1, 3)
        out = np.zeros((B, H, T, D))
        for head in range(H):
            g = head // (H // KV)  # the key/value head this query head shares
            s = q[:, head] @ k[:, g].transpose(0, 2, 1) / math.sqrt(D)  # [B, T, T]
            s = np.where(hidden, -np.inf, s)
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, head] = (s / s.sum(-1, keepdims=True)) @ v[:, g]
        x = x + linear(out.transpose(0, 2, 1, 3).reshape(B, T, H * D), f'{p}.self_attn.o_proj')
        h = rms(x, W[f'{p}.post_attention_layernorm.weight'])
        gate = linear(h, f'{p}.mlp.gate_proj')
        x = x + linear(gate / (1 + np.exp(-gate)) * linear(h, f'{p}.mlp.up_proj'), f'{p}.mlp.down_proj')
    head = W['model.embed_tokens.weight'] if cfg['tie_word_embeddings'] else W['lm_head.weight']
    return rms(x, W['model.norm.weight']) @ head.T


def ref_loss(logits, labels):
    z = logits[:, :-1].reshape(-1, logits.shape[-1])
    y = labels[:, 1:].reshape(-1)
    keep = y != -100
    z, y = z[keep], y[keep]
    m = z.max(-1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(-1))
    return float((lse - z[np.arange(len(y)), y]).mean())


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


# ----------------------------------------------------------------------------------------------

def parity(tmp, name, lora_targets=None, **kw):
    d = os.path.join(tmp, name)
    cfg, W = make_tiny_checkpoint.make(d, std=0.2, **kw)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, cfg['vocab_size'], (2, 24))
    labels = ids.copy()
    labels[0, :5] = -100  # a masked prompt, as in instruction tuning

    torch.manual_seed(0)
    model = tl.CausalLM(tl.load_config(d), tl.Checkpoint(d))
    lora = None
    if lora_targets:
        tl.add_lora(model, lora_targets, 4, 8, 0.0)
        lora = {}
        for mname, m in model.named_modules():
            if isinstance(m, tl.LoraLinear) and m.r:
                with torch.no_grad():
                    m.lora_B.normal_(0, 0.1)  # B is zero at init: make the branch visible
                lora[mname.replace('layers.', 'model.layers.')] = (m.lora_A.detach().double().numpy(), m.lora_B.detach().double().numpy(), m.scaling)
    with torch.no_grad():
        logits = model(torch.tensor(ids))
        loss = tl.causal_lm_loss(logits, torch.tensor(labels)).item()
    ref = ref_logits(cfg, W, ids, lora)
    e_logits = rel_err(logits.double().numpy(), ref)
    e_loss = abs(loss - ref_loss(ref, labels)) / abs(ref_loss(ref, labels))
    check(e_logits < 1e-5 and e_loss < 1e-5, f'parity {name}: logits rel err {e_logits:.2e}, loss rel err {e_loss:.2e}')


def run_script(*args):
    p = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def training(tmp, dtype):
    d = os.path.join(tmp, f'train-{dtype}')
    cfg, _ = make_tiny_checkpoint.make(d, dtype=dtype, std=0.02, tied=True, vocab=128, hidden=64, inter=128, layers=2)
    rc, out, err = run_script('--model', d, '--batch', '2', '--seq', '32', '--steps', '30', '--warmup', '1',
                              '--lr', '1e-2', '--threads', '1', '--targets', 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj', '--json')
    if rc != 0:
        check(False, f'training {dtype}: exit {rc}: {err.strip()}')
        return
    r = json.loads(out)
    ln_v = math.log(cfg['vocab_size'])
    check(abs(r['first_loss'] - ln_v) < 0.02, f'training {dtype}: first_loss {r["first_loss"]:.4f} vs ln(vocab) {ln_v:.4f}')
    check(r['losses'][-1] < r['first_loss'] - 0.5, f'training {dtype}: loss {r["first_loss"]:.4f} -> {r["losses"][-1]:.4f} over {len(r["losses"])} steps')
    check(err.count('\n') == 32 and all(k in r for k in ('tokens_per_second', 'peak_rss_bytes', 'parameters', 'trainable')),
          f'training {dtype}: JSON keys and progress lines ({r["tokens_per_second"]:.0f} tokens/s, {r["trainable"]} LoRA params)')


def batches_file(tmp):
    d = os.path.join(tmp, 'train-F32')
    path = os.path.join(tmp, 'batches.json')
    rng = np.random.default_rng(2)
    batches = []
    for _ in range(2):
        ids = rng.integers(0, 128, (3, 16))
        labels = ids.copy()
        labels[:, :4] = -100
        batches.append({'ids': ids.tolist(), 'labels': labels.tolist()})
    with open(path, 'w') as f:
        json.dump({'batches': batches}, f)
    rc, out, err = run_script('--model', d, '--batches', path, '--steps', '4', '--warmup', '0', '--json')
    r = json.loads(out) if rc == 0 else {}
    check(rc == 0 and r['batch'] == 3 and r['seq'] == 16 and len(r['losses']) == 4, f'--batches file: exit {rc}, {r.get("batch")}×{r.get("seq")}, losses {r.get("losses")}')


def errors(tmp):
    rc, out, err = run_script('--model', os.path.join(tmp, 'nope'))
    check(rc == 2 and err.count('\n') == 1 and not out, f'missing folder: exit {rc}: {err.strip()}')
    d = os.path.join(tmp, 'gpt2')
    os.makedirs(d)
    with open(os.path.join(d, 'config.json'), 'w') as f:
        json.dump({'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2'}, f)
    rc, out, err = run_script('--model', d)
    check(rc == 2 and err.count('\n') == 1, f'unsupported architecture: exit {rc}: {err.strip()}')
    d = os.path.join(tmp, 'untied-missing-head')
    cfg, _ = make_tiny_checkpoint.make(d, tied=True)
    cfg['tie_word_embeddings'] = False
    with open(os.path.join(d, 'config.json'), 'w') as f:
        json.dump(cfg, f)
    rc, out, err = run_script('--model', d)
    check(rc == 2 and err.count('\n') == 1, f'missing tensor: exit {rc}: {err.strip()}')


if __name__ == '__main__':
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        parity(tmp, 'llama-bf16', arch='llama', dtype='BF16')
        parity(tmp, 'llama-f32-tied', arch='llama', dtype='F32', tied=True)
        parity(tmp, 'qwen2-bf16-tied-biases', arch='qwen2', dtype='BF16', tied=True)
        parity(tmp, 'llama3-rope-headdim16-f16-sharded', arch='llama', dtype='F16', rope='llama3', head_dim=16, shards=2)
        parity(tmp, 'linear-rope', arch='llama', dtype='F32', rope='linear')
        parity(tmp, 'mistral', arch='mistral', dtype='BF16', kv_heads=1)
        parity(tmp, 'mistral-sliding-window-8', arch='mistral', dtype='F32', sliding_window=8)
        parity(tmp, 'qwen2-lora-all-targets', arch='qwen2', dtype='F32',
               lora_targets=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'])
        training(tmp, 'BF16')
        training(tmp, 'F32')
        batches_file(tmp)
        errors(tmp)
    print(f'{len(failures)} failed' if failures else 'all checks passed')
    sys.exit(1 if failures else 0)
