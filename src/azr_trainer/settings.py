"""Every setting a person chooses, declared once: name, type, default, bounds, unit and help.

A run's settings travel page → API → run file → worker; before, each hop wrote its own
defaults and bounds, and they drifted. Now the config dataclasses (TrainConfig, SelfPlayConfig,
ReasonConfig, ModelConfig) take their defaults from here and check their values with
``Group.check``; the CLI's options (``add_arguments``), the API's request models
(``pydantic_fields``) and the page's forms (``GET /api/settings``, ``to_json``) are made from the
same declarations. Help texts live in the message catalogue under ``settings.help``.

``studio`` marks the settings the studio offers for a kind of run; ``studio_default`` is where
the studio differs from the command line on purpose (a studio run always has an end: a
training run's is ten minutes unless it is given steps or a time of its own).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from . import catalogue
from .errors import UserError

_UNSET = object()
SEED_MAX = 2**32 - 1


def cores() -> int:
    """CPU cores of this machine: the most threads a run may ask for (more only thrash, and a
    huge number made PyTorch's thread pool crash the worker)."""
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Setting:
    name: str
    type: type                     # int, float, str or bool
    default: object = None         # None: automatic / off / until stopped
    min: float | None = None
    max: float | Callable[[], float] | None = None  # a callable: decided by the machine (threads)
    min_open: bool = False         # the minimum itself is refused ("above 0")
    max_open: bool = False
    choices: tuple | None = None   # checked; the page shows them as a list
    unit: str | None = None        # steps, seconds, tokens, threads, words…
    studio: bool = False           # offered by the studio for this kind of run
    studio_default: object = _UNSET
    recorded: bool = False         # the studio writes the default into a run's params when not given
    flags: tuple[str, ...] = ()    # more spellings on the command line (--kl for --kl-weight)
    typical: tuple | None = None   # the recommended range, for a warning (not enforced)
    help: str | None = None        # catalogue key; default settings.help.<name>
    label: str | None = None       # catalogue key of the page's label

    @property
    def upper(self) -> float | None:
        return self.max() if callable(self.max) else self.max

    @property
    def page_default(self):
        return self.default if self.studio_default is _UNSET else self.studio_default

    @property
    def help_key(self) -> str:
        return self.help or f"settings.help.{self.name}"

    def check(self, value) -> None:
        """Raise a coded UserError if ``value`` (not None) is of the wrong type or out of bounds."""
        if value is None:
            if self.default is not None:  # None means "automatic" only where that is the default
                raise UserError("settings.required", name=self.name)
            return
        if self.type is bool:
            if not isinstance(value, bool):
                raise UserError("settings.boolean", name=self.name, value=repr(value))
            return
        if self.type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError("settings.whole", name=self.name, value=repr(value))
        if self.type is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                                   or not math.isfinite(value)):
            raise UserError("settings.number", name=self.name, value=repr(value))
        if self.type is str and not isinstance(value, str):
            raise UserError("settings.text", name=self.name, value=repr(value))
        if self.choices is not None and value not in self.choices:
            raise UserError("settings.choice", name=self.name, choices=list(self.choices), value=repr(value))
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            raise UserError("settings.above" if self.min_open else "settings.at_least", name=self.name,
                            min=self.min, value=value)
        upper = self.upper
        if upper is not None and (value >= upper if self.max_open else value > upper):
            if self.name == "threads":
                raise UserError("settings.threads_cores", name=self.name, value=value, cores=upper)
            raise UserError("settings.below" if self.max_open else "settings.at_most", name=self.name,
                            max=upper, value=value)

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.type.__name__, "default": self.page_default,
                "cli_default": self.default, "min": self.min, "max": self.upper, "min_open": self.min_open,
                "max_open": self.max_open, "choices": list(self.choices) if self.choices else None,
                "unit": self.unit, "studio": self.studio, "typical": list(self.typical) if self.typical else None,
                "help": self.help_key, "label": self.label}


