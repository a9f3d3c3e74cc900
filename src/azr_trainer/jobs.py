"""The job runner: each training run in its own worker process, a queue, and live events.

A worker is ``python -m azr_trainer.worker RUNFILE``: the run's kind (see runkinds.py) and its
validated settings are written to ``run.json`` in the run's folder, and the worker runs the same
library functions as ``azr train`` / ``selfplay`` / ``reason``, its output going to ``worker.log``
beside it. Nothing here knows how training works: the worker writes events to ``events.jsonl``
and this module reads them; an error it can explain is a ``failed`` status event with its code.

- Queue: at most ``max_concurrent`` workers at once (default 1) and one per model; other
  runs wait as ``queued``, oldest first. A kind that does not train its model (an export, see
  runkinds.RunKind) neither takes a slot nor holds the model: it starts at once, beside training.
- Control: pause and cancel write "pause"/"cancel" into the run's control file; the
  trainer saves a checkpoint and exits, reporting ``paused``/``cancelled``. Resume starts
  a new worker on the run file with ``resume`` set and the same run id, which continues exactly from that
  checkpoint (or starts over if the run never saved one).
- Monitor: a thread polls every ``poll_interval`` seconds. It ingests new events into the
  registry (the events, samples among them, folded into the run's summary) and hands them to
  SSE subscribers, notices workers that exited, and starts queued runs. The final state
  comes from the worker's last ``status`` event; a worker that exits without one crashed
  (killed for memory, say), and the run becomes ``failed`` with a message made from the end
  of its log. Every poll is guarded, so a broken run can never stop the monitor or the server.
- Restart: when the studio starts, runs left ``running`` or ``queued`` by the previous
  studio become ``interrupted``. Resuming them is one call (POST /api/runs/{id}/resume) and
  deliberately not automatic: a studio usually restarts because the machine rebooted, ran
  out of memory or the person stopped it, and training again unasked could repeat the
  crash or take over a laptop that is now wanted for something else. Workers watch their
  parent and save a checkpoint when the studio dies; one still saving when the new studio
  starts is asked to pause, and its last events are still read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from sqlalchemy import select

from . import catalogue, layout, osdeps, recipe, runloop, store
from .events import read_events
from .home import Conflict, NotFound, UserError
from .registry import Metric, Registry, Run
from .runkinds import KINDS, RunKind  # noqa: F401 - the API imports them from here
from .settings import check_run
from .worker import write_run_file

log = logging.getLogger("azr_trainer.jobs")

ACTIVE = ("queued", "running")
# States that hold a model: a new run would overwrite the checkpoints a resume needs.
HOLDS_MODEL = ("queued", "running", "paused", "interrupted")
RESUMABLE = ("paused", "interrupted", "failed")
LOG_TAIL_BYTES = 4000


def _now() -> str:
    # Milliseconds: runs are ordered by these times, and two can start within a second.
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _new_run_id() -> str:
    # ASCII, sortable by time, and unique even for two runs in the same second.
    return datetime.now(timezone.utc).strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def lock_holder(home: Path, model: str) -> int | None:
    """The pid of a live process training ``model`` (a studio worker or the CLI), else None."""
    return runloop.lock_holder(store.model_dir(home, model))


def log_tail(path: Path, nbytes: int = LOG_TAIL_BYTES) -> str:
    """The end of a log file, decoded leniently (a cut may fall inside a character)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - nbytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def crash_reason(log_path: Path, returncode: int) -> tuple[str, dict]:
    """Why a worker exited without reporting, as a message code and its params: a signal (out of
    memory, usually) or an error in its log."""
    if returncode < 0:  # POSIX: killed by a signal
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return ("jobs.killed_oom" if name == "SIGKILL" else "jobs.killed"), {"signal": name}
    # An error the worker could explain came as a failed event; this one it could not.
    lines = [line.strip() for line in log_tail(log_path).splitlines() if line.strip()]
    if not lines:
        return "jobs.crashed_silent", {"exit_code": returncode}
    return "jobs.crashed", {"exit_code": returncode, "line": lines[-1][:500]}


