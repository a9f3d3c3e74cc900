"""The one run loop of pretraining, self-play and reasoning.

A kind of run (train.py, selfplay.py, reasoning.py) is a :class:`Job`: it supplies its step,
its evaluation, its samples, what it saves and its summary. Everything else is here and the
same for every kind:

- the model lock (one training process per model; a lock whose process is gone, or whose pid
  now belongs to a process that started after the lock was written, is stale) and the removal
  of temp files that a killed save left behind;
- the cadence: a ``step`` event every ``log_every`` steps and at least once a second; an eval
  (with samples) every ``eval_every`` steps, and by the clock — the first at most 30 s after
  the first step, then about every tenth of ``max_time`` when there is one; a checkpoint every
  ``save_every`` steps;
- the ends: max_iterations, max_time, the control file (pause/cancel), a signal, the studio
  going away, out of memory; a job whose step is long checks the stop between its pieces
  (:meth:`Job.stop_requested`) and gives the step up; then a final eval (the whole validation split on a normal end, the
  quick subset on pause/cancel), the final checkpoint, and the ``status`` event with the summary.
  With ``max_time`` the steps stop ``Job.final_reserve`` seconds early, what the kind expects its
  final eval to take, so that the run ends within its time.

Status events keep their English ``message`` (what earlier readers parse) and carry ``code``
and ``params`` from the message catalogue (``msg.run.*``).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from . import layout, osdeps
from .device import MemoryTrimmer, is_out_of_memory
from .events import EventLog
from .errors import Notice
from .home import Conflict, UserError

# quality is visible within 30 s of the first step: due at 25 s, so that the step under way and the
# evaluation itself are done by then
FIRST_EVAL_SECONDS = 25.0
EVAL_SHARE = 10            # with a time budget: about one eval per tenth of it


def warmup_cosine(base: float, step: int, warmup: int, progress: float, floor_ratio: float) -> float:
    """The learning rate of every kind of run: linear warm-up over ``warmup`` steps, then a cosine
    from ``base`` down to ``floor_ratio`` × ``base`` as ``progress`` (0 → 1) goes by; a floor
    ratio of 1 keeps the rate constant after the warm-up."""
    if step < warmup:
        return base * (step + 1) / warmup
    floor = base * floor_ratio
    return floor + 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress)))) * (base - floor)


# ---- stopping ---------------------------------------------------------------------------------

class StopRequested:
    """Why a run should stop early: a signal handler sets it, or the studio writes
    "pause"/"cancel" into a control file (works the same on Windows, where signals don't),
    or the studio that started this worker died (the worker then saves and stops)."""

    def __init__(self, control_file: Path | None = None, watch_parent: bool = False):
        self.reason: str | None = None
        self.control_file = control_file
        self.parent = os.getppid() if watch_parent else None
        self.since = time.time()  # the parent started before this; a process started later is not it

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def check(self) -> str | None:
        if self.reason is None and self.control_file is not None and self.control_file.exists():
            self.reason = self.control_file.read_text(encoding="utf-8").strip() or "stop"
        if self.reason is None and self.parent is not None and osdeps.parent_gone(self.parent, self.since):
            self.reason = "parent-exited"
        return self.reason

    def asked(self) -> str | None:
        """The same question asked from inside a step (:meth:`Job.stop_requested`); :meth:`check`
        is the loop's own, once a step (a subclass that counts steps in ``check`` overrides this)."""
        return self.check()


class StepStopped(Exception):
    """A job's step (or its work before the loop) saw a stop request between two pieces of its
    work and gave up the step: the run ends as the stop asks, at the last whole step."""


def stop_status(reason: str | None, out_of_time: bool, max_time: float | None, step: int,
                learned: dict | None = None) -> tuple[str, str, str, dict]:
    """(state, English message, code, params) of a run that stops early. The messages are the
    ones earlier readers of events.jsonl parse (the studio's run table reads "stopped by …")."""
    if reason == "cancel":
        return "cancelled", "stopped by cancel", "run.cancelled", {"step": step}
    if reason == "pause":
        return "paused", "stopped by pause", "run.paused", {"step": step}
    if reason == "parent-exited":
        return "interrupted", "stopped by parent-exited", "run.parent_exited", {"step": step}
    if reason:
        return "interrupted", f"stopped by {reason}", "run.interrupted", {"step": step, "reason": reason}
    if out_of_time:
        return "stopped", f"max_time {max_time:g} s reached", "run.time_up", {"step": step, "seconds": max_time}
    if learned:
        return "stopped", "validation stopped improving", "run.learned_enough", {"step": step, **learned}
    return "interrupted", "another training process stopped", "run.other_process", {"step": step}


# ---- the model lock ---------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    return osdeps.process_alive(pid)


def lock_holder(model_dir: Path) -> int | None:
    """The pid of the live process that holds ``model_dir``'s training lock, else None.

    The lock file holds the owner's pid (the format every reader knows); its modification time
    is when the owner wrote it. A pid that is alive but whose process started after that time
    is a reused pid (the owner died, a reboot, another program): the lock is stale. Where start
    times are unknown (macOS, portable mode) the pid alone decides."""
    path = layout.lock_file(model_dir)
    try:
        pid = int(path.read_text(encoding="utf-8").strip() or 0)
        written = path.stat().st_mtime
    except (OSError, ValueError):
        return None
    if not pid or not _pid_alive(pid):
        return None
    started = osdeps.process_start_time(pid)
    if started is not None and started > written + 2.0:  # /proc's boot time is exact to a second
        return None
    return pid


class TrainingLock:
    """One training process per model: a lock file holding the owner's pid (see lock_holder)."""

    def __init__(self, model_dir: Path):
        self.path = layout.lock_file(model_dir)

    def __enter__(self):
        for _ in range(3):
            if osdeps.create_exclusive(self.path, str(os.getpid())):
                return self
            holder = lock_holder(self.path.parent)
            if holder and holder != os.getpid():
                raise Conflict("run.busy", name=self.path.parent.name, pid=str(holder))
            osdeps.remove_file(self.path)  # stale (or our own): take it over
        raise Conflict("run.busy", name=self.path.parent.name, pid="?")

    def __exit__(self, *exc):
        try:
            if int(self.path.read_text(encoding="utf-8").strip() or 0) != os.getpid():
                return  # someone took over a lock they judged stale: it is theirs now
        except (OSError, ValueError):
            return
        osdeps.remove_file(self.path)  # never raises: a run that ends well must not fail here


def remove_leftovers(model_dir: Path) -> list[Path]:
    """Delete the temp files of saves that a killed run left behind (``.NAME.XXXX.tmp``, see
    home.atomic_path) in the places only a training run writes: the checkpoints (every kind's
    folders), the tokenized data and the tokenizer. Call it holding the model's lock: then no
    live run can own them."""
    model_dir = Path(model_dir)
    tokenizer = layout.tokenizer_file(model_dir)
    found = list(tokenizer.parent.glob(f".{tokenizer.name}.*.tmp"))
    for folder in (layout.checkpoints_dir(model_dir), layout.data_dir(model_dir)):
        if folder.is_dir():
            found += folder.rglob(".*.tmp")
    removed = []
    for p in found:
        if p.is_file() and osdeps.remove_file(p):
            removed.append(p)
    return removed


def locked(model_dir: Path, log=print):
    """The model's lock, with the leftovers of killed runs cleared once it is held."""
    return _Locked(model_dir, log)


class _Locked(TrainingLock):
    def __init__(self, model_dir: Path, log):
        super().__init__(model_dir)
        self.log = log

    def __enter__(self):
        super().__enter__()
        removed = remove_leftovers(self.path.parent)
        if removed:
            self.log(Notice("cli.leftovers_removed", count=len(removed)))
        return self


# ---- pieces every kind shares -----------------------------------------------------------------

def make_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float, beta2: float,
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, beta2), eps=1e-8, **extra)


