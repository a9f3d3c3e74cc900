"""The transformer: a decoder-only, Llama-style language model.

RMSNorm before each block, rotary positions, SwiGLU feed-forward, no biases, attention
through PyTorch's scaled_dot_product_attention, and a KV cache for generation.
Parameter names mirror Hugging Face ``LlamaForCausalLM`` one-to-one
(``model.layers.0.self_attn.q_proj.weight`` …) and rotary uses the same "rotate half"
layout, so export is a rename-free copy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .home import UserError
from .settings import MODEL


@dataclass
class ModelConfig:
    vocab_size: int = MODEL.default("vocab_size")
    d_model: int = MODEL.default("d_model")
    num_layers: int = MODEL.default("num_layers")
    num_heads: int = MODEL.default("num_heads")
    d_ff: int = MODEL.default("d_ff")
    max_seq_len: int = MODEL.default("max_seq_len")
    tie_embeddings: bool = MODEL.default("tie_embeddings")
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # "bpe" (byte-level BPE), "char", or "hf" (pretrained, came with an imported model)
    tokenizer: str = MODEL.default("tokenizer")
    num_kv_heads: int | None = None  # grouped-query attention (imported models); None means num_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["num_kv_heads"] is None:
            del d["num_kv_heads"]  # models made here keep exactly the keys they always had
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def validate(self) -> "ModelConfig":
        """Raise UserError with a message that says what to change."""
        ints = ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_seq_len")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError("model.not_integer", field=name, value=value)
            if value <= 0:
                raise UserError("model.not_positive", field=name, value=value)
        for name in ints:
            limit = MODEL[name].upper
            if getattr(self, name) > limit:
                raise UserError("model.too_large", field=name, value=getattr(self, name), limit=limit)
        if self.tokenizer not in ("bpe", "char", "hf"):
            raise UserError("model.tokenizer", value=self.tokenizer, options=["bpe", "char"])
        if self.num_kv_heads is not None:
            if isinstance(self.num_kv_heads, bool) or not isinstance(self.num_kv_heads, int) or self.num_kv_heads <= 0:
                raise UserError("model.kv_heads_invalid", value=self.num_kv_heads)
            if self.num_heads % self.num_kv_heads:
                raise UserError("model.kv_heads_divide", num_heads=self.num_heads, num_kv_heads=self.num_kv_heads)
        if self.max_seq_len < MODEL["max_seq_len"].min:
            raise UserError("model.seq_len_small", value=self.max_seq_len, min=MODEL["max_seq_len"].min)
        if self.vocab_size < MODEL["vocab_size"].min:
            raise UserError("model.vocab_small", value=self.vocab_size, min=MODEL["vocab_size"].min)
        if self.d_model % self.num_heads:
            raise UserError("model.heads_divide", d_model=self.d_model, num_heads=self.num_heads,
                            suggest=_divisor_near(self.d_model, self.num_heads))
        if self.head_dim % 2:
            raise UserError("model.head_dim_odd", head_dim=self.head_dim)
        return self


def _divisor_near(n: int, target: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0 and (n // d) % 2 == 0), key=lambda d: abs(d - target), default=1)


def count_parameters(cfg: ModelConfig) -> int:
    d, f, v, L = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.num_layers
    kv = cfg.kv_heads * cfg.head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d
    return v * d + L * per_layer + d + (0 if cfg.tie_embeddings else v * d)


def training_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Forward+backward matmul FLOPs per token (6N for weights + attention scores), as in PaLM's MFU."""
    T = seq_len or cfg.max_seq_len
    kv = cfg.kv_heads * cfg.head_dim
    n_matmul = (cfg.num_layers * (2 * cfg.d_model ** 2 + 2 * cfg.d_model * kv + 3 * cfg.d_model * cfg.d_ff)
                + cfg.vocab_size * cfg.d_model)
    attn = cfg.num_layers * 2 * cfg.d_model * T  # QK^T and AV, causal half counted as full like nanoGPT
    return 6 * n_matmul + 6 * attn


