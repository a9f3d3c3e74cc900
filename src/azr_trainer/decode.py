"""Decode weights: a model's matrices for cached generation steps, in the fastest precision,
and the one-token step that reads them (``OneTokenStep``).

A cached decode step multiplies a few rows of activations by every weight matrix, so on a
CPU it is bound by reading the weights (and, for small models, by per-call overhead), not by
arithmetic. Fewer bytes per weight read faster:

- ``fp32``: the model's own weights (q/k/v and gate/up packed into one matrix each).
- ``bf16``: bf16 weights, the products' inputs cast to bf16 (fast where the CPU multiplies
  bf16 natively); on a CPU the weights are laid out once in oneDNN's blocked format, as
  ``torch.compile`` lays them out.
- ``int8``: int8 weights with one scale per output channel, the products' inputs cast to bf16
  (``torch._weight_int8pack_mm``; it needs input widths that are multiples of 16).
- ``int8dyn``: the same int8 weights multiplied by activations quantized to int8 per step
  (fbgemm's dynamic linear; fastest for many rows on CPUs with VNNI, least exact).

Between the products the residual stream, the norms and attention stay in the model's type. On
a CPU, in every precision but fp32, a norm's gain is folded into the product that follows it,
which leaves the norm three small calls instead of ``rms_norm``'s one that costs more at batch 1.

On a CUDA GPU the int8 kernels do not apply: fp32 and bf16, each also compiled. A small model's
step there is bound by launching its kernels, not by reading weights, so bf16 alone measured
slower than fp32 on an H200 and the compiled step (fewer, fused kernels) faster (BENCHMARKS.md).

Where a decode runs long (a run's rollouts, tens of thousands of steps: ``worth_compiling``),
the step may also be compiled: ``torch.compile`` of the model's own forward (one graph for every
cache length and batch size), which fuses the small operations between the matrix products. On
a CPU it needs a C++ compiler (most Linux machines have one; most Windows laptops do not) and
10–20 s to build, so a reply in the studio never waits for it. ``"int8
compiled"`` and the like name such a choice; int8dyn's quantized operator cannot be compiled.

``auto`` times a few decode steps of the model itself in each available precision (compiled
too, where the caller allows it and it builds), at the
batch size asked (rounded up to a power of 2), and keeps the fastest (a less exact precision
only when it is at least 10% faster than a more exact one); the choice is cached per
machine, thread count, model shape and batch size (in memory, and in a file when one is
given). Training never sees these weights: they are made from the model's parameters and
remade when a parameter changes (each tensor's version counter), e.g. between self-play's
rollout batches. Force a precision with the ``precision`` argument or the environment variable
``AZR_DECODE_PRECISION`` (``fp32`` for exact comparisons); ``AZR_DECODE_COMPILE=0`` never
compiles.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

PRECISIONS = ("fp32", "bf16", "int8", "int8dyn")
COMPILABLE = ("fp32", "bf16", "int8")  # int8dyn's quantized operator breaks the graph
COMPILED = " compiled"
# every choice, most exact first; a compiled step is its precision's numbers in fused kernels
CHOICES = tuple(c for p in PRECISIONS for c in ((p, p + COMPILED) if p in COMPILABLE else (p,)))
ENV = "AZR_DECODE_PRECISION"
COMPILE_ENV = "AZR_DECODE_COMPILE"
MARGIN = 0.1  # how much faster a less exact precision must measure to be chosen
_AFTER_NORM = ("q_proj", "gate_proj", "lm_head")  # the first layer of each product that follows a norm


def requested(precision: str | None = None) -> str:
    """``precision`` if given, else the environment's, else ``auto``."""
    p = precision or os.environ.get(ENV) or "auto"
    if p != "auto" and p not in CHOICES:
        raise ValueError(f"decode precision {p!r}: one of auto, {', '.join(CHOICES)}")
    return p


def split(choice: str) -> tuple[str, bool]:
    """A choice's precision, and whether its step is compiled."""
    return choice.removesuffix(COMPILED), choice.endswith(COMPILED)


