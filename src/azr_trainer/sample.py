"""Generation: temperature, top-k, top-p, repetition penalty, batched, streamed, with a KV cache.

A prompt is read by the model's own forward (``Transformer.forward``) with its KV cache, and
each new token by a one-token step on the same cache (``decode.OneTokenStep``). Prompts of
different lengths are left-padded; each row gets its own rotary positions and an attention
mask, so a batch gives the same tokens as each prompt alone.
Past max_seq_len the window slides: the cache is refilled from the last 3/4 of the window
(rotary positions are relative, so the model sees an ordinary context).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import decode
from .model import KVCache, Transformer
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


def _filter_logits(logits, temperature, top_p):
    """The whole vocabulary's logits at ``temperature``, the tail beyond ``top_p`` at -inf
    (without top-k; with it, ``_sample`` works on the k best alone)."""
    logits = logits / temperature
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of probs (B, V) by inverting the cumulative distribution with one
    uniform number per row (torch.multinomial draws one per vocabulary entry: ~0.2 ms a row
    at vocab 8000 on a CPU, more than a decode step of a small model). The sums are float64:
    in float32 a large vocabulary's rare tokens would be drawn at the sums' rounding error."""
    cdf = torch.cumsum(probs, -1, dtype=torch.float64)
    # u in (0, 1]: the first token whose cumulative sum reaches u·total has a probability > 0,
    # and u·total never passes the last sum, so no index falls off the end
    u = 1.0 - torch.rand(probs.size(0), 1, generator=generator, dtype=torch.float64)
    idx = torch.searchsorted(cdf, u.to(cdf.device) * cdf[:, -1:])
    return idx.clamp_(max=probs.size(-1) - 1).squeeze(1)  # a row of NaN (a diverged model) finds no sum: a token all the same


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row at the params' temperature, top-k and top-p."""
    k = params.top_k
    if k and k < logits.size(-1):
        # With top-k: draw among the k best only (a tie at the k-th is broken by topk's order),
        # top-p applied within them, instead of filtering and summing the whole vocabulary: a
        # third of the time at batch 8.
        vals, idx = torch.topk(logits / params.temperature, k, dim=-1)  # sorted, largest first
        probs = torch.softmax(vals, -1)
        if params.top_p is not None and params.top_p < 1:
            # drop a token when the mass before it already reaches top_p (the top token always stays)
            probs = probs.masked_fill(probs.cumsum(-1) - probs >= params.top_p, 0.0)
        return idx.gather(-1, _draw(probs, generator)[:, None]).squeeze(1)
    return _draw(torch.softmax(_filter_logits(logits, params.temperature, params.top_p), -1), generator)


def _apply_repetition_penalty(logits, ids, keys, penalty):
    """Penalise every token that is in a row's window (ids where keys is True)."""
    if penalty == 1.0:
        return logits
    seen = torch.zeros_like(logits).scatter_add_(-1, ids, keys.to(logits.dtype)) > 0
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


# A prompt shorter than this is attended to by each row of its group: sharing it saves less
# than the extra products cost (BENCHMARKS.md, P4).
SHARED_PROMPT_MIN = 16


def _group_size(rows: list[list[int]]) -> int:
    """How many consecutive rows share each prompt, where every prompt comes in a run of the
    same size (self-play's groups of rollouts); 1 where they do not."""
    n = 1
    while n < len(rows) and rows[n] == rows[0]:
        n += 1
    if n == 1 or len(rows) % n or any(rows[i] != rows[i - i % n] for i in range(len(rows))):
        return 1
    return n


