#!/usr/bin/env python3
"""
The PyTorch peer for `npm run bench -- --peer torch`: eager float32 LoRA training, the way a
typical transformers + peft user would run it, on the same Hugging Face model folder and the same
batches that our engine trains. It prints tokens/s so the bench can report our speed as a ratio.

Only torch, numpy and the standard library (no transformers, peft or safetensors): the model,
the safetensors reader and the LoRA layers are written out here, mirroring transformers'
modeling_llama.py / modeling_qwen2.py / modeling_mistral.py and peft's lora.Linear.

    python3 scripts/peer/torch_lora.py --model DIR [--batch 4 --seq 256 | --batches FILE]
        [--steps 5 --warmup 1 --threads K --rank 8 --alpha 16 --targets q_proj,v_proj
         --lr 1e-4 --seed 0 --json]

Exit status 2, with one line on stderr, for a missing folder or file, an unsupported model or a
missing tensor.
"""
import argparse
import ctypes
import json
import math
import os
import resource
import struct
import sys
import time
from dataclasses import dataclass

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    # A pyenv or venv python first on PATH does not see Debian's python3-torch: retry once
    # under the system interpreter before giving up.
    system = '/usr/bin/python3'
    if os.environ.get('LOWRANK_PEER_REEXEC') != '1' and os.path.exists(system) and os.path.realpath(sys.executable) != os.path.realpath(system):
        os.environ['LOWRANK_PEER_REEXEC'] = '1'
        os.execv(system, [system, *sys.argv])
    print('torch_lora.py: needs PyTorch and numpy (apt-get install python3-torch python3-numpy)', file=sys.stderr)
    sys.exit(2)


class PeerError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape,
# data_offsets: [begin, end]}} (offsets from the first byte after the header), then the data.

class Checkpoint:
    """Name -> tensor index over model.safetensors or the shards of model.safetensors.index.json."""

    def __init__(self, model_dir):
        single = os.path.join(model_dir, 'model.safetensors')
        index = os.path.join(model_dir, 'model.safetensors.index.json')
        if os.path.exists(single):
            files = ['model.safetensors']
        elif os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)['weight_map'].values()))
        else:
            raise PeerError(f'{model_dir}: no model.safetensors or model.safetensors.index.json')
        self.entries = {}  # name -> (path, absolute byte offset, byte length, dtype, shape)
        for name in files:
            path = os.path.join(model_dir, name)
            if not os.path.exists(path):
                raise PeerError(f'{path}: shard listed in the index is missing')
            with open(path, 'rb') as f:
                (n,) = struct.unpack('<Q', f.read(8))
                header = json.loads(f.read(n))
            for key, info in header.items():
                if key == '__metadata__':
                    continue
                begin, end = info['data_offsets']
                self.entries[key] = (path, 8 + n + begin, end - begin, info['dtype'], info['shape'])

    def __contains__(self, name):
        return name in self.entries

    def get(self, name):
        """The tensor as float32. Read into a private buffer (not a memmap) so that the file's
        pages do not stay resident and count towards the peak RSS we report."""
        if name not in self.entries:
            raise PeerError(f'missing tensor {name} in the checkpoint')
        path, offset, length, dtype, shape = self.entries[name]
        buf = bytearray(length)
        with open(path, 'rb') as f:
            f.seek(offset)
            f.readinto(buf)
        if dtype == 'F32':
            arr = np.frombuffer(buf, dtype='<f4')
        elif dtype == 'F16':
            arr = np.frombuffer(buf, dtype='<f2').astype(np.float32)
        elif dtype == 'BF16':
            # bfloat16 is the top half of a float32: widen to 32 bits and shift into place.
            arr = (np.frombuffer(buf, dtype='<u2').astype(np.uint32) << 16).view(np.float32)
        else:
            raise PeerError(f'{name}: unsupported dtype {dtype} (F32, F16, BF16 only)')
        return torch.from_numpy(arr.reshape(shape))


# ----------------------------------------------------------------------------------------------
# config.json

ARCHITECTURES = {'LlamaForCausalLM': 'llama', 'Qwen2ForCausalLM': 'qwen2', 'MistralForCausalLM': 'mistral'}


