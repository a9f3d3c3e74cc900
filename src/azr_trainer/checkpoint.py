"""Checkpoints and the downloadable .pt file.

Both are a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(path, weights_only=True)`` reads them and nothing is ever unpickled
beyond that. A checkpoint holds everything for an exact resume (weights, optimizer,
step, RNG states, data order); the .pt export keeps only config, weights, tokenizer and
training metadata. Writes are atomic: temp file, fsync, rename.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

from .home import UserError, atomic_write
from .model import ModelConfig, Transformer
from .tokenizer import Tokenizer

FORMAT = "azr-trainer"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_load(path: Path | io.BytesIO) -> dict:
    """Load a checkpoint or .pt without unpickling arbitrary objects, with a readable error."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"No such file: {path}.") from None
    except Exception as e:  # truncated zip, tampered pickle, foreign objects: all refused the same way
        raise UserError(f"{path} is not a readable AZR Trainer model file (damaged, truncated or not ours): "
                        f"{str(e).splitlines()[0][:200]}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path} is not an AZR Trainer model file (no '{FORMAT}' marker).")
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer AZR Trainer (format {obj.get('format_version')}); upgrade to load it.")
    return obj


def build_model(obj: dict) -> tuple[Transformer, ModelConfig, Tokenizer]:
    """Rebuild model and tokenizer from a loaded checkpoint or .pt, checking every tensor's shape."""
    try:
        cfg = ModelConfig.from_dict(obj["config"]).validate()
        tokenizer = Tokenizer.from_json(obj["tokenizer"])
        state = obj["state_dict"]
    except (KeyError, TypeError) as e:
        raise UserError(f"The model file is incomplete (missing {e}).") from None
    model = Transformer(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    bad = [k for k in expected if k in state and (not torch.is_tensor(state[k]) or state[k].shape != expected[k].shape)]
    if missing or unexpected or bad:
        raise UserError("The model file does not match its own config "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {bad[:3]}).")
    model.load_state_dict(state)
    return model, cfg, tokenizer


def checkpoint_dir(model_dir: Path) -> Path:
    return model_dir / "checkpoints"


def init_checkpoint(model_dir: Path) -> Path:
    """The weights an imported model came with (importer.py): generation and export use them
    until the model has checkpoints of its own, and every new training run starts from them."""
    return checkpoint_dir(model_dir) / "init.pt"


def step_files(folder: Path) -> list[tuple[int, Path]]:
    """The ``step_NNNNNNN.pt`` checkpoints in ``folder``, oldest step first."""
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name)))


def list_step_checkpoints(model_dir: Path) -> list[tuple[int, Path]]:
    """Pretraining's step checkpoints (checkpoints/step_*.pt)."""
    return step_files(checkpoint_dir(model_dir))


def save_step(obj: dict, folder: Path, keep_last: int) -> Path:
    """Write ``obj`` as ``folder``/step_NNNNNNN.pt (atomically), keeping the newest ``keep_last``."""
    path = folder / f"step_{obj['step']:07d}.pt"
    atomic_torch_save(obj, path)
    prune_steps(folder, keep_last)
    return path


def prune_steps(folder: Path, keep: int) -> None:
    for _, p in step_files(folder)[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)


def latest_run_checkpoint(model_dir: Path, kind: str, run_id: str | None = None) -> Path | None:
    """The newest checkpoint of a self-play (``kind`` "selfplay") or reasoning ("reason") run,
    kept in checkpoints/<kind>/<run>/: the last step of ``run_id``, or of the run that saved
    most recently."""
    root = checkpoint_dir(model_dir) / kind
    folders = [root / run_id] if run_id else ([p for p in root.iterdir() if p.is_dir()] if root.is_dir() else [])
    last = [found[-1][1] for found in map(step_files, folders) if found]
    return max(last, key=lambda p: p.stat().st_mtime_ns) if last else None


def latest_selfplay_checkpoint(model_dir: Path, run_id: str | None = None) -> Path | None:
    return latest_run_checkpoint(model_dir, "selfplay", run_id)


_RUN_KINDS = {"selfplay": "azr selfplay", "reason": "azr reason"}


def resolve_checkpoint(model_dir: Path, which: str = "best") -> Path:
    """'best', 'latest', 'selfplay' / 'reason' (the newest self-play / reasoning checkpoint) or
    a step number → a checkpoint path, with a hint when there is none."""
    if which in _RUN_KINDS:
        found = latest_run_checkpoint(model_dir, which)
        if found is None:
            raise UserError(f"Model '{model_dir.name}' has no {which} checkpoint yet: run "
                            f"{_RUN_KINDS[which]} {model_dir.name}.")
        return found
    steps = list_step_checkpoints(model_dir)
    if which == "best":
        best = checkpoint_dir(model_dir) / "best.pt"
        if best.exists():
            return best
        which = "latest"
    if which == "latest":
        if steps:
            return steps[-1][1]
        if init_checkpoint(model_dir).exists():
            return init_checkpoint(model_dir)
        raise UserError(f"Model '{model_dir.name}' has no checkpoint yet: train it first "
                        f"(azr train {model_dir.name} --books …).")
    try:
        step = int(which)
    except ValueError:
        raise UserError(f"--checkpoint must be best, latest, selfplay, reason or a step number, got {which!r}.") from None
    for s, p in steps:
        if s == step:
            return p
    raise UserError(f"No checkpoint at step {step}; available: {', '.join(str(s) for s, _ in steps) or 'none'}.")


def export_pt(obj: dict, path: Path) -> None:
    """The self-contained file users download: no optimizer, no RNG, same loader."""
    slim = {k: obj[k] for k in ("format", "format_version", "config", "state_dict", "tokenizer") if k in obj}
    slim["meta"] = dict(obj.get("meta", {}))
    slim["meta"].update({"step": obj.get("step"), "best_val_bpb": obj.get("best_val_bpb")})
    atomic_torch_save(slim, path)