def check_finite(loss: float, step: int, learning_rate: float) -> None:
    if not math.isfinite(loss):
        raise UserError("run.loss_not_finite", loss=str(loss), step=step, learning_rate=learning_rate)


class EvalClock:
    """When the next eval is due: every ``eval_every`` steps, and by the clock — the first at most
    FIRST_EVAL_SECONDS after the first step, then every tenth of ``max_time`` (none without a
    budget). Evals by the clock never take more than about a fifth of the time. With a budget, a
    step count's eval that would come less than half a period after the last one is left out:
    it would cost as much as any other and show next to nothing new (and the patience would
    count two evaluations seconds apart as two)."""

    def __init__(self, eval_every: int, max_time: float | None):
        self.every = eval_every
        self.period = max_time / EVAL_SHARE if max_time else None
        self.next_at: float | None = None
        self.last_at = -math.inf

    def due(self, step: int, now: float) -> bool:
        if self.next_at is None:  # the first call comes after the first step
            self.next_at = now + min(FIRST_EVAL_SECONDS, self.period or FIRST_EVAL_SECONDS)
        by_steps = step % self.every == 0 and (self.period is None or now - self.last_at >= self.period / 2)
        return by_steps or now >= self.next_at

    def done(self, now: float, seconds: float) -> None:
        self.last_at = now
        if self.next_at is None:
            return  # the start eval: the clock starts with the first step
        self.next_at = now + max(self.period, 4 * seconds) if self.period else math.inf


