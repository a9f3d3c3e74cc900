"""The best model for N minutes: one input (the time a person will wait), everything else follows.

From the books' size and this machine's measured speed, ``plan`` chooses the tokenizer and
vocabulary, the shape (one depth dial: width, heads and feed-forward follow the number of
layers), the sequence length, the batch, the learning rate, warm-up and a schedule that decays
over the time budget.

The rule (BENCHMARKS.md, "The rule re-anchored") is anchored on the depth dial's best shape for
P1: 190 s on one CPU core, where 3 layers × 128 (~0.57 M weights outside the embeddings) read
~2.2 M tokens and beat the shapes either side of it. Other budgets scale the weights with the square root of the
arithmetic the budget buys (compute-optimal scaling keeps weights and tokens in a fixed ratio, so
each grows as √compute), capped so that a tiny book is not memorised by a model much larger than
it, and so that training fits in memory. A run that will read its book many times gets dropout
and strong weight decay, and the vocabulary never outgrows what the book can teach. Where the
shape the arithmetic asks for would read the books more than ``USEFUL_EPOCHS`` times, a larger
one (within the cap) that the time reads about that often is planned instead; only where even
that one would read them too often does the plan take less time than it was given: more would
only learn the books by heart.

``measure_speed`` is a probe of a few seconds: a small model's whole training step, timed in
fp32 and under bf16 autocast, then, in the precision that won (and fp32), at a run's batch in a
narrow and a wide model: wide matrices run nearer the machine's peak, by how much depends on the
machine, and a plan interpolates between the two (``MachineSpeed.gflops_at``). Where the run
will train on a CUDA GPU the probe times the GPU instead: the depth dial's shapes from 2 to 16
layers, since there a small step is bound by launching kernels and a wide one by arithmetic. Its
result is cached per machine (or GPU), thread count and PyTorch version, so only the first plan on
a machine pays for it. Training uses bf16 on the CPU only
where it measured clearly faster (``training_precision``): some CPUs have native bf16 units,
most run it many times slower.
"""

from __future__ import annotations

import json
import math
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch

from . import layout, osdeps
from .model import ModelConfig, Transformer, count_parameters, estimate_training_memory, training_flops_per_token
from .settings import TRAIN
from .tokenizer import BYTES_PER_VOCAB_ENTRY

