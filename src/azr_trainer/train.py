"""Pretraining: next-token loss on the model's books, with evals, samples and checkpoints.

AdamW with linear warmup and cosine decay to a floor, gradient clipping and
accumulation, bf16 autocast and torch.compile on CUDA. Every ``eval_every`` steps it
reports val loss, perplexity and bits per byte; the final eval covers the whole
validation split. Checkpoints are atomic and hold everything for an exact resume.
Stops cleanly on max_iterations, max_time, Ctrl-C/SIGTERM or a control file (the
studio's pause/cancel).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import store
from .checkpoint import (FORMAT, FORMAT_VERSION, atomic_torch_save, checkpoint_dir, init_checkpoint,
                         list_step_checkpoints, prune_checkpoints, safe_load)
from .data import BatchSampler, prepare_data, validation_windows
from .device import available_memory_bytes, is_out_of_memory, pick_device, release_free_memory, set_threads
from .events import EventLog, Listener
from .home import Conflict, UserError
from .model import Transformer, estimate_training_memory, training_flops_per_token
from .sample import generate
from .settings import TRAIN



@dataclass
class TrainConfig:
    """Defaults and bounds of the user's settings: settings.TRAIN; the rest are fixed here."""
    books: list[str]
    max_iterations: int = TRAIN.default("max_iterations")
    batch_size: int = TRAIN.default("batch_size")
    learning_rate: float = TRAIN.default("learning_rate")
    save_every: int = TRAIN.default("save_every")
    eval_every: int = TRAIN.default("eval_every")
    eval_windows: int | None = 32   # windows per periodic eval (None: all); the final eval uses all
    schedule: str = "steps"         # cosine over max_iterations, or "time": over max_time (budget runs)
    max_time: float | None = TRAIN.default("max_time")  # seconds of wall clock for this invocation
    warmup_iters: int | None = TRAIN.default("warmup_iters")  # default: 5% of max_iterations, at most 200
    min_lr_ratio: float = TRAIN.default("min_lr_ratio")
    weight_decay: float = TRAIN.default("weight_decay")
    beta2: float = TRAIN.default("beta2")
    grad_clip: float = 1.0
    grad_accum: int = TRAIN.default("grad_accum")
    seq_len: int | None = TRAIN.default("seq_len")  # default: the model's max_seq_len
    val_fraction: float = TRAIN.default("val_fraction")
    device: str = TRAIN.default("device")
    threads: int | None = TRAIN.default("threads")
    compile: str = TRAIN.default("compile")  # auto (CUDA only), on, off
    sample_every: int | None = None  # default: eval_every
    sample_prompts: list[str] | None = None  # default: a newline and the opening words of the first book
    sample_length: int = 48
    log_every: int = TRAIN.default("log_every")
    keep_last: int = 3
    seed: int = TRAIN.default("seed")
    resume: bool = TRAIN.default("resume")

    def validate(self) -> "TrainConfig":
        TRAIN.check(self)
        if self.schedule not in ("steps", "time") or (self.schedule == "time" and not self.max_time):
            raise UserError("schedule must be 'steps', or 'time' together with max_time.")
        return self