def crash_message(log_path: Path, returncode: int) -> str:
    code, params = crash_reason(log_path, returncode)
    return catalogue.message(code, "en", **params)


def _english(code: str | None, params: dict | None, fallback: str | None = None) -> str | None:
    """The English text of a coded message (what the run's ``message`` keeps for older readers)."""
    if code and catalogue.has(f"msg.{code}"):
        return catalogue.message(code, "en", **(params or {}))
    return fallback


def _progress(run: Run, last: dict) -> float:
    """The share done: of the steps, or of the time budget when that comes first."""
    done = min(1.0, run.step / run.max_iterations) if run.max_iterations else 0.0
    minutes = (run.params or {}).get("minutes")
    if minutes and run.state == "completed":
        return 1.0  # its last step came just before the time ran out
    if minutes and last.get("elapsed") is not None:
        done = max(done, min(1.0, last["elapsed"] / (60.0 * minutes)))
    return done


def latest_samples(s, run_id: str, n: int = 12) -> list[dict]:
    """The run's ``n`` newest samples, oldest first: read from its "sample" events, where they are kept."""
    newest = s.scalars(select(Metric.data).where(Metric.run_id == run_id, Metric.kind == "sample")
                       .order_by(Metric.seq.desc()).limit(n))
    return [{"step": e.get("step", 0), "prompt": e.get("prompt", ""), "text": e.get("text", "")}
            for e in reversed(list(newest))]


def run_kind(run: Run) -> str:
    return (run.params or {}).get("kind", "train")  # runs from before kinds existed trained


def _spec(run: Run) -> RunKind:
    return KINDS.get(run_kind(run), KINDS["train"])


def _holds(run: Run) -> bool:
    """Whether ``run`` trains its model (runkinds.RunKind.holds_model)."""
    return _spec(run).holds_model


@dataclass
class _Worker:
    model: str
    proc: subprocess.Popen
    log: IO[bytes]
    holds_model: bool = True
    takes_slot: bool = True