# The anchor: the depth dial's best shape for P1 (190 s on one core) and the arithmetic it did
# there: 3 × 128 (0.57 M weights outside the embeddings) read ~2.2 M tokens at 4.8 MFLOP each and
# ended Tiny Shakespeare at 2.14–2.15 bits per byte, against 2.40–2.41 for 2 × 96 and 2.28–2.29
# for 4 × 192 beside it (BENCHMARKS.md, "The rule re-anchored").
ANCHOR_FLOPS = 2.2e6 * 4.77e6
ANCHOR_NONEMB_PARAMS = 0.57e6
# How the best weights grow with the arithmetic a budget buys: ½ keeps weights and tokens in a
# fixed ratio (compute-optimal scaling), so each grows as √compute.
SCALING_EXPONENT = 0.5
# What share of the probe's rate a training run reaches: the probe is a whole step already; the
# run adds data, evaluations, samples and logging (the lean-loop target: within 10%).
STEP_EFFICIENCY = 0.9
# UTF-8 bytes per BPE token on ordinary prose (English ~2.5 at vocab 1024; Russian ~2.2,
# its letters take two bytes each); used only to size things before the tokenizer exists.
BYTES_PER_TOKEN = 2.3
# Weights per token of the book at most: past this a tiny book gets memorised whatever the
# dropout. (4 was too tight: a 225 KB novel got a 0.6 M model that read it 50 times and
# overfitted; the P1 shape with dropout did better on it, a larger one worse: "Small books".)
MAX_PARAMS_PER_BOOK_TOKEN = 24.0
# Dropout by the passes a plan makes over the book: (at most this many passes, dropout). Swept on
# a 225 KB novel at 13 passes: 0 → val bpb 1.89 (best 1.55, then overfitting), 0.1 → 1.60,
# 0.2 → 1.51, 0.3 → 1.66 (BENCHMARKS.md, "Small books"). Below 8 passes the weight decay that grows
# with the passes is enough: on Tiny Shakespeare at ~4.4 passes (3 × 128, weight decay 1) dropout
# 0.1 ended at 2.205 and 2.221 bits per byte, none at 2.142 and 2.150 (BENCHMARKS.md, "The rule
# re-anchored").
DROPOUT_BY_EPOCHS = ((8.0, 0.0), (math.inf, 0.2))
# AdamW's weight decay by the passes, the same way: a book read many times needs far more than
# the usual 0.1. Swept at 190 s (BENCHMARKS.md, "Weight decay by passes"): Tiny Shakespeare at
# ~4 passes 0.1 → 2.184, 1 → 2.158, 2 → 2.175, 4 → 2.233, and at ~7 passes (380 s) 1 → 2.091,
# 2 → 2.115; a 225 KB novel at ~19 passes 0.1 → 1.568, 1 → 1.511, 2 → 1.460, 4 → 1.446, 8 → 1.558;
# a 38 k-character story at ~100 passes 0.1 → 1.865 (best 1.649, then overfitting), 4 → 1.633
# (best 1.609). Below one pass nothing was measured: the usual 0.1.
WEIGHT_DECAY_BY_EPOCHS = ((1.0, 0.1), (8.0, 1.0), (math.inf, 4.0))
# Where the learning rate ends (a share of its peak), by the passes, the same way: a 225 KB novel
# read ~28 times in ten minutes ended better with the rate decayed to zero than to 5% (BENCHMARKS.md,
# "The rate decayed to zero": in two runs 1.444 and 1.453 bits per byte on the whole held-out
# split at the end, against 1.480–1.492 in three). Fewer passes were not measured: 5% stays there.
MIN_LR_BY_EPOCHS = ((8.0, 0.05), (math.inf, 0.0))
# A planned run ends by itself after this many evaluations in a row clearly worse than its best
# (about a third of the budget at one evaluation per tenth): what remains would only overfit.
PATIENCE = 3
# A plan reads the books at most about this many times, and asks for less time where more would
# read them more often. Measured with the plan's dropout 0.2 and weight decay 4, the rate decaying
# over the time (BENCHMARKS.md, "Readable in ten minutes"): a 225 KB novel planned for ~28 passes
# (ten minutes) did better than the same plan cut to 14 (4.6–4.8 minutes): 1.432 against 1.458
# bits per byte and 83% against 78% real words in one pair, the same bits per byte and more real
# words in its samples in the other; a 38 k-character story planned for 182 passes stopped itself
# worse (1.623, 68%) than its three-minute plan of 53 (1.590, 73%). Past this a book is learned
# by heart. (Before the strong weight decay, 14 was the measured limit.)
USEFUL_EPOCHS = 30.0
# ... but never for less than about the anchor's time, where the rule was measured: a tiny book
# still needs the steps that teach a model its letters and words (a 38 k-character story planned
# for one minute, 330 steps, reached 1.98 bits per byte and 22% real words; its ten-minute run had
# been best at 3 minutes: 1.70 and 60%), nor for more than the time it was given.
SHORTEST_PLAN_S = 180.0
WARMUP_STEPS = 50
# A run that trained this many times faster or slower than the probe predicted had a probe that
# did not measure the machine as it runs (check_against_run); runs shorter than this are mostly
# start-up and say little.
RUN_DISAGREES = 2.0
RUN_CHECKED_AFTER_S = 30.0
HEAD_DIM = 32
MIN_LAYERS, MAX_LAYERS = 2, 16
SPEED_FILE = layout.SPEED_FILE
# What the cached figures measure (a cache written by another probe is measured again).
PROBE_KIND = "train-step by width"
PRECISION_ENV = "AZR_TRAIN_PRECISION"
# One probe at a time: the studio's pages ask for estimates at once, and probes that ran side by
# side would each measure a share of the cores (and write the cache over each other).
_PROBE_LOCK = threading.Lock()


# The widths of the width probes: a step of a narrow and of a wide model at a run's batch.
WIDTH_PROBES = (96, 288)
WIDTH_PROBE_BATCH = 16
# A GPU runs a small model's step at the speed it launches kernels, and a wide one near its
# peak: on an H200, 1.2 TFLOP/s at 2 layers × 96 and 130 at 16 × 768, batch 16 (BENCHMARKS.md,
# "On a GPU"). So there the probe times whole shapes of the depth dial, from narrowest to widest,
# each at the window and batch a plan gives it.
GPU_PROBE_LAYERS = (2, 6, 12, 16)


