"""Pretraining: next-token loss on the model's books, with evals, samples and checkpoints.

AdamW with linear warmup and cosine decay to a floor, gradient clipping and
accumulation, bf16 autocast and torch.compile on CUDA. Every ``eval_every`` steps it
reports val loss, perplexity and bits per byte; the final eval covers the whole
validation split (with a time budget, as much of it as fits inside the budget). Checkpoints
are atomic and hold everything for an exact resume.
The loop itself (cadence, stops, final eval and save, summary) is runloop.py's, shared
with self-play and reasoning; this module supplies the step, the eval and the checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import books, catalogue, decode, layout, store
from .autosize import check_against_run, training_precision
from .averaging import WeightAverage
from .checkpoint import atomic_torch_save, checkpoint_dir, init_checkpoint, list_step_checkpoints, safe_load, \
    save_step
from .data import BatchSampler, prepare_data, validation_windows
from .device import available_memory_bytes, pick_device, set_threads
from .earlier import EarlierRun
from .events import EventLog, Listener, new_run_id, utc_now
from .errors import Notice
from .eval_budget import EvalBudget
from .home import UserError
from .milestones import Baselines, real_word_share, split_text
from .model import Transformer, estimate_training_memory, training_flops_per_token
from .runloop import Job, StopRequested, TrainingLock, _pid_alive, check_finite, checkpoint_obj, \
    locked, make_optimizer, run_loop, warmup_cosine
from .sample import generate
from .settings import TRAIN

# An evaluation counts against the patience only when clearly worse than the best (the periodic
# evaluations use a fixed subset, which wobbles by about this much).
PATIENCE_MARGIN = 0.01
BUDGET_WARMUP_SHARE = 0.05  # of a time budget: the longest the default warm-up takes
# ... and the longest a given one takes (a plan's, set for the steps it expected: 3-10% of them).
MAX_WARMUP_SHARE = 0.10

_REEXPORTED = (StopRequested, TrainingLock, _pid_alive)  # the CLI, jobs and export import them from here


@dataclass
class TrainConfig:
    """Defaults and bounds of the user's settings: settings.TRAIN; the rest are fixed here."""
    books: list[str]
    max_iterations: int = TRAIN.default("max_iterations")
    batch_size: int = TRAIN.default("batch_size")
    learning_rate: float = TRAIN.default("learning_rate")
    save_every: int = TRAIN.default("save_every")
    eval_every: int = TRAIN.default("eval_every")
    eval_windows: int | None = 32   # windows per periodic eval (None: all); the final eval: all that fit
    schedule: str = "steps"         # cosine over max_iterations, or "time": over max_time (budget runs)
    max_time: float | None = TRAIN.default("max_time")  # seconds of wall clock for this invocation
    warmup_iters: int | None = TRAIN.default("warmup_iters")  # default: 5% of max_iterations, at most 200
    min_lr_ratio: float = TRAIN.default("min_lr_ratio")
    weight_decay: float = TRAIN.default("weight_decay")
    dropout: float = TRAIN.default("dropout")
    patience: int = TRAIN.default("patience")
    beta2: float = TRAIN.default("beta2")
    grad_clip: float = 1.0
    grad_accum: int = TRAIN.default("grad_accum")
    seq_len: int | None = TRAIN.default("seq_len")  # default: the model's max_seq_len
    val_fraction: float = TRAIN.default("val_fraction")
    device: str = TRAIN.default("device")
    threads: int | None = TRAIN.default("threads")
    compile: str = TRAIN.default("compile")  # auto (CUDA only), on, off
    precision: str = TRAIN.default("precision")  # auto: autosize.training_precision
    weight_averaging: str = TRAIN.default("weight_averaging")  # on: the run's model is averaging.WeightAverage's
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
            raise UserError("runs.schedule", value=repr(self.schedule))
        return self


