"""The studio's worker: one run, read from its run file.

``python -m azr_trainer.worker RUNFILE`` — not a command for people (they have ``azr train``,
``azr selfplay`` and ``azr reason``). The studio (jobs.py) writes the run's validated settings
to ``runs/<run>/run.json`` and starts this on it; the worker reports through the run's
``events.jsonl`` only. How a run ended is its last ``status`` event: an error a person can act
on is a ``failed`` event with the error's ``code`` and ``params`` (the page renders it in its
own language), so the studio never has to read a log to know why.

A train run with ``nproc`` above 1 re-runs this same file under torchrun, one process per
rank; rank 0 reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from . import layout, osdeps
from .errors import Notice, UserError
from .events import EventLog

FORMAT = 1


def write_run_file(folder: Path, *, home: Path, kind: str, model: str, run_id: str, books: list[str],
                   settings: dict, resume: bool) -> Path:
    """The run file the studio starts a worker on (written atomically: a worker never reads half)."""
    from .home import atomic_write_json
    path = layout.run_file(folder)
    atomic_write_json(path, {"format": FORMAT, "home": str(home), "kind": kind, "model": model, "run_id": run_id,
                             "books": list(books), "settings": dict(settings), "resume": bool(resume)})
    return path


def read_run_file(path: Path) -> dict:
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        if spec.get("format") != FORMAT:
            raise ValueError(f"format {spec.get('format')!r}")
        for key in ("home", "kind", "model", "run_id", "books", "settings"):
            spec[key]  # a missing key is a damaged file
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise UserError("settings.run_file", path=str(path), reason=str(e)) from None
    return spec


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def report_failure(spec: dict, error: UserError) -> None:
    """A failed status event with the error's code, where the studio reads the run's events."""
    if not _is_main_rank():
        return
    events = EventLog(layout.events_file(layout.run_dir(Path(spec["home"]), spec["model"], spec["run_id"])),
                      spec["run_id"])
    try:
        events.emit("status", state="failed", message=error.render("en"), code=error.code, params=error.params)
    finally:
        events.close()


def torchrun_command(nproc: int, target: list[str], nnodes: int = 1, endpoint: str | None = None) -> list[str]:
    """``target`` (``-m module args…``) under PyTorch's own launcher, ``nproc`` processes here."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes > 1:
        launcher += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}"]
    else:
        launcher += ["--standalone"]
    return launcher + target


def torchrun_env(nproc: int, threads: int | None) -> dict:
    env = {**osdeps.torchrun_env(), **os.environ}
    if threads is None:
        # share the cores between the processes instead of oversubscribing them
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def run(spec: dict, run_file: Path) -> None:
    from . import decode
    from .cli_runs import exit_torchrun_worker, stop_on_signals
    from .settings import RUN_GROUPS, time_budget
    home, kind, model, run_id = Path(spec["home"]), spec["kind"], spec["model"], spec["run_id"]
    decode.remember_in(home)  # rollouts' decode precision is measured once per machine
    params = dict(spec["settings"])
    if kind not in RUN_GROUPS:
        raise UserError("settings.kind", kinds=list(RUN_GROUPS), value=repr(kind))
    nproc = params.pop("nproc", None) or 1
    params = time_budget(kind, params, processes=nproc)  # minutes → max_time (and the time schedule)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        rc = subprocess.call(torchrun_command(nproc, ["-m", "azr_trainer.worker", str(run_file)]),
                             env=torchrun_env(nproc, params.get("threads")))
        if rc != 0:
            raise SystemExit(rc)
        return
    control = layout.control_file(layout.run_dir(home, model, run_id))
    stop = stop_on_signals(control, watch_parent=True)
    log = (lambda m: print(m, file=sys.stderr)) if _is_main_rank() else (lambda m: None)
    params["resume"] = bool(spec.get("resume"))
    if kind == "train":
        from .train import TrainConfig, train
        summary = train(home, model, TrainConfig(books=list(spec["books"]), **params), stop=stop, log=log,
                        run_id=run_id)
    elif kind == "selfplay":
        from .selfplay import SelfPlayConfig, selfplay
        summary = selfplay(home, model, SelfPlayConfig(**params), stop=stop, log=log, run_id=run_id)
    elif kind == "corpus":
        summary = _write_corpus(home, model, run_id, params, stop, log)
    elif kind == "export":
        summary = _export(home, model, run_id, params, stop)
    else:
        from .reasoning import ReasonConfig, reason
        summary = reason(home, model, ReasonConfig(**params), stop=stop, log=log, run_id=run_id)
    if _is_main_rank():
        print(json.dumps(summary, ensure_ascii=False, default=str))
    exit_torchrun_worker()