def available(model: nn.Module) -> list[str]:
    """The precisions this model can decode in on its device."""
    param = next(model.parameters())
    if param.device.type == "cuda":
        # the int8 kernels here are CPU ones; bf16 where the GPU has it and the model is not bf16 already
        bf16 = param.dtype == torch.float32 and torch.cuda.is_bf16_supported()
        return ["fp32", "bf16"] if bf16 else ["fp32"]
    if param.device.type != "cpu":
        return ["fp32"]
    out = ["fp32", "bf16"]
    widths = {model.cfg.d_model, model.cfg.d_ff}
    if all(w % 16 == 0 for w in widths):  # _weight_int8pack_mm crashes on other widths
        out.append("int8")
    if _dynamic_ok():
        out.append("int8dyn")
    return out


@functools.cache
def _dynamic_ok() -> bool:
    """Whether this PyTorch has fbgemm's dynamic int8 linear (deprecated; may go away)."""
    try:
        kernel, _ = _kernel(torch.ones(16, 16), "int8dyn")
        return bool(torch.allclose(kernel(torch.ones(1, 16)), torch.full((1, 16), 16.0), rtol=0.05))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _packed_bf16(w: torch.Tensor):
    """x → x·wᵀ from bf16 weights laid out once in oneDNN's blocked format (as torch.compile
    does on a CPU): on a few rows 1.2–2.7× faster than F.linear's bf16 path, same numbers."""
    packed = torch.ops.mkldnn._reorder_linear_weight(w.to(torch.bfloat16), 1)
    return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