class Job:
    """What differs between the kinds of run. Subclasses set the attributes and methods below;
    the loop (:func:`run_loop`) reads and advances ``step``."""

    events: EventLog
    device: torch.device
    resuming: bool = False       # continues a saved run
    step: int = 0
    resumed_at: int = 0          # the step this invocation started from
    elapsed_before: float = 0.0  # wall seconds of earlier invocations of the run
    max_iterations: int | None = None
    max_time: float | None = None
    final_reserve: float = 0.0   # with max_time: seconds left at its end for the final evaluation
    eval_every: int = 1
    save_every: int = 1
    log_every: int = 1
    sample_every: int | None = None  # extra sample cadence (None: samples come with evals only)
    t_start: float = 0.0
    loop_seconds: float = 0.0  # the loop's own time, without the final evaluation and save
    stop: StopRequested | None = None  # set by run_loop

    def budget_used(self, warmup: int = 0) -> float:
        """How far the run is through its budget, for a schedule that decays over it: the steps after
        ``warmup`` of ``max_iterations``, or this invocation's share of ``max_time``, whichever is
        further along; 0 for a run without either (it runs until stopped: nothing to decay over)."""
        used = (self.step - warmup) / max(1, self.max_iterations - warmup) if self.max_iterations else 0.0
        if self.max_time and self.t_start:
            used = max(used, (time.time() - self.t_start) / self.max_time)
        return min(1.0, max(0.0, used))

    def stop_requested(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Between pieces of a long step: raise StepStopped when a stop has been asked for (the
        step is given up, with the gradient it has put in ``optimizer``'s parameters so far; the
        run ends at the last whole step, saved)."""
        if self.stop is not None and self.stop.asked():
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            raise StepStopped

    def start_fields(self) -> dict:
        """Fields of the "started"/"resumed" status event besides state and step."""
        return {}

    def before_loop(self) -> dict | None:
        """Work before the first step (a start eval, seeding); returns the start eval, if any."""
        return None

    def train_step(self) -> None:
        raise NotImplementedError

    def after_loop(self) -> None:
        """Work once the steps are over, before the final evaluation and save (``loop_seconds`` is set)."""

    # Set by an evaluation when the held-out loss has stopped improving (the patience setting):
    # {"best_step", "best_bpb"}; the loop then ends the run as "stopped", its best model kept.
    learned_enough: dict | None = None

    def sync(self, stop_now: bool) -> bool:
        """After each step: agree across processes (DDP) whether to stop, check the loss."""
        return stop_now

    def step_fields(self, now: float) -> dict:
        """The metrics of a "step" event (the loop adds step, max_iterations, elapsed, eta)."""
        return {}

    def evaluate(self, full: bool) -> dict:
        """Emit an "eval" event and return it ({} if there is nothing to evaluate)."""
        return {}

    def samples(self) -> None:
        """Emit "sample" events (after every eval)."""

    def save(self, kind: str, last_eval: dict | None) -> Path | None:
        raise NotImplementedError

    def oom_error(self) -> UserError:
        raise NotImplementedError

    def summary(self, status: str, message: str | None, last_eval: dict | None, start_eval: dict | None,
                wall: float, checkpoints: list[str]) -> dict:
        raise NotImplementedError


def run_loop(job: Job, stop: StopRequested, *, kind: str | None = None) -> dict:  # noqa: C901 - the one loop: every stop reason and cadence of every run kind meets here, on purpose
    """Run ``job`` to its end (see the module doc); returns its summary."""
    events = job.events
    job.stop = stop
    kind_field = {"kind": kind} if kind else {}
    events.emit("status", state="resumed" if job.resuming else "started", **kind_field,
                step=job.step, **job.start_fields())
    job.t_start = t_start = time.time()
    status, message, code, params = "completed", None, "run.completed", {}
    checkpoints: list[str] = []
    last_eval = start_eval = None
    clock = EvalClock(job.eval_every, job.max_time)
    trimmer = MemoryTrimmer() if job.device.type == "cpu" else None
    t_log = time.time()

    def eval_and_sample(full: bool) -> dict:
        t0 = time.time()
        res = job.evaluate(full)
        job.samples()
        clock.done(time.time(), time.time() - t0)
        return res

    try:
        start_eval = last_eval = job.before_loop()
        while job.max_iterations is None or job.step < job.max_iterations:
            job.train_step()
            job.step += 1
            if trimmer is not None:
                trimmer.after_step()
            now = time.time()
            # the final evaluation comes out of the budget, not after it
            out_of_time = job.max_time is not None and now - t_start + job.final_reserve >= job.max_time
            why = stop.check()
            # every process must stop at the same step (DDP), or the others wait forever
            stop_now = job.sync(out_of_time or bool(why) or bool(job.learned_enough))
            last = job.max_iterations is not None and job.step >= job.max_iterations
            if job.step % job.log_every == 0 or last or now - t_log >= 1.0:
                elapsed = now - t_start
                eta = None
                if job.max_iterations is not None:
                    eta = (job.max_iterations - job.step) * elapsed / max(1, job.step - job.resumed_at)
                if job.max_time is not None:
                    eta = min(eta if eta is not None else math.inf, max(0.0, job.max_time - elapsed))
                events.emit("step", step=job.step, max_iterations=job.max_iterations,
                            elapsed=job.elapsed_before + elapsed, eta=eta, **job.step_fields(now))
                t_log = now
            if stop_now:
                status, message, code, params = stop_status(why, out_of_time, job.max_time, job.step,
                                                            job.learned_enough)
                break
            if last:
                break
            if clock.due(job.step, now):
                last_eval = eval_and_sample(full=False) or last_eval
            elif job.sample_every and job.step % job.sample_every == 0:
                job.samples()
            if job.step % job.save_every == 0:
                path = job.save("periodic", last_eval)
                if path is not None:
                    checkpoints.append(str(path))
    except StepStopped:  # asked to stop in the middle of a step: it is given up
        status, message, code, params = stop_status(stop.check(), False, job.max_time, job.step)
    except BaseException as e:  # noqa: BLE001 - Ctrl-C saves and stops; the rest is reported
        if not isinstance(e, KeyboardInterrupt):
            _fail(job, e)
        status, message, code, params = "interrupted", "Ctrl-C", "run.interrupted", {"step": job.step,
                                                                                      "reason": "Ctrl-C"}
    job.loop_seconds = time.time() - t_start
    job.after_loop()
    # The final eval: the whole validation split when the run ended as planned, the quick subset
    # on pause/cancel (the person sees where it stopped); none on a signal, which must be quick.
    if status in ("completed", "stopped") or (status in ("paused", "cancelled") and job.step > job.resumed_at):
        try:
            last_eval = eval_and_sample(full=status in ("completed", "stopped")) or last_eval
        except StepStopped:  # asked to stop during the final eval: the run is saved without it
            pass
    final_path = job.save("final", last_eval)
    if final_path is not None:
        checkpoints.append(str(final_path))
    params = params or {"step": job.step}
    summary = job.summary(status, message, last_eval, start_eval, time.time() - t_start, sorted(set(checkpoints)))
    events.emit("status", state=status, step=job.step, message=message, code=code, params=params, summary=summary)
    events.close()
    return summary


def _fail(job: Job, exc: BaseException) -> None:
    """The end of a run by an exception: out of memory becomes a UserError saying what to lower
    (the last checkpoint is kept); every failure is a "failed" status event, then propagates."""
    err = job.oom_error() if is_out_of_memory(exc) else exc
    if isinstance(err, UserError):
        code, params, message = err.code, err.params, str(err)
    else:
        message = str(err)[:500]
        code, params = "run.failed", {"step": job.step, "error": message}
    job.events.emit("status", state="failed", step=job.step, message=message, code=code, params=params)
    job.events.close()
    if err is not exc:
        raise err from None
    raise exc


def checkpoint_obj(job: Job, model, mcfg, tokenizer, optimizer, run_id: str, meta: dict, **extra) -> dict:
    """What every kind's checkpoint holds (the training format, loadable by checkpoint.safe_load
    and build_model), plus the kind's own ``extra`` state for an exact resume."""
    from .checkpoint import FORMAT, FORMAT_VERSION
    from .events import utc_now
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": mcfg.to_dict(),
            "state_dict": model.state_dict(), "tokenizer": tokenizer.to_json(),
            "optimizer": optimizer.state_dict(), "step": job.step, "run_id": run_id,
            "elapsed": job.elapsed_before + (time.time() - job.t_start), **extra,
            "meta": {"saved_at": utc_now(), **meta}}