def lr_at(step: int, cfg: TrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warmup, then cosine decay from learning_rate to min_lr_ratio × learning_rate.
    With schedule "time", progress is the share of max_time used (so a budget run ends its
    decay exactly when the budget does; such runs are not bit-exact on resume)."""
    warmup = cfg.warmup_iters if cfg.warmup_iters is not None else min(200, max(1, cfg.max_iterations // 20))
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, cfg.max_iterations - warmup))
    if cfg.schedule == "time":
        progress = max(progress, min(1.0, time_fraction))
    floor = cfg.learning_rate * cfg.min_lr_ratio
    return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - floor)


def default_sample_prompts(opening: str) -> list[str]:
    """Fixed prompts for progress samples: a bare newline, and the first words of the book."""
    first_line = next((line for line in opening.splitlines() if line.strip()), "")
    words = " ".join(first_line.split()[:3])
    return ["\n"] + ([words + " "] if words else [])


def make_optimizer(model: Transformer, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, cfg.beta2), eps=1e-8, **extra)


@torch.no_grad()
def evaluate(model: Transformer, val, val_bytes: int, seq_len: int, device, autocast, limit: int | None,
             batch_size: int = 16) -> dict:
    """Total NLL over validation windows → loss per token, perplexity, and bits per UTF-8 byte.
    With ``limit`` the bpb is extrapolated from the subset (tokens-per-byte of the whole split)."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    xs, ys = [], []

    def flush():
        nonlocal total_nll, total_tokens
        # windows can differ in length only for the last one; pad targets with -1 (ignored)
        T = max(x.numel() for x in xs)
        X = torch.zeros(len(xs), T, dtype=torch.long)
        Y = torch.full((len(xs), T), -1, dtype=torch.long)
        for i, (x, y) in enumerate(zip(xs, ys)):
            X[i, :x.numel()], Y[i, :y.numel()] = x, y
        with autocast():
            _, loss = model(X.to(device), Y.to(device), reduction="sum")
        total_nll += float(loss)
        total_tokens += int((Y >= 0).sum())
        xs.clear(), ys.clear()

    for x, y in validation_windows(val, seq_len, limit):
        xs.append(x), ys.append(y)
        if len(xs) == batch_size:
            flush()
    if xs:
        flush()
    model.train()
    if total_tokens == 0:
        return {}
    loss = total_nll / total_tokens
    all_tokens = len(val) - 1
    bits = loss / math.log(2) * all_tokens  # whole-split estimate (exact when the eval covered it all)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_bpb": bits / max(1, val_bytes),
            "val_tokens": total_tokens, "full": total_tokens == all_tokens}


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StopRequested:
    """Why training should stop early: a signal handler sets it, or the studio writes
    "pause"/"cancel" into a control file (works the same on Windows, where signals don't),
    or the studio that started this worker died (the worker then saves and stops)."""

    def __init__(self, control_file: Path | None = None, watch_parent: bool = False):
        self.reason: str | None = None
        self.control_file = control_file
        self.parent = os.getppid() if watch_parent else None

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def check(self) -> str | None:
        if self.reason is None and self.control_file is not None and self.control_file.exists():
            self.reason = self.control_file.read_text(encoding="utf-8").strip() or "stop"
        if self.reason is None and self.parent is not None and os.getppid() != self.parent:
            self.reason = "parent-exited"
        return self.reason


def fail_run(events: EventLog, step: int, exc: BaseException, oom_advice: str) -> None:
    """The end of a run's loop by an exception: Ctrl-C returns (the caller saves and stops);
    out of memory becomes a failed event and a UserError with ``oom_advice`` (what to lower);
    anything else a failed event, and it propagates."""
    if isinstance(exc, KeyboardInterrupt):
        return
    message = oom_advice if is_out_of_memory(exc) else str(exc)[:500]
    events.emit("status", state="failed", step=step, message=message)
    events.close()
    if is_out_of_memory(exc):
        raise UserError(oom_advice) from None
    raise exc


class TrainingLock:
    """One training process per model: a lock file holding the owner's pid."""

    def __init__(self, model_dir: Path):
        self.path = model_dir / ".train.lock"

    def __enter__(self):
        if self.path.exists():
            try:
                pid = int(self.path.read_text(encoding="utf-8").strip() or 0)
            except ValueError:
                pid = 0
            if pid and _pid_alive(pid) and pid != os.getpid():
                raise Conflict(f"Model '{self.path.parent.name}' is already being trained (process {pid}). "
                               "Wait for it, or stop it first.")
        self.path.write_text(str(os.getpid()), encoding="utf-8")
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap check without extra packages; treat the lock as held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def train(home: Path, name: str, cfg: TrainConfig, listeners: list[Listener] | None = None,
          stop: StopRequested | None = None, log: Callable[[str], None] = print, run_id: str | None = None) -> dict:
    """Train model ``name`` on its books; returns the summary the CLI prints with --json.

    ``run_id`` names the run's folder (the studio picks it); by default a new run gets a
    timestamp and a resumed run keeps the id stored in its checkpoint."""
    cfg.validate()
    store.get_model(home, name)
    dist = Distributed.from_env(cfg.device)
    try:
        if not dist.is_main:
            return _train(home, name, cfg, [], stop, log, run_id, dist)
        with TrainingLock(store.model_dir(home, name)):
            return _train(home, name, cfg, listeners, stop, log, run_id, dist)
    finally:
        dist.close()


