"""The kinds of run the studio queues (train, selfplay, reason, corpus, export): each kind's
settings, the check made before a run of it is queued, which says what is wrong while the
person is still at the page instead of in a worker's log later, and whether a run of it trains
its model (holds it, takes a slot). jobs.py queues and runs them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import books as books_mod
from . import store
from .checkpoint import resolve_checkpoint
from .device import check_processes
from .formats import FORMATS
from .home import Conflict, NotFound, UserError
from .reasoning import ReasonConfig, default_lengths, resolve_format
from .rewards import PRESETS
from .selfplay import SelfPlayConfig
from .settings import CORPUS, EXPORT, REASON, RUN_GROUPS, SELFPLAY, TRAIN, Group, time_budget
from .train import TrainConfig

def _check_train(home: Path, model: str, books: list[str], params: dict) -> list[str]:
    if not books:
        raise UserError("data.no_books")
    for name in books:
        books_mod.get_book(home, name)
    twice = next((name for i, name in enumerate(books) if name in books[:i]), None)
    if twice is not None:
        raise UserError("runs.book_twice", name=twice)
    nproc = params.get("nproc")
    check_processes(nproc, params["batch_size"], params.get("device", "auto"))
    rest = {k: v for k, v in params.items() if k != "nproc"}
    TrainConfig(books=list(books), **time_budget("train", rest, processes=nproc or 1)).validate()
    return list(books)


def _check_selfplay(home: Path, model: str, books: list[str], params: dict) -> list[str]:
    """Self-play starts from a trained checkpoint and reads the books that model learned."""
    if books:
        raise UserError("runs.selfplay_books")
    if params.get("reward", SELFPLAY.default("reward")) not in PRESETS:  # never a file: that would run code
        raise UserError("settings.choice", name="reward", choices=list(PRESETS), value=repr(params["reward"]))
    SelfPlayConfig(**time_budget("selfplay", params)).validate()
    mdir = store.model_dir(home, model)
    try:
        resolve_checkpoint(mdir, "latest")
    except UserError:
        raise UserError("runs.selfplay_untrained", name=model) from None
    resolve_checkpoint(mdir, str(params.get("checkpoint", "best")))  # a wrong step number says which exist
    own_books = store.get_model(home, model).books or []
    if not own_books:  # imported and never trained here
        raise UserError("run.selfplay.no_books", name=model)
    return list(own_books)


def _check_reason(home: Path, model: str, books: list[str], params: dict) -> list[str]:
    """AZR reasoning starts from a trained checkpoint; its tasks come from the model itself and
    the sandbox, never from books."""
    if books:
        raise UserError("runs.reason_books")
    cfg = ReasonConfig(**time_budget("reason", params)).validate()
    mdir = store.model_dir(home, model)
    try:
        resolve_checkpoint(mdir, "latest")
    except UserError:
        # The studio has a step that makes a model from zero and pretrains it (see routes/models.py).
        raise UserError("runs.reason_untrained", name=model) from None
    resolve_checkpoint(mdir, cfg.checkpoint)  # a wrong step number or a missing selfplay/reason run says so
    # Checked by the worker too, but only once it has loaded the model: say it before queuing.
    mcfg = store.get_model(home, model).config
    fmt = FORMATS[resolve_format(cfg.prompt_format, mcfg)]
    program = default_lengths(cfg, fmt)[1]
    if mcfg.max_seq_len < program + 64:
        raise UserError("runs.reason_window", name=model, max_seq_len=mcfg.max_seq_len, format=fmt.name,
                        program=program, needed=program + 64)
    return []


def _check_corpus(home: Path, model: str, books: list[str], params: dict) -> list[str]:
    """The run that writes a new from-zero model's triplets book (POST /api/reason/models queues
    it); it never overwrites a book."""
    if books:
        raise UserError("reason_create.corpus_books")
    book = f"{model}-triplets"
    try:
        books_mod.get_book(home, book)
    except NotFound:
        return []
    raise Conflict("reason_create.book_exists", book=book, name=model)


def _check_export(home: Path, model: str, books: list[str], params: dict) -> list[str]:
    """A Hugging Face zip or GGUF file made from a finished checkpoint. Fills in the format's
    own dtype and zip where they were left out, so the run's params name its file."""
    from .export import DEFAULT_DTYPE, GGUF_DTYPES, HF_DTYPES, require_gguf
    if books:
        raise UserError("export.run_books")
    fmt = params["format"]
    params["dtype"] = dtype = params.get("dtype") or DEFAULT_DTYPE[fmt]
    allowed = list(HF_DTYPES) if fmt == "hf" else list(GGUF_DTYPES)
    if dtype not in allowed:
        raise UserError("export.dtype", format=fmt, value=dtype, options=allowed)
    if params.get("zip") is None:
        params["zip"] = fmt == "hf"
    if params["zip"] and fmt != "hf":
        raise UserError("export.zip_only_hf")
    if fmt == "gguf":
        require_gguf()  # a missing package is said now, not by a failed run
    resolve_checkpoint(store.model_dir(home, model), str(params["checkpoint"]))  # none yet, or a wrong step
    return []


@dataclass(frozen=True)
class RunKind:
    """What a kind of run is: its settings (settings.py: the ones the studio offers, their
    defaults and bounds) and the check made before it is queued, which returns the books to
    record for the run.

    ``holds_model``: a run of it trains its model, so while it is queued, running, paused or
    interrupted no other such run of the model may start (it would overwrite the checkpoints
    a resume needs), the model shows as training, and a newer one stops an older one's resume.
    ``takes_slot``: it counts against the studio's runs at once. An export does neither: it only
    reads a checkpoint file, which training writes atomically."""
    group: Group
    check: Callable[[Path, str, list[str], dict], list[str]]
    holds_model: bool = True
    takes_slot: bool = True

    @property
    def settings(self) -> tuple[str, ...]:
        return self.group.studio_names()

    @property
    def defaults(self) -> dict:
        return self.group.studio_defaults()


# A new kind is one entry here and its group in settings.py; the API and the page follow.
KINDS: dict[str, RunKind] = {
    "train": RunKind(TRAIN, _check_train),
    "selfplay": RunKind(SELFPLAY, _check_selfplay),
    "reason": RunKind(REASON, _check_reason),
    "corpus": RunKind(CORPUS, _check_corpus),
    "export": RunKind(EXPORT, _check_export, holds_model=False, takes_slot=False),
}
assert set(KINDS) == set(RUN_GROUPS)
