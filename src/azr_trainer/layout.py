"""Where everything lives in the data folder ($AZR_HOME). Every path under it is made here, by
name; the other modules ask for ``model_dir(home, name)`` or ``events_file(run_folder)`` and
never join folder names themselves, so this file is the whole layout:

    $AZR_HOME/
      azr.sqlite                                the registry: runs, their events, checkpoint index
      machine-speed.json                        this machine's measured speed (auto-sizing)
      .tmp/                                     uploads, downloads, imports in progress
      books/<book>/text.txt                     the book, decoded to UTF-8 (NFC, \\n newlines)
      books/<book>/book.json                    what we know about it (encoding, sizes, preview)
      models/<model>/model.json                 the shape the user chose, what training learned
      models/<model>/tokenizer.json             frozen when the model first trains
      models/<model>/.train.lock                the pid of the process training it
      models/<model>/data/{train,val}.bin       the tokenized books (memory-mapped)
      models/<model>/data/data.json             which books, which tokenizer, sizes
      models/<model>/checkpoints/step_*.pt      pretraining checkpoints, and best.pt
      models/<model>/checkpoints/init.pt        the weights an imported model came with
      models/<model>/checkpoints/<kind>/<run>/  self-play ("selfplay") and reasoning ("reason") runs:
                                                step_*.pt, reference.pt, buffers.json (reasoning)
      models/<model>/runs/<run>/events.jsonl    everything a run reported (metrics, samples, status)
      models/<model>/runs/<run>/run.json        a studio run's settings, for its worker
      models/<model>/runs/<run>/worker.log      the worker's output
      models/<model>/runs/<run>/control         "pause"/"cancel" from the studio
      exports/<model>/<model>[-<dtype>].{pt,gguf,zip}   files made with `azr export`
      exports/<model>/<run>/<model>-hf-<dtype>.zip, <model>-<dtype>.gguf   a studio export run's file

Names in the top folders that start with "." are never books or models: temp folders
(``.tmp-<pid>-<random>``) and folders being deleted.

Folder-level functions take ``home``; the ones inside a book, a model, a run or a checkpoint
folder take that folder, because some are built in a temp folder and renamed into place.
"""

from __future__ import annotations

import re
from pathlib import Path

DB_FILE = "azr.sqlite"
SPEED_FILE = "machine-speed.json"
DECODE_SPEED_FILE = "decode-speed.json"
TMP_DIR = ".tmp"
TMP_PREFIX = ".tmp-"  # books/.tmp-*, models/.tmp-*: a book or model being written (names cannot start with ".")
LOCK_FILE = ".train.lock"
RUN_KINDS = ("selfplay", "reason")  # runs whose checkpoints live in a folder of their own


def _valid(name: str) -> str:
    from .home import validate_name  # home re-exports this module: import it late
    return validate_name(name)


# ---- the data folder

def registry_file(home: Path) -> Path:
    return Path(home) / DB_FILE


def speed_file(home: Path) -> Path:
    return Path(home) / SPEED_FILE


def decode_speed_file(home: Path) -> Path:
    """The decode precision measured fastest, per machine, threads, shape and batch (decode.py)."""
    return Path(home) / DECODE_SPEED_FILE


def tmp_dir(home: Path) -> Path:
    return Path(home) / TMP_DIR


def books_dir(home: Path) -> Path:
    return Path(home) / "books"


def models_dir(home: Path) -> Path:
    return Path(home) / "models"


def exports_dir(home: Path, model: str) -> Path:
    return Path(home) / "exports" / _valid(model)


def export_run_dir(home: Path, model: str, run_id: str) -> Path:
    """The folder of one studio export run's file (its run id orders them by time)."""
    return exports_dir(home, model) / run_id


def export_file(folder: Path, model: str, fmt: str, dtype: str, as_zip: bool) -> Path:
    """An export run's file in its folder: the name says model, format and number format."""
    if fmt == "hf":
        return Path(folder) / (f"{model}-hf-{dtype}.zip" if as_zip else f"{model}-hf-{dtype}")
    return Path(folder) / f"{model}-{dtype}.gguf"