@dataclass
class Config:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    eps: float
    rope_theta: float
    rope_scaling: dict  # None, or transformers' rope_scaling with 'rope_type' filled in
    tie: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    sliding_window: int  # None: full causal attention


def load_config(model_dir):
    path = os.path.join(model_dir, 'config.json')
    if not os.path.isdir(model_dir):
        raise PeerError(f'{model_dir}: no such model folder')
    if not os.path.exists(path):
        raise PeerError(f'{path}: missing')
    with open(path) as f:
        raw = json.load(f)
    archs = raw.get('architectures') or []
    arch = ARCHITECTURES.get(archs[0] if archs else None) or (raw.get('model_type') if raw.get('model_type') in ARCHITECTURES.values() else None)
    if arch is None:
        raise PeerError(f'{path}: unsupported architecture {archs[0] if archs else raw.get("model_type")} (Llama, Qwen2, Mistral only)')
    if raw.get('hidden_act', 'silu') != 'silu':
        raise PeerError(f'{path}: unsupported hidden_act {raw["hidden_act"]} (silu only)')
    n_head = raw.get('num_attention_heads')
    if not n_head:
        raise PeerError(f'{path}: missing num_attention_heads')
    scaling = raw.get('rope_scaling')
    if scaling is not None:
        scaling = dict(scaling, rope_type=scaling.get('rope_type', scaling.get('type')))
        if scaling['rope_type'] not in ('default', 'linear', 'llama3'):
            raise PeerError(f'{path}: unsupported rope_scaling {scaling["rope_type"]} (linear, llama3 only)')
    window = None
    if arch == 'mistral' or (arch == 'qwen2' and raw.get('use_sliding_window')):
        window = raw.get('sliding_window')
    for key in ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers'):
        if key not in raw:
            raise PeerError(f'{path}: missing {key}')
    return Config(
        arch=arch,
        vocab_size=raw['vocab_size'],
        hidden_size=raw['hidden_size'],
        intermediate_size=raw['intermediate_size'],
        n_layer=raw['num_hidden_layers'],
        n_head=n_head,
        n_kv_head=raw.get('num_key_value_heads') or n_head,
        head_dim=raw.get('head_dim') or raw['hidden_size'] // n_head,
        eps=raw.get('rms_norm_eps', 1e-6),
        rope_theta=raw.get('rope_theta', 10000.0),
        rope_scaling=scaling,
        # transformers' Llama/Qwen2/Mistral configs default to untied.
        tie=bool(raw.get('tie_word_embeddings', False)),
        qkv_bias=arch == 'qwen2' or bool(raw.get('attention_bias', False)),
        o_bias=arch != 'qwen2' and bool(raw.get('attention_bias', False)),
        mlp_bias=bool(raw.get('mlp_bias', False)),
        sliding_window=window,
    )


# ----------------------------------------------------------------------------------------------
# Model

def inverse_frequencies(c):
    """[head_dim/2] RoPE frequencies: transformers' modeling_rope_utils (default, linear, llama3)."""
    inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.int64).float() / c.head_dim))
    s = c.rope_scaling
    if s is None or s['rope_type'] == 'default':
        return inv
    if s['rope_type'] == 'linear':
        return inv / s['factor']  # positions / factor
    # llama3 (_compute_llama3_parameters): long wavelengths slowed by factor, short ones kept,
    # the band between interpolated.
    factor, low, high, old = s['factor'], s['low_freq_factor'], s['high_freq_factor'], s['original_max_position_embeddings']
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv
    inv_llama = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, inv_llama)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LoraLinear(nn.Module):
    """A frozen linear layer, and optionally peft's LoRA branch on it:
    h = W x (+ b) + (alpha / r) * B(A(dropout(x))), A [r, in], B [out, r]."""

    def __init__(self, weight, bias=None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out, in]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.r = 0

    def add_lora(self, r, alpha, dropout):
        out_features, in_features = self.weight.shape
        # peft's init: A kaiming-uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B zero, so
        # training starts from the base model.
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r = r

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.r:
            y = y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling
        return y