@dataclass
class MachineSpeed:
    threads: int
    fp32_gflops: float
    bf16_gflops: float
    device: str = "cpu"
    # GFLOP/s at WIDTH_PROBES' widths (None: not measured; bf16's only where bf16 won)
    fp32_by_width: list[float] | None = None
    bf16_by_width: list[float] | None = None
    widths: list[int] | None = None  # the widths of the by-width rates, where not WIDTH_PROBES'

    @property
    def precision(self) -> str:
        # bf16 only where it is clearly faster (native bf16 units), and not slower at any of the
        # widths measured after (one noisy probe must not make every plan bf16 where it is slow)
        if self.bf16_gflops <= 1.3 * self.fp32_gflops:
            return "fp32"
        widths = zip(self.bf16_by_width or [], self.fp32_by_width or [])
        return "fp32" if any(b < f for b, f in widths) else "bf16"

    @property
    def gflops(self) -> float:
        return max(self.fp32_gflops, self.bf16_gflops) if self.precision == "bf16" else self.fp32_gflops

    def gflops_at(self, d_model: int) -> float:
        """The rate to expect for a model ``d_model`` wide, at this speed's precision: between two
        width probes, log-linear in the width; outside them, the nearer one's (no extrapolation);
        without them, the small probe's."""
        by_width = self.bf16_by_width if self.precision == "bf16" else self.fp32_by_width
        widths = list(self.widths or WIDTH_PROBES)
        if not by_width or min(by_width) <= 0 or len(by_width) != len(widths):
            return self.gflops
        if d_model <= widths[0] or len(widths) == 1:
            return by_width[0]
        for (w0, w1), (r0, r1) in zip(zip(widths, widths[1:]), zip(by_width, by_width[1:])):
            if d_model <= w1:
                return r0 * (r1 / r0) ** (math.log(d_model / w0) / math.log(w1 / w0))
        return by_width[-1]


@dataclass
class Plan:
    model: ModelConfig
    batch_size: int
    seq_len: int
    learning_rate: float
    warmup_iters: int
    min_lr_ratio: float
    beta2: float
    weight_decay: float
    dropout: float
    patience: int
    max_time: float
    asked_time: float
    precision: str
    expected_tokens_per_s: float
    expected_tokens: float
    epochs: float
    parameters: int

    def train_settings(self) -> dict:
        """The training settings of this plan, as TrainConfig takes them."""
        return {"batch_size": self.batch_size, "seq_len": self.seq_len, "learning_rate": self.learning_rate,
                "warmup_iters": self.warmup_iters, "min_lr_ratio": self.min_lr_ratio, "beta2": self.beta2,
                "weight_decay": self.weight_decay, "dropout": self.dropout, "patience": self.patience,
                "max_time": self.max_time, "schedule": "time"}

    @property
    def shortened(self) -> str | None:
        """Why the plan takes less time than asked: "passes" (about ``USEFUL_EPOCHS`` of them),
        "floor" (the shortest plan, which still reads a tiny book far more often), or None."""
        if self.max_time >= self.asked_time:
            return None
        floor = self.max_time <= SHORTEST_PLAN_S and self.epochs > 1.5 * USEFUL_EPOCHS
        return "floor" if floor else "passes"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


# The probe's model: a training step of this shape (the P1 shape, two layers) at batch 4.
PROBE_SHAPE = dict(vocab_size=1024, d_model=192, num_layers=2, num_heads=6, d_ff=512, max_seq_len=128)
PROBE_BATCH = 4


def _probe_rate(dtype: torch.dtype, seconds: float, cfg: ModelConfig | None = None, batch: int = PROBE_BATCH,
                device: torch.device | None = None) -> float:
    """GFLOP/s of a small model's whole training step (forward, backward, AdamW), the model's
    arithmetic counted as the planner counts it; matmuls under autocast to ``dtype``."""
    from .runloop import make_optimizer
    device = device or torch.device("cpu")
    cfg = cfg or ModelConfig(**PROBE_SHAPE)
    generator = torch.Generator().manual_seed(0)
    model = Transformer(cfg).to(device)
    optimizer = make_optimizer(model, 1e-3, 0.1, 0.99, device)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.max_seq_len), generator=generator).to(device)
    bf16 = dtype == torch.bfloat16

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def wait():  # a GPU works asynchronously: the clock stops when its queue is done
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up: the first step pays for kernel selection and allocation
    wait()
    t0, n = time.perf_counter(), 0
    while n < 2 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
        if n % 8 == 0:
            wait()
    wait()
    tokens = n * batch * cfg.max_seq_len
    return training_flops_per_token(cfg, cfg.max_seq_len) * tokens / (time.perf_counter() - t0) / 1e9