class Group:
    """The settings of one thing (a kind of run, a model's shape), in the order they are shown."""

    def __init__(self, name: str, *settings: Setting):
        self.name = name
        self.settings = {s.name: s for s in settings}

    def __getitem__(self, name: str) -> Setting:
        return self.settings[name]

    def __iter__(self):
        return iter(self.settings.values())

    def default(self, name: str):
        return self.settings[name].default

    def studio_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self if s.studio)

    def studio_defaults(self) -> dict:
        """What a studio run starts from where the studio and the CLI differ."""
        return {s.name: s.page_default for s in self if s.studio and s.page_default is not None
                and (s.recorded or s.studio_default is not _UNSET)}

    def check(self, obj) -> None:
        """Check every declared setting that ``obj`` (a config dataclass or a dict) holds."""
        if isinstance(obj, dict):
            for name, value in obj.items():
                if name in self.settings:
                    self.settings[name].check(value)
            return
        for s in self:
            if hasattr(obj, s.name):
                s.check(getattr(obj, s.name))

    def to_json(self) -> dict:
        return {s.name: s.to_json() for s in self}


# ---- the declarations ------------------------------------------------------------------------
# Shared pieces first; a kind of run takes them with its own default where it differs.

_ITERS = Setting("max_iterations", int, None, min=1, max=10**9, unit="steps")
_TIME = Setting("max_time", float, None, min=0, min_open=True, unit="seconds")
# A time budget: the run stops then, and a training run's learning rate decays over it.
_MINUTES = Setting("minutes", float, None, min=0, max=10**6, min_open=True, unit="minutes", studio=True,
                   label="train.minutes")
_LR = Setting("learning_rate", float, 1e-4, min=0, max=1, min_open=True, max_open=True)
_TEMP = Setting("temperature", float, 1.0, min=0, max=10, min_open=True)
_WEIGHT = Setting("kl_weight", float, 0.0, min=0, flags=("--kl",))
_EVERY = Setting("eval_every", int, 50, min=1, unit="steps")
_SAVE = Setting("save_every", int, 50, min=1, unit="steps")
_SEED = Setting("seed", int, 1337, min=0, max=SEED_MAX)
_DEVICE = Setting("device", str, "auto")
_THREADS = Setting("threads", int, None, min=1, max=cores, unit="threads")
_RESUME = Setting("resume", bool, False)
_CHECKPOINT = Setting("checkpoint", str, "best")


def _s(base: Setting, default=_UNSET, **changes) -> Setting:
    return replace(base, **({} if default is _UNSET else {"default": default}), **changes)


TRAIN = Group(
    "train",
    # The studio's pretraining is a time budget (ten minutes) with the steps optional: a person
    # knows how long they will wait, not how many steps that is. The command line keeps its
    # step count, which repeats exactly on any machine (a time budget does not).
    _s(_ITERS, 1000, studio=True, studio_default=None, label="train.max_iterations"),
    # No upper bound: the trainer says how much memory a batch would need.
    Setting("batch_size", int, 16, min=1, studio=True, recorded=True, label="train.batch_size"),
    _s(_LR, 3e-4, studio=True, recorded=True, label="train.learning_rate"),
    _s(_SAVE, 1000, studio=True, recorded=True, label="train.save_every"),
    _s(_EVERY, 200, studio=True, label="train.eval_every", studio_default=None),
    _s(_TIME, studio=True),
    _s(_MINUTES, studio_default=10.0),
    Setting("grad_accum", int, 1, min=1),
    Setting("seq_len", int, None, min=2, unit="tokens", studio=True),
    Setting("warmup_iters", int, None, min=0, unit="steps", studio=True),
    # The optimiser's finer dials (the auto-sized recipe sets them; the page shows them as advanced).
    Setting("min_lr_ratio", float, 0.1, min=0, max=1, studio=True),
    Setting("beta2", float, 0.95, min=0, max=1, min_open=True, max_open=True, studio=True),
    Setting("weight_decay", float, 0.1, min=0, max=10, studio=True),
    Setting("dropout", float, 0.0, min=0, max=0.9, studio=True),
    # Evaluations in a row clearly worse than the best before the run ends by itself (0: never).
    # Every auto-sized model's recipe sets 3: past that, a small book is being learned by heart.
    Setting("patience", int, 0, min=0, max=1000, unit="evaluations", studio=True),
    Setting("val_fraction", float, 0.1, min=0, max=0.5),
    _DEVICE,
    _s(_THREADS, studio=True),
    Setting("compile", str, "auto", choices=("auto", "on", "off")),
    # The matmuls' type while training: auto is bf16 on a GPU that has it, and on a CPU only
    # where the machine's probe measured it clearly faster (most CPUs run bf16 slower).
    Setting("precision", str, "auto", choices=("auto", "fp32", "bf16")),
    # What a run evaluates, samples and saves: the average of its recent weights (averaging.py)
    # or the last step's.
    Setting("weight_averaging", str, "on", choices=("on", "off")),
    _SEED,
    Setting("log_every", int, 10, min=1, unit="steps"),
    _RESUME,
    # Processes on this machine (torchrun + DDP): the launcher's, not TrainConfig's.
    Setting("nproc", int, 1, min=1, max=64, studio=True),
)

