"""Checkpoints and the downloadable .pt file.

Both are a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(path, weights_only=True)`` reads them and nothing is ever unpickled
beyond that. A checkpoint holds everything for an exact resume (weights, optimizer,
step, RNG states, data order); the .pt export keeps only config, weights, tokenizer and
training metadata. Writes are atomic: temp file, fsync, rename.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from . import layout, osdeps
from .home import UserError, atomic_write
from .model import ModelConfig, Transformer, count_parameters
from .tokenizer import Tokenizer

FORMAT = "azr-trainer"
FORMAT_VERSION = 1
_STEP_RE = layout.STEP_FILE_RE


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_load(path: Path | io.BytesIO) -> dict:
    """Load a checkpoint or .pt without unpickling arbitrary objects, with a readable error."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError("input.model_missing_file", path=path) from None
    except pickle.UnpicklingError as e:
        # A global (a class or function: what runs code when unpickled) is refused, never loaded;
        # anything else the unpickler refused is bytes that are not a pickle at all.
        unsafe = any(word in str(e) for word in ("GLOBAL", "allowlisted", "add_safe_globals"))
        raise UserError("input.model_unsafe" if unsafe else "input.model_unreadable", path=path) from None
    except Exception:  # truncated zip, damaged records, not a torch file at all
        raise UserError("input.model_unreadable", path=path) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError("input.model_not_ours", path=path)
    try:
        version = int(obj.get("format_version", 0))
    except (TypeError, ValueError):
        raise UserError("input.model_not_ours", path=path) from None
    if version > FORMAT_VERSION:
        raise UserError("input.model_newer", path=path, version=version)
    return obj


_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_weights(cfg: ModelConfig, state) -> None:
    """The file's weights against its config, before anything is allocated: every name, shape
    and dtype, and that the numbers are really in the file. A small file whose config asks for
    a huge model, or whose tensors are zero-stride views or share one storage, would otherwise
    make build_model allocate the whole model before noticing."""
    if not isinstance(state, dict):
        raise UserError("input.model_incomplete", what="state_dict")
    with torch.device("meta"):  # shapes only: nothing is allocated
        expected = Transformer(cfg).state_dict()
    for k in expected:
        if k not in state:
            raise UserError("input.model_missing_weight", tensor=k)
    for k in state:
        if k not in expected:
            raise UserError("input.model_extra_weight", tensor=str(k)[:200])
    storages: dict[int, int] = {}  # storage address → numbers it holds
    for k, want in expected.items():
        t = state[k]
        if not torch.is_tensor(t) or t.layout != torch.strided or t.device.type != "cpu":
            raise UserError("input.model_wrong_type", tensor=k, dtype=type(t).__name__)
        if t.dtype not in _FLOATS:
            raise UserError("input.model_wrong_type", tensor=k, dtype=str(t.dtype).removeprefix("torch."))
        if tuple(t.shape) != tuple(want.shape):
            raise UserError("input.model_wrong_shape", tensor=k, shape="×".join(map(str, t.shape)) or "()",
                            expected="×".join(map(str, want.shape)))
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes() // t.element_size())
    need = count_parameters(cfg)  # tied embeddings are one tensor, counted once
    have = sum(storages.values())
    if have < need:
        raise UserError("input.model_hollow", have=have, need=need)


def _check_memory(cfg: ModelConfig) -> None:
    """Weights in fp32 and the rotary tables (max_seq_len × head_dim, twice) must fit in RAM:
    a config may ask for a long context that a small file does not show."""
    from .device import available_memory_bytes
    need = 4 * (count_parameters(cfg) + 2 * cfg.max_seq_len * cfg.head_dim)
    free = available_memory_bytes(torch.device("cpu"))
    if free is not None and need > free:
        raise UserError("input.model_memory", need_gib=round(need / 2**30, 1), free_gib=round(free / 2**30, 1))


def build_model(obj: dict) -> tuple[Transformer, ModelConfig, Tokenizer]:
    """Rebuild model and tokenizer from a loaded checkpoint or .pt, checking every tensor's
    name, shape and dtype against the config before the model is built."""
    for key in ("config", "tokenizer", "state_dict"):
        if key not in obj:
            raise UserError("input.model_incomplete", what=key)
    try:
        cfg = ModelConfig.from_dict(obj["config"]).validate()
        tokenizer = Tokenizer.from_json(obj["tokenizer"])
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError("input.model_incomplete", what=str(e)[:100]) from None
    state = obj["state_dict"]
    check_weights(cfg, state)
    _check_memory(cfg)
    model = Transformer(cfg)
    model.load_state_dict(state)
    return model, cfg, tokenizer


# checkpoint_dir: where a model's checkpoints are. init_checkpoint: the weights an imported model
# came with (importer.py): generation and export use them until the model has checkpoints of its
# own, and every new training run starts from them.
checkpoint_dir = layout.checkpoints_dir
init_checkpoint = layout.init_checkpoint


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
    path = layout.step_file(folder, obj["step"])
    atomic_torch_save(obj, path)
    prune_steps(folder, keep_last)
    return path