def lr_at(step: int, cfg: TrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warmup, then cosine decay from learning_rate to min_lr_ratio × learning_rate.
    With schedule "time", progress is the share of max_time used (so a budget run ends its
    decay with the budget, but for the final evaluation's share; such runs are not bit-exact on
    resume)."""
    warmup = cfg.warmup_iters if cfg.warmup_iters is not None else min(200, max(1, cfg.max_iterations // 20))
    progress = min(1.0, (step - warmup) / max(1, cfg.max_iterations - warmup))
    if cfg.schedule == "time":
        progress = max(progress, min(1.0, time_fraction))
        if step < warmup:
            # A warm-up under a budget ends after its steps or a share of the time, whichever
            # comes first: the default one's 200 steps, or a plan's steps on a machine much
            # slower than the plan measured (another program busy), would otherwise take the
            # whole run, the rate never at its peak nor decayed.
            share = BUDGET_WARMUP_SHARE if cfg.warmup_iters is None else MAX_WARMUP_SHARE
            ramp = max((step + 1) / warmup, time_fraction / share)
            if ramp < 1:
                return cfg.learning_rate * ramp
            warmup = 0
    return warmup_cosine(cfg.learning_rate, step, warmup, progress, cfg.min_lr_ratio)


def default_sample_prompts(opening: str) -> list[str]:
    """Fixed prompts for progress samples: a bare newline, and the first words of the book."""
    first_line = next((line for line in opening.splitlines() if line.strip()), "")
    words = " ".join(first_line.split()[:3])
    return ["\n"] + ([words + " "] if words else [])


@torch.no_grad()
def evaluate(model: Transformer, val, val_bytes: int, seq_len: int, device, autocast, limit: int | None,
             batch_size: int = 16) -> dict:
    """Total NLL over validation windows → loss per token, perplexity, and bits per UTF-8 byte.
    With ``limit`` the bpb is extrapolated from the subset (tokens-per-byte of the whole split)."""
    was_training = model.training
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
    model.train(was_training)
    if total_tokens == 0:
        return {}
    loss = total_nll / total_tokens
    all_tokens = len(val) - 1
    bits = loss / math.log(2) * all_tokens  # whole-split estimate (exact when the eval covered it all)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_bpb": bits / max(1, val_bytes),
            "val_tokens": total_tokens, "full": total_tokens == all_tokens}


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
            return run_loop(_Pretraining(home, name, cfg, [], log, run_id, dist), stop or StopRequested())
        with locked(store.model_dir(home, name), log):
            return run_loop(_Pretraining(home, name, cfg, listeners, log, run_id, dist), stop or StopRequested())
    finally:
        dist.close()


# "auto" compiles the training step on a GPU, but the build takes tens of seconds and a time
# budget counts them: a run of a few minutes would spend much of its time building.
COMPILE_BY_ITSELF_AFTER_S = 300.0


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

    def mean_and_any(self, value: torch.Tensor, flag: bool, device) -> tuple[torch.Tensor, bool]:
        """Average a number (a 0-d tensor, left on its device) and OR a flag across ranks in one
        collective (loss, and "stop now")."""
        if self.world == 1:
            return value, flag
        import torch.distributed as td
        t = torch.stack([value.to(device=device, dtype=torch.float64),
                         torch.tensor(float(flag), dtype=torch.float64, device=device)])
        td.all_reduce(t)
        return t[0] / self.world, bool(t[1] > 0)

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as td
            if td.is_initialized():
                try:
                    td.barrier()  # let rank 0 finish its final eval and save before the group goes away
                finally:
                    td.destroy_process_group()


class _Pretraining(Job):
    """Pretraining as a run_loop job: next-token loss on the books, evals on the validation split."""

    def __init__(self, home, name, cfg: TrainConfig, listeners, log, run_id, dist: Distributed):  # noqa: C901 - the checks before training (shape, processes, memory, resume, books), in the order a person fixes them
        info = store.get_model(home, name)
        self.home, self.name, self.cfg, self.dist, self.log = home, name, cfg, dist, log
        self.mcfg = mcfg = info.config
        self.mdir = mdir = store.model_dir(home, name)
        self.seq_len = seq_len = cfg.seq_len or mcfg.max_seq_len
        if seq_len > mcfg.max_seq_len:
            raise UserError("run.train.seq_len", seq_len=seq_len, max_seq_len=mcfg.max_seq_len)
        if dist.world > 1 and cfg.schedule == "time":
            raise UserError("run.train.time_schedule_processes")
        if cfg.batch_size % dist.world:
            raise UserError("run.train.batch_not_divisible", batch_size=cfg.batch_size, processes=dist.world)
        self.device = device = dist.device(cfg.device)
        self.threads = set_threads(cfg.threads) if device.type == "cpu" else None
        torch.manual_seed(cfg.seed)

        averaging = cfg.weight_averaging == "on" and dist.is_main  # only the process that evaluates and saves
        mem_need = estimate_training_memory(mcfg, cfg.batch_size // dist.world, seq_len, averaged=averaging)
        mem_have = available_memory_bytes(device)
        if mem_have is not None and mem_need > 0.9 * mem_have:
            raise UserError("run.train.memory", batch_size=cfg.batch_size, seq_len=seq_len,
                            need=f"{mem_need / 2**30:.1f}", have=f"{mem_have / 2**30:.1f}")

        resume_obj = None
        if cfg.resume:
            steps = list_step_checkpoints(mdir)
            if not steps:
                raise UserError("run.nothing_to_resume", name=name)
            resume_obj = safe_load(steps[-1][1])
            saved_books = resume_obj["train_config"]["books"]
            if saved_books != cfg.books:
                raise UserError("run.train.other_books", saved=", ".join(saved_books), asked=", ".join(cfg.books))

        if not dist.is_main:
            dist.barrier()  # rank 0 trains the tokenizer and tokenizes the books first
        self.data = data = prepare_data(home, mdir, cfg.books, mcfg.tokenizer, mcfg.vocab_size, cfg.val_fraction,
                                        log=log if dist.is_main else (lambda m: None))
        if dist.is_main:
            dist.barrier()
            for w in data.warnings:
                log(Notice("cli.warning", warning=w))
        self.tokenizer = data.tokenizer
        # which held-out text a best model was measured on: a book replaced under its old name is other text
        self.held_out = hashlib.sha256(memoryview(np.ascontiguousarray(data.val))).hexdigest()[:16]
        if resume_obj is not None and resume_obj.get("held_out", self.held_out) != self.held_out:
            raise UserError("run.train.other_text", name=name)  # its best and patience were measured on other text
        # the same, as the Training page can check it before a new run (store.ModelInfo.best_measured_on)
        self.measured_on = {"books": list(cfg.books), "seq_len": cfg.seq_len, "val_fraction": cfg.val_fraction,
                            "versions": {b: books.version(books.get_book(home, b)) for b in cfg.books}}
        # the milestones' yardsticks: xz on the held-out text, and the words of the books
        self.milestones = self.last_bpb = None
        if dist.is_main and data.val_bytes:
            self.milestones = Baselines.from_texts(split_text(self.tokenizer, data.train),
                                                   split_text(self.tokenizer, data.val))
        if cfg.sample_prompts is None:
            cfg.sample_prompts = default_sample_prompts(self.tokenizer.decode(data.train[1:200].tolist()))

        model = Transformer(mcfg)
        if resume_obj is None and init_checkpoint(mdir).exists():
            model.load_state_dict(safe_load(init_checkpoint(mdir))["state_dict"])  # imported: start from its weights
        self.model = model = model.to(device)
        model.dropout = cfg.dropout
        self.optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, cfg.beta2, device)
        self.sampler = BatchSampler(data.train, seq_len, cfg.batch_size, cfg.seed)
        self.tokens_seen, self.best_bpb, self.best_step, self.worse_evals = 0, None, None, 0
        self.kept_bpb = self.kept_step = None  # an earlier run's best, while this run has not beaten it
        self.run_id = run_id or new_run_id("run", unique=False)
        if resume_obj is not None:
            # a checkpoint of an averaging run holds the average as its weights and the last step's apart
            model.load_state_dict(resume_obj.get("trained_state_dict", resume_obj["state_dict"]))
            self.optimizer.load_state_dict(resume_obj["optimizer"])
            self.sampler.load_state(resume_obj["rng"]["data"])
            torch.set_rng_state(resume_obj["rng"]["torch"])
            self.step = self.resumed_at = resume_obj["step"]
            self.tokens_seen = self.tokens_before = resume_obj["tokens_seen"]
            self.best_bpb, self.elapsed_before = resume_obj.get("best_val_bpb"), resume_obj.get("elapsed", 0.0)
            # the patience goes on counting where it was (runs saved before it start again from 0)
            self.best_step, self.worse_evals = resume_obj.get("best_step"), resume_obj.get("worse_evals", 0)
            self.kept_bpb, self.kept_step = resume_obj.get("kept_bpb"), resume_obj.get("kept_step")
            self.run_id = run_id or resume_obj["run_id"]
            self.resuming = True
            if self.milestones is not None:  # each milestone is announced once per run, not once per worker
                self.milestones.passed.update(resume_obj.get("milestones_passed") or [])
            # The schedule is defined by max_iterations; a resumed run may extend it.
        self.tokens_before = self.tokens_seen
        # What the run evaluates, samples and saves: the average of its recent weights, or the model itself.
        self.average = WeightAverage(model) if averaging else None
        if self.average is not None and resume_obj is not None and "trained_state_dict" in resume_obj:
            self.average.module.load_state_dict(resume_obj["state_dict"])
        self.served = self.average.module if self.average is not None else model
        self.events = EventLog(layout.events_file(run_dir(home, name, self.run_id)) if dist.is_main else None,
                               self.run_id, listeners)
        self.max_iterations, self.max_time = cfg.max_iterations, cfg.max_time
        # what a budget lets the evaluations cost (none without one)
        self.eval_budget = EvalBudget(cfg.max_time, self.seq_len, len(self.data.val) - 1, cfg.eval_windows) \
            if cfg.max_time else None
        self.sample_seconds = 0.0  # the last round of samples
        self.eval_every, self.save_every, self.log_every = cfg.eval_every, cfg.save_every, cfg.log_every
        self.sample_every = cfg.sample_every if cfg.sample_every and cfg.sample_every != cfg.eval_every else None

        self.precision = training_precision(cfg.precision, device, home, self.threads)
        use_bf16 = self.precision == "bf16"
        self.autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)
        # On a CPU the evaluations stay fp32: one exact yardstick whatever the training precision.
        self.eval_autocast = self.autocast if device.type == "cuda" else contextlib.nullcontext
        compiled = model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            compiled = DistributedDataParallel(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
        if cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda"
                                   and (cfg.max_time is None or cfg.max_time >= COMPILE_BY_ITSELF_AFTER_S)):
            compiled = torch.compile(compiled)
        self.compiled = compiled
        self.rows = slice(dist.rank * cfg.batch_size // dist.world, (dist.rank + 1) * cfg.batch_size // dist.world)
        self.flops_per_token = training_flops_per_token(mcfg, seq_len)
        self.tokens_per_step = cfg.batch_size * seq_len * cfg.grad_accum
        # the log window: losses and tokens since the last "step" event
        self.loss_acc, self.loss_n, self.tok_log, self.t_log = 0.0, 0, 0, time.time()
        self.train_loss = None
        model.train()
        # Last, once every check has passed: a model trained before keeps what it has (EarlierRun).
        self.earlier = None
        if dist.is_main and resume_obj is None:
            self.earlier = EarlierRun(mdir)
            if self.earlier.found:
                self.kept_bpb, self.kept_step = self.earlier.kept_best(cfg, self.held_out)
                self.say(self.earlier.notice(self.kept_bpb))
        elif dist.is_main and self.kept_bpb is not None:  # resumed, the earlier best not beaten yet
            self.earlier = EarlierRun(mdir)
            self.earlier.steps_left = False  # moved at this run's first save, before the checkpoint resumed

    def start_fields(self) -> dict:
        cfg, data = self.cfg, self.data
        return dict(max_iterations=cfg.max_iterations, device=str(self.device), threads=self.threads,
                    precision=self.precision,
                    processes=self.dist.world, parameters=self.model.num_parameters(),
                    train_tokens=int(len(data.train)), val_tokens=int(len(data.val)), val_bytes=data.val_bytes,
                    tokenizer_vocab=self.tokenizer.vocab_size, config=self.mcfg.to_dict(), train_config=asdict(cfg),
                    warnings=[w.to_dict() for w in data.warnings])  # coded: the page says them in its language

    def train_step(self) -> None:
        cfg = self.cfg
        elapsed = time.time() - self.t_start
        self.lr = lr = lr_at(self.step, cfg, elapsed / cfg.max_time if cfg.max_time else 0.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # The loss stays a tensor until a step event reads it: reading it each step would make a
        # GPU's host wait for every step to finish before it can queue the next one.
        step_loss = torch.zeros((), device=self.device)
        for _ in range(cfg.grad_accum):
            x, y = self.sampler.next(self.device)
            x, y = x[self.rows], y[self.rows]
            with self.autocast():
                loss = self.compiled(x, y)[1]  # drop the logits at once: B×T×vocab floats not kept through backward
            (loss / cfg.grad_accum).backward()
            step_loss += loss.detach().float() / cfg.grad_accum
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.update(self.step + 1)
        self.step_loss = step_loss

    def sync(self, stop_now: bool) -> bool:
        step_loss, stop_now = self.dist.mean_and_any(self.step_loss, stop_now, self.device)
        self.tokens_seen += self.tokens_per_step
        self.loss_acc, self.loss_n = self.loss_acc + step_loss, self.loss_n + 1
        self.tok_log += self.tokens_per_step
        return stop_now

    def step_fields(self, now: float) -> dict:
        tps = self.tok_log / max(1e-9, now - self.t_log)
        self.train_loss = float(self.loss_acc) / self.loss_n
        # a loss that is no number is caught here, at most one log interval after it happened
        check_finite(self.train_loss, self.step, self.cfg.learning_rate)
        fields = dict(loss=self.train_loss, lr=self.lr, grad_norm=float(self.grad_norm), tokens_per_s=tps,
                      tokens_seen=self.tokens_seen, flops_per_s=tps * self.flops_per_token)
        self.loss_acc, self.loss_n, self.t_log, self.tok_log = 0.0, 0, now, 0
        return fields

    def evaluate(self, full: bool) -> dict:
        if not self.dist.is_main:
            return {}
        t0 = time.perf_counter()
        plan = self.eval_budget
        if plan is None:
            windows = None if full else self.cfg.eval_windows
        else:
            windows = plan.final(self.max_time - (time.time() - self.t_start)) if full else plan.windows
        res = evaluate(self.served, self.data.val, self.data.val_bytes, self.seq_len, self.device, self.eval_autocast,
                       windows)
        if res and not full and plan is not None:
            plan.timed(time.perf_counter() - t0, res["val_tokens"], self.sample_seconds)
            self.final_reserve = plan.reserve
        if res and self.milestones is not None and self.milestones.xz_bpb is not None:
            res["xz_bpb"] = round(self.milestones.xz_bpb, 4)
            self.last_bpb = res.get("val_bpb")
        if res:
            self.events.emit("eval", step=self.step, **res)
            self._keep_if_best(res.get("val_bpb"))
            self._check_patience(res.get("val_bpb"))
        return res

    def _check_patience(self, bpb: float | None) -> None:
        """End the run once ``patience`` evaluations in a row were clearly worse than the best: a
        small book is learned by heart within minutes, and the rest of the budget would only make
        the model worse (its best is kept in best.pt as it is found)."""
        if not self.cfg.patience or bpb is None or self.best_bpb is None or self.step == 0:
            return
        if bpb <= self.best_bpb * (1 + PATIENCE_MARGIN):
            self.worse_evals = 0
            return
        self.worse_evals += 1
        if self.worse_evals >= self.cfg.patience:
            best = (self.best_step, self.best_bpb) if self.kept_bpb is None else (self.kept_step, self.kept_bpb)
            self.learned_enough = {"best_step": best[0], "best_bpb": round(best[1], 4)}

    def _keep_if_best(self, bpb: float | None) -> None:
        """The best model so far is kept the moment an evaluation finds it, not only at the save
        cadence: a small book overfits within minutes, and a time-budget run saves rarely, so the
        best model would otherwise be lost before anything wrote it."""
        if bpb is None or self.step == 0 or (self.best_bpb is not None and bpb > self.best_bpb):
            return
        self.best_bpb, self.best_step = bpb, self.step
        if self.kept_bpb is not None and bpb > self.kept_bpb:
            return  # the model's best from an earlier run is still better: it stays best.pt
        self.kept_bpb = None
        if self.earlier is not None:
            self.earlier.before_best()
        # best.pt is for using the model (generation, export, self-play's start), never for a
        # resume, which continues from the newest step checkpoint: without the optimizer's
        # state (nor the trained weights kept beside the average) it is about a quarter of the size, and
        # it is written at most evaluations of a short run.
        best = self._checkpoint("best", bpb)
        for key in ("optimizer", "rng", "trained_state_dict"):
            best.pop(key, None)
        atomic_torch_save(best, layout.best_checkpoint(self.mdir))
        store.update_model(self.home, self.name, trained_steps=self.step, best_val_bpb=bpb,
                           last_trained=utc_now(), books=self.cfg.books, best_measured_on=self.measured_on)

    def _checkpoint(self, kind: str, bpb: float | None) -> dict:
        cfg = self.cfg
        trained = {} if self.average is None else {"trained_state_dict": self.model.state_dict()}  # to resume from
        return checkpoint_obj(self, self.served, self.mcfg, self.tokenizer, self.optimizer, self.run_id,
                              {"model": self.name, "books": cfg.books, "kind": kind, "val_bpb": bpb},
                              tokens_seen=self.tokens_seen, train_config=asdict(cfg), best_val_bpb=self.best_bpb,
                              best_step=self.best_step, worse_evals=self.worse_evals, kept_bpb=self.kept_bpb,
                              kept_step=self.kept_step, held_out=self.held_out,
                              rng={"torch": torch.get_rng_state(), "data": self.sampler.state()},
                              milestones_passed=sorted(self.milestones.passed) if self.milestones else [], **trained)

    def samples(self) -> None:
        cfg, tokenizer = self.cfg, self.tokenizer
        if not self.dist.is_main or not cfg.sample_prompts:
            return
        t0 = time.perf_counter()
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed + self.step)
        was_training = self.served.training
        self.served.eval()
        # all prompts in one batch: a decode step costs about the same for a few rows as for one
        prompts = [tokenizer.encode(prompt) or [tokenizer.eot_id] for prompt in cfg.sample_prompts]
        outs = generate(self.served, prompts, max_new_tokens=cfg.sample_length, generator=gen,
                        eot_id=tokenizer.eot_id)
        texts = [tokenizer.decode(out) for out in outs]
        for prompt, text in zip(cfg.sample_prompts, texts):
            self.events.emit("sample", step=self.step, prompt=prompt, text=text)
        decode.release(self.served)
        self.served.train(was_training)
        self._report_milestones(texts)
        self.sample_seconds = time.perf_counter() - t0

    def _report_milestones(self, texts: list[str]) -> None:
        """The share of real words in this round of samples, and any milestone passed for the first time."""
        if self.milestones is None:
            return
        share = real_word_share("\n".join(texts), self.milestones.vocabulary)
        if share is not None:
            self.events.emit("quality", step=self.step, real_words=round(share, 4))
        for m in self.milestones.reached(self.last_bpb, share):
            self.events.emit("milestone", step=self.step, code=m["code"], params=m["params"],
                             message=catalogue.message(m["code"], "en", **m["params"]))

    def save(self, kind: str, last_eval: dict | None) -> Path | None:
        if not self.dist.is_main:
            return None
        cfg, folder = self.cfg, checkpoint_dir(self.mdir)
        bpb = (last_eval or {}).get("val_bpb")
        obj = self._checkpoint(kind, bpb)
        if self.earlier is not None:
            self.earlier.before_save()
        path = save_step(obj, folder, cfg.keep_last)
        # The evaluation that found the best model wrote best.pt already (_keep_if_best): a save
        # is that model only when nothing was trained since that evaluation.
        is_best = bpb is not None and self.best_step == self.step and self.kept_bpb is None
        fields = {} if self.kept_bpb is not None else {"best_val_bpb": self.best_bpb}  # the kept best's stays
        store.update_model(self.home, self.name, trained_steps=self.step, last_trained=utc_now(), books=cfg.books,
                           **fields)
        self.events.emit("checkpoint", step=self.step, path=str(path), best=is_best, kind=kind)
        return path

    def say(self, notice: Notice) -> None:
        """A notice for the log (the CLI, the worker's log) and the run's own log on the page."""
        self.log(notice)
        self.events.emit("log", step=self.step, message=str(notice), code=notice.code, params=notice.params)

    def after_loop(self) -> None:
        self.check_speed()

    def check_speed(self) -> None:
        """A time-budgeted CPU run far faster or slower than this machine's probe predicted: the
        probe is measured again before the next plan (autosize.check_against_run), and the log
        says why. A compiled run's build time and a run counted in steps (evaluations at any
        cadence) are not what a plan predicts."""
        if self.device.type != "cpu" or self.dist.world > 1 or self.cfg.max_time is None \
                or self.compiled is not self.model or not self.loop_seconds:
            return
        tokens_per_s = (self.tokens_seen - self.tokens_before) / self.loop_seconds
        try:
            ratio = check_against_run(self.home, self.threads, self.mcfg, self.seq_len, self.cfg.batch_size,
                                      self.precision, tokens_per_s, self.loop_seconds)
        except (OSError, ValueError, TypeError):  # a damaged or unwritable cache: the run itself is done
            return
        if ratio is not None:
            self.say(Notice("run.train.speed_faster" if ratio > 1 else "run.train.speed_slower",
                       times=round(max(ratio, 1 / ratio), 1)))  # a number: "8,3" in Russian

    def oom_error(self) -> UserError:
        cfg = self.cfg
        return UserError("run.oom.train", step=self.step, batch_size=cfg.batch_size, seq_len=self.seq_len,
                         d_model=self.mcfg.d_model, smaller=max(1, cfg.batch_size // 2))

    def summary(self, status, message, last_eval, start_eval, wall, checkpoints) -> dict:
        final, best = last_eval or {}, layout.best_checkpoint(self.mdir)
        return {
            "model": self.name, "run": self.run_id, "status": status, "message": message, "step": self.step,
            "max_iterations": self.cfg.max_iterations, "train_loss": self.train_loss,
            "val_loss": final.get("val_loss"), "val_ppl": final.get("val_ppl"), "val_bpb": final.get("val_bpb"),
            # best.pt's: an earlier run's while this run has not beaten it
            "best_val_bpb": self.kept_bpb if self.kept_bpb is not None else self.best_bpb,
            "tokens_seen": self.tokens_seen,
            "tokens_per_s": (self.tokens_seen - self.tokens_before) / max(1e-9, wall),
            "wall_seconds": wall, "device": str(self.device), "threads": self.threads,
            "checkpoints": checkpoints, "best_checkpoint": str(best) if best.exists() else None,
            "events": str(self.events.path),
        }


run_dir = layout.run_dir  # where a run's events (and a studio run's files) are
