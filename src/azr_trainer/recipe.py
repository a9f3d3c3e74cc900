"""A model's training recipe: the auto-sizing plan (autosize.py) kept with the model it made.

``azr models create NAME --auto`` and the studio's "best model for N minutes" plan a shape and
its training settings from the books' size, the minutes and this machine's measured speed, and
store both: the shape as the model's config, the settings in model.json under ``recipe``.
Every later train run of that model (the command line and the studio's worker alike) starts
from the recipe: ``apply`` fills in each setting the run leaves out, so the plan's learning
rate, batch and schedule are what a plain ``azr train NAME --books B`` gets.

The plan is sized on the speed of the precision training will use here (bf16 on a CPU only
where the probe measured it clearly faster); the recipe keeps both measurements. Its
``minutes`` are the plan's own time, which for a small book is shorter than the time asked
(``asked_minutes``): past about ``autosize.USEFUL_EPOCHS`` passes a book is learned by heart.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import autosize, store
from . import books as books_mod
from .errors import UserError
from .model import ModelConfig, count_parameters, estimate_training_memory, training_flops_per_token
from .settings import TRAIN
from .tokenizer import BYTES_PER_VOCAB_ENTRY, train_char

# The settings a recipe holds, as TrainConfig names them (the time budget travels as minutes).
SETTINGS = ("batch_size", "seq_len", "learning_rate", "warmup_iters", "min_lr_ratio", "beta2", "weight_decay",
            "dropout", "patience")
# Past these a shape is the wrong size for the books and the time (see ``warnings``).
FEW_EPOCHS, MANY_EPOCHS = 0.3, 200.0
# Fewer steps than this in the time: the run ends before it has learned anything worth reading.
FEW_STEPS = 20
# The fields of a shape a fix may set.
SHAPE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_seq_len", "tokenizer")
# A training step also costs about this much whatever the model's size (optimizer, Python, small
# kernels): it is what the time of a tiny model's step is made of.
STEP_OVERHEAD_S = 0.02


def books_size(home: Path, books: list[str]) -> tuple[int, int]:
    """(UTF-8 bytes, characters) of the chosen books' stored text."""
    names = [b.strip() for b in books if b and b.strip()]
    if not names:
        raise UserError("auto.no_books")
    if len(set(names)) != len(names):
        raise UserError("auto.book_twice")
    found = [books_mod.get_book(home, n) for n in names]
    return sum(b.text_bytes for b in found), sum(b.chars for b in found)


def _device():
    """Where an auto-sized run will train: the GPU where there is one (``auto``), else the CPU."""
    from .device import pick_device
    return pick_device("auto")


def _memory() -> int | None:
    from .device import available_memory_bytes
    device = _device()
    # the GPU's free memory where it trains there (its probe has made a CUDA context already)
    return available_memory_bytes(device) if device.type in ("cpu", "cuda") else None


def _threads(threads: int | None) -> int:
    from .device import default_threads
    if threads is not None:
        TRAIN["threads"].check(threads)
    return threads or default_threads()


def make_plan(home: Path, books: list[str], minutes: float, threads: int | None = None) -> tuple:
    """(plan, speed, book_bytes) for these books and minutes on this machine."""
    TRAIN["minutes"].check(minutes)
    size, chars = books_size(home, books)
    measured = _as_trained(autosize.machine_speed(home, _threads(threads), _device()))
    p = autosize.plan(size, minutes, measured, memory_bytes=_memory(), book_chars=chars)
    if p.model.tokenizer == "char":  # small books: exactly the characters they use, no row left unused
        p.model.vocab_size = char_vocabulary(home, books, p.model.vocab_size)
        p.parameters = count_parameters(p.model)
    return p, measured, size


def _as_trained(measured: autosize.MachineSpeed) -> autosize.MachineSpeed:
    """The probe's figures at the precision a CPU training run will use here."""
    return autosize.as_trained(measured, autosize.cpu_precision(measured))


def char_vocabulary(home: Path, books: list[str], most: int) -> int:
    """The size of the character tokenizer (at most ``most`` entries) that training will make from
    these books' training parts."""
    names = [n.strip() for n in books if n and n.strip()]
    texts = (books_mod.split_train_val(books_mod.read_book_text(home, n))[0] for n in names)
    return train_char(texts, most).vocab_size