SELFPLAY = Group(
    "selfplay",
    _s(_CHECKPOINT, studio=True),
    # A studio run always has an end (its progress bar): 150 steps is the benchmark's run.
    _s(_ITERS, studio=True, studio_default=150, label="train.sp.max_iterations", help="settings.help.until_stopped"),
    _s(_TIME, studio=True),
    # ...and ends within a sitting whatever the model: a default step of the default model shape
    # takes ~5-10 s on one thread (more on a busy machine), so 150 of them may not fit; 12 minutes
    # leave room for the start, the final eval and the save within 15 (BENCHMARKS.md, S1).
    _s(_MINUTES, studio_default=12),
    Setting("prompts_per_step", int, 4, min=1, max=1024, studio=True),
    Setting("group_size", int, 8, min=2, max=1024, studio=True, label="train.sp.group_size"),
    Setting("rollout_tokens", int, None, min=1, unit="tokens"),
    Setting("prompt_tokens", int, None, min=1, unit="tokens"),
    # Low: where a small model's loops show (see BENCHMARKS.md).
    _s(_TEMP, 0.3, studio=True, label="train.sp.temperature"),
    # One continuation of each group decoded greedily: where a small model's loops are (BENCHMARKS.md, S1).
    Setting("greedy_rollouts", int, 1, min=0),
    _s(_LR, 1e-4, studio=True),
    # With an end (steps or time) the rate decays over it to this share, so the run ends on settled
    # weights rather than on one step's swing; 1 keeps it constant (BENCHMARKS.md, S1, "The rate
    # decayed over the run").
    Setting("min_lr_ratio", float, 0.1, min=0, max=1, studio=True),
    _s(_WEIGHT, 0.1, studio=True, label="train.sp.kl_weight"),
    # The book's own next-token loss beside the reward: after 120 steps from a ten-minute 8.3 M model
    # at the decayed rate, 1.0 lost 0.7 points of real words and 2.0 gained 0.5, every seed above its
    # run at 1.0, loops still cut by three quarters (BENCHMARKS.md, S1, "The book's loss at twice the
    # weight"); 0.5 lost two points ("Three seeds each").
    Setting("lm_weight", float, 2.0, min=0, studio=True, label="train.sp.lm_weight"),
    # A preset of rewards.PRESETS; on the command line also a FILE.py (never from the studio).
    Setting("reward", str, "default", studio=True, label="train.sp.reward"),
    Setting("reward_file", str, None),
    # The default reward's real-word term: without it, self-play cut loops but wrote more made-up
    # words; with the greedy continuation in each group it takes weight 2 to hold them (BENCHMARKS.md, S1).
    Setting("real_words_weight", float, 2.0, min=0, max=100),
    Setting("length_target", float, None, min=0, min_open=True, unit="words"),
    Setting("prompt_source", str, "book"),
    _s(_EVERY, 50, studio=True),
    Setting("eval_prompts", int, 16, min=1),
    Setting("eval_length", int, 96, min=1, unit="tokens"),
    _s(_SAVE, 50, studio=True),
    _s(_SEED, studio=True),
    _DEVICE,
    _s(_THREADS, studio=True),
    _RESUME,
)