class Distributed:
    """torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK) → a process group, or a single process.

    Every rank draws the same global batch from the same seeded sampler and trains on its
    own slice; DistributedDataParallel averages the gradients, so N processes follow the
    same loss curve as one process with the same global batch_size. Rank 0 alone writes
    checkpoints, events and the registry."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, backend: str | None = None):
        self.rank, self.world, self.local_rank, self.backend = rank, world, local_rank, backend

    @classmethod
    def from_env(cls, device_choice: str) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as td
        use_cuda = torch.cuda.is_available() and device_choice in ("auto", "cuda")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        backend = "nccl" if use_cuda else "gloo"
        td.init_process_group(backend)
        return cls(td.get_rank(), td.get_world_size(), local_rank, backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, choice: str) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return pick_device("cpu" if self.backend == "gloo" else choice)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td
            td.barrier()

    def mean_and_any(self, value: float, flag: bool, device) -> tuple[float, bool]:
        """Average a number and OR a flag across ranks in one collective (loss, and "stop now")."""
        if self.world == 1:
            return value, flag
        import torch.distributed as td
        t = torch.tensor([value, float(flag)], dtype=torch.float64, device=device)
        td.all_reduce(t)
        return float(t[0]) / self.world, bool(t[1] > 0)

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as td
            if td.is_initialized():
                try:
                    td.barrier()  # let rank 0 finish its final eval and save before the group goes away
                finally:
                    td.destroy_process_group()


def _train(home, name, cfg, listeners, stop, log, run_id, dist: Distributed) -> dict:
    stop = stop or StopRequested()
    info = store.get_model(home, name)
    mcfg = info.config
    mdir = store.model_dir(home, name)
    seq_len = cfg.seq_len or mcfg.max_seq_len
    if seq_len > mcfg.max_seq_len:
        raise UserError(f"seq_len ({seq_len}) cannot exceed the model's max_seq_len ({mcfg.max_seq_len}).")
    if dist.world > 1 and cfg.schedule == "time":
        raise UserError("schedule 'time' follows one process's clock; use the step schedule with several processes.")
    if cfg.batch_size % dist.world:
        raise UserError(f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({dist.world}).")
    device = dist.device(cfg.device)
    threads = set_threads(cfg.threads) if device.type == "cpu" else None
    torch.manual_seed(cfg.seed)

    mem_need = estimate_training_memory(mcfg, cfg.batch_size // dist.world, seq_len)
    mem_have = available_memory_bytes(device)
    if mem_have is not None and mem_need > 0.9 * mem_have:
        raise UserError(f"Training this model at batch_size {cfg.batch_size} and max_seq_len {seq_len} needs about "
                        f"{mem_need / 2**30:.1f} GiB but only {mem_have / 2**30:.1f} GiB is free. "
                        "Lower batch_size (e.g. 16 → 8 or 4), then max_seq_len, d_model or num_layers.")

    resume_obj = None
    if cfg.resume:
        steps = list_step_checkpoints(mdir)
        if not steps:
            raise UserError(f"Nothing to resume: model '{name}' has no checkpoint. Start without --resume.")
        resume_obj = safe_load(steps[-1][1])
        saved_books = resume_obj["train_config"]["books"]
        if saved_books != cfg.books:
            raise UserError(f"--resume continues the run on {','.join(saved_books)}; "
                            f"you asked for {','.join(cfg.books)}. Resume with the same books or start a new run.")

    if not dist.is_main:
        dist.barrier()  # rank 0 trains the tokenizer and tokenizes the books first
    data = prepare_data(home, mdir, cfg.books, mcfg.tokenizer, mcfg.vocab_size, cfg.val_fraction,
                        log=log if dist.is_main else (lambda m: None))
    if dist.is_main:
        dist.barrier()
        for w in data.warnings:
            log(f"Warning: {w}")
    tokenizer = data.tokenizer
    if cfg.sample_prompts is None:
        cfg.sample_prompts = default_sample_prompts(tokenizer.decode(data.train[1:200].tolist()))

    model = Transformer(mcfg)
    if resume_obj is None and init_checkpoint(mdir).exists():
        model.load_state_dict(safe_load(init_checkpoint(mdir))["state_dict"])  # imported: start from its weights
    model = model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    sampler = BatchSampler(data.train, seq_len, cfg.batch_size, cfg.seed)
    step, tokens_seen, best_bpb, elapsed_before = 0, 0, None, 0.0
    given_run_id = run_id
    run_id = given_run_id or datetime.now(timezone.utc).strftime("run-%Y%m%d-%H%M%S")
    if resume_obj is not None:
        model.load_state_dict(resume_obj["state_dict"])
        optimizer.load_state_dict(resume_obj["optimizer"])
        sampler.load_state(resume_obj["rng"]["data"])
        torch.set_rng_state(resume_obj["rng"]["torch"])
        step, tokens_seen = resume_obj["step"], resume_obj["tokens_seen"]
        best_bpb, elapsed_before = resume_obj.get("best_val_bpb"), resume_obj.get("elapsed", 0.0)
        run_id = given_run_id or resume_obj["run_id"]
        # The schedule is defined by max_iterations; a resumed run may extend it.
    events = EventLog(mdir / "runs" / run_id / "events.jsonl" if dist.is_main else None, run_id, listeners)

    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)

    compiled = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel
        compiled = DistributedDataParallel(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    if cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda"):
        compiled = torch.compile(compiled)
    rows = slice(dist.rank * cfg.batch_size // dist.world, (dist.rank + 1) * cfg.batch_size // dist.world)

    flops_per_token = training_flops_per_token(mcfg, seq_len)
    tokens_per_step = cfg.batch_size * seq_len * cfg.grad_accum
    events.emit("status", state="resumed" if resume_obj else "started", step=step,
                max_iterations=cfg.max_iterations, device=str(device), threads=threads, processes=dist.world,
                parameters=model.num_parameters(), train_tokens=int(len(data.train)),
                val_tokens=int(len(data.val)), val_bytes=data.val_bytes, tokenizer_vocab=tokenizer.vocab_size,
                config=mcfg.to_dict(), train_config=asdict(cfg), warnings=data.warnings)

    def save(kind: str, last_eval: dict | None) -> Path | None:
        nonlocal best_bpb
        if not dist.is_main:
            return None
        obj = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": mcfg.to_dict(),
            "state_dict": model.state_dict(), "tokenizer": tokenizer.to_json(),
            "optimizer": optimizer.state_dict(), "step": step, "tokens_seen": tokens_seen,
            "elapsed": elapsed_before + (time.time() - t_start), "run_id": run_id,
            "train_config": asdict(cfg), "best_val_bpb": best_bpb,
            "rng": {"torch": torch.get_rng_state(), "data": sampler.state()},
            "meta": {"model": name, "books": cfg.books, "saved_at": _utcnow(), "kind": kind,
                     "val_bpb": (last_eval or {}).get("val_bpb")},
        }
        path = checkpoint_dir(mdir) / f"step_{step:07d}.pt"
        atomic_torch_save(obj, path)
        is_best = False
        bpb = (last_eval or {}).get("val_bpb")
        if bpb is not None and (best_bpb is None or bpb <= best_bpb):
            best_bpb, is_best = bpb, True
            obj["best_val_bpb"] = best_bpb
            atomic_torch_save(obj, checkpoint_dir(mdir) / "best.pt")
        prune_checkpoints(mdir, cfg.keep_last)
        store.update_model(home, name, trained_steps=step, best_val_bpb=best_bpb, last_trained=_utcnow(),
                           books=cfg.books)
        events.emit("checkpoint", step=step, path=str(path), best=is_best, kind=kind)
        return path

    def run_eval(full: bool) -> dict:
        if not dist.is_main:
            return {}
        res = evaluate(model, data.val, data.val_bytes, seq_len, device, autocast,
                       None if full else cfg.eval_windows)
        if res:
            events.emit("eval", step=step, **res)
        return res

    def run_samples() -> None:
        if not dist.is_main:
            return
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed + step)
        model.eval()
        for prompt in cfg.sample_prompts:
            ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
            out = generate(model, [ids], max_new_tokens=cfg.sample_length, temperature=0.8, top_k=40,
                           generator=gen, eot_id=tokenizer.eot_id)[0]
            events.emit("sample", step=step, prompt=prompt, text=tokenizer.decode(out))
        model.train()

    t_start = time.time()
    last_eval: dict | None = None
    sample_every = cfg.sample_every or cfg.eval_every
    status, message, checkpoints = "completed", None, []
    loss_acc, loss_n, t_log, tok_log = 0.0, 0, time.time(), 0
    train_loss = None
    model.train()
    try:
        while step < cfg.max_iterations:
            if step % cfg.eval_every == 0 and step > 0 and (resume_obj is None or step != resume_obj["step"]):
                last_eval = run_eval(full=False)
            if step % sample_every == 0 and step > 0 and cfg.sample_prompts:
                run_samples()
            lr = lr_at(step, cfg, (time.time() - t_start) / cfg.max_time if cfg.max_time else 0.0)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                x, y = sampler.next(device)
                x, y = x[rows], y[rows]
                with autocast():
                    loss = compiled(x, y)[1]  # drop the logits at once: B×T×vocab floats not kept through backward
                (loss / cfg.grad_accum).backward()
                step_loss += float(loss.detach()) / cfg.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cpu":
                release_free_memory()
            step += 1
            out_of_time = cfg.max_time is not None and time.time() - t_start >= cfg.max_time
            reason = stop.check()
            # every rank must stop at the same step, or the others would wait forever in all-reduce
            step_loss, stop_now = dist.mean_and_any(step_loss, out_of_time or bool(reason), device)
            tokens_seen += tokens_per_step
            loss_acc, loss_n, tok_log = loss_acc + step_loss, loss_n + 1, tok_log + tokens_per_step
            if not math.isfinite(step_loss):
                raise UserError(f"The loss became {step_loss} at step {step}: lower learning_rate "
                                f"(now {cfg.learning_rate}) and resume from the last checkpoint.")
            now = time.time()
            # every log_every steps, and at least once a second so slow CPU runs still look alive
            if step % cfg.log_every == 0 or step == cfg.max_iterations or now - t_log >= 1.0:
                tps = tok_log / max(1e-9, now - t_log)
                elapsed = now - t_start
                train_loss = loss_acc / loss_n
                events.emit("step", step=step, max_iterations=cfg.max_iterations, loss=train_loss, lr=lr,
                            grad_norm=float(grad_norm), tokens_per_s=tps, tokens_seen=tokens_seen,
                            flops_per_s=tps * flops_per_token, elapsed=elapsed_before + elapsed,
                            eta=(cfg.max_iterations - step) * (elapsed / max(1, step - (resume_obj or {}).get("step", 0))))
                loss_acc, loss_n, t_log, tok_log = 0.0, 0, now, 0
            if step % cfg.save_every == 0 and step < cfg.max_iterations and dist.is_main:
                checkpoints.append(str(save("periodic", last_eval)))
            if stop_now:
                if reason:
                    status, message = ("cancelled" if reason == "cancel" else "paused" if reason == "pause"
                                       else "interrupted"), f"stopped by {reason}"
                elif out_of_time:
                    status, message = "stopped", f"max_time {cfg.max_time:g} s reached"
                else:
                    status, message = "interrupted", "another training process stopped"
                break
    except BaseException as e:
        fail_run(events, step, e, f"Ran out of memory at step {step} (batch_size {cfg.batch_size}, max_seq_len "
                 f"{seq_len}, d_model {mcfg.d_model}). Lower batch_size (e.g. {cfg.batch_size} → "
                 f"{max(1, cfg.batch_size // 2)}), then max_seq_len, then d_model or num_layers, and resume: "
                 "the last checkpoint is kept.")
        status, message = "interrupted", "Ctrl-C"
    # The final eval covers the whole validation split (skipped on pause/cancel, which must be quick),
    # then the last checkpoint records it.
    final = run_eval(full=True) if len(data.val) > 1 and status in ("completed", "stopped") else {}
    if final:
        last_eval = final
    final = last_eval or {}
    if cfg.sample_prompts and status == "completed":
        run_samples()
    final_path = save("final", last_eval)
    if final_path is not None:
        checkpoints.append(str(final_path))
    wall = time.time() - t_start
    summary = {
        "model": name, "run": run_id, "status": status, "message": message, "step": step,
        "max_iterations": cfg.max_iterations, "train_loss": train_loss,
        "val_loss": final.get("val_loss"), "val_ppl": final.get("val_ppl"), "val_bpb": final.get("val_bpb"),
        "best_val_bpb": best_bpb, "tokens_seen": tokens_seen,
        "tokens_per_s": (tokens_seen - (resume_obj or {}).get("tokens_seen", 0)) / max(1e-9, wall),
        "wall_seconds": wall, "device": str(device), "threads": threads,
        "checkpoints": sorted(set(checkpoints)), "best_checkpoint": str(checkpoint_dir(mdir) / "best.pt")
        if (checkpoint_dir(mdir) / "best.pt").exists() else None,
        "events": str(events.path),
    }
    events.emit("status", state=status, step=step, message=message, summary=summary)
    events.close()
    return summary


def run_dir(home: Path, name: str, run_id: str) -> Path:
    return store.model_dir(home, name) / "runs" / run_id