def training_speed(home: Path, cfg: ModelConfig, threads: int | None = None) -> dict:
    """How fast this machine should train ``cfg``, for times shown before a run has measured its
    own (POST /api/models/estimate: the Create page's times, the Training page's estimate). From
    the cached probe (the first call on a machine measures it, a few seconds), at the precision
    training will use here, like ``make_plan``, and at the share of it a whole run reaches; a step
    of ``n`` tokens takes ``n * seconds_per_token + step_overhead_s`` seconds."""
    measured = _as_trained(autosize.machine_speed(home, _threads(threads), _device()))
    gflops = measured.gflops_at(cfg.d_model)  # wide matrices run nearer the machine's peak
    rate = gflops * 1e9 * autosize.STEP_EFFICIENCY
    return {"gflops": gflops, "threads": measured.threads,
            "seconds_per_token": training_flops_per_token(cfg) / rate, "step_overhead_s": STEP_OVERHEAD_S}


def describe(plan: autosize.Plan, minutes: float, book_bytes: int, threads: int | None = None,
             measured: autosize.MachineSpeed | None = None) -> dict:
    """The recipe as model.json keeps it and the API and command line show it."""
    settings = {k: plan.train_settings()[k] for k in SETTINGS}
    if threads is not None:
        settings["threads"] = threads
    # the plan's own time: shorter than the time asked where the books would only be learned by heart
    planned = round(plan.max_time / 60, 4) if plan.shortened else minutes
    out = {"minutes": planned, "asked_minutes": minutes, "settings": settings, "precision": plan.precision,
           "book_bytes": book_bytes,
           "expected": {"parameters": plan.parameters, "tokens_per_s": plan.expected_tokens_per_s,
                        "tokens": plan.expected_tokens, "epochs": plan.epochs,
                        "steps": int(plan.expected_tokens // (plan.batch_size * plan.seq_len))}}
    if plan.shortened:
        out["shorter_because"] = plan.shortened
    if measured is not None:
        out["measured_gflops"] = {"fp32": measured.fp32_gflops, "bf16": measured.bf16_gflops,
                                  "threads": measured.threads, "device": measured.device}
    return out


def create(home: Path, name: str, books: list[str], minutes: float, threads: int | None = None) -> tuple:
    """Plan and create the model ``name`` with its recipe: (ModelInfo, plan, recipe)."""
    p, measured, size = make_plan(home, books, minutes, threads)
    recipe = describe(p, minutes, size, threads, measured)
    recipe["books"] = [b.strip() for b in books if b.strip()]
    info = store.create_model(home, name, p.model, max_memory=_memory(), recipe=recipe)
    return info, p, recipe


def apply(home: Path, model: str, params: dict) -> dict:
    """A train run's settings with the model's recipe filling in what ``params`` leaves out (a
    setting given as None counts as left out). Without a time budget, step count or time limit
    the run gets the recipe's minutes, so that its learning rate decays over the planned time."""
    try:
        recipe = store.read_recipe(home, model)
    except (OSError, ValueError):
        recipe = None
    given = {k: v for k, v in params.items() if v is not None}
    if not recipe:
        return given
    out = {**{k: v for k, v in recipe.get("settings", {}).items() if k in SETTINGS or k == "threads"}, **given}
    if not any(k in given for k in ("minutes", "max_time", "max_iterations")) and recipe.get("minutes"):
        out["minutes"] = recipe["minutes"]
    return out


def warnings(cfg: ModelConfig, book_bytes: int, minutes: float, speed: autosize.MachineSpeed,
             recommended: autosize.Plan, batch_size: int | None = None,
             memory_bytes: int | None = None) -> list[tuple[UserError, dict]]:
    """What is wrong with a hand-chosen shape (and batch) for these books, minutes and this
    machine (cheap: no training), each with its fix: ``model``, the shape fields to set (the
    plan's), and ``run``, the run settings that help a model whose shape is already made."""
    out: list[tuple[UserError, dict]] = []
    planned = {k: v for k, v in recommended.model.to_dict().items() if k in SHAPE_FIELDS}
    batch = batch_size or TRAIN.default("batch_size")
    if cfg.tokenizer == "bpe":
        most = max(recommended.model.vocab_size, book_bytes // BYTES_PER_VOCAB_ENTRY)
        if cfg.vocab_size > most:
            out.append((UserError("auto.vocab_large", vocab=cfg.vocab_size, most=most,
                                  recommended=recommended.model.vocab_size),
                        {"model": {"vocab_size": recommended.model.vocab_size}}))
    if memory_bytes is not None:
        need = estimate_training_memory(cfg, batch_size=batch)
        if need > memory_bytes:
            fits = [b for b in (2 ** i for i in range(16)) if b < batch
                    and estimate_training_memory(cfg, batch_size=b) <= memory_bytes]
            out.append((UserError("plan.memory", need_gib=round(need / 2**30, 1),
                                  have_gib=round(memory_bytes / 2**30, 1), batch_size=batch),
                        {"model": planned, "run": {"batch_size": max(fits)} if fits else {}}))
    seconds = 60.0 * minutes
    flops_per_s = speed.gflops_at(cfg.d_model) * 1e9 * autosize.STEP_EFFICIENCY
    step_s = batch * cfg.max_seq_len * training_flops_per_token(cfg) / flops_per_s + STEP_OVERHEAD_S
    if seconds / step_s < FEW_STEPS:
        smaller = [b for b in (2 ** i for i in range(16)) if b < batch and seconds / (
            b * cfg.max_seq_len * training_flops_per_token(cfg) / flops_per_s + STEP_OVERHEAD_S) >= FEW_STEPS]
        run = {"batch_size": max(smaller)} if smaller else {"minutes": math.ceil(FEW_STEPS * step_s / 60)}
        out.append((UserError("plan.step_slow", step_seconds=round(step_s, 1) if step_s < 10 else round(step_s),
                              steps=int(seconds // step_s),
                              minutes=float(minutes), batch_size=batch), {"model": planned, "run": run}))
    tokens = flops_per_s * seconds / training_flops_per_token(cfg)
    book_tokens = book_bytes / (1.0 if cfg.tokenizer == "char" else autosize.BYTES_PER_TOKEN)
    epochs = tokens / max(1.0, book_tokens)
    shown = float(f"{epochs:.2g}") if epochs < 10 else round(epochs)  # a number: each language writes it its way
    # relative to the plan too: where even the best shape reads a tiny book many times in the
    # minutes asked (the plan itself takes fewer), a shape close to it is not to blame
    plan_epochs = recommended.epochs * recommended.asked_time / recommended.max_time
    if epochs < min(FEW_EPOCHS, plan_epochs / 3):
        # the made model's fix: the time for one pass over the books
        out.append((UserError("auto.epochs_few", epochs=shown, minutes=float(minutes),
                              parameters=count_parameters(cfg), recommended=recommended.parameters),
                    {"model": planned, "run": {"minutes": math.ceil(minutes / epochs)}}))
    elif epochs > max(MANY_EPOCHS, plan_epochs * 3):
        out.append((UserError("auto.epochs_many", epochs=shown, minutes=float(minutes),
                              parameters=count_parameters(cfg), recommended=recommended.parameters),
                    {"model": planned, "run": {"minutes": max(1, math.floor(minutes * MANY_EPOCHS / epochs))}}))
    elif epochs > 2 * autosize.USEFUL_EPOCHS and 60 * minutes > 1.5 * max(recommended.max_time, autosize.SHORTEST_PLAN_S):
        # a fitting shape, but more time than the books can use (a run given longer than its plan)
        same = {k: v for k, v in cfg.to_dict().items() if k in SHAPE_FIELDS} == planned
        enough = math.ceil(recommended.max_time / 60) if same else \
            max(math.ceil(autosize.SHORTEST_PLAN_S / 60), math.ceil(minutes * autosize.USEFUL_EPOCHS / epochs))
        out.append((UserError("auto.epochs_learned", epochs=shown, minutes=float(minutes),
                              useful=round(autosize.USEFUL_EPOCHS), recommended=enough),
                    {"run": {"minutes": enough}}))
    return out


def answer(home: Path, books: list[str], minutes: float, threads: int | None = None,
           shape: ModelConfig | None = None, lang: str = "en", batch_size: int | None = None) -> dict:
    """POST /api/models/plan: the plan for these books and minutes, and what is wrong with a
    hand-chosen ``shape`` (trained at ``batch_size``) for them (``warnings``: sentences;
    ``problems``: the same, coded, each with its ``fix``)."""
    p, measured, size = make_plan(home, books, minutes, threads)
    problems: list[tuple[UserError, dict]] = []
    if shape is not None:
        try:
            shape.validate()
        except UserError:
            pass  # the estimate endpoint says what is wrong with the shape itself
        else:
            problems = warnings(shape, size, minutes, measured, p, batch_size, _memory())
    return {"model": p.model.to_dict(), "plan": p.to_dict(), "recipe": describe(p, minutes, size, threads, measured),
            "warnings": [e.render(lang) for e, _ in problems],
            "problems": [{**e.to_dict(lang), "fix": fix} for e, fix in problems]}