# ---- a book

def book_dir(home: Path, name: str) -> Path:
    return books_dir(home) / _valid(name)


def book_text(book_folder: Path) -> Path:
    return Path(book_folder) / "text.txt"


def book_info(book_folder: Path) -> Path:
    return Path(book_folder) / "book.json"


# ---- a model

def model_dir(home: Path, name: str) -> Path:
    return models_dir(home) / _valid(name)


def model_file(mdir: Path) -> Path:
    return Path(mdir) / "model.json"


def tokenizer_file(mdir: Path) -> Path:
    return Path(mdir) / "tokenizer.json"


def lock_file(mdir: Path) -> Path:
    return Path(mdir) / LOCK_FILE


def data_dir(mdir: Path) -> Path:
    return Path(mdir) / "data"


def data_file(mdir: Path, split: str, version: str | None = None) -> Path:
    """The tokenized ``split`` ("train" or "val"), of the tokenization ``version`` (data.json
    names it; homes from before versions have a single, unversioned one)."""
    return data_dir(mdir) / (f"{split}-{version}.bin" if version else f"{split}.bin")


def data_info(mdir: Path) -> Path:
    return data_dir(mdir) / "data.json"


# ---- checkpoints

def checkpoints_dir(mdir: Path) -> Path:
    return Path(mdir) / "checkpoints"


BEST_FILE = "best.pt"  # the registry's checkpoint rows name files


def best_checkpoint(mdir: Path) -> Path:
    return checkpoints_dir(mdir) / BEST_FILE


def earlier_checkpoints_root(mdir: Path) -> Path:
    """Where new training runs set aside what the runs before them left, a folder each."""
    return checkpoints_dir(mdir) / "earlier"


def earlier_checkpoints_dir(mdir: Path, when: str) -> Path:
    """Where a new training run sets aside the step checkpoints of the run before it."""
    return earlier_checkpoints_root(mdir) / when


def init_checkpoint(mdir: Path) -> Path:
    return checkpoints_dir(mdir) / "init.pt"


def step_file(folder: Path, step: int) -> Path:
    """A step checkpoint in ``folder`` (pretraining's checkpoints folder, or a run's)."""
    return Path(folder) / f"step_{step:07d}.pt"


STEP_FILE_RE = re.compile(r"^step_(\d+)\.pt$")  # the names step_file makes


def run_checkpoints_root(mdir: Path, kind: str) -> Path:
    """Where the runs of ``kind`` ("selfplay", "reason") keep a folder each."""
    if kind not in RUN_KINDS:
        raise ValueError(kind)
    return checkpoints_dir(mdir) / kind


def run_checkpoints_dir(mdir: Path, kind: str, run_id: str) -> Path:
    return run_checkpoints_root(mdir, kind) / run_id


def reference_checkpoint(run_checkpoints: Path) -> Path:
    """The weights a self-play or reasoning run started from (its KL reference)."""
    return Path(run_checkpoints) / "reference.pt"


def buffers_file(run_checkpoints: Path) -> Path:
    """A reasoning run's task buffers, written with each of its checkpoints."""
    return Path(run_checkpoints) / "buffers.json"


# ---- runs

def runs_dir(mdir: Path) -> Path:
    return Path(mdir) / "runs"


def run_dir(home: Path, model: str, run_id: str) -> Path:
    return runs_dir(model_dir(home, model)) / run_id


def events_file(run_folder: Path) -> Path:
    return Path(run_folder) / "events.jsonl"


def run_file(run_folder: Path) -> Path:
    return Path(run_folder) / "run.json"


def worker_log(run_folder: Path) -> Path:
    return Path(run_folder) / "worker.log"


def control_file(run_folder: Path) -> Path:
    return Path(run_folder) / "control"


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("Path", "annotations", "re")]
