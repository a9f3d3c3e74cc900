"""Decode weights: a model's matrices for cached generation steps, in the fastest precision.

A cached decode step multiplies a few rows of activations by every weight matrix, so on a
CPU it is bound by reading the weights (and, for small models, by per-call overhead), not by
arithmetic. Fewer bytes per weight read faster:

- ``fp32``: the model's own weights (q/k/v and gate/up packed into one matrix each).
- ``bf16``: bf16 weights and activations (fast where the CPU multiplies bf16 natively).
- ``int8``: int8 weights with one scale per output channel, bf16 activations
  (``torch._weight_int8pack_mm``; it needs input widths that are multiples of 16).
- ``int8dyn``: the same int8 weights multiplied by activations quantized to int8 per step
  (fbgemm's dynamic linear; fastest for many rows on CPUs with VNNI, least exact).

``auto`` times a few decode steps of the model itself in each available precision, at the
batch size asked (rounded up to a power of 2), and keeps the fastest (a less exact precision
only when it is at least 10% faster than a more exact one); the choice is cached per
machine, thread count, model shape and batch size (in memory, and in a file when one is
given). Training never sees these weights: they are made from the model's parameters and
remade when a parameter changes (each tensor's version counter), e.g. between self-play's
rollout batches. Force a precision with the ``precision`` argument or the environment variable
``AZR_DECODE_PRECISION`` (``fp32`` for exact comparisons).
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
ENV = "AZR_DECODE_PRECISION"
MARGIN = 0.1  # how much faster a less exact precision must measure to be chosen
_ACT = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.bfloat16, "int8dyn": torch.float32}


def requested(precision: str | None = None) -> str:
    """``precision`` if given, else the environment's, else ``auto``."""
    p = precision or os.environ.get(ENV) or "auto"
    if p != "auto" and p not in PRECISIONS:
        raise ValueError(f"decode precision {p!r}: one of auto, {', '.join(PRECISIONS)}")
    return p


def available(model: nn.Module) -> list[str]:
    """The precisions this model can decode in on its device."""
    if next(model.parameters()).device.type != "cpu":
        return ["fp32"]  # the quantized kernels here are CPU ones
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
        f = _linear(torch.ones(16, 16), "int8dyn")
        return bool(torch.allclose(f(torch.ones(1, 16)), torch.full((1, 16), 16.0), rtol=0.05))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights and per-output-channel scales (symmetric: the largest |w| of a row maps to 127)."""
    scale = w.abs().amax(1).clamp(min=1e-12) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def _linear(w: torch.Tensor, precision: str):
    """A function x → x·wᵀ for one (out, in) weight matrix in the given precision."""
    w = w.detach()
    if precision == "fp32":
        return lambda x: F.linear(x, w)
    if precision == "bf16":
        wb = w.to(torch.bfloat16)
        return lambda x: F.linear(x, wb)
    q, scale = _quantize(w.float())
    if precision == "int8":
        s, n = scale.to(torch.bfloat16), q.shape[0]

        def int8(x):
            return torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), q, s).view(*x.shape[:-1], n)
        return int8
    with warnings.catch_warnings():  # quantized tensors are deprecated; _dynamic_ok checks they still work
        warnings.simplefilter("ignore")
        qw = torch.quantize_per_channel(q.float() * scale[:, None], scale.double(),
                                        torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qw, None)
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, True)


class DecodeWeights:
    """One model's weights for cached steps, in one precision; activations (the residual
    stream) are in ``dtype``, the KV cache and attention in ``cache_dtype``, logits come out
    in fp32."""

    def __init__(self, model: nn.Module, precision: str):
        self.precision = precision
        # fp32 means the model's own weights, whatever their type (bf16 on an accelerator)
        own = next(model.parameters()).dtype
        self.dtype = own if precision == "fp32" else _ACT[precision]
        # keys, values and attention stay in the model's type: CPU attention over bf16 is slower
        self.cache_dtype = own
        self.versions = _versions(model)
        self._linears: dict[tuple[int, tuple[str, ...]], object] = {}
        dt = self.dtype
        self.embed = model.model.embed_tokens.weight.detach().to(dt)
        self.rope = (model.rope_cos.to(dt), model.rope_sin.to(dt))
        self.norms = {id(m): m.weight.detach().to(dt) for m in model.modules() if type(m).__name__ == "RMSNorm"}

    def linear(self, owner: nn.Module, names: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
        """x times owner's linear layers ``names`` stacked into one matrix (made on first use)."""
        f = self._linears.get((id(owner), names))
        if f is None:
            w = torch.cat([getattr(owner, n).weight for n in names]) if len(names) > 1 else getattr(owner, names[0]).weight
            f = self._linears[(id(owner), names)] = _linear(w, self.precision)
        return f(x)

    def norm(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.norms[id(module)], module.eps)


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


class _Probe:
    """A filled cache of ``rows`` rows in one precision, to time decode steps from."""

    def __init__(self, model, precision: str, rows: int, steps: int):
        from .model import KVCache
        self.model, self.steps = model, steps
        w = weights_for(model, precision)
        self.cache = KVCache(model.cfg, rows, next(model.parameters()).device, weights=w)
        self.prompt = max(1, min(16, model.cfg.max_seq_len - steps - 1))
        model(torch.zeros(rows, self.prompt, dtype=torch.long), cache=self.cache)
        self.next = torch.zeros(rows, 1, dtype=torch.long)

    def seconds(self) -> float:
        # one thread: this process's CPU time, steadier than wall time when other work shares the cores
        clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
        self.cache.length = self.prompt
        t = clock()
        for _ in range(self.steps):
            self.model(self.next, cache=self.cache)
        return (clock() - t) / self.steps


@torch.no_grad()
def measure(model: nn.Module, rows: int, seconds: float = 0.5) -> dict[str, float]:
    """Seconds per decode step of this model at ``rows`` rows (rounded up to a power of 2), per
    available precision: the best of interleaved rounds (at least 2), within about ``seconds``."""
    rows = _bucket(rows)
    steps = max(1, min(4, model.cfg.max_seq_len // 4 - 1))
    probes = {p: _Probe(model, p, rows, steps) for p in available(model)}
    best = {p: float("inf") for p in probes}
    t0, rounds = time.perf_counter(), 0
    while rounds < 2 or (rounds < 8 and time.perf_counter() - t0 < seconds):
        for p in (list(probes) if rounds % 2 == 0 else list(probes)[::-1]):
            best[p] = min(best[p], probes[p].seconds())
        rounds += 1
    return best


def _fastest(times: dict[str, float]) -> str:
    """The fastest precision, where a less exact one (PRECISIONS' order) must be at least
    MARGIN faster than the more exact one it replaces: a tie goes to exactness (and the
    choice does not flip with noise)."""
    got = "fp32"
    for p in PRECISIONS:
        if p in times and times[p] < times[got] * (1 - MARGIN):
            got = p
    return got


def choose(model: nn.Module, rows: int, precision: str | None = None) -> str:
    """The precision to decode ``rows`` rows with: the one asked, or (``auto``) the fastest
    measured on this machine, measured once per machine, threads, shape and batch size."""
    p = requested(precision)
    names = available(model)
    if p != "auto":
        return p if p in names else "fp32"
    key = _key(model, rows)
    got = _CHOICES.get(key) or _read_file().get(key)
    if got not in names:
        got = _fastest(measure(model, rows))
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
