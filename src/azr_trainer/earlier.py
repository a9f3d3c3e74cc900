"""Training a trained model again: what a new run keeps of the earlier one (its best model until
beaten on the same held-out text, its checkpoints set aside)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import layout, osdeps
from .checkpoint import list_step_checkpoints, safe_load
from .errors import Notice
from .home import UserError

if TYPE_CHECKING:
    from .train import TrainConfig


class EarlierRun:
    """What a new (not resumed) training run of a model trained before keeps of the earlier run.
    Its best model stays best.pt until this run beats it on the same held-out text (same books,
    validation share and window); before this run first replaces best.pt, for whatever reason, a
    copy goes aside. Its step checkpoints move aside at this run's first save: left where they
    were they would count as newer than this run's (pruning would delete those, a resume would
    pick them); moved sooner, a run that fails before its first save would leave the model with
    no latest checkpoint. Both go to checkpoints/earlier/<time>/, made only when needed: a
    refused start changes nothing. Only the newest ``KEEP`` such folders stay: a model trained
    again and again would otherwise fill the disk with runs nobody can resume (a few hundred MB
    each for the original default shape)."""

    KEEP = 3

    def __init__(self, mdir: Path):
        self.mdir, self.best = mdir, layout.best_checkpoint(mdir)
        self.steps_left = bool(list_step_checkpoints(mdir))
        self.best_left = self.best.exists()
        when = _stamp()
        # runs within one second count on after the last of that second (the first may be pruned
        # already), so that the names sort in the order the runs came
        n = max((n for stamp, n in map(_order, _set_aside(layout.earlier_checkpoints_root(mdir))) if stamp == when),
                default=0)
        self.folder = layout.earlier_checkpoints_dir(mdir, when if n == 0 else f"{when}-{n + 1}")

    @property
    def found(self) -> bool:
        return self.steps_left or self.best_left

    def kept_best(self, cfg: TrainConfig, held_out: str) -> tuple[float | None, int | None]:
        """The bits per byte and step of the best model to keep until this run beats it: the
        earlier best's where this run is measured on the same text (same books, share and window,
        and the same held-out tokens where the earlier best recorded them); else (None, None)."""
        if not self.best_left:
            return None, None
        try:
            obj = safe_load(self.best)
        except UserError:  # damaged: replaced by this run's first best (a copy goes aside first)
            return None, None
        trained = obj.get("train_config") or {}
        if not all(trained.get(k) == getattr(cfg, k) for k in ("books", "val_fraction", "seq_len")):
            return None, None
        if obj.get("held_out", held_out) != held_out:  # a book replaced under the same name
            return None, None
        return (obj.get("meta") or {}).get("val_bpb"), obj.get("step")

    def notice(self, kept_bpb: float | None) -> Notice:
        if kept_bpb is not None:
            return Notice("run.train.earlier_kept", best=f"{kept_bpb:.4f}", folder=str(self.folder), keep=self.KEEP)
        return Notice("run.train.earlier_replaced", folder=str(self.folder), keep=self.KEEP)

    def _move(self, path: Path, copy: bool = False) -> None:
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            for old in _set_aside(self.folder.parent)[:-self.KEEP]:
                shutil.rmtree(old, ignore_errors=True)  # a file held open elsewhere (Windows) stays till next time
        try:
            if copy:
                shutil.copy2(path, self.folder / path.name)
            else:
                osdeps.replace(path, self.folder / path.name)
        except PermissionError:  # another program holds it open (Windows)
            raise osdeps.in_use(path) from None

    def before_best(self) -> None:
        """This run is about to write best.pt: the earlier one goes aside first (once)."""
        if self.best_left and self.best.exists():
            self._move(self.best, copy=True)
        self.best_left = False

    def before_save(self) -> None:
        """This run is about to save its first step checkpoint: the earlier run's go aside."""
        if self.steps_left:
            for _, path in list_step_checkpoints(self.mdir):
                self._move(path)
        self.steps_left = False


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


_SET_ASIDE = re.compile(r"(\d{8}-\d{6})(?:-(\d+))?")  # 20261206-101500, 20261206-101500-2 (same second)


def _order(folder: Path) -> tuple[str, int]:
    m = _SET_ASIDE.fullmatch(folder.name)
    return m[1], int(m[2] or 1)


def _set_aside(parent: Path) -> list[Path]:
    """The folders runs were set aside in, oldest first (nothing else that may be there)."""
    if not parent.is_dir():
        return []
    return sorted((f for f in parent.iterdir() if f.is_dir() and _SET_ASIDE.fullmatch(f.name)), key=_order)