def _by_width(dtype: torch.dtype, seconds: float) -> list[float]:
    """The rate of a 2-layer step at each of WIDTH_PROBES' widths, at a run's batch."""
    out = []
    for width in WIDTH_PROBES:
        cfg = ModelConfig(**{**PROBE_SHAPE, "d_model": width, "num_heads": width // HEAD_DIM,
                             "d_ff": int(round(width * 8 / 3 / 64)) * 64})
        out.append(round(_probe_rate(dtype, seconds, cfg, WIDTH_PROBE_BATCH), 2))
    return out


def _measure_gpu(device: torch.device, seconds: float) -> MachineSpeed:
    """The depth dial's shapes (GPU_PROBE_LAYERS) at their windows and batches, in the precision
    training will use there; a shape that does not fit the GPU's free memory ends the probe."""
    from .device import available_memory_bytes, is_out_of_memory
    bf16 = torch.cuda.is_bf16_supported()
    widths, rates = [], []
    for layers in GPU_PROBE_LAYERS:
        cfg = shape_for_layers(layers, 4096, window_for_layers(layers), "bpe")
        batch = batch_for_layers(layers)
        if estimate_training_memory(cfg, batch, cfg.max_seq_len) > (available_memory_bytes(device) or 0) // 2:
            break
        try:
            rates.append(round(_probe_rate(torch.bfloat16 if bf16 else torch.float32, seconds / len(GPU_PROBE_LAYERS),
                                           cfg, batch, device), 2))
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            break
        widths.append(cfg.d_model)
    if not rates:  # not even the narrowest fits: plan as if it ran at the small probe's rate
        rates, widths = [round(_probe_rate(torch.float32, seconds, device=device), 2)], [PROBE_SHAPE["d_model"]]
        bf16 = False
    torch.cuda.empty_cache()
    return MachineSpeed(threads=torch.get_num_threads(), fp32_gflops=0.0 if bf16 else rates[0],
                        bf16_gflops=rates[0] if bf16 else 0.0, device="cuda", widths=widths,
                        fp32_by_width=None if bf16 else rates, bf16_by_width=rates if bf16 else None)


def measure_speed(threads: int, seconds: float = 1.0, device: torch.device | None = None) -> MachineSpeed:
    if device is not None and device.type == "cuda":
        return _measure_gpu(device, seconds)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        speed = MachineSpeed(threads=threads, fp32_gflops=round(_probe_rate(torch.float32, seconds), 2),
                             bf16_gflops=round(_probe_rate(torch.bfloat16, seconds), 2))
        # by width: fp32 always (what a forced fp32 run plans with), bf16 only where it won (where
        # it is emulated, a wide bf16 step takes seconds and would never be used)
        speed.fp32_by_width = _by_width(torch.float32, seconds / 2)
        if speed.precision == "bf16":
            speed.bf16_by_width = _by_width(torch.bfloat16, seconds / 2)
        return speed
    finally:
        torch.set_num_threads(previous)


def as_trained(speed: MachineSpeed, precision: str) -> MachineSpeed:
    """The machine's speed at the precision training will use: bf16's figure only counts when
    training runs in bf16 (``AZR_TRAIN_PRECISION=fp32`` plans and estimates at fp32). A GPU's
    probe measured only the precision training uses there."""
    return speed if precision == "bf16" or speed.device != "cpu" else replace(speed, bf16_gflops=0.0)


def training_precision(setting: str, device: torch.device, home, threads: int | None) -> str:
    """The precision a training run uses: the setting, or for "auto" bf16 on a GPU that has it,
    on a CPU what the machine's probe measured faster (``AZR_TRAIN_PRECISION`` overrides the probe:
    fp32 for exact comparisons), fp32 anywhere else."""
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type != "cpu":
        return "fp32"
    forced = _forced_precision()
    return forced or machine_speed(home, threads or torch.get_num_threads()).precision