REASON = Group(
    "reason",
    _s(_CHECKPOINT, studio=True),
    Setting("mode", str, "azr", choices=("azr", "frozen_proposer", "solver_only", "pretrain"), studio=True,
            label="train.rs.mode"),
    Setting("prompt_format", str, "auto", choices=("auto", "compact", "paper")),
    # Unlike the CLI, always with an end that a 2-core machine reaches within 15 minutes: a default step
    # of a from-zero model took 2.5 s on one idle core (BENCHMARKS R1) and 1.7–3.1 s of CPU here with
    # the buffers filling, each eval of the 3 × 32 held-out tasks 3.5 s.
    # 150 steps and their ~8 evals are 7–9 min on one idle core, with room for a loaded machine; and
    # a time cap of 8 minutes, so that a slower machine ends too (from zero: five minutes of pretraining first).
    _s(_ITERS, studio=True, studio_default=150, label="train.rs.max_iterations", help="settings.help.until_stopped"),
    _s(_TIME, studio=True),
    _s(_MINUTES, studio_default=8),
    Setting("batch_size", int, 4, min=1, max=65536, studio=True, label="train.rs.batch_size",
            help="settings.help.reason_batch_size"),
    Setting("n_samples", int, 4, min=2, max=1024, studio=True, label="train.rs.n_samples"),
    Setting("references", int, 2, min=1),
    # The paper's: r̄ is estimated at temperature 1.
    _s(_TEMP, 1.0, studio=True, label="train.rs.temperature"),
    _s(_LR, 1e-4, studio=True, label="train.rs.learning_rate"),
    # With an end, the rate decays over it to this share, as training's and self-play's do: from the
    # five-minute from-zero model, three seeds of six minutes ended level with a constant rate
    # (held-out mean 0.212 against 0.214; BENCHMARKS.md, R3). 1 keeps it constant.
    Setting("min_lr_ratio", float, 0.1, min=0, max=1, studio=True),
    _s(_WEIGHT, 0.0, studio=True),
    Setting("seed_rounds", int, 5, min=1),
    Setting("max_answer_tokens", int, None, min=1, unit="tokens"),
    Setting("max_program_tokens", int, None, min=1, unit="tokens"),
    _s(_EVERY, 25, studio=True),
    Setting("eval_tasks", int, 32, min=1, max=10_000, studio=True),
    _s(_SAVE, 25, studio=True),
    _s(_SEED, studio=True),
    _DEVICE,
    _s(_THREADS, studio=True),
    _RESUME,
)

# A model made from zero for reasoning (`azr reason` on a new name, the studio's button): its
# generator book, and the short pretraining run on it.
PRETRAIN_MINUTES = 5.0

FROM_ZERO = Group(
    "from_zero",
    Setting("corpus_docs", int, 40_000, min=100, max=200_000, studio=True),
    # A time like every run's: the page asks in minutes, the command line (--pretrain-time) in
    # seconds. Five minutes, so that pretraining and the reasoning run's own eight fit a sitting.
    Setting("pretrain_time", float, 60 * PRETRAIN_MINUTES, min=0, min_open=True, unit="seconds"),
    Setting("pretrain_minutes", float, PRETRAIN_MINUTES, min=0, min_open=True, max=10**6, unit="minutes",
            studio=True),
    # Five minutes on one core make 200–500 steps: at batch 16 and rate 1e-3 the model then wrote
    # no proposal a reasoning run could parse; at batch 8 and 3e-3, 15 of 16 (BENCHMARKS.md, R3).
    Setting("batch_size", int, 8, min=1, max=65536),
    Setting("learning_rate", float, 3e-3, min=0, max=1, min_open=True, max_open=True),
    Setting("eval_every", int, 200, min=1, unit="steps"),
)

