"""Generation: temperature, top-k, top-p, repetition penalty, batched, streamed, with a KV cache.

Prompts of different lengths are left-padded; each row gets its own rotary positions and
an attention mask, so a batch gives the same tokens as each prompt alone. Past
max_seq_len the window slides: the cache is rebuilt from the last 3/4 of the window
(rotary positions are relative, so the model sees an ordinary context).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import KVCache, Transformer, rotate_half
from .settings import GENERATE


@dataclass
class SamplingParams:
    """Defaults and bounds: settings.GENERATE."""
    max_length: int = GENERATE.default("max_length")  # new tokens
    temperature: float = GENERATE.default("temperature")  # 0 means greedy
    top_k: int | None = GENERATE.default("top_k")  # None or 0: off
    top_p: float | None = GENERATE.default("top_p")
    repetition_penalty: float = GENERATE.default("repetition_penalty")  # 1.0: off
    seed: int | None = GENERATE.default("seed")

    def validate(self) -> "SamplingParams":
        GENERATE.check({k: v for k, v in vars(self).items() if v is not None})  # None: off / automatic
        return self


def _filter_logits(logits, temperature, top_k, top_p):
    logits = logits / temperature
    if top_k:
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def _apply_repetition_penalty(logits, history, penalty):
    if penalty == 1.0:
        return logits
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, history, True)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


class _FusedDecoder:
    """One-token decode steps for a KV-cached batch, written out flat: the q/k/v and the
    gate/up weights are concatenated once per generate call (4 matrix products per layer
    instead of 7) and there is no module-call or mask bookkeeping per layer. At batch 1 on
    a CPU that overhead, not arithmetic, is most of the time for small models. Gives the
    same logits as Transformer.forward with a cache (tested)."""

    def __init__(self, model: Transformer):
        self.model, cfg = model, model.cfg
        self.layers = [(L.input_layernorm.weight,
                        torch.cat([L.self_attn.q_proj.weight, L.self_attn.k_proj.weight, L.self_attn.v_proj.weight]),
                        L.self_attn.o_proj.weight, L.post_attention_layernorm.weight,
                        torch.cat([L.mlp.gate_proj.weight, L.mlp.up_proj.weight]), L.mlp.down_proj.weight)
                       for L in model.model.layers]
        self.H, self.KV, self.hd = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        self.d, self.ff, self.eps = cfg.d_model, cfg.d_ff, cfg.norm_eps

    def __call__(self, tokens, positions, cache: KVCache, key_mask=None):
        m, B = self.model, tokens.size(0)
        H, KV, hd, d, ff, eps = self.H, self.KV, self.hd, self.d, self.ff, self.eps
        cos = m.rope_cos[positions].view(B, 1, 1, hd)
        sin = m.rope_sin[positions].view(B, 1, 1, hd)
        pos = cache.length
        mask = key_mask[:, None, None, :pos + 1] if key_mask is not None else None
        x = m.model.embed_tokens.weight[tokens]
        for i, (norm1, w_qkv, w_o, norm2, w_gu, w_down) in enumerate(self.layers):
            qkv = F.linear(F.rms_norm(x, (d,), norm1, eps), w_qkv)
            q = qkv[:, :d].view(B, H, 1, hd)
            k = qkv[:, d:d + KV * hd].view(B, KV, 1, hd)
            v = qkv[:, d + KV * hd:].view(B, KV, 1, hd)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            cache.k[i][:, :, pos:pos + 1] = k
            cache.v[i][:, :, pos:pos + 1] = v
            keys, values = cache.k[i][:, :, :pos + 1], cache.v[i][:, :, :pos + 1]
            if KV != H:
                keys, values = keys.repeat_interleave(H // KV, dim=1), values.repeat_interleave(H // KV, dim=1)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + F.linear(y.reshape(B, d), w_o)
            gu = F.linear(F.rms_norm(x, (d,), norm2, eps), w_gu)
            x = x + F.linear(F.silu(gu[:, :ff]) * gu[:, ff:], w_down)
        cache.length += 1
        return m.lm_head(F.rms_norm(x, (d,), m.model.norm.weight, eps))


class _Window:
    """Left-padded batch state: the cache (or, without one, the token history) and each row's
    next rotary position and padding mask."""

    def __init__(self, model: Transformer, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.cfg = model.cfg
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.decoder = _FusedDecoder(model) if use_cache else None

    def prefill(self, rows: list[list[int]]):
        B, T = len(rows), max(len(r) for r in rows)
        ids = torch.zeros(B, T, dtype=torch.long)
        key_mask = torch.zeros(B, T, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
            key_mask[i, T - len(r):] = True
        ids, key_mask = ids.to(self.device), key_mask.to(self.device)
        positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
        padded = not bool(key_mask.all())
        mask = None
        if padded:
            causal = torch.ones(T, T, dtype=torch.bool, device=self.device).tril()
            mask = (causal[None] & key_mask[:, None, :]).unsqueeze(1)
            mask |= torch.eye(T, dtype=torch.bool, device=self.device)  # pad rows attend to themselves: no NaNs
        self.cache = KVCache(self.cfg, B, self.device, self.dtype) if self.use_cache else None
        logits, _ = self.model(ids, cache=self.cache, positions=positions if padded else None,
                               attn_mask=mask if (padded or self.cache is not None) else None)
        self.length = T
        self.next_pos = positions[:, -1] + 1
        # the padding mask over the whole window, filled as tokens arrive (None: no padding at all)
        self.key_mask = None
        if padded:
            self.key_mask = torch.ones(B, self.cfg.max_seq_len, dtype=torch.bool, device=self.device)
            self.key_mask[:, :T] = key_mask
        if self.cache is None:
            self.ids, self.positions = ids, positions
        return logits[:, -1, :]

    def step(self, next_ids: torch.Tensor):
        """Feed one new token per row; returns next-token logits."""
        if self.cache is not None:
            logits = self.decoder(next_ids, self.next_pos, self.cache, self.key_mask)
        else:  # the uncached reference path: the whole window again, every step
            self.ids = torch.cat([self.ids, next_ids[:, None]], dim=1)
            self.positions = torch.cat([self.positions, self.next_pos[:, None]], dim=1)
            T = self.ids.size(1)
            keys = self.key_mask[:, :T] if self.key_mask is not None else torch.ones_like(self.ids, dtype=torch.bool)
            causal = torch.ones(T, T, dtype=torch.bool, device=self.device).tril()
            mask = (causal[None] & keys[:, None, :]).unsqueeze(1) | torch.eye(T, dtype=torch.bool, device=self.device)
            logits = self.model(self.ids, positions=self.positions, attn_mask=mask)[0][:, -1, :]
        self.next_pos = self.next_pos + 1
        self.length += 1
        return logits

    @property
    def full(self) -> bool:
        return self.length >= self.cfg.max_seq_len


@torch.no_grad()
def stream_generate(model: Transformer, prompts: list[list[int]], params: SamplingParams, *,
                    eot_id: int | None = None, generator: torch.Generator | None = None,
                    use_cache: bool = True) -> Iterator[list[int | None]]:
    """Yield, per step, the new token of each row (None once a row has ended)."""
    params.validate()
    if not prompts:
        return
    model.eval()
    max_len = model.cfg.max_seq_len
    rows = [list(p[-(max_len - 1):]) if p else ([eot_id] if eot_id is not None else [0]) for p in prompts]
    history = [list(r) for r in rows]
    if generator is None and params.seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
    window = _Window(model, use_cache)
    logits = window.prefill(rows)
    done = [False] * len(rows)
    for _ in range(params.max_length):
        logits = logits.float()
        if params.repetition_penalty != 1.0:
            hist = torch.nn.utils.rnn.pad_sequence([torch.tensor(h[-max_len:]) for h in history], batch_first=True,
                                                   padding_value=history[0][-1]).to(logits.device)
            logits = _apply_repetition_penalty(logits, hist, params.repetition_penalty)
        if params.temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(_filter_logits(logits, params.temperature, params.top_k, params.top_p), dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)
        out: list[int | None] = []
        for i, t in enumerate(nxt.tolist()):
            if done[i]:
                out.append(None)
                continue
            if eot_id is not None and t == eot_id:
                done[i] = True
                out.append(None)
                continue
            history[i].append(t)
            out.append(t)
        if all(d for d in done):
            return
        yield out
        if window.full:
            keep = max(1, (max_len * 3) // 4)
            logits = window.prefill([h[-keep:] for h in history])
        else:
            logits = window.step(nxt)


def generate(model: Transformer, prompts: list[list[int]], *, max_new_tokens: int = GENERATE.default("max_length"),
             temperature: float = GENERATE.default("temperature"), top_k: int | None = GENERATE.default("top_k"),
             top_p: float | None = None, repetition_penalty: float = GENERATE.default("repetition_penalty"),
             seed: int | None = None, generator: torch.Generator | None = None, eot_id: int | None = None,
             use_cache: bool = True) -> list[list[int]]:
    """The new tokens for each prompt (the prompt itself is not repeated)."""
    params = SamplingParams(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    outs: list[list[int]] = [[] for _ in prompts]
    for step in stream_generate(model, prompts, params, eot_id=eot_id, generator=generator, use_cache=use_cache):
        for i, t in enumerate(step):
            if t is not None:
                outs[i].append(t)
    return outs