class RMSNorm(nn.Module):
    def __init__(self, weight, eps):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x):
        # Statistics in float32, as transformers' LlamaRMSNorm (a no-op cast here: all float32).
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c, get, p):
        super().__init__()
        self.c = c
        bias = lambda name, on: get(f'{p}.{name}.bias') if on else None
        self.q_proj = LoraLinear(get(f'{p}.q_proj.weight'), bias('q_proj', c.qkv_bias))
        self.k_proj = LoraLinear(get(f'{p}.k_proj.weight'), bias('k_proj', c.qkv_bias))
        self.v_proj = LoraLinear(get(f'{p}.v_proj.weight'), bias('v_proj', c.qkv_bias))
        self.o_proj = LoraLinear(get(f'{p}.o_proj.weight'), bias('o_proj', c.o_bias))

    def forward(self, x, cos, sin, mask):
        c = self.c
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, c.n_head, c.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = self.k_proj(x).view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2)  # [B, KV, T, D]
        v = self.v_proj(x).view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2)  # [B, KV, T, D]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # Grouped-query attention: each key/value head serves H/KV query heads (repeat_kv).
        rep = c.n_head // c.n_kv_head
        k = k[:, :, None].expand(B, c.n_kv_head, rep, T, c.head_dim).reshape(B, c.n_head, T, c.head_dim)
        v = v[:, :, None].expand(B, c.n_kv_head, rep, T, c.head_dim).reshape(B, c.n_head, T, c.head_dim)
        att = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(c.head_dim) + mask  # [B, H, T, T]
        att = F.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
        y = torch.matmul(att, v)  # [B, H, T, D]
        y = y.transpose(1, 2).reshape(B, T, c.n_head * c.head_dim)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, c, get, p):
        super().__init__()
        bias = lambda name: get(f'{p}.{name}.bias') if c.mlp_bias else None
        self.gate_proj = LoraLinear(get(f'{p}.gate_proj.weight'), bias('gate_proj'))
        self.up_proj = LoraLinear(get(f'{p}.up_proj.weight'), bias('up_proj'))
        self.down_proj = LoraLinear(get(f'{p}.down_proj.weight'), bias('down_proj'))

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, c, get, i):
        super().__init__()
        p = f'model.layers.{i}'
        self.input_layernorm = RMSNorm(get(f'{p}.input_layernorm.weight'), c.eps)
        self.self_attn = Attention(c, get, f'{p}.self_attn')
        self.post_attention_layernorm = RMSNorm(get(f'{p}.post_attention_layernorm.weight'), c.eps)
        self.mlp = MLP(c, get, f'{p}.mlp')

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class CausalLM(nn.Module):
    def __init__(self, c, ckpt):
        super().__init__()
        self.c = c
        get = ckpt.get
        self.embed_tokens = nn.Parameter(get('model.embed_tokens.weight'), requires_grad=False)  # [V, C]
        self.layers = nn.ModuleList(Block(c, get, i) for i in range(c.n_layer))
        self.norm = RMSNorm(get('model.norm.weight'), c.eps)
        # Tied: the output projection is the embedding matrix (no lm_head.weight in the file).
        self.lm_head = self.embed_tokens if c.tie else nn.Parameter(get('lm_head.weight'), requires_grad=False)
        self.register_buffer('inv_freq', inverse_frequencies(c), persistent=False)

    def forward(self, ids):  # ids [B, T] -> logits [B, T, V]
        T = ids.shape[1]
        x = F.embedding(ids, self.embed_tokens)  # [B, T, C]
        freqs = torch.arange(T, dtype=torch.float32)[:, None] * self.inv_freq[None, :]  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # rotate_half layout: [T, D]
        cos, sin = emb.cos(), emb.sin()
        # Additive causal mask [T, T]: 0 where key j <= query i (and, with a sliding window,
        # i - j < window), -inf elsewhere.
        i = torch.arange(T)[:, None]
        j = torch.arange(T)[None, :]
        hidden = j > i
        if self.c.sliding_window is not None:
            hidden = hidden | (i - j >= self.c.sliding_window)
        mask = torch.zeros(T, T).masked_fill(hidden, float('-inf'))
        for block in self.layers:
            x = block(x, cos, sin, mask)
        return F.linear(self.norm(x), self.lm_head).float()


