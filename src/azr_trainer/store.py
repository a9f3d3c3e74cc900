"""Models in the data folder: create, list, show, delete.

A model is a folder ``models/<name>/`` with ``model.json`` (the shape the user chose and
what training has learned about it since). Files are the source of truth; the studio's
SQLite registry indexes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import osdeps
from .checkpoint import list_step_checkpoints
from .home import Conflict, NotFound, UserError, atomic_write_json, check_new_name, owned_tmp_name, read_json
from .layout import TMP_PREFIX, model_dir, model_file, models_dir
from .model import ModelConfig, count_parameters, estimate_training_memory


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ModelInfo:
    name: str
    config: ModelConfig
    created_at: str
    parameters: int
    trained_steps: int = 0
    best_val_bpb: float | None = None
    last_trained: str | None = None
    books: list[str] | None = None
    recipe: dict | None = None  # the auto-sizing plan's training settings (recipe.py)
    # what best.pt was measured on (books and their versions, window, held-out share): a new run
    # keeps it only where it measures on the same, and the Training page says which before the start
    best_measured_on: dict | None = None

    def to_dict(self) -> dict:
        d = {"name": self.name, "config": self.config.to_dict(), "created_at": self.created_at,
             "parameters": self.parameters, "trained_steps": self.trained_steps,
             "best_val_bpb": self.best_val_bpb, "last_trained": self.last_trained, "books": self.books}
        for key in ("recipe", "best_measured_on"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


def _info_from_json(d: dict) -> ModelInfo:
    cfg = ModelConfig.from_dict(d["config"])
    return ModelInfo(name=d["name"], config=cfg, created_at=d["created_at"], parameters=count_parameters(cfg),
                     trained_steps=d.get("trained_steps", 0), best_val_bpb=d.get("best_val_bpb"),
                     last_trained=d.get("last_trained"), books=d.get("books"),
                     recipe=d.get("recipe") if isinstance(d.get("recipe"), dict) else None,
                     best_measured_on=d.get("best_measured_on") if isinstance(d.get("best_measured_on"), dict) else None)


def create_model(home: Path, name: str, cfg: ModelConfig, *, max_memory: int | None = None,
                 recipe: dict | None = None) -> ModelInfo:
    d = model_dir(home, name)
    cfg.validate()
    if d.exists():
        raise Conflict("model.exists", name=name)
    check_new_name(models_dir(home), name)
    if max_memory is not None:
        need = estimate_training_memory(cfg, batch_size=1)
        if need > max_memory:
            raise UserError("model.memory", need_gib=round(need / 2**30, 1), have_gib=round(max_memory / 2**30, 1))
    info = ModelInfo(name=name, config=cfg, created_at=now_iso(), parameters=count_parameters(cfg), recipe=recipe)
    # Build in a temp folder and rename, so a crash never leaves a half-made model.
    tmp = models_dir(home) / owned_tmp_name(TMP_PREFIX)  # the owner's pid: see home.clean_leftovers
    tmp.mkdir(parents=True)
    try:
        atomic_write_json(model_file(tmp), info.to_dict())
        try:
            osdeps.rename(tmp, d)
        except PermissionError:
            raise osdeps.in_use(d) from None
    except BaseException:
        osdeps.remove_tree(tmp)
        raise
    return info


def get_model(home: Path, name: str) -> ModelInfo:
    d = model_dir(home, name)
    if not model_file(d).exists():
        raise NotFound("model.not_found", name=name)
    return _info_from_json(read_json(model_file(d)))


def read_recipe(home: Path, name: str) -> dict | None:
    """The model's training recipe, or None (a model made by hand, or one that does not exist)."""
    path = model_file(model_dir(home, name))
    if not path.is_file():
        return None
    recipe = read_json(path).get("recipe")
    return recipe if isinstance(recipe, dict) else None


def list_models(home: Path) -> list[ModelInfo]:
    out = []
    for d in sorted(models_dir(home).iterdir()):
        if d.name.startswith(".") or not model_file(d).exists():
            continue
        try:
            out.append(_info_from_json(read_json(model_file(d))))
        except (ValueError, KeyError, TypeError):
            continue  # a damaged folder is skipped, never fatal for the listing
    return out


def update_model(home: Path, name: str, **changes) -> ModelInfo:
    d = model_dir(home, name)
    data = read_json(model_file(d))
    data.update(changes)
    atomic_write_json(model_file(d), data)
    return _info_from_json(data)


def delete_model(home: Path, name: str) -> None:
    d = model_dir(home, name)
    if not d.exists():
        raise NotFound("model.not_found", name=name)
    # Rename first, so the model goes at once or not at all: Windows refuses the rename while a
    # file in the folder is open, and then nothing has changed. What a program still holds in the
    # renamed folder stays there, hidden, until the next start's clean_leftovers (its owner's pid).
    trash = models_dir(home) / owned_tmp_name(TMP_PREFIX)
    try:
        osdeps.rename(d, trash)
    except PermissionError:
        raise osdeps.in_use(d) from None
    osdeps.remove_tree(trash)


def checkpoint_steps(home: Path, name: str) -> list[int]:
    return [s for s, _ in list_step_checkpoints(model_dir(home, name))]