# The run that writes a from-zero model's triplets book (the studio's button): a job, since the
# largest book takes tens of seconds, with the documents written as its steps.
CORPUS = Group(
    "corpus",
    Setting("corpus_docs", int, 40_000, min=100, max=200_000, studio=True),
    Setting("seed", int, 0, min=0, max=SEED_MAX, studio=True),
)

# Making a Hugging Face zip or a GGUF file for download (the studio's buttons on My models): a
# job, since converting a large model takes a while; it reads a finished checkpoint and writes
# under the data folder's exports. dtype None: the format's own default (f32 for hf, f16 for
# gguf); zip None: a zip for hf (a download is one file).
EXPORT = Group(
    "export",
    Setting("format", str, "hf", choices=("hf", "gguf"), studio=True, recorded=True),
    Setting("dtype", str, None, choices=("f32", "f16", "bf16", "q8_0"), studio=True),
    Setting("checkpoint", str, "best", studio=True, recorded=True),
    Setting("zip", bool, None, studio=True),
)

MODEL = Group(
    "model",
    Setting("vocab_size", int, 8000, min=260, max=1_000_000, typical=(5000, 15000), unit="tokens", studio=True,
            label="create.field.vocab_size"),
    Setting("d_model", int, 256, min=1, max=16384, typical=(128, 512), studio=True, label="create.field.d_model"),
    Setting("num_layers", int, 6, min=1, max=256, typical=(4, 12), studio=True, label="create.field.num_layers"),
    Setting("num_heads", int, 8, min=1, max=256, typical=(4, 16), studio=True, label="create.field.num_heads"),
    Setting("d_ff", int, 1024, min=1, max=65536, studio=True, label="create.field.d_ff"),
    Setting("max_seq_len", int, 256, min=2, max=131072, typical=(128, 512), unit="tokens", studio=True,
            label="create.field.max_seq_len"),
    Setting("tokenizer", str, "bpe", choices=("bpe", "char"), studio=True, label="create.field.tokenizer"),
    Setting("tie_embeddings", bool, True),
)

# Sampling (azr generate, the Generation page, exported models' suggested settings). typical: the
# page's slider range.
GENERATE = Group(
    "generate",
    Setting("max_length", int, 100, min=1, max=100_000, unit="tokens", studio=True, label="gen.max_length"),
    Setting("temperature", float, 0.8, min=0, max=10, typical=(0.1, 2.0), studio=True, label="gen.temperature",
            help="settings.help.gen_temperature"),
    Setting("top_k", int, 40, min=0, studio=True, label="gen.top_k"),  # 0: off
    # Nucleus 0.9 (with temperature 0.8 and top-k 40): a small model's long tail of unlikely
    # tokens is where its made-up words come from; cutting it raised the share of real words in
    # the samples of 10-minute models by 6–8 points, with no more repetition (BENCHMARKS.md).
    Setting("top_p", float, 0.9, min=0, max=1, min_open=True, typical=(0.05, 1.0), studio=True, label="gen.top_p"),
    Setting("repetition_penalty", float, 1.0, min=0, max=10, min_open=True, typical=(1.0, 2.0), studio=True,
            label="gen.repetition_penalty"),
    Setting("seed", int, None, min=0, max=SEED_MAX, studio=True, label="gen.seed"),
)

RUN_GROUPS = {"train": TRAIN, "selfplay": SELFPLAY, "reason": REASON, "corpus": CORPUS, "export": EXPORT}
GROUPS = {**RUN_GROUPS, "from_zero": FROM_ZERO, "model": MODEL, "generate": GENERATE}


def check_run(kind: str, params: dict) -> None:
    """A studio run's settings: only the kind's own, each in bounds."""
    group = RUN_GROUPS[kind]
    unknown = sorted(set(params) - set(group.studio_names()))
    if unknown:
        raise UserError("settings.unknown", kind=kind, names=unknown, settings=list(group.studio_names()))
    group.check(params)