def cpu_precision(speed: MachineSpeed) -> str:
    """What "auto" trains in on a CPU of this measured ``speed`` (``AZR_TRAIN_PRECISION`` first)."""
    return _forced_precision() or speed.precision


def _forced_precision() -> str | None:
    forced = os.environ.get(PRECISION_ENV, "").strip().lower()
    return forced if forced in ("fp32", "bf16") else None


def _machine_key(threads: int, device: torch.device | None = None) -> str:
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}|cuda|torch {torch.__version__}|{PROBE_KIND}"
    cpu = osdeps.cpu_name() or platform.processor() or platform.machine()
    return f"{cpu}|{os.cpu_count()}|{threads}|torch {torch.__version__}|{PROBE_KIND}"


def machine_speed(home, threads: int, device: torch.device | None = None) -> MachineSpeed:
    """This machine's speed at ``threads`` (or its GPU's, where training runs on one), measured
    once and cached in the data folder."""
    with _PROBE_LOCK:
        return _machine_speed(home, threads, device)


def _read_cache(home) -> dict:
    try:
        cache = json.loads(layout.speed_file(home).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _cached(cache: dict, key: str) -> MachineSpeed | None:
    try:
        return MachineSpeed(**cache[key]) if isinstance(cache.get(key), dict) else None
    except TypeError:
        return None


def _machine_speed(home, threads: int, device: torch.device | None = None) -> MachineSpeed:
    from .home import atomic_write_json
    cache, key = _read_cache(home), _machine_key(threads, device)
    speed = _cached(cache, key)
    if speed is None:
        speed = measure_speed(threads, device=device)
        cache[key] = asdict(speed)
        atomic_write_json(layout.speed_file(home), cache)
    return speed


def check_against_run(home, threads: int, cfg: ModelConfig, seq_len: int, batch_size: int, precision: str,
                      tokens_per_s: float, seconds: float) -> float | None:
    """Compares a CPU training run's tokens per second (its loop's, evaluations during it
    included, as a plan counts them) with what this machine's cached probe predicts for its shape.
    Where the two differ by more than ``RUN_DISAGREES`` either way, the probe did not measure the
    machine as it runs (taken while something else was running, say), and every estimate and
    plan built on it is off by as much: it is forgotten, so that the next plan measures again,
    and the ratio (run / prediction) is returned. None otherwise, and where nothing is compared:
    a short run (mostly start-up), a shape narrower than the probes or a batch much smaller than
    theirs (bound by calls, not arithmetic), a precision the probe did not measure by width, or
    no probe cached."""
    if seconds < RUN_CHECKED_AFTER_S or tokens_per_s <= 0 or cfg.d_model < WIDTH_PROBES[0] \
            or batch_size < WIDTH_PROBE_BATCH // 2:
        return None
    with _PROBE_LOCK:
        from .home import atomic_write_json
        cache, key = _read_cache(home), _machine_key(threads)
        speed = _cached(cache, key)
        # bf16 is measured by width only where the probe chose it (a forced bf16 run elsewhere
        # would be compared with fp32's rates, and have the probe measured again after every run)
        if speed is None or (precision == "bf16") != (speed.precision == "bf16"):
            return None
        speed = as_trained(speed, precision)
        expected = speed.gflops_at(cfg.d_model) * 1e9 * STEP_EFFICIENCY / training_flops_per_token(cfg, seq_len)
        if not expected > 0:
            return None
        ratio = tokens_per_s / expected
        if 1 / RUN_DISAGREES <= ratio <= RUN_DISAGREES:
            return None
        del cache[key]
        atomic_write_json(layout.speed_file(home), cache)
        return ratio


def window_for_layers(layers: int) -> int:
    """A plan's sequence length for a depth: deeper models see longer windows."""
    return 128 if layers <= 5 else 256 if layers <= 9 else 512


def batch_for_layers(layers: int) -> int:
    """A plan's batch for a depth (before memory halves it)."""
    return 16 if layers <= 5 else 32


def shape_for_layers(layers: int, vocab_size: int, seq_len: int, tokenizer: str) -> ModelConfig:
    """The depth dial: width 48 per layer (rounded to whole 32-wide heads), feed-forward 8/3 of it."""
    d_model = max(64, int(round(48 * layers / HEAD_DIM)) * HEAD_DIM)
    d_ff = max(128, int(round(d_model * 8 / 3 / 64)) * 64)
    return ModelConfig(vocab_size=vocab_size, d_model=d_model, num_layers=layers, num_heads=d_model // HEAD_DIM,
                       d_ff=d_ff, max_seq_len=seq_len, tokenizer=tokenizer)


def _nonembedding(cfg: ModelConfig) -> int:
    return count_parameters(cfg) - cfg.vocab_size * cfg.d_model


def vocabulary_for(book_bytes: int) -> tuple[str, int]:
    """BPE with a vocabulary that grows with the text, never larger than the training part can
    teach (the tokenizer's own rule: about 200 bytes of text per entry); the character tokenizer
    for books too small even for 512 entries."""
    train_bytes = book_bytes * (1 - TRAIN.default("val_fraction"))
    ceiling = 4096 if book_bytes >= 20_000_000 else 2048 if book_bytes >= 2_000_000 else 1024
    for vocab in (4096, 2048, 1024, 512):
        if vocab <= ceiling and train_bytes >= vocab * BYTES_PER_VOCAB_ENTRY:
            return "bpe", vocab
    return "char", 512


def dropout_for(epochs: float) -> float:
    """Residual dropout for a run that reads the book ``epochs`` times: none while the text is
    mostly new to the model, more the more often it comes round (BENCHMARKS.md, "Small books")."""
    return _by_passes(DROPOUT_BY_EPOCHS, epochs)


def weight_decay_for(epochs: float) -> float:
    """AdamW's weight decay for a run that reads the book ``epochs`` times: the usual 0.1 for text
    seen about once, much more for a book that comes round many times (BENCHMARKS.md, "Weight
    decay by passes")."""
    return _by_passes(WEIGHT_DECAY_BY_EPOCHS, epochs)


def _by_passes(table: tuple[tuple[float, float], ...], epochs: float) -> float:
    """The value of the first (at most this many passes, value) row that ``epochs`` fits."""
    return next(value for most, value in table if epochs <= most)


def plan(book_bytes: int, minutes: float, speed: MachineSpeed, memory_bytes: int | None = None,
         book_chars: int | None = None) -> Plan:
    """The shape and settings expected to give the lowest held-out loss after at most ``minutes``
    of training on ``book_bytes`` of text on a machine of ``speed``. Books small enough to be
    read more than ``USEFUL_EPOCHS`` times in that time get a shorter plan (``max_time`` below
    ``asked_time``): the time that reads them about that often, the schedule decaying over it.
    ``book_chars`` (the books' characters, where known) counts the character tokenizer's tokens:
    a Cyrillic letter is two bytes of UTF-8 but one token."""
    asked = max(1.0, float(minutes) * 60)
    p = _plan(book_bytes, book_chars, asked, asked, speed, memory_bytes)
    # a shorter time can mean a smaller, faster model and so more passes again: a few rounds settle it
    for _ in range(6):
        if p.epochs <= USEFUL_EPOCHS * 1.05 or p.max_time <= SHORTEST_PLAN_S:
            break
        shorter = max(SHORTEST_PLAN_S, math.floor(p.max_time * USEFUL_EPOCHS / p.epochs / 6) * 6)  # whole tenths of a minute
        p = _plan(book_bytes, book_chars, shorter, asked, speed, memory_bytes)
    return p


class _Candidate(NamedTuple):
    """A depth of the dial as a plan weighs it."""
    fit: float  # how far its weights are from the rule's (log ratio)
    cfg: ModelConfig
    batch: int
    tokens: float  # what the time buys at its rate
    weights: int  # outside the embeddings


def _plan(book_bytes: int, book_chars: int | None, seconds: float, asked: float, speed: MachineSpeed,
          memory_bytes: int | None) -> Plan:
    book_bytes = max(1, int(book_bytes))
    tokenizer, vocab = vocabulary_for(book_bytes)
    if tokenizer == "char":
        book_tokens = float(max(1, min(book_chars or book_bytes, book_bytes)))
    else:
        book_tokens = book_bytes / BYTES_PER_TOKEN
    if memory_bytes is None:
        memory_bytes = 8 * 2**30
    memory_cap = memory_bytes // 2  # leave the rest to the system, the data and the evaluations

    shapes: list[_Candidate] = []  # each depth that fits memory, from the smallest
    for layers in range(MIN_LAYERS, MAX_LAYERS + 1):
        seq_len = window_for_layers(layers)
        cfg = shape_for_layers(layers, vocab, seq_len, tokenizer)
        flops = speed.gflops_at(cfg.d_model) * 1e9 * STEP_EFFICIENCY * seconds  # what the budget buys at this width
        batch = batch_for_layers(layers)
        while batch > 1 and estimate_training_memory(cfg, batch, seq_len) > memory_cap:
            batch //= 2
        if estimate_training_memory(cfg, batch, seq_len) > memory_cap:
            break  # deeper shapes only need more
        # the anchored rule: the weights this much arithmetic trains best, as far as the books can teach them
        wanted = min(ANCHOR_NONEMB_PARAMS * (flops / ANCHOR_FLOPS) ** SCALING_EXPONENT,
                     MAX_PARAMS_PER_BOOK_TOKEN * book_tokens)
        weights = _nonembedding(cfg)
        shapes.append(_Candidate(abs(math.log(weights / wanted)), cfg, batch,
                                 flops / training_flops_per_token(cfg, seq_len), weights))
    if not shapes:  # not even the smallest shape fits: the smallest at batch 1
        cfg = shape_for_layers(MIN_LAYERS, vocab, 64, tokenizer)
        budget_flops = speed.gflops_at(cfg.d_model) * 1e9 * STEP_EFFICIENCY * seconds
        shapes.append(_Candidate(0.0, cfg, 1, budget_flops / training_flops_per_token(cfg, 64), _nonembedding(cfg)))
    best = min(shapes, key=lambda s: s.fit)
    if best.tokens > USEFUL_EPOCHS * book_tokens:
        # the books are too small for this much arithmetic: the smallest shape that the time reads
        # them at most about that often, no larger than the shape nearest the books' cap (a larger
        # model trained the whole time did better than the best shape stopped early); where even
        # that one reads them too often, it, for less time (``plan`` shortens it). Only larger
        # shapes than the best: on a GPU a narrow step is bound by launching kernels, so a smaller
        # shape can read fewer tokens than the best one, not more.
        cap = MAX_PARAMS_PER_BOOK_TOKEN * book_tokens
        largest = min(shapes, key=lambda s: abs(math.log(s.weights / cap))).weights
        allowed = [s for s in shapes if best.weights <= s.weights <= largest]
        filling = [s for s in allowed if s.tokens <= USEFUL_EPOCHS * 1.05 * book_tokens]
        if filling:
            best = min(filling, key=lambda s: s.weights)
        else:
            best = max(allowed, key=lambda s: s.weights)
    cfg, batch, tokens = best.cfg, best.batch, best.tokens
    seq_len = cfg.max_seq_len
    # tiny books: a window no longer than a tenth of the text, so validation has windows too
    while seq_len > 32 and seq_len * 10 > book_tokens:
        seq_len //= 2
    if seq_len != cfg.max_seq_len:
        cfg = shape_for_layers(cfg.num_layers, vocab, seq_len, tokenizer)
    steps = tokens / (batch * seq_len)
    # learning rate: 3e-3 at P1's width, smaller for wider models (roughly 1/width)
    lr = min(3e-3, max(6e-4, 3e-3 * 192 / cfg.d_model))
    # warm-up: 3% of the steps, but at least the anchor's 50 (a shorter one at this rate costs:
    # 20 steps → 1.550 vs 60 → 1.530 on a 225 KB novel in 190 s), and at most a quarter of the run
    warmup = int(max(10, min(200, max(WARMUP_STEPS, 0.03 * steps), steps / 4)))
    epochs = tokens / book_tokens
    cfg.validate()
    return Plan(model=cfg, batch_size=batch, seq_len=seq_len, learning_rate=round(lr, 6), warmup_iters=warmup,
                min_lr_ratio=_by_passes(MIN_LR_BY_EPOCHS, epochs), beta2=0.99, weight_decay=weight_decay_for(epochs), dropout=dropout_for(epochs),
                patience=PATIENCE, max_time=seconds, asked_time=asked, precision=speed.precision,
                expected_tokens_per_s=round(tokens / seconds, 1), expected_tokens=round(tokens),
                epochs=round(epochs, 2), parameters=count_parameters(cfg))