@functools.cache
def _packed_bf16_ok() -> bool:
    """Whether this PyTorch has oneDNN's prepacked bf16 products (private operators: checked)."""
    try:
        # fixed values (no draw from the global generator: a seeded run's dropout stays its own); a strided input too
        w, x = torch.linspace(-1, 1, 768).view(24, 32).sin(), torch.linspace(-2, 2, 192).view(3, 64)[:, ::2].bfloat16()
        ref = F.linear(x, w.bfloat16()).float()
        return bool(torch.allclose(_packed_bf16(w)(x).float(), ref, rtol=0.02, atol=0.02))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights and per-output-channel scales (symmetric: the largest |w| of a row maps to 127)."""
    scale = w.abs().amax(1).clamp(min=1e-12) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def _kernel(w: torch.Tensor, precision: str):
    """A function x → x·wᵀ for one (out, in) weight matrix in the given precision, on 2-D x
    (rows, in) that already has the type the kernel takes, and that type."""
    w = w.detach()
    if precision == "fp32":
        return functools.partial(F.linear, weight=w), w.dtype
    # bf16 and int8 products take bf16 inputs (their int8 kernel is ~13× slower with fp32 ones)
    # and give bf16 outputs; the residual stream between them stays in the model's type.
    if precision == "bf16":
        if w.device.type == "cpu" and _packed_bf16_ok():
            return _packed_bf16(w), torch.bfloat16
        return functools.partial(F.linear, weight=w.to(torch.bfloat16)), torch.bfloat16
    q, scale = _quantize(w.float())
    if precision == "int8":
        return functools.partial(torch._weight_int8pack_mm, mat2=q, scales=scale.to(torch.bfloat16)), torch.bfloat16
    with warnings.catch_warnings():  # quantized tensors are deprecated; _dynamic_ok checks they still work
        warnings.simplefilter("ignore")
        qw = torch.quantize_per_channel(q.float() * scale[:, None], scale.double(),
                                        torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qw, None)
    return (lambda x: torch.ops.quantized.linear_dynamic(x, packed, True)), torch.float32


class DecodeWeights:
    """One model's weights for cached steps, in one precision. The residual stream, the norms,
    the KV cache and attention stay in the model's own type (``dtype``; fp32 on a CPU): only the
    products' inputs are cast to their precision's. Logits come out in fp32."""

    def __init__(self, model: nn.Module, precision: str):
        self.precision = precision
        # fp32 means the model's own weights, whatever their type (bf16 on an accelerator).
        # Keys, values and attention stay in the model's type too: CPU attention over bf16 is
        # slower, and a bf16 residual stream adds a rounding at every layer.
        self.dtype = self.cache_dtype = next(model.parameters()).dtype
        self.versions = _versions(model)
        self._kernels: dict[tuple[int, tuple[str, ...]], tuple] = {}
        dt = self.dtype
        self.embed = model.model.embed_tokens.weight.detach().to(dt)
        self.rope = (model.rope_cos.to(dt), model.rope_sin.to(dt))
        # Every norm feeds one product: the attention's q/k/v, the MLP's gate/up, the output layer.
        # Outside fp32 (exact) a norm's gain and its √width go into that product's weights, and
        # the norm is x / √(|x|² + width·eps): rms_norm's numbers up to rounding, in 3 small
        # calls, where rms_norm's one costs as much as 4 of them at batch 1 on a CPU (a sixth of
        # an int8 step of the default shape). A GPU runs rms_norm as one kernel: nothing to gain there.
        self.fold = precision != "fp32" and self.embed.device.type == "cpu"
        self.norms = {} if self.fold else {id(m): m.weight.detach().to(dt) for m in model.modules()
                                           if type(m).__name__ == "RMSNorm"}
        self._before: dict[int, nn.Module] = {id(model): model.model.norm}
        for layer in model.model.layers:
            self._before[id(layer.self_attn)] = layer.input_layernorm
            self._before[id(layer.mlp)] = layer.post_attention_layernorm
        d, eps = model.cfg.d_model, model.cfg.norm_eps
        self._floor = torch.tensor((d * eps) ** 0.5, dtype=dt, device=self.embed.device)

    def kernel(self, owner: nn.Module, names: tuple[str, ...]):
        """owner's linear layers ``names`` stacked into one matrix (made on first use), as a
        function on 2-D inputs of the type it takes, and that type (``_kernel``)."""
        k = self._kernels.get((id(owner), names))
        if k is None:
            w = torch.cat([getattr(owner, n).weight for n in names]) if len(names) > 1 else getattr(owner, names[0]).weight
            norm = self._before.get(id(owner)) if names[0] in _AFTER_NORM else None
            if self.fold and norm is not None:
                w = w.detach().float() * (norm.weight.detach().float() * w.shape[1] ** 0.5)
            k = self._kernels[(id(owner), names)] = _kernel(w, self.precision)
        return k

    def linear(self, owner: nn.Module, names: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
        """x (any shape, any type) times owner's linear layers ``names`` stacked into one matrix."""
        kernel, dtype = self.kernel(owner, names)
        y = kernel(x.reshape(-1, x.shape[-1]).to(dtype))
        return y.view(*x.shape[:-1], y.shape[-1])

    def norm(self, module: nn.Module, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The norm ``module`` of x; with ``out``, written there in out's type (one call less
        than a cast after it), folded norms only."""
        if self.fold:
            return torch.div(x, torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), self._floor), out=out)
        y = F.rms_norm(x, (x.shape[-1],), self.norms[id(module)], module.eps)
        return y if out is None else out.copy_(y)


class OneTokenStep:
    """A cached decode step of one new token per row, in as few tensor calls as its arithmetic
    allows: at batch 1 on a CPU a small model's step is mostly the cost of calling PyTorch
    (a few µs a call, ~60 calls a layer through the model's own forward), not the arithmetic.

    The same numbers as ``Transformer.forward`` with a cache (the tests compare them), arranged
    for one token and a fixed number of rows (the cache's): 2-D activations (no reshapes around
    the products); buffers made once, with their views, so that a layer makes no view of its
    own but the cache's current length; each norm written straight in the type its product
    takes, its epsilon read from an extra column of the residual stream (one call less); the
    attention scale and the rotation's cos/sin for q, k and v (v: no rotation) made once per
    step, so one rotation covers all three; keys and values written to the cache with one copy
    (``KVCache.kv``); grouped-query heads attended without repeating the cache; the residual
    stream updated in place. A prefill (many tokens) and a compiled step still run the model's
    forward."""

    def __init__(self, model: nn.Module, cache):
        cfg = model.cfg
        self.cache, self.w = cache, cache.bind(model)
        w, dt = self.w, self.w.dtype
        H, KV, hd, d = cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.d_model
        self.shape = (H, hd, cfg.d_ff, cfg.max_seq_len)
        B = self.rows = cache.kv[0].shape[1]
        device = w.embed.device
        # per head: cos·a + b and sin·a, with (a, b) = (scale, 0) for q, (1, 0) for k, (0, 1) for v
        a = torch.tensor([hd ** -0.5] * H + [1.0] * KV + [0.0] * KV, dtype=dt, device=device)[:, None]
        self.cos_a, self.cos_b, self.sin_a = a, (a == 0).to(dt), a
        # the residual stream; where norms are folded (DecodeWeights.fold), one more column holds
        # √(width·eps), so that the norm of a row is √(|x|² + width·eps) in one call
        self.stream = torch.zeros(B, d + w.fold, dtype=dt, device=device)
        if w.fold:
            self.stream[:, d] = w._floor
        self.x = self.stream[:, :d]
        # every product after a norm takes the same type: one buffer for the normed activations
        head = w.kernel(model, model.HEAD)
        self.normed = torch.empty(B, d, dtype=head[1], device=device)
        # q, k and v of the new token, rotated, in the cache's type; its views for the cache and attention
        self.rotated = torch.empty(B, H + 2 * KV, hd, dtype=cache.kv[0].dtype, device=device)
        self.new_kv = self.rotated[:, H:].view(B, 2, KV, hd).transpose(0, 1)
        q = self.rotated[:, :H]
        self.q = q.view(B * KV, H // KV, hd) if B == 1 else None  # rows > 1: q is not one stride apart
        self.layers, self.prefixes = [], []
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            (o, o_type) = w.kernel(attn, attn.O)
            attended = torch.empty(B, H * hd, dtype=o_type, device=device)  # o's input
            kv = cache.kv[i]
            self.layers.append((layer.input_layernorm, w.kernel(attn, attn.QKV)[0], kv,
                                kv[0].view(B * KV, -1, hd).transpose(1, 2), kv[1].view(B * KV, -1, hd),
                                attended, attended.view(B * KV, H // KV, hd), o, layer.post_attention_layernorm,
                                w.kernel(mlp, mlp.GATE_UP)[0], w.kernel(mlp, mlp.DOWN)[0]))
            if cache.prefix is not None:  # the shared prompts' keys (transposed) and values
                shared, T = cache.prefix.kv[i][:, :, :, :cache.offset], cache.offset
                self.prefixes.append((shared[0].view(-1, T, hd).transpose(1, 2), shared[1].view(-1, T, hd)))
        if cache.prefix is not None:
            G = cache.prefix.kv[0].shape[1]
            self.groups = (G, B // G, KV, H // KV)
            self.scores = torch.empty(B * KV, H // KV, cfg.max_seq_len, dtype=cache.kv[0].dtype, device=device)
        self.final_norm, self.head = model.model.norm, head[0]

    def _shared_attention(self, q, prefix_keys_t, prefix_values, keys_t, values, hidden):
        """Attention of q (B·KV, g, hd) over the shared prompts' keys and each row's own ones:
        the prompt part as one product per prompt and head, with the group's R rows as R·g
        queries (its keys read once, not R times), then one softmax over both parts."""
        G, R, KV, g = self.groups
        T, own = prefix_keys_t.shape[2], keys_t.shape[2]
        rows_of = (G, R, KV, g)  # q's rows, in B·KV·g order
        scores = self.scores.narrow(2, 0, T + own)
        grouped = q.view(*rows_of, -1).transpose(1, 2).reshape(G * KV, R * g, -1)
        scores[..., :T].view(*rows_of, T).copy_(torch.bmm(grouped, prefix_keys_t).view(G, KV, R, g, T).transpose(1, 2))
        scores[..., T:] = torch.bmm(q, keys_t)
        if hidden is not None:
            scores.view(G * R, KV, g, -1).masked_fill_(hidden, float("-inf"))
        p = scores.softmax(-1)
        shared = p[..., :T].view(*rows_of, T).transpose(1, 2).reshape(G * KV, R * g, T)
        y = torch.bmm(p[..., T:], values)
        y.view(*rows_of, -1).add_(torch.bmm(shared, prefix_values).view(G, KV, R, g, -1).transpose(1, 2))
        return y

    def _norm(self, module: nn.Module) -> torch.Tensor:
        """The norm ``module`` of the residual stream, written into the products' input buffer."""
        if self.w.fold:
            return torch.div(self.x, torch.linalg.vector_norm(self.stream, dim=-1, keepdim=True), out=self.normed)
        return self.w.norm(module, self.x, self.normed)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B,) the new token of each row (B: the cache's rows), positions (B, 1) their rotary
        positions, attn_mask (B, 1, 1, keys) which cached keys each row sees (None: all). Returns
        the next-token logits (B, vocab) in fp32 and advances the cache by one."""
        H, hd, d_ff, max_len = self.shape
        w, cache, x, r = self.w, self.cache, self.x, self.rotated
        t = cache.length
        if t >= max_len:
            raise ValueError(f"the cache holds {max_len} tokens: the window must slide first")
        B, L, own = self.rows, t + 1, t + 1 - cache.offset
        x.copy_(F.embedding(ids, w.embed))
        p = positions.view(-1)
        cos = w.rope[0][p][:, None] * self.cos_a + self.cos_b  # (B, H + 2·KV, hd)
        sin = w.rope[1][p][:, None] * self.sin_a
        hidden = ~attn_mask if attn_mask is not None else None
        q = self.q
        for i, (norm1, qkv, kv, keys_t, values, attended, attended3, out, norm2, gate_up, down) in enumerate(self.layers):
            h = qkv(self._norm(norm1)).view(B, -1, hd)
            torch.mul(h, cos, out=r)
            r.addcmul_(h.roll(hd // 2, -1), sin)
            kv.select(3, own - 1).copy_(self.new_kv)
            query = q if q is not None else r[:, :H].reshape(attended3.shape)
            if self.prefixes:
                attended3.copy_(self._shared_attention(query, *self.prefixes[i], keys_t.narrow(2, 0, own),
                                                       values.narrow(1, 0, own), hidden))
            else:
                scores = torch.bmm(query, keys_t.narrow(2, 0, L))
                if hidden is not None:
                    scores.view(B, -1, scores.shape[1], L).masked_fill_(hidden, float("-inf"))
                if attended.dtype == scores.dtype:
                    torch.bmm(scores.softmax(-1), values.narrow(1, 0, L), out=attended3)
                else:
                    attended3.copy_(torch.bmm(scores.softmax(-1), values.narrow(1, 0, L)))
            x.add_(out(attended))
            gu = gate_up(self._norm(norm2))
            gate = gu[:, :d_ff]
            x.add_(down(F.silu(gate, inplace=True).mul_(gu[:, d_ff:])))
        cache.length = L
        return self.head(self._norm(self.final_norm)).float()


def _versions(model: nn.Module) -> tuple:
    # in-place updates (an optimizer step, load_state_dict) bump a tensor's version
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


_LOCK = threading.Lock()


def weights_for(model: nn.Module, precision: str) -> DecodeWeights:
    """The model's decode weights in ``precision``, kept on the model (one precision at a time:
    they are a copy of its weights) until a parameter changes or ``release``."""
    with _LOCK:
        held: dict = model.__dict__.setdefault("_decode_weights", {})
        w = held.get(precision)
        if w is None or w.versions != _versions(model):
            held.clear()
            w = held[precision] = DecodeWeights(model, precision)
        return w


def release(model: nn.Module) -> None:
    """Drop the model's decode weights: training is about to change its parameters, and the
    copy would only take memory until the next generation remakes it."""
    with _LOCK:
        model.__dict__.pop("_decode_weights", None)


# ---- choosing a precision by measuring


_CHOICES: dict[str, str] = {}
probe_path: Path | None = None  # where choices are kept across processes (the data folder's file)


def remember_in(home: Path) -> None:
    """Keep measured choices in this data folder (the CLI, the studio and run workers call it)."""
    global probe_path
    from .layout import decode_speed_file
    probe_path = decode_speed_file(home)


def _bucket(rows: int) -> int:
    b = 1
    while b < rows and b < 256:
        b *= 2
    return b


@functools.cache
def _machine(threads: int) -> str:
    from .autosize import _machine_key
    return _machine_key(threads)  # reads /proc/cpuinfo: once, not per generation


def _key(model: nn.Module, rows: int) -> str:
    c = model.cfg
    shape = f"d{c.d_model} L{c.num_layers} h{c.num_heads}/{c.kv_heads} ff{c.d_ff} v{c.vocab_size}"
    return f"{_machine(torch.get_num_threads())}|{shape}|rows {_bucket(rows)}"


def _read_file() -> dict:
    try:
        d = json.loads(probe_path.read_text(encoding="utf-8")) if probe_path else {}
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


# ---- a compiled decode step

_COMPILE_FAILED: list[str] = []  # why compiling failed in this process: not tried again


def compile_allowed(model: nn.Module) -> bool:
    """Whether compiled steps may be tried for this model here: on a CPU or a CUDA GPU, not
    switched off, and not failed before in this process."""
    return (next(model.parameters()).device.type in ("cpu", "cuda") and os.environ.get(COMPILE_ENV) != "0"
            and not _COMPILE_FAILED)


@functools.cache
def _compiled_forward():
    from .model import Transformer
    # one graph for every batch size and cache length (dynamic); each precision's weights and a
    # model of another shape add a graph, more than dynamo's default of 8 in a long process
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(Transformer.forward, dynamic=True, fullgraph=True)


# Building a compiled step takes 10-20 s in a run (PyTorch's compile cache shortens later
# builds), and it saved 0.4-0.8 ms a step at the shapes measured (BENCHMARKS.md, P4): it pays
# for itself after some tens of thousands of decode steps, not in a short run.
COMPILE_PAYS_AFTER_STEPS = 40_000


def worth_compiling(decode_steps: float | None) -> bool:
    """Whether a caller that will make about ``decode_steps`` decode steps in this process (None:
    no end known) should let the probe try a compiled step."""
    return decode_steps is None or decode_steps >= COMPILE_PAYS_AFTER_STEPS


def one_token_step(model: nn.Module, cache, compiled: bool = False):
    """What runs a cached decode step of one token per row on ``cache``: ``OneTokenStep``, or
    the model's own forward compiled. Either is called as step(ids (B,), positions (B, 1),
    attn_mask) and returns the next-token logits (B, vocab)."""
    if not compiled or not compile_allowed(model):
        return OneTokenStep(model, cache)
    forward = functools.partial(_compiled_forward(), model)

    def compiled_step(ids, positions, attn_mask=None):
        return forward(ids[:, None], cache=cache, positions=positions, attn_mask=attn_mask)[0][:, -1]
    compiled_step.compiled = True
    return compiled_step


def compile_failed(error: BaseException) -> None:
    """Decode without compiling from now on in this process (no C++ compiler, a PyTorch that
    cannot compile this model), saying why once."""
    if not _COMPILE_FAILED:
        warnings.warn(f"decoding without a compiled step: {type(error).__name__}: {str(error)[:300]}", stacklevel=2)
    _COMPILE_FAILED.append(f"{type(error).__name__}: {error}")


class _Probe:
    """A filled cache of ``rows`` rows for one choice, to time decode steps from. ``group``:
    the rows come in groups that continue one prompt (sample.Batch shares it, uncompiled):
    the first quarter of the window is then a shared prompt, as self-play's rollouts have."""

    def __init__(self, model, choice: str, rows: int, steps: int, group: int = 1):
        from .model import KVCache
        precision, compiled = split(choice)
        w = weights_for(model, precision)
        self.device = next(model.parameters()).device
        M = model.cfg.max_seq_len
        # timed from the middle of the window: the cache length a long decode averages
        self.prompt = max(1, min(M // 2, M - steps - 1))
        if group > 1 and not compiled and rows % group == 0 and M // 4 < self.prompt:
            prefix = KVCache(model.cfg, rows // group, self.device, weights=w)
            prefix.length = M // 4  # what the keys hold does not change a step's time
            self.cache = KVCache(model.cfg, rows, self.device, weights=w, prefix=prefix)
            for kv in prefix.kv + self.cache.kv:  # keys the steps read but no step wrote (a cache starts unfilled)
                kv.zero_()
        else:
            self.cache = KVCache(model.cfg, rows, self.device, weights=w)
            model(torch.zeros(rows, self.prompt, dtype=torch.long, device=self.device), cache=self.cache)
        self.steps, self.step = steps, one_token_step(model, self.cache, compiled)
        self.next = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.positions = torch.full((rows, 1), self.prompt, device=self.device)
        if compiled:
            self.seconds()  # builds it (not timed); raises where it cannot be built

    def seconds(self) -> float:
        # one thread: this process's CPU time, steadier than wall time when other work shares the cores
        gpu = self.device.type == "cuda"
        clock = time.process_time if torch.get_num_threads() == 1 and not gpu else time.perf_counter
        self.cache.length = self.prompt
        if gpu:
            torch.cuda.synchronize(self.device)
        t = clock()
        for _ in range(self.steps):
            self.step(self.next, self.positions)
        if gpu:  # the GPU works asynchronously: wait for the steps queued
            torch.cuda.synchronize(self.device)
        return (clock() - t) / self.steps


def candidates(model: nn.Module, compile: bool = False) -> list[str]:
    """The choices there are: the available precisions, and with ``compile`` their compiled
    steps where that may work here."""
    names = available(model)
    if compile and compile_allowed(model):
        names += [p + COMPILED for p in names if p in COMPILABLE]
    return [c for c in CHOICES if c in names]


def _timed(probes: dict, seconds: float) -> dict[str, float]:
    """The best seconds per step of each probe over interleaved rounds (at least 2)."""
    best = {c: float("inf") for c in probes}
    t0, rounds = time.perf_counter(), 0
    while rounds < 2 or (rounds < 8 and time.perf_counter() - t0 < seconds):
        for c in (list(probes) if rounds % 2 == 0 else list(probes)[::-1]):
            best[c] = min(best[c], probes[c].seconds())
        rounds += 1
    return best


@torch.inference_mode()  # as decoding runs (sample.steps)
def measure(model: nn.Module, rows: int, seconds: float = 0.5, compile: bool = False,
            group: int = 1) -> dict[str, float]:
    """Seconds per decode step of this model at ``rows`` rows (rounded up to a power of 2), per
    available precision: the best of interleaved rounds, within about ``seconds``. With
    ``compile``, then the compiled step of the precision measured fastest among those that
    compile, timed against the plain choices again (building it, 10-20 s, not counted): one
    build, not one per precision. ``group``: see _Probe."""
    rows = _bucket(rows)
    steps = max(1, min(4, model.cfg.max_seq_len // 4 - 1))
    plain = {p: _Probe(model, p, rows, steps, group) for p in available(model)}
    best = _timed(plain, seconds)
    compilable = [p for p in best if p in COMPILABLE]
    if not (compile and compile_allowed(model) and compilable):
        return best
    choice = min(compilable, key=best.get) + COMPILED
    try:
        probes = {**plain, choice: _Probe(model, choice, rows, steps)}
    except Exception as e:  # noqa: BLE001 - whatever stops a compiler, decoding goes on without it
        compile_failed(e)
        return best
    return _timed(probes, seconds)


def _fastest(times: dict[str, float]) -> str:
    """The fastest choice, where a less exact one (CHOICES' order; a compiled step counts as
    less exact than its precision's plain one) must be at least MARGIN faster than the one it
    replaces: a tie goes to exactness and to not compiling (and the choice does not flip with
    noise)."""
    got = "fp32"
    for c in CHOICES:
        if c in times and times[c] < times[got] * (1 - MARGIN):
            got = c
    return got


def choose(model: nn.Module, rows: int, precision: str | None = None, compile: bool = False,
           group: int = 1) -> str:
    """How to decode ``rows`` rows: the precision asked, or (``auto``) the fastest measured on
    this machine, once per machine, threads, shape and batch size. ``compile``: the caller
    decodes long enough (a run's rollouts) for a compiled step to pay for its building, so
    compiled steps are candidates too. ``group``: the rows come in groups of this many that
    share a prompt (the uncompiled step reads it once per group; a compiled one once per row).
    Returns a precision, or one followed by " compiled" (``split``)."""
    p = requested(precision)
    if p != "auto":
        return p if split(p)[0] in available(model) else "fp32"
    group = group if rows % group == 0 and _bucket(rows) == rows else 1
    key = _key(model, rows) + ("|compiled too" if compile else "") + (f"|groups of {group}" if group > 1 else "")
    got = _CHOICES.get(key) or _read_file().get(key)
    if got not in candidates(model, compile):
        got = _fastest(measure(model, rows, compile=compile, group=group))
        if probe_path is not None:
            from .home import atomic_write_json
            d = _read_file()
            d[key] = got
            try:
                atomic_write_json(probe_path, d)
            except OSError:
                pass  # a read-only data folder: measured again next time
    _CHOICES[key] = got
    return got