def causal_lm_loss(logits, labels):
    """transformers' LlamaForCausalLM loss: logits[:, t] predicts labels[:, t+1]; -100 ignored;
    mean over the counted tokens. As transformers' ForCausalLMLoss since 4.48 (and our engine),
    shift the labels, padding the last position with -100, rather than slicing the logits: a
    logits slice copies the largest tensor of the step forward and zero-fills it backward."""
    V = logits.shape[-1]
    targets = F.pad(labels, (0, 1), value=-100)[:, 1:]  # [B, T]
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)


def add_lora(model, targets, r, alpha, dropout):
    found = set()
    for name, module in model.named_modules():
        leaf = name.rsplit('.', 1)[-1]
        if isinstance(module, LoraLinear) and leaf in targets:
            module.add_lora(r, alpha, dropout)
            found.add(leaf)
    missing = set(targets) - found
    if missing:
        raise PeerError(f'--targets: no layer named {", ".join(sorted(missing))}')
    return [p for p in model.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------------------------
# Batches

def load_batches(path, vocab_size):
    try:
        with open(path) as f:
            raw = json.load(f)['batches']
        batches = [(torch.tensor(b['ids'], dtype=torch.int64), torch.tensor(b['labels'], dtype=torch.int64)) for b in raw]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PeerError(f'{path}: not a batches file ({e})')
    if not batches:
        raise PeerError(f'{path}: no batches')
    for n, (ids, labels) in enumerate(batches):
        if ids.dim() != 2 or ids.shape != labels.shape or ids.shape[1] < 2:
            raise PeerError(f'{path}: batch {n}: ids and labels must both be B×T (T >= 2)')
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise PeerError(f'{path}: batch {n}: token ids outside [0, {vocab_size})')
    return batches


def random_batch(B, T, vocab_size, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (B, T), generator=g)
    return [(ids, ids.clone())]


# ----------------------------------------------------------------------------------------------

def set_blas_threads(k):
    """Debian's torch does its matmuls in OpenBLAS, whose own thread pool (one thread per core)
    torch.set_num_threads does not reach (it sets OpenMP's, and MKL's in pip wheels): set it too,
    so that --threads K means K cores. Returns OpenBLAS's description, or None without OpenBLAS."""
    with open('/proc/self/maps') as f:
        paths = sorted({line.split()[-1] for line in f if 'openblas' in line and '.so' in line})
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_config.restype = ctypes.c_char_p
        except (OSError, AttributeError):
            continue
        if k is not None:
            lib.openblas_set_num_threads(k)
        return f'{lib.openblas_get_config().decode()}, {lib.openblas_get_num_threads()} threads'
    return None


def parse_args(argv):
    ap = argparse.ArgumentParser(description='Eager PyTorch float32 LoRA training: the peer for `npm run bench -- --peer torch`.')
    ap.add_argument('--model', required=True, help='Hugging Face model folder (config.json + safetensors)')
    ap.add_argument('--batches', help='JSON {"batches": [{"ids": [[...]], "labels": [[...]]}]}; steps cycle through them')
    ap.add_argument('--batch', type=int, default=4, help='random batch: rows (without --batches)')
    ap.add_argument('--seq', type=int, default=256, help='random batch: tokens per row (without --batches)')
    ap.add_argument('--steps', type=int, default=5, help='measured steps')
    ap.add_argument('--warmup', type=int, default=1, help='untimed steps run first')
    ap.add_argument('--threads', type=int, help='torch.set_num_threads (default: torch\'s own)')
    ap.add_argument('--rank', type=int, default=8)
    ap.add_argument('--alpha', type=float, default=16)
    ap.add_argument('--dropout', type=float, default=0.0)
    ap.add_argument('--targets', default='q_proj,k_proj,v_proj,o_proj', help='comma list of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj')
    ap.add_argument('--lr', type=float, default=1e-4)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--json', action='store_true', help='one JSON object on stdout')
    a = ap.parse_args(argv)
    if a.steps < 1 or a.warmup < 0 or a.batch < 1 or a.seq < 2 or a.rank < 1 or (a.threads is not None and a.threads < 1):
        raise PeerError('need --steps >= 1, --warmup >= 0, --batch >= 1, --seq >= 2, --rank >= 1, --threads >= 1')
    return a


def run(a):
    # Inter-op threads must be set before any parallel work; one, as our engine runs one op at a time.
    torch.set_num_interop_threads(1)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    blas = set_blas_threads(a.threads)
    torch.manual_seed(a.seed)

    t0 = time.perf_counter()
    c = load_config(a.model)
    # Batches before the weights, so that a bad batches file fails fast.
    batches = load_batches(a.batches, c.vocab_size) if a.batches else random_batch(a.batch, a.seq, c.vocab_size, a.seed)
    model = CausalLM(c, Checkpoint(a.model))
    targets = [t for t in a.targets.split(',') if t]
    trainable = add_lora(model, targets, a.rank, a.alpha, a.dropout)
    load_seconds = time.perf_counter() - t0
    n_base = sum(p.numel() for p in model.parameters() if not p.requires_grad)  # tied counted once
    n_lora = sum(p.numel() for p in trainable)
    log(f'loaded {a.model} ({c.arch}, {n_base / 1e6:.1f}M params, {n_lora / 1e6:.3f}M LoRA) in {load_seconds:.1f} s, {torch.get_num_threads()} threads'
        + (f' ({blas})' if blas else ''))

    if c.sliding_window is not None and max(b[0].shape[1] for b in batches) > c.sliding_window:
        log(f'note: sequences longer than sliding_window {c.sliding_window}: windowed causal mask')

    opt = torch.optim.AdamW(trainable, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    model.train()
    losses, step_seconds, tokens, cpu_seconds = [], [], 0, 0.0
    total = a.warmup + a.steps
    for step in range(total):
        ids, labels = batches[step % len(batches)]
        t, cpu = time.perf_counter(), time.process_time()
        loss = causal_lm_loss(model(ids), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)  # as our trainer's clipNorm
        opt.step()
        value = loss.item()
        dt = time.perf_counter() - t
        losses.append(value)
        if step >= a.warmup:
            step_seconds.append(dt)
            tokens += ids.numel()
            cpu_seconds += time.process_time() - cpu
        log(f'step {step + 1}/{total}{" (warmup)" if step < a.warmup else ""} {dt:.2f} s loss {value:.4f}')

    B, T = batches[0][0].shape
    return {
        'peer': 'torch',
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'blas': blas,
        'model': a.model,
        'batch': B,
        'seq': T,
        'steps': a.steps,
        'tokens_per_second': tokens / sum(step_seconds),
        'step_seconds': step_seconds,
        # CPU time of this process over the measured steps (all threads): on a shared, busy
        # machine wall time overstates the cost; tokens / cpu_seconds is a steadier figure.
        'cpu_seconds': cpu_seconds,
        'losses': losses,
        'first_loss': losses[0],
        'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        'load_seconds': load_seconds,
        'parameters': n_base,
        'trainable': n_lora,
    }


def main(argv=None):
    try:
        a = parse_args(argv)
        r = run(a)
    except PeerError as e:
        print(f'torch_lora.py: {e}', file=sys.stderr)
        return 2
    except (OSError, json.JSONDecodeError) as e:
        print(f'torch_lora.py: {e}', file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(r))
    else:
        print(f'torch {r["torch"]}, {r["threads"]} threads: {r["model"]} batch {r["batch"]}×{r["seq"]}, {r["steps"]} steps')
        print(f'  {r["tokens_per_second"]:.1f} tokens/s ({", ".join(f"{s:.2f}" for s in r["step_seconds"])} s/step, {r["cpu_seconds"]:.1f} CPU s)')
        print(f'  loss {r["first_loss"]:.4f} -> {r["losses"][-1]:.4f}, peak RSS {r["peak_rss_bytes"] / 2**30:.2f} GiB, load {r["load_seconds"]:.1f} s')
        print(f'  {r["parameters"]:,} base parameters, {r["trainable"]:,} LoRA')
    return 0


if __name__ == '__main__':
    sys.exit(main())