def prune_steps(folder: Path, keep: int) -> None:
    for _, p in step_files(folder)[:-keep] if keep > 0 else []:
        osdeps.remove_file(p)  # one held open (Windows) goes at a later prune


def latest_run_checkpoint(model_dir: Path, kind: str, run_id: str | None = None) -> Path | None:
    """The newest checkpoint of a self-play (``kind`` "selfplay") or reasoning ("reason") run,
    kept in checkpoints/<kind>/<run>/: the last step of ``run_id``, or of the run that saved
    most recently."""
    root = layout.run_checkpoints_root(model_dir, kind)
    folders = [layout.run_checkpoints_dir(model_dir, kind, run_id)] if run_id else ([p for p in root.iterdir() if p.is_dir()] if root.is_dir() else [])
    last = [found[-1][1] for found in map(step_files, folders) if found]
    return max(last, key=lambda p: p.stat().st_mtime_ns) if last else None


def latest_selfplay_checkpoint(model_dir: Path, run_id: str | None = None) -> Path | None:
    return latest_run_checkpoint(model_dir, "selfplay", run_id)


_RUN_KINDS = layout.RUN_KINDS


def choices(model_dir: Path, rows) -> list[dict]:
    """Every checkpoint a model can generate from (GET /api/models/{name}/checkpoints), each
    with ``kind`` and ``checkpoint``, what resolve_checkpoint takes for it: pretraining's step
    checkpoints, oldest first, the best flagged ("best"); the weights an imported model came with
    while it has no steps ("latest"); then the newest self-play and reasoning checkpoints
    ("selfplay", "reason", with their run). ``rows``: the registry's rows for the files in
    checkpoints/ (file, step, val_bpb, bytes)."""
    def choice(kind, which, step, size, bpb=None, run=None):
        return {"kind": kind, "checkpoint": which, "step": step, "best": kind == "best", "bytes": size,
                "val_bpb": bpb, "run": run}

    has_steps = bool(list_step_checkpoints(model_dir))
    best = next((r for r in rows if r.file == layout.BEST_FILE), None)
    best_step = best.step if best is not None else None
    out = []
    for r in rows:
        if r.file == layout.BEST_FILE:
            continue
        if r.file == init_checkpoint(model_dir).name:
            if not has_steps:  # superseded (and not addressable) once training has saved a step
                out.append(choice("init", "latest", r.step, r.bytes, r.val_bpb))
            continue
        # the same step and evaluation: best.pt may be an earlier run's, kept while a new run saves
        # steps of the same numbers (earlier.EarlierRun)
        is_best = best_step is not None and best_step == r.step and \
            (best.val_bpb is None or r.val_bpb is None or best.val_bpb == r.val_bpb)
        out.append(choice("best" if is_best else "step", "best" if is_best else str(r.step), r.step, r.bytes,
                          r.val_bpb))
    if best is not None and not any(c["best"] for c in out):  # its step file was pruned
        out.append(choice("best", "best", best.step, best.bytes, best.val_bpb))
    out.sort(key=lambda c: (c["step"] is None, c["step"] or 0))
    for kind in _RUN_KINDS:
        path = latest_run_checkpoint(model_dir, kind)
        try:
            size = path.stat().st_size if path is not None else None
        except OSError:  # pruned by its run just now
            continue
        if path is not None:
            out.append(choice(kind, kind, int(_STEP_RE.match(path.name).group(1)), size, run=path.parent.name))
    return out


def resolve_checkpoint(model_dir: Path, which: str = "best") -> Path:
    """'best', 'latest', 'selfplay' / 'reason' (the newest self-play / reasoning checkpoint) or
    a step number → a checkpoint path, with a hint when there is none."""
    if which in _RUN_KINDS:
        found = latest_run_checkpoint(model_dir, which)
        if found is None:
            raise UserError("checkpoint.no_selfplay" if which == "selfplay" else "checkpoint.no_reason",
                            name=model_dir.name)
        return found
    steps = list_step_checkpoints(model_dir)
    if which == "best":
        best = layout.best_checkpoint(model_dir)
        if best.exists():
            return best
        which = "latest"
    if which == "latest":
        if steps:
            return steps[-1][1]
        if init_checkpoint(model_dir).exists():
            return init_checkpoint(model_dir)
        raise UserError("checkpoint.untrained", name=model_dir.name)
    try:
        step = int(which)
    except ValueError:
        raise UserError("checkpoint.bad_choice", value=str(which)) from None
    for s, p in steps:
        if s == step:
            return p
    if not steps:
        raise UserError("checkpoint.no_steps", step=str(step))
    raise UserError("checkpoint.no_step", step=str(step), available=[str(s) for s, _ in steps])


def export_pt(obj: dict, path: Path) -> None:
    """The self-contained file users download: no optimizer, no RNG, same loader."""
    slim = {k: obj[k] for k in ("format", "format_version", "config", "state_dict", "tokenizer") if k in obj}
    slim["meta"] = dict(obj.get("meta", {}))
    slim["meta"].update({"step": obj.get("step"), "best_val_bpb": obj.get("best_val_bpb")})
    atomic_torch_save(slim, path)