class _Stopped(Exception):
    pass


def _write_corpus(home: Path, model: str, run_id: str, params: dict, stop, log) -> dict:
    """A from-zero model's triplets book, its documents reported as the run's steps. Paused or
    cancelled, it writes no book; resumed, it starts over (it has no checkpoint)."""
    from .from_zero import write_from_zero_book
    from .runloop import stop_status
    total = params["corpus_docs"]
    events = EventLog(layout.events_file(layout.run_dir(home, model, run_id)), run_id)

    def progress(done: int) -> None:
        if stop.check():
            raise _Stopped(done)
        events.emit("step", step=done, max_iterations=total)

    try:
        events.emit("status", state="started", step=0)
        try:
            book = write_from_zero_book(home, model, n_docs=total, seed=params["seed"], progress=progress)
        except _Stopped as e:
            state, message, code, status_params = stop_status(stop.reason, False, None, e.args[0])
            events.emit("status", state=state, step=e.args[0], message=message, code=code, params=status_params)
            return {"state": state, "documents": e.args[0]}
        events.emit("step", step=total, max_iterations=total)
        log(Notice("reason.book_written", book=book, count=total))
        events.emit("status", state="completed", step=total)
    finally:
        events.close()
    return {"book": book, "documents": total}


EXPORT_STEPS = 2  # the checkpoint read, the file written


def _export(home: Path, model: str, run_id: str, params: dict, stop) -> dict:
    """A Hugging Face zip (or folder) or a GGUF file in the run's own folder under exports. Its
    steps: the checkpoint read, the file written; an ``export`` event says what was made (the
    file, its size, the checkpoint and a note if the model is still training). Then the earlier
    exports of the same model, format and number format are deleted: only the newest is kept.
    Paused or cancelled it keeps nothing; resumed, it starts over."""

    from .export import export_model
    from .runloop import stop_status
    fmt, dtype, as_zip = params["format"], params["dtype"], bool(params["zip"])
    folder = layout.export_run_dir(home, model, run_id)
    out = layout.export_file(folder, model, fmt, dtype, as_zip)
    events = EventLog(layout.events_file(layout.run_dir(home, model, run_id)), run_id)

    def loaded(facts: dict) -> None:
        events.emit("step", step=1, max_iterations=EXPORT_STEPS, checkpoint_step=facts.get("step"))
        if stop.check():
            raise _Stopped(1)

    done = False
    try:
        events.emit("status", state="started", step=0)
        events.emit("step", step=0, max_iterations=EXPORT_STEPS)
        osdeps.remove_tree(folder)  # what an earlier attempt of this run left
        folder.mkdir(parents=True, exist_ok=True)
        try:
            result = export_model(home, model, fmt, out, dtype=dtype, checkpoint=str(params["checkpoint"]),
                                  as_zip=as_zip, on_loaded=loaded)
        except _Stopped as e:
            state, message, code, status_params = stop_status(stop.reason, False, None, e.args[0])
            events.emit("status", state=state, step=e.args[0], message=message, code=code, params=status_params)
            return {"state": state}
        events.emit("step", step=EXPORT_STEPS, max_iterations=EXPORT_STEPS)
        facts = {k: result.get(k) for k in ("format", "dtype", "zip", "bytes", "checkpoint_kind", "step", "val_bpb",
                                            "training", "note", "notes")}
        events.emit("export", file=out.name, **facts)
        _keep_newest(home, model, run_id, fmt, dtype, as_zip)
        events.emit("status", state="completed", step=EXPORT_STEPS)
        done = True
    finally:
        if not done:
            osdeps.remove_tree(folder)
        events.close()
    return {"file": str(out), "bytes": result["bytes"]}


def _keep_newest(home: Path, model: str, run_id: str, fmt: str, dtype: str, as_zip: bool) -> None:
    """Delete the exports of earlier runs that made the same kind of file (model, format,
    number format, zip or not). Run ids sort by time. A file being downloaded stays readable where the
    system allows it; where it does not, it stays, and the next export tries again."""
    base = layout.exports_dir(home, model)
    for other in base.iterdir():
        if other.is_dir() and other.name.startswith("run-") and other.name < run_id \
                and layout.export_file(other, model, fmt, dtype, as_zip).exists():
            osdeps.remove_tree(other)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m azr_trainer.worker RUNFILE (started by the studio)", file=sys.stderr)
        return 2
    spec = None
    try:
        spec = read_run_file(Path(argv[0]))
        run(spec, Path(argv[0]))
        return 0
    except UserError as e:
        if spec is not None:
            report_failure(spec, e)
        print(f"Error: {e.render('en')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