def estimate_training_memory(cfg: ModelConfig, batch_size: int = 16, seq_len: int | None = None,
                             bytes_per_float: int = 4, averaged: bool = True) -> int:
    """Rough bytes for training: weights, their average (``averaged``: pretraining's default),
    grads, 2 AdamW moments, and activations kept for backward."""
    T = seq_len or cfg.max_seq_len
    n = count_parameters(cfg)
    states = n * bytes_per_float * (5 if averaged else 4)
    B, d, f, L, V = batch_size, cfg.d_model, cfg.d_ff, cfg.num_layers, cfg.vocab_size
    # per layer: norms, q/k/v/out, attention output, 3 feed-forward tensors of width d_ff, residuals
    act_per_layer = B * T * (10 * d + 4 * f)
    logits = 3 * B * T * V  # logits, their softmax and gradient
    return int(states + (L * act_per_layer + logits) * bytes_per_float)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotary_tables(head_dim: int, max_positions: int, theta: float, device=None):
    """cos and sin per position in HF's "rotate half" layout, with sin's first half negated:
    then rotating is x·cos + roll(x, half)·sin, the same numbers as HF's
    x·cos + rotate_half(x)·sin (a sign flip is exact) with one copy of x instead of four."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(max_positions, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    return torch.cat((freqs, freqs), dim=-1).cos(), torch.cat((-freqs.sin(), freqs.sin()), dim=-1)


def _rotate(x, cos, sin):
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


class _Rotary(torch.autograd.Function):
    """The rotation, saving only cos/sin for backward (the rotation's transpose is the rotation
    by −θ), instead of autograd's copies of x and its rolled copy: on a CPU that is ~100 MB
    less per step for the default model."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        gs = grad * sin  # rolling by half is its own inverse
        return grad * cos + gs.roll(gs.shape[-1] // 2, -1), None, None


def apply_rotary(x, cos, sin):
    # x: (B, H, T, hd); cos/sin: (T, hd) or (B, 1, T, hd), from rotary_tables
    if torch.is_grad_enabled() and x.requires_grad:
        return _Rotary.apply(x, cos, sin)
    return _rotate(x, cos, sin)


class _SwiGLU(torch.autograd.Function):
    """silu(gate)·up, keeping only gate and up for backward (autograd would also keep silu(gate))."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        silu = gate * sig
        d_gate = grad * up * sig * (1 + gate * (1 - sig))
        return d_gate, grad * silu


def swiglu(gate, up):
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return _SwiGLU.apply(gate, up)
    return F.silu(gate) * up


class KVCache:
    """Preallocated keys and values for every layer; ``length`` tokens are filled.

    A cache belongs to the weights that filled it, so it also holds them as decode weights
    (decode.DecodeWeights): each layer's q/k/v and gate/up weights packed into one matrix
    each, in the chosen precision (fp32, bf16 or int8), so a cached step makes 4 matrix
    products per layer instead of 7. At batch 1 on a CPU the per-call overhead and the bytes
    of weights read, not arithmetic, are most of a decode step's time (decode.OneTokenStep
    runs those steps; the forward below runs prefills and compiled steps). Weights must not
    change while a cache is in use (its keys and values would be stale anyway). ``dtype`` is
    the keys' and values' type; with weights given, theirs.

    ``prefix``: a filled cache of prompts that runs of consecutive rows share (self-play decodes
    a group of rows from each prompt). Its keys and values stay once per prompt, this cache holds
    each row's own tokens after them (``offset`` = the prefix's length), and ``length`` counts
    both. Only ``decode.OneTokenStep`` reads such a cache: it attends to the shared part once
    per prompt, which reads that part's bytes once per group instead of once per row."""

    def __init__(self, cfg: ModelConfig, batch_size: int, device, dtype=None, weights=None,
                 prefix: "KVCache | None" = None):
        self.weights = weights
        dtype = weights.cache_dtype if weights is not None else dtype
        self.prefix, self.offset = prefix, prefix.length if prefix is not None else 0
        # a layer's keys and values in one tensor, so that a decode step writes both with one copy;
        # left unfilled: every read is narrowed to the slots written (filling 32 rows × 256
        # tokens of zeros was ~4% of a self-play rollout batch)
        shape = (2, batch_size, cfg.kv_heads, cfg.max_seq_len - self.offset, cfg.head_dim)
        self.kv = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.k, self.v = [kv[0] for kv in self.kv], [kv[1] for kv in self.kv]
        self.length = self.offset

    def bind(self, model: "Transformer"):
        """The decode weights (fp32 unless chosen before), made on the first step."""
        if self.weights is None:
            from .decode import weights_for
            self.weights = weights_for(model, "fp32")
        return self.weights

    def reset(self):
        """Empty the cache for a new context (the buffers and decode weights are kept)."""
        self.length = self.offset


def _one_query_attention(q, k, v, attn_mask=None):
    """Attention of one new token per row over the cached keys, as plain products: on a CPU,
    scaled_dot_product_attention's flash kernel works in tiles of many queries and took half
    of a batched decode step for one."""
    B, H, _, hd = q.shape
    L = k.shape[2]
    # 3-d products over rows × heads: a 4-d matmul takes a slower path
    scores = torch.bmm(q.reshape(B * H, 1, hd), k.reshape(B * H, L, hd).transpose(1, 2)).view(B, H, 1, L)
    scores = scores * hd ** -0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.bmm(scores.softmax(-1).view(B * H, 1, L), v.reshape(B * H, L, hd)).view(B, H, 1, hd)