def time_budget(kind: str, params: dict, processes: int = 1) -> dict:
    """``minutes`` as the configs take it: ``max_time`` in seconds and, for training, the
    learning-rate schedule over the time (schedule "time"); without max_iterations the time
    alone ends the run. Other params pass through; without minutes nothing changes."""
    params = dict(params)
    minutes = params.pop("minutes", None)
    if minutes is None:
        return params
    RUN_GROUPS[kind]["minutes"].check(minutes)
    seconds = 60.0 * minutes
    params["max_time"] = min(seconds, params["max_time"]) if params.get("max_time") else seconds
    if kind == "train":
        if processes > 1:  # each process has its own clock; the step schedule is the shared one
            if params.get("max_iterations") is None:
                raise UserError("settings.minutes_processes")
        else:
            params["schedule"] = "time"
        if params.get("max_iterations") is None:
            params["max_iterations"] = TRAIN["max_iterations"].upper
    return params


def to_json() -> dict:
    """GET /api/settings: what the page builds its forms from."""
    from .rewards import PRESETS  # the studio offers presets only, never a file
    out = {name: g.to_json() for name, g in GROUPS.items()}
    out["selfplay"]["reward"]["choices"] = list(PRESETS)
    out["cores"] = cores()
    return out


# ---- the command line -------------------------------------------------------------------------

def add_arguments(parser, group: Group, *, only=None, skip=(), defaults: bool = True,
                  lang: str | None = None) -> None:
    """One option per setting (``--batch-size``). ``defaults=False`` leaves unset options None,
    so that the config's own default applies (and a resumed run can tell what was given); the
    help says the default either way."""
    lang = lang or catalogue.language_from_environment()
    for s in group:
        if (only is not None and s.name not in only) or s.name in skip:
            continue
        text = catalogue.text(s.help_key, lang)
        flag = "--" + s.name.replace("_", "-")
        if s.type is bool:
            parser.add_argument(flag, *s.flags, dest=s.name, action="store_true", help=text.replace("%", "%%"))
            continue
        if s.typical:
            text += " " + catalogue.text("settings.typical", lang, min=s.typical[0], max=s.typical[1])
        if s.default is not None:
            text += " " + catalogue.text("settings.default", lang, value=_show(s.default))
        if callable(s.max):
            text += " " + catalogue.text("settings.at_most", lang, max=s.upper)
        # No argparse choices: the config's check refuses a wrong one with the catalogue's message.
        parser.add_argument(flag, *s.flags, dest=s.name, type=s.type, metavar=s.name.upper(),
                            default=s.default if defaults else None, help=text.replace("%", "%%"))


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---- the API ----------------------------------------------------------------------------------

def pydantic_field(s: Setting, default=None):
    """``(type, Field)`` for a request model. Only the upper bounds are enforced here (a 422
    keeps absurd sizes from reaching a worker); the lower ones are checked by the config, whose
    message says what to change. Both are in the JSON schema."""
    from pydantic import Field
    kinds = {int: int, float: float, str: str, bool: bool}[s.type]
    annotation = kinds | None
    if s.name == "checkpoint":
        annotation = str | int | None  # a step number may come as a number
    limits, schema = {}, {}
    if s.upper is not None and not callable(s.max):
        limits["lt" if s.max_open else "le"] = s.upper
    if s.min is not None:
        schema["exclusiveMinimum" if s.min_open else "minimum"] = s.min
    if callable(s.max):
        schema["maximum"] = s.upper
    if s.choices:
        schema["enum"] = list(s.choices)
    return annotation, Field(default, json_schema_extra=schema or None, **limits)


def union_field(groups, name: str, default=None):
    """One field for a setting several groups share (batch_size of train and reason): the
    loosest bounds, the kinds' own checks do the rest."""
    found = [g[name] for g in groups if name in g.settings]
    uppers = [s.upper for s in found]
    upper = None if None in uppers else max(uppers)
    lowers = [s.min for s in found]
    lower = None if None in lowers else min(lowers)
    base = max(found, key=lambda s: (s.upper is None, s.upper or 0))
    loosest = replace(base, min=lower, min_open=lower is not None and all(s.min_open for s in found
                                                                           if s.min == lower),
                      max=base.max if upper is None or callable(base.max) else upper)
    return pydantic_field(loosest, default)