class Batch:
    """Left-padded rows being continued, one token per row per step.

    ``logits`` holds each row's next-token logits. The window (ids and which of them are real,
    not padding) is preallocated once at max_seq_len, and so is the KV cache; a step is a few
    tensor operations whatever the batch size. With the cache, a step runs the model on the
    new tokens only, from decode weights in ``precision`` (decode.py: None or "auto" measures
    which is fastest here; "fp32" is exact); without it (the reference), on the whole window
    again, in the model's own weights. ``compile``: the caller decodes for long (a run's
    rollouts), so a compiled step is a candidate too (decode.choose); prefills stay uncompiled.
    Runs of equal prompts (self-play's groups) are read once, and the uncompiled step attends to
    each prompt once for its run (model.KVCache's ``prefix``) until the window slides."""

    def __init__(self, model: Transformer, prompts: list[list[int]], *, use_cache: bool = True,
                 empty_id: int = 0, precision: str | None = None, compile: bool = False):
        self.model, self.max_len = model, model.cfg.max_seq_len
        p = next(model.parameters())
        rows = [list(r[-(self.max_len - 1):]) or [empty_id] for r in prompts]
        B, T = len(rows), max(len(r) for r in rows)
        ids = torch.zeros(B, self.max_len, dtype=torch.long)
        keys = torch.zeros(B, self.max_len, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, T - len(r):T] = torch.tensor(r, dtype=torch.long)
            keys[i, T - len(r):T] = True
        self.ids, self.keys = ids.to(p.device), keys.to(p.device)
        group = _group_size(rows) if use_cache and T >= SHARED_PROMPT_MIN else 1
        choice = decode.choose(model, B, precision, compile, group) if use_cache else "fp32"
        self.precision, compiled = decode.split(choice)
        # each prompt of a group read once (uncompiled steps: their keys and values shared by its rows)
        every = 1 if compiled else group
        w = decode.weights_for(model, self.precision) if use_cache else None
        self.cache = KVCache(model.cfg, B // every, p.device, weights=w) if use_cache else None
        self._prefill(T, every)
        if every > 1:
            self.cache = KVCache(model.cfg, B, p.device, weights=w, prefix=self.cache)
        self.step = decode.one_token_step(model, self.cache, compiled) if use_cache else None

    @property
    def window(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The token ids in the window and which of them are real (B, length)."""
        return self.ids[:, :self.length], self.keys[:, :self.length]

    def _mask(self, T: int):
        """Causal over the first T slots and blind to padding (pad slots see themselves: no NaNs)."""
        causal = torch.ones(T, T, dtype=torch.bool, device=self.ids.device).tril()
        eye = torch.eye(T, dtype=torch.bool, device=self.ids.device)
        return ((causal[None] & self.keys[:, None, :T]) | eye).unsqueeze(1)

    def _prefill(self, T: int, every: int = 1):
        """Read the first T slots of every ``every``-th row (the others repeat it) into the cache."""
        ids, keys = self.ids[:, :T], self.keys[:, :T]
        positions = (keys.long().cumsum(-1) - 1).clamp(min=0)
        self.padded = not bool(keys.all())
        if self.cache is not None:
            self.cache.reset()
        run = slice(None, None, every)
        logits, _ = self.model(ids[run], cache=self.cache, positions=positions[run] if self.padded else None,
                               attn_mask=self._mask(T)[run] if self.padded else None)
        self.logits = logits[:, -1].repeat_interleave(every, 0) if every > 1 else logits[:, -1]
        self.length, self.next_pos = T, positions[:, -1:] + 1

    def push(self, next_ids: torch.Tensor):
        """Append one token per row (B,) and compute the next logits."""
        L = self.length
        if L == self.max_len:  # the window slides: the last 3/4 of it, the new token included
            keep = max(1, (self.max_len * 3) // 4) - 1
            if self.cache is not None and self.cache.prefix is not None:  # the rows share no prompt now
                self.cache = KVCache(self.model.cfg, len(self.ids), self.ids.device, weights=self.cache.weights)
                self.step = decode.one_token_step(self.model, self.cache)
            self.ids[:, :keep] = self.ids[:, L - keep:].clone()
            self.keys[:, :keep] = self.keys[:, L - keep:].clone()
            self.ids[:, keep], self.keys[:, keep] = next_ids, True
            self.keys[:, keep + 1:] = False
            return self._prefill(keep + 1)
        self.ids[:, L], self.keys[:, L] = next_ids, True
        if self.cache is not None:
            mask = self.keys[:, None, None, :L + 1] if self.padded else None
            try:
                self.logits = self.step(next_ids, self.next_pos, mask)
            except Exception as e:  # noqa: BLE001 - a compiled step that cannot be built: decode without it
                if not getattr(self.step, "compiled", False):
                    raise
                decode.compile_failed(e)
                self.step = decode.one_token_step(self.model, self.cache)
                self.cache.length = L
                self.logits = self.step(next_ids, self.next_pos, mask)
        else:
            positions = (self.keys[:, :L + 1].long().cumsum(-1) - 1).clamp(min=0)
            logits, _ = self.model(self.ids[:, :L + 1], positions=positions, attn_mask=self._mask(L + 1))
            self.logits = logits[:, -1]
        self.length, self.next_pos = L + 1, self.next_pos + 1


# Decoding runs in inference mode, not just without gradients: tensors made there carry no
# version counters and calls skip autograd's bookkeeping, which made a cached one-token step
# of the default shape ~12% faster on a CPU (BENCHMARKS.md, P4). What a caller gets back are
# token ids to read; the decode weights and the KV cache never meet autograd.
@torch.inference_mode()
def steps(model: Transformer, prompts: list[list[int]], params: SamplingParams, eot_id: int | None = None,
          generator: torch.Generator | None = None, use_cache: bool = True,
          precision: str | None = None, compile: bool = False,
          greedy_rows: list[bool] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per step, each row's new token and whether the row is still going (both (B,) tensors):
    for callers that follow many rows without per-row Python work (the yielded tensors are
    inference tensors: read them, copy them, do not train on them).
    precision and compile: see Batch. greedy_rows: rows that take their likeliest token whatever
    the temperature (self-play's greedy group members, decoded in the same batch as the samples)."""
    params.validate()
    if not prompts:
        return
    model.eval()
    if generator is None and params.seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
    batch = Batch(model, prompts, use_cache=use_cache, empty_id=eot_id if eot_id is not None else 0,
                  precision=precision, compile=compile)
    going = torch.ones(len(prompts), dtype=torch.bool, device=batch.ids.device)
    greedy = torch.tensor(greedy_rows, dtype=torch.bool, device=batch.ids.device) if any(greedy_rows or ()) else None
    for _ in range(params.max_length):
        logits = batch.logits.float()
        if params.repetition_penalty != 1.0:
            logits = _apply_repetition_penalty(logits, *batch.window, params.repetition_penalty)
        if params.temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = _sample(logits, params, generator)
            if greedy is not None:
                nxt = torch.where(greedy, logits.argmax(-1), nxt)
        if eot_id is not None:
            going = going & (nxt != eot_id)
            if not bool(going.any()):
                return
        yield nxt, going
        batch.push(nxt)


def stream_generate(model: Transformer, prompts: list[list[int]], params: SamplingParams, *,
                    eot_id: int | None = None, generator: torch.Generator | None = None,
                    use_cache: bool = True, precision: str | None = None) -> Iterator[list[int | None]]:
    """Yield, per step, the new token of each row (None once a row has ended). precision:
    the decode weights' (see Batch)."""
    for nxt, going in steps(model, prompts, params, eot_id, generator, use_cache, precision):
        yield [t if g else None for t, g in zip(nxt.tolist(), going.tolist())]


def generate(model: Transformer, prompts: list[list[int]], *, max_new_tokens: int = GENERATE.default("max_length"),
             temperature: float = GENERATE.default("temperature"), top_k: int | None = GENERATE.default("top_k"),
             top_p: float | None = GENERATE.default("top_p"), repetition_penalty: float = GENERATE.default("repetition_penalty"),
             seed: int | None = None, generator: torch.Generator | None = None, eot_id: int | None = None,
             use_cache: bool = True, precision: str | None = None, compile: bool = False,
             greedy_rows: list[bool] | None = None) -> list[list[int]]:
    """The new tokens for each prompt (the prompt itself is not repeated). precision, compile
    and greedy_rows: see Batch and steps."""
    params = SamplingParams(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    done = list(steps(model, prompts, params, eot_id, generator, use_cache, precision, compile, greedy_rows))
    if not done:
        return [[] for _ in prompts]
    tokens = torch.stack([t for t, _ in done], 1).tolist()
    lengths = torch.stack([g for _, g in done], 1).sum(1).tolist()  # a row stops for good at its end
    return [row[:n] for row, n in zip(tokens, lengths)]