class Attention(nn.Module):
    QKV, O = ("q_proj", "k_proj", "v_proj"), ("o_proj",)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.num_heads, self.head_dim, self.kv_heads = cfg.num_heads, cfg.head_dim, cfg.kv_heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, attn_mask=None):
        """With a cache, ``attn_mask`` covers the cached keys too, and None means no mask at all
        (``Transformer.forward`` makes the causal one)."""
        B, T, C = x.shape
        H, KV, hd = self.num_heads, self.kv_heads, self.head_dim
        if cache is None:
            q = apply_rotary(self.q_proj(x).view(B, T, H, hd).transpose(1, 2), cos, sin)
            k = apply_rotary(self.k_proj(x).view(B, T, KV, hd).transpose(1, 2), cos, sin)
            v = self.v_proj(x).view(B, T, KV, hd).transpose(1, 2)
        else:  # one product for q, k and v, one rotation for q and k together
            if cache.prefix is not None:
                raise ValueError("a cache with a shared prefix is read by decode.OneTokenStep only")
            qkv = cache.weights.linear(self, self.QKV, x).view(B, T, H + 2 * KV, hd)
            qk = apply_rotary(qkv[:, :, :H + KV].transpose(1, 2), cos, sin)
            q, k, v = qk[:, :H], qk[:, H:], qkv[:, :, H + KV:].transpose(1, 2)
            start = cache.length
            cache.k[layer][:, :, start:start + T] = k
            cache.v[layer][:, :, start:start + T] = v
            k, v = cache.k[layer][:, :, :start + T], cache.v[layer][:, :, :start + T]
            q = q.to(k.dtype)  # attention in the cache's type (decode.DecodeWeights.cache_dtype)
        if H != KV:  # grouped-query attention: each k/v head serves H // KV q heads
            k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
        if cache is not None and T == 1:
            y = _one_query_attention(q, k, v, attn_mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=cache is None and attn_mask is None)
        y = y.transpose(1, 2).reshape(B, T, C)
        if cache is None:
            return F.linear(y, self.o_proj.weight)
        return cache.weights.linear(self, self.O, y.to(x.dtype))


class MLP(nn.Module):
    GATE_UP, DOWN = ("gate_proj", "up_proj"), ("down_proj",)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x, cache: KVCache | None = None):
        if cache is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
            return F.linear(swiglu(gate, up), self.down_proj.weight)
        gate, up = cache.weights.linear(self, self.GATE_UP, x).chunk(2, -1)  # one product for both
        return cache.weights.linear(self, self.DOWN, swiglu(gate, up))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, layer=0, attn_mask=None, dropout=0.0):
        # .forward, not __call__: nn.Module's call machinery costs more than a small model's decode arithmetic
        if cache is None:
            a = self.self_attn.forward(self.input_layernorm.forward(x), cos, sin, cache, layer, attn_mask)
            x = x + (F.dropout(a, dropout) if dropout else a)
            m = self.mlp.forward(self.post_attention_layernorm.forward(x), cache)
            return x + (F.dropout(m, dropout) if dropout else m)
        w = cache.weights  # norms in the decode weights' type
        x = x + self.self_attn.forward(w.norm(self.input_layernorm, x), cos, sin, cache, layer, attn_mask)
        return x + self.mlp.forward(w.norm(self.post_attention_layernorm, x), cache)


class Backbone(nn.Module):
    """Holds what HF calls ``model.*``: embeddings, layers, final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class Transformer(nn.Module):
    HEAD = ("lm_head",)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # Residual dropout while training (a training setting, not part of the shape): what keeps a
        # model that makes many passes over a small book from memorising it.
        self.dropout = 0.0
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rotary_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Scale the residual-writing projections by depth (GPT-2 / nanoGPT) so deep stacks start stable.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.num_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, cache: KVCache | None = None, positions=None, attn_mask=None,
                reduction: str = "mean"):
        """idx (B, T) token ids. Returns (logits, loss). With targets, loss is cross-entropy
        (mean, or per-token with reduction='none'); targets of -1 are ignored.

        With a cache, idx continues the cached tokens (prefill, then one token per decode
        step). positions (B, T) gives each token's rotary position (for left-padded batches);
        by default positions follow the cache length. attn_mask (B or 1, 1, T, keys) says
        which keys each token sees (keys: the cached ones too); by default attention is causal.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        dw = cache.bind(self) if cache is not None else None
        rope_cos, rope_sin = dw.rope if dw is not None else (self.rope_cos, self.rope_sin)
        if positions is None:
            if start + T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {start + T} tokens is longer than max_seq_len {self.cfg.max_seq_len}")
            cos, sin = rope_cos[start:start + T], rope_sin[start:start + T]
        else:
            cos, sin = rope_cos[positions].unsqueeze(1), rope_sin[positions].unsqueeze(1)
        if cache is not None and attn_mask is None and T > 1:
            # causal within the new tokens, every cached token visible (one new token sees them all: no mask)
            attn_mask = torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(diagonal=start)
        backbone = self.model
        x = F.embedding(idx, backbone.embed_tokens.weight if dw is None else dw.embed)
        dropout = self.dropout if self.training and cache is None else 0.0
        if dropout:
            x = F.dropout(x, dropout)
        for i, layer in enumerate(backbone.layers):
            x = layer.forward(x, cos, sin, cache, i, attn_mask, dropout)
        if cache is None:
            logits = F.linear(backbone.norm.forward(x), self.lm_head.weight)
        else:
            cache.length += T
            logits = dw.linear(self, self.HEAD, dw.norm(backbone.norm, x)).float()
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=-1, reduction=reduction)
        return logits, loss