class JobRunner:
    def __init__(self, home: Path, registry: Registry, max_concurrent: int = 1, poll_interval: float = 0.25):
        if max_concurrent < 1:
            raise UserError("runs.max_concurrent", value=max_concurrent)
        self.home = Path(home)
        self.registry = registry
        self.max_concurrent = max_concurrent
        self.poll_interval = poll_interval
        self._workers: dict[str, _Worker] = {}
        self._orphans: set[str] = set()  # runs whose worker outlived the previous studio
        self._subscribers: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}
        self._pending: list[tuple[str, dict]] = []  # events to publish once their transaction commits
        self._lock = threading.RLock()
        # Subscribers have their own lock: the event loop must never wait for a long poll.
        self._subscribers_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="azr-job-monitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching. Workers keep going; they notice that the studio is gone and save."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for worker in self._workers.values():
                worker.log.close()

    def recover(self) -> None:
        """Runs the previous studio left running or queued become interrupted (see the module doc)."""
        with self._transaction() as s:
            for run in s.scalars(select(Run).where(Run.state.in_(ACTIVE))):
                self._ingest(s, run)  # what the worker wrote while nobody was reading
                if run.state not in ACTIVE:
                    continue  # it finished on its own; its last status event says how
                was = run.state
                if was == "running" and _holds(run) and lock_holder(self.home, run.model) is not None:
                    # Still alive (still saving, or on Windows, where workers cannot see their
                    # parent die): ask it to stop, and keep reading what it writes.
                    self._write_control(run, "pause")
                    self._orphans.add(run.id)
                self._set_state(s, run, "interrupted", f"jobs.studio_stopped_{was}", {"step": run.step})

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll()
            except Exception:  # never let one bad run stop the monitor
                log.exception("The job monitor failed to poll; retrying.")

    def poll(self) -> None:
        """One round of the monitor: ingest events, notice exits, start queued runs."""
        with self._transaction() as s:
            for run_id, worker in list(self._workers.items()):
                returncode = worker.proc.poll()  # before reading: then every event it wrote is read
                run = s.get(Run, run_id)
                if run is not None:
                    self._ingest(s, run)
                if returncode is not None:
                    worker.log.close()
                    del self._workers[run_id]
                    if run is not None:
                        self._finish(s, run, returncode)
            for run_id in list(self._orphans):
                run = s.get(Run, run_id)
                alive = run is not None and lock_holder(self.home, run.model) is not None
                if run is not None:
                    self._ingest(s, run)
                if not alive:
                    self._orphans.discard(run_id)
            self._schedule(s)

    # ------------------------------------------------------------------ what the API calls

    def create_run(self, model: str, books: list[str], params: dict, kind: str = "train") -> dict:
        """Queue a new run of ``kind`` (see KINDS); it starts at once when a slot is free."""
        if kind == "reason":
            osdeps.require_reasoning()  # off Linux: refused before anything is checked or queued
        store.get_model(self.home, model)
        if kind not in KINDS:
            raise UserError("settings.kind", kinds=list(KINDS), value=repr(kind))
        spec = KINDS[kind]
        given = {k: v for k, v in params.items() if v is not None}
        if kind == "train":  # an auto-sized model's recipe fills in what the run leaves out
            given = recipe.apply(self.home, model, given)
        defaults = spec.defaults
        if "minutes" in given and "max_iterations" not in given:
            defaults.pop("max_iterations", None)  # a time budget alone ends the run
        if "minutes" not in given and ("max_iterations" in given or "max_time" in given):
            defaults.pop("minutes", None)  # so do steps or a time of the run's own: no default budget on top
        params = {**defaults, **given}
        if "checkpoint" in params:
            params["checkpoint"] = str(params["checkpoint"])  # a step number may come as a number
        check_run(kind, params)  # only the kind's own settings, each within its bounds
        books = spec.check(self.home, model, list(books or []), params)
        params["kind"] = kind  # in params, so the runs table needs no new column
        with self._transaction() as s:
            held = next(self._holding(s, model, HOLDS_MODEL), None) if spec.holds_model else None
            if held is not None:
                raise Conflict("runs.has_stopped_run" if held.state in RESUMABLE else "runs.has_active_run",
                               name=model, run=held.id, state=held.state)
            pid = lock_holder(self.home, model) if spec.holds_model else None
            if pid is not None:
                raise Conflict("run.busy", name=model, pid=str(pid))
            now = _now()
            run = Run(id=_new_run_id(), model=model, books=books, params=params, state="queued",
                      max_iterations=params.get("max_iterations") or 0, created_at=now,
                      queued_at=now, step=0, events_offset=0, events_count=0)
            s.add(run)
            s.flush()  # the run's row before its first event's (a foreign key)
            self._set_state(s, run, "queued", None)
            self._schedule(s)
            return self.run_dict(run)

    def pause(self, run_id: str) -> dict:
        with self._transaction() as s:
            run = self._get(s, run_id)
            if run.state == "running":
                self._request_stop(run, "pause")
            elif run.state == "queued":
                self._set_state(s, run, "paused", "jobs.paused_before_start")
            else:
                raise Conflict("runs.cannot_pause", run=run_id, state=run.state)
            return self.run_dict(run)

    def cancel(self, run_id: str) -> dict:
        with self._transaction() as s:
            run = self._get(s, run_id)
            if run.state == "running":
                self._request_stop(run, "cancel")
            elif run.state in ("queued", "paused", "interrupted"):
                self._set_state(s, run, "cancelled", "jobs.cancelled")
            else:
                raise Conflict("runs.cannot_cancel", run=run_id, state=run.state)
            return self.run_dict(run)

    def resume(self, run_id: str) -> dict:
        with self._transaction() as s:
            run = self._get(s, run_id)
            if run.state not in RESUMABLE:
                raise Conflict("runs.cannot_resume", run=run_id, state=run.state)
            store.get_model(self.home, run.model)
            holds = _holds(run)  # an export starts over, beside anything
            newer = next((r for r in self._holding(s, run.model) if r.created_at > run.created_at), None) \
                if holds else None
            if newer is not None:
                raise Conflict("runs.resume_newer", name=run.model, run=run.id, newer=newer.id)
            busy = next((r for r in self._holding(s, run.model, ACTIVE) if r.id != run.id), None) if holds else None
            if busy is not None:
                raise Conflict("runs.resume_busy", name=run.model, run=busy.id, state=busy.state)
            pid = lock_holder(self.home, run.model) if holds else None
            if pid is not None and run.id not in self._workers:
                raise Conflict("runs.resume_held", name=run.model, pid=str(pid))
            run.queued_at = _now()
            self._set_state(s, run, "queued", None)
            self._schedule(s)
            return self.run_dict(run)

    def check_model_idle(self, model: str) -> None:
        """Raise Conflict if the model is being trained or has a run waiting to."""
        with self.registry.session() as s:
            busy = s.scalars(select(Run).where(Run.model == model, Run.state.in_(ACTIVE))).first()
        if busy is not None:
            raise Conflict("runs.model_busy", name=model, run=busy.id, state=busy.state)
        pid = lock_holder(self.home, model)
        if pid is not None:
            raise Conflict("run.busy", name=model, pid=str(pid))

    def training_models(self) -> set[str]:
        with self.registry.session() as s:
            return {r.model for r in s.scalars(select(Run).where(Run.state == "running")) if _holds(r)}

    def get_run(self, run_id: str, detail: bool = False) -> dict:
        with self.registry.session() as s:
            run = self._get(s, run_id)
            d = self.run_dict(run)
            if detail:
                d["samples"] = latest_samples(s, run_id)
                d["log_tail"] = log_tail(layout.worker_log(self._run_dir(run)))
            return d

    def list_runs(self, model: str | None = None) -> list[dict]:
        self.registry.forget_missing_models()  # a model deleted with the CLI takes its runs along
        with self.registry.session() as s:
            query = select(Run).order_by(Run.created_at.desc(), Run.id.desc())
            if model is not None:
                query = query.where(Run.model == model)
            return [self.run_dict(r) for r in s.scalars(query)]

    def events(self, run_id: str, after: int = 0, limit: int | None = None) -> list[dict]:
        """Events number ``after`` onwards, oldest first."""
        with self.registry.session() as s:
            self._get(s, run_id)
            query = select(Metric.data).where(Metric.run_id == run_id, Metric.seq >= after).order_by(Metric.seq)
            if limit is not None:
                query = query.limit(limit)
            return list(s.scalars(query))

    def subscribe(self, run_id: str, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        """A queue that receives the run's events from now on (for an SSE stream on ``loop``)."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._subscribers_lock:
            self._subscribers.setdefault(run_id, []).append((loop, queue))
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue) -> None:
        with self._subscribers_lock:
            subs = self._subscribers.get(run_id, [])
            subs[:] = [(lp, q) for lp, q in subs if q is not queue]
            if not subs:
                self._subscribers.pop(run_id, None)

    @staticmethod
    def run_dict(run: Run) -> dict:
        last = run.last_metrics or {}
        return {
            "id": run.id, "kind": run_kind(run), "model": run.model, "books": run.books, "params": run.params,
            "state": run.state, "message": run.message, "message_code": run.message_code,
            "message_params": run.message_params, "pid": run.pid, "step": run.step,
            "max_iterations": run.max_iterations,
            "progress": _progress(run, last),
            "elapsed": last.get("elapsed"), "eta": last.get("eta") if run.state == "running" else None,
            "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
            "best_val_bpb": run.best_val_bpb, "last_step": run.last_metrics, "last_eval": run.last_eval,
            "last_checkpoint_step": run.last_checkpoint_step, "stop_requested": run.stop_requested,
            "events": run.events_count, "milestones": run.milestones or [], "real_words": run.real_words,
        }

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _transaction(self):
        """One lock, one session, one commit; the events it recorded are published after the
        commit and before the lock is released, so subscribers see them in order."""
        with self._lock:
            self._pending = []
            with self.registry.session() as s:
                yield s
                s.commit()
            self._publish(self._pending)
            self._pending = []

    def _publish(self, items: list[tuple[str, dict]]) -> None:
        for run_id, event in items:
            with self._subscribers_lock:
                targets = list(self._subscribers.get(run_id, []))
            for loop, queue in targets:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, event)
                except RuntimeError:  # that event loop has closed; its stream is gone
                    pass

    @staticmethod
    def _holding(s, model: str, states: tuple[str, ...] | None = None):
        """The model's runs that train it (in ``states``), oldest first."""
        query = select(Run).where(Run.model == model).order_by(Run.created_at, Run.id)
        if states is not None:
            query = query.where(Run.state.in_(states))
        return (r for r in s.scalars(query) if _holds(r))

    @staticmethod
    def _get(s, run_id: str) -> Run:
        run = s.get(Run, run_id)
        if run is None:
            raise NotFound("runs.not_found", run=run_id)
        return run

    def _run_dir(self, run: Run) -> Path:
        return layout.run_dir(self.home, run.model, run.id)

    def _write_control(self, run: Run, what: str) -> None:
        """Ask the run's worker to stop ("pause", "cancel"). Written whole or not at all: the worker
        checks the file after every step, and an empty one, caught between its creation and its
        text, would read as a stop without a reason (the run then ends "interrupted")."""
        path = layout.control_file(self._run_dir(run))
        path.parent.mkdir(parents=True, exist_ok=True)
        osdeps.atomic_write_bytes(path, what.encode("utf-8"))

    def _request_stop(self, run: Run, what: str) -> None:
        self._write_control(run, what)
        run.stop_requested = what

    def _ingest(self, s, run: Run) -> None:
        try:
            events, offset = read_events(layout.events_file(self._run_dir(run)), run.events_offset)
        except OSError:  # unreadable for now (e.g. a virus scanner holds it on Windows): next poll
            log.warning("Could not read the events of run %s", run.id, exc_info=True)
            return
        for event in events:
            self._record(s, run, event)
        run.events_offset = offset

    def _record(self, s, run: Run, event: dict) -> None:
        """Store one event (from the worker or the studio) and fold it into the run's summary."""
        event = {**event, "seq": run.events_count}
        run.events_count += 1
        kind = event.get("type", "unknown")
        s.add(Metric(run_id=run.id, seq=event["seq"], step=event.get("step"), kind=kind, data=event))
        if kind == "step":
            run.step = event.get("step", run.step)
            run.max_iterations = event.get("max_iterations") or run.max_iterations  # self-play may say None
            run.last_metrics = event
        elif kind == "eval":
            run.last_eval = event
            bpb = event.get("val_bpb")
            if bpb is not None and (run.best_val_bpb is None or bpb < run.best_val_bpb):
                run.best_val_bpb = bpb
        elif kind == "checkpoint":
            run.last_checkpoint_step = event.get("step")
        elif kind == "milestone":  # a new list: a JSON column saves only what is assigned
            run.milestones = [*(run.milestones or []), {k: event.get(k) for k in ("step", "code", "params", "message")}]
        elif kind == "quality" and event.get("real_words") is not None:
            run.real_words = event["real_words"]
        elif kind == "status" and event.get("source") != "studio":
            self._apply_status(run, event)
        self._pending.append((run.id, event))

    def _apply_status(self, run: Run, event: dict) -> None:
        state, step = event.get("state"), event.get("step")
        if step is not None:
            run.step = step
        if state in ("started", "resumed"):
            run.started_at = run.started_at or _now()
            if step is not None and run.milestones:  # the run goes on from its checkpoint: later ones are undone
                run.milestones = [m for m in run.milestones if (m.get("step") or 0) <= step]
            return
        # Only the worker that owns the run decides how it ended: once the run was resumed or
        # cancelled, a late report from an earlier worker changes nothing.
        code, params = event.get("code"), event.get("params") or {}
        if state == "failed" and run.state == "failed" and code:
            # The worker's own report of an error it could explain, after the loop's plain one.
            self._set_message(run, code, params, event.get("message") or run.message)
            return
        if run.state not in ("running", "interrupted"):
            return
        reason = event.get("message")
        # A worker from before coded events: the same messages, coded here ("stopped by SIGTERM":
        # the signal's name is the reason; the studio going away has its own message).
        interrupted = ("run.parent_exited", {"step": run.step}) if reason == "stopped by parent-exited" else \
            ("run.interrupted", {"step": run.step, "reason": (reason or "").removeprefix("stopped by ") or "stopped"})
        legacy = {
            "completed": (None, {}),
            "stopped": (None, {}),  # max_time reached: a finished run, with the reason
            "paused": ("run.paused", {"step": run.step}),
            "cancelled": ("run.cancelled", {"step": run.step}),
            "interrupted": interrupted,
            "failed": (None if reason else "jobs.failed", {}),
        }
        if state not in legacy:
            return
        if state == "completed":
            code, params = None, {}
        elif not code:
            code, params = legacy[state]
        run.state = "completed" if state == "stopped" else state
        self._set_message(run, code, params, None if state == "completed" else reason)
        run.finished_at = _now()
        run.stop_requested = None

    @staticmethod
    def _set_message(run: Run, code: str | None, params: dict | None, fallback: str | None = None) -> None:
        run.message_code, run.message_params = (code, dict(params or {})) if code else (None, None)
        run.message = _english(code, params, fallback)

    def _set_state(self, s, run: Run, state: str, code: str | None = None, params: dict | None = None) -> None:
        """A change the studio makes (queued, started, crashed, interrupted…), recorded as an
        event too, so that the charts' timeline and SSE streams show it. ``code``: its message
        in the catalogue (msg.jobs.*, msg.run.*)."""
        run.state = state
        self._set_message(run, code, params)
        if state not in ("queued", "running"):
            run.finished_at = _now()
            run.stop_requested = None
        self._record(s, run, {"type": "status", "run": run.id, "time": round(time.time(), 3), "state": state,
                              "step": run.step, "message": run.message, "code": run.message_code,
                              "params": run.message_params, "source": "studio"})

    def _finish(self, s, run: Run, returncode: int) -> None:
        run.pid = None
        if run.state != "running":
            return  # the worker reported how it ended
        self._set_state(s, run, "failed", *crash_reason(layout.worker_log(self._run_dir(run)), returncode))

    def _schedule(self, s) -> None:
        queued = s.scalars(select(Run).where(Run.state == "queued").order_by(Run.queued_at, Run.created_at))
        for run in list(queued):
            spec = _spec(run)
            if spec.takes_slot and sum(w.takes_slot for w in self._workers.values()) >= self.max_concurrent:
                continue  # a run that takes no slot (an export) may still start
            if run.id in self._workers or (spec.holds_model and any(
                    w.holds_model and w.model == run.model for w in self._workers.values())):
                continue  # its previous worker, or another run training its model, has not exited yet
            self._spawn(s, run)

    def _spawn(self, s, run: Run) -> None:
        folder = self._run_dir(run)
        folder.mkdir(parents=True, exist_ok=True)
        control = layout.control_file(folder)
        control.unlink(missing_ok=True)  # a stale "pause" would stop the new worker at once
        kind = run_kind(run)
        resume = run.last_checkpoint_step is not None
        settings = {k: v for k, v in (run.params or {}).items() if k != "kind"}
        run_file = write_run_file(folder, home=self.home, kind=kind, model=run.model, run_id=run.id,
                                  books=run.books or [], settings=settings, resume=resume)
        cmd = [sys.executable, "-m", "azr_trainer.worker", str(run_file)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", AZR_LANG="en")  # the log in English
        # The worker imports this very package, even from a source tree that is not installed.
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        log_file = layout.worker_log(folder).open("ab")
        log_file.write(f"--- {_now()} {'resuming' if resume else 'starting'} run {run.id}\n".encode())
        log_file.flush()
        try:
            # CREATE_NO_WINDOW: on Windows a studio started without a console must not pop one up per run.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                    env=env, cwd=str(self.home),
                                    creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        except OSError as e:
            log_file.close()
            self._set_state(s, run, "failed", "jobs.spawn_failed", {"error": str(e)})
            return
        spec = _spec(run)
        self._workers[run.id] = _Worker(run.model, proc, log_file, spec.holds_model, spec.takes_slot)
        self._orphans.discard(run.id)  # from now on its events are read as this worker's
        run.pid = proc.pid
        run.finished_at = None
        self._set_state(s, run, "running", None)
