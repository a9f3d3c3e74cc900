"""Absolute Zero reasoning self-play (Zhao et al., 2025): one model proposes programming tasks
and solves them; a sandboxed executor (executor.py) is the only judge. The tasks, their grading
and rewards are in reasoning_tasks.py; a from-zero model and its triplets book in from_zero.py.

Each step, for every task type: the proposer (the model, prompted with K reference triplets
from the type's buffer; for induction, with a program from the buffers) proposes B tasks at
temperature 1; the executor keeps the valid ones (parse, allow-list, runs within limits, same
output twice, output not cut) and they join the buffer; the solver (the same model) answers each
task ``n_samples`` times at temperature 1. Rewards as the paper: the solver gets 1 for a correct
answer, −0.5 for a well-formed wrong one, −1 for a malformed one; the proposer gets
1 − r̄ when 0 < r̄ < 1 (r̄: the solver's success rate on its task), 0 when r̄ is 0 or 1, −0.5 for a
well-formed invalid proposal, −1 for a malformed one. TRR++: advantages are normalised within
each of the six (task type, role) groups; REINFORCE with a token-mean loss, gradient clipping,
optionally a KL term to the start model. The solver rows that estimate r̄ are the solver's
training rows too (they are on-policy samples at temperature 1).

Modes, for the ablations in benchmarks/azr_reasoning.py: ``azr`` (full), ``frozen_proposer``
(tasks proposed but the proposer gets no gradient), ``solver_only`` (tasks from the random
program generator, solver trained), ``pretrain`` (continued next-token training on generator
documents).
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from . import decode, executor, layout, osdeps, programs, store
from .checkpoint import build_model, export_pt, latest_run_checkpoint, resolve_checkpoint, safe_load, \
    save_step
from .device import pick_device, set_threads
from .errors import Notice
from .events import EventLog, Listener, new_run_id
from .formats import FORMATS
from .home import UserError, atomic_write_json, read_json
from .settings import REASON
from .rewards import pack_rows
from .runloop import Job, StopRequested, check_finite, checkpoint_obj, locked, make_optimizer, run_loop, \
    warmup_cosine
from .selfplay import exact_kl
from .reasoning_tasks import (TASK_TYPES, Task, evaluate_tasks, grade_answers, heldout_tasks, learnability,
                              program_complexity, program_task, sample_until_end, seed_buffers, task_text,
                              trr_advantages)
# Names tests and scripts import from here since before the tasks and the from-zero corpus had modules of their own.
from .reasoning_tasks import constant_solvable  # noqa: F401
from .from_zero import MAX_CORPUS_DOCS, create_from_zero  # noqa: F401

MODES = REASON["mode"].choices  # azr, frozen_proposer, solver_only, pretrain
STOP_EVAL_TASKS = 4  # per task type, in the eval a paused or cancelled run ends with


@dataclass
class ReasonConfig:
    checkpoint: str = REASON.default("checkpoint")  # start from: best, latest, a step number, selfplay or reason
    mode: str = REASON.default("mode")  # azr, frozen_proposer, solver_only, pretrain (see the module doc)
    # compact, paper, or auto: compact for a from-zero (char) model, else paper
    prompt_format: str = REASON.default("prompt_format")
    max_iterations: int | None = REASON.default("max_iterations")
    max_time: float | None = REASON.default("max_time")  # seconds of wall clock for this invocation
    batch_size: int = REASON.default("batch_size")  # proposals (tasks) per task type per step
    n_samples: int = REASON.default("n_samples")  # solver attempts per task: r̄ and the solver's rollouts
    references: int = REASON.default("references")  # K reference triplets in a proposer prompt
    buffer_size: int = 256         # per task type; the oldest entries leave first
    seed_tasks: int = 8            # the seeding phase fills each buffer to this many valid tasks
    seed_rounds: int = REASON.default("seed_rounds")  # … in at most this many rounds of batch_size proposals per type
    induction_inputs: int = 6      # inputs an induction proposal must give; half are held out
    temperature: float = REASON.default("temperature")  # the paper's: r̄ is estimated at temperature 1
    learning_rate: float = REASON.default("learning_rate")
    min_lr_ratio: float = REASON.default("min_lr_ratio")  # where the rate ends when the run has an end
    warmup_iters: int = 5
    weight_decay: float = 0.0
    beta2: float = 0.99
    grad_clip: float = 1.0
    kl_weight: float = REASON.default("kl_weight")
    # deduction/abduction answers (default: 48 compact, 384 paper)
    max_answer_tokens: int | None = REASON.default("max_answer_tokens")
    # proposals and induction programs (default: 200 compact, 512 paper)
    max_program_tokens: int | None = REASON.default("max_program_tokens")
    lm_batch_size: int = 8         # pretrain mode: rows of generator documents per step
    eval_every: int = REASON.default("eval_every")
    eval_tasks: int = REASON.default("eval_tasks")  # held-out test tasks per type for periodic evals
    save_every: int = REASON.default("save_every")
    keep_last: int = 3
    log_every: int = 1
    cpu_seconds: float = 1.0       # executor limits per program run
    memory_mb: int = 256
    seed: int = REASON.default("seed")
    device: str = REASON.default("device")
    threads: int | None = REASON.default("threads")
    resume: bool = REASON.default("resume")

    RUN_CONTROL = ("max_iterations", "max_time", "device", "threads", "save_every", "eval_every", "eval_tasks",
                   "log_every", "keep_last", "resume")

    def validate(self) -> "ReasonConfig":
        REASON.check(self)  # mode, prompt_format, sizes, rates: settings.REASON
        for name in ("buffer_size", "seed_tasks", "lm_batch_size", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError("runs.whole_positive", name=name, value=repr(v))
        if self.induction_inputs < 2:
            raise UserError("runs.induction_inputs", value=repr(self.induction_inputs))
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise UserError("runs.not_negative", name=name, value=repr(v))
        for name, low, high in (("cpu_seconds", 0.05, 60), ("memory_mb", 32, 16384)):
            v = getattr(self, name)
            if not (low <= v <= high):
                raise UserError("runs.between", name=name, min=low, max=high, value=repr(v))
        return self

    def limits(self) -> executor.Limits:
        return executor.Limits(cpu_seconds=self.cpu_seconds, wall_seconds=max(2.0, 2 * self.cpu_seconds),
                               memory_mb=self.memory_mb)




def resolve_format(choice: str, mcfg) -> str:
    """auto: the compact format for a char-tokenizer model (made from zero here), the paper's
    instructions for anything else (a pretrained model brought in with its own tokenizer)."""
    if choice != "auto":
        return choice
    return "compact" if mcfg.tokenizer == "char" else "paper"


def default_lengths(cfg: ReasonConfig, fmt) -> tuple[int, int]:
    """(answer, program) token budgets: the paper format lets a model think before it answers,
    which needs room; the compact format answers at once."""
    compact = fmt.name == "compact"
    return cfg.max_answer_tokens or (48 if compact else 384), cfg.max_program_tokens or (200 if compact else 512)


def evaluate_checkpoint(home: Path, name: str, cfg: ReasonConfig, *, split: str = "test", pass_k: int = 1) -> dict:
    """Held-out accuracy of model ``name`` at ``cfg.checkpoint``: greedy per task type on
    ``cfg.eval_tasks`` tasks of ``split``, and pass@k at temperature 1 when ``pass_k`` > 1."""
    osdeps.require_reasoning()
    device = pick_device(cfg.device)
    if device.type == "cpu":
        set_threads(cfg.threads)
    path = resolve_checkpoint(store.model_dir(home, name), cfg.checkpoint)
    model, mcfg, tok = build_model(safe_load(path))
    model.to(device)
    fmt = FORMATS[resolve_format(cfg.prompt_format, mcfg)]
    answer, program = default_lengths(cfg, fmt)
    lengths = dict(max_answer_tokens=answer, max_program_tokens=program)
    tasks = heldout_tasks(cfg.eval_tasks, split=split, n_inputs=cfg.induction_inputs)
    res = {"checkpoint": str(path), "split": split, "tasks_per_type": cfg.eval_tasks, "prompt_format": fmt.name}
    res.update(evaluate_tasks(model, tok, tasks, cfg.limits(), fmt=fmt, **lengths))
    if pass_k > 1:
        res.update(evaluate_tasks(model, tok, tasks, cfg.limits(), k=pass_k, temperature=1.0, seed=cfg.seed,
                                  fmt=fmt, **lengths))
    return res


# ---- the run -------------------------------------------------------------------------------------

def reason_root(model_dir: Path) -> Path:
    return layout.run_checkpoints_root(model_dir, "reason")


def reason(home: Path, name: str, cfg: ReasonConfig, listeners: list[Listener] | None = None,
           stop: StopRequested | None = None, log: Callable[[str], None] = print, run_id: str | None = None) -> dict:
    """Run AZR self-play on model ``name``; returns the summary the CLI prints with --json.
    ``cfg.resume`` continues run ``run_id`` (or the newest) from its last checkpoint."""
    osdeps.require_reasoning()  # off Linux: refused before the model is even loaded
    cfg.validate()
    store.get_model(home, name)
    with locked(store.model_dir(home, name), log):
        return run_loop(_Run(home, name, cfg, listeners, log, run_id), stop or StopRequested(), kind="reason")


class _Run(Job):
    """A reasoning run as a run_loop job: propose, solve, grade, update (see the module doc)."""

    def __init__(self, home, name, cfg: ReasonConfig, listeners, log, run_id):
        self.name, self.log = name, log
        mdir = store.model_dir(home, name)
        resume_obj = None
        if cfg.resume:
            path = latest_run_checkpoint(mdir, "reason", run_id)
            if path is None:
                raise (UserError("run.nothing_to_resume_run", run=run_id) if run_id else
                       UserError("run.nothing_to_resume_reason", name=name))
            resume_obj = safe_load(path)
            known = {f.name for f in fields(ReasonConfig)}
            saved = {k: v for k, v in resume_obj["reason_config"].items() if k in known}
            cfg = ReasonConfig(**{**saved, **{k: getattr(cfg, k) for k in ReasonConfig.RUN_CONTROL}}).validate()
            run_id = resume_obj["run_id"]
            start_obj = safe_load(layout.reference_checkpoint(path.parent))
            self.start_info = resume_obj["start"]
        else:
            cfg = replace(cfg)
            start_path = resolve_checkpoint(mdir, cfg.checkpoint)
            start_obj = safe_load(start_path)
            self.start_info = {"checkpoint": str(start_path), "step": start_obj.get("step")}
            run_id = run_id or new_run_id("reason")
        self.cfg, self.run_id, self.resume_obj = cfg, run_id, resume_obj
        self.device = pick_device(cfg.device)
        self.threads = set_threads(cfg.threads) if self.device.type == "cpu" else None
        self.model, self.mcfg, self.tokenizer = build_model(start_obj)
        self.model.to(self.device)
        self.fmt = FORMATS[resolve_format(cfg.prompt_format, self.mcfg)]
        cfg.max_answer_tokens, cfg.max_program_tokens = default_lengths(cfg, self.fmt)
        self.ref = None
        if cfg.kl_weight > 0:
            self.ref, _, _ = build_model(start_obj)
            self.ref.to(self.device).eval().requires_grad_(False)
        if self.mcfg.max_seq_len < cfg.max_program_tokens + 64:
            raise UserError("run.reason.window", max_seq_len=self.mcfg.max_seq_len,
                            max_program_tokens=cfg.max_program_tokens)
        self.optimizer = make_optimizer(self.model, cfg.learning_rate, cfg.weight_decay, cfg.beta2, self.device)
        self.folder = layout.run_checkpoints_dir(mdir, "reason", run_id)
        self.buffers = seed_buffers()
        self.step, self.elapsed_before, self.programs_checked = 0, 0.0, 0
        self.rng = random.Random(cfg.seed)
        self.gen = programs.Generator("train", cfg.seed)
        if resume_obj is not None:
            self.model.load_state_dict(resume_obj["state_dict"])
            self.optimizer.load_state_dict(resume_obj["optimizer"])
            self.buffers = resume_obj["buffers"]
            self.step = self.resumed_at = resume_obj["step"]
            self.resuming = True
            self.elapsed_before = resume_obj.get("elapsed", 0.0)
            self.programs_checked = resume_obj.get("programs_checked", 0)
            self.rng.setstate(_tuple_state(resume_obj["rng"]["python"]))
            self.gen.rng.setstate(_tuple_state(resume_obj["rng"]["generator"]))
        else:
            export_pt(start_obj, layout.reference_checkpoint(self.folder))
        self.limits = cfg.limits()
        self.eval_set = heldout_tasks(cfg.eval_tasks, seed=4242, n_inputs=cfg.induction_inputs)
        self.events = EventLog(layout.events_file(layout.run_dir(home, name, run_id)), run_id, listeners)
        self.meta_books = store.get_model(home, name).books
        self.max_iterations, self.max_time = cfg.max_iterations, cfg.max_time
        # a step decodes up to 4 programs' and 2 answers' lengths (three proposals, three solves)
        per_step = 4 * cfg.max_program_tokens + 2 * cfg.max_answer_tokens
        self.long_decode = decode.worth_compiling(cfg.max_iterations and cfg.max_iterations * per_step)
        self.eval_every, self.save_every, self.log_every = cfg.eval_every, cfg.save_every, cfg.log_every
        self.grad_norm, self.metrics = None, {}
        self.sample_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)

    # -- proposing

    def _proposer_prompt(self, kind: str) -> str:
        """K reference triplets from the buffer, fewer when K would not fit the window."""
        buf = self.buffers[kind]
        picks = [(d["code"], d["input"], d["output"])
                 for d in self.rng.sample(buf, min(self.cfg.references, len(buf)))]
        room = self.mcfg.max_seq_len - self.cfg.max_program_tokens
        while True:
            prompt = self.fmt.proposer(kind, picks)
            if len(picks) <= 1 or len(self.tokenizer.encode(prompt)) <= room:
                return prompt
            picks.pop()

    def _program_for_induction(self) -> str:
        pool = self.buffers["deduction"] + self.buffers["abduction"]
        return self.rng.choice(pool)["code"]

    def propose(self, kind: str, n: int, gen: torch.Generator) -> tuple[list[tuple], list[Task | None], list[bool]]:
        """``n`` proposals of ``kind``: (rows, the valid task or None, well-formed) per proposal."""
        cfg = self.cfg
        if kind == "induction":
            codes = [self._program_for_induction() for _ in range(n)]
            prompts = [self.fmt.induction_proposer(c, cfg.induction_inputs) for c in codes]
        else:
            prompts = [self._proposer_prompt(kind) for _ in range(n)]
        samples = sample_until_end(self.model, self.tokenizer, prompts, max_new_tokens=cfg.max_program_tokens,
                                   temperature=cfg.temperature, generator=gen, stop=self.fmt.proposal_stops,
                                   interrupt=self.stop_requested, compile=self.long_decode)
        if kind == "induction":
            parsed = [self.fmt.parse_induction_proposal(t, cfg.induction_inputs) for _, _, t in samples]
            jobs = [(code, inp) for code, p in zip(codes, parsed) if p for inp in p[1]]
        else:
            parsed = [self.fmt.parse_proposal(t) for _, _, t in samples]
            jobs = [p for p in parsed if p]
        # Every (program, input) of the step in one sandbox batch, each run twice (determinism).
        results = iter(executor.validate_many(jobs, self.limits, interrupt=self.stop_requested) if jobs else [])
        self.programs_checked += 2 * len(jobs)
        tasks: list[Task | None] = []
        for i, p in enumerate(parsed):
            if not p:
                tasks.append(None)
            elif kind == "induction":
                res = [next(results) for _ in p[1]]
                ok = all(r.ok for r in res)
                tasks.append(Task(kind, codes[i], message=p[0], pairs=list(zip(p[1], [r.output for r in res])))
                             if ok else None)
            else:
                res = next(results)
                tasks.append(Task(kind, p[0], p[1], res.output) if res.ok else None)
        return [(p, o) for p, o, _ in samples], tasks, [p is not None for p in parsed]

    def _add_to_buffer(self, task: Task) -> None:
        buf = self.buffers[task.kind]
        buf.append(task.to_dict())
        del buf[:-self.cfg.buffer_size]

    def seed(self, gen: torch.Generator) -> None:
        """The seeding phase: propose (no training) until each buffer holds ``seed_tasks`` tasks,
        giving up after ``seed_rounds`` rounds (a model that cannot write valid tasks yet keeps
        the identity triplet and learns to write them during the run)."""
        for _ in range(self.cfg.seed_rounds):
            short = [k for k in TASK_TYPES if len(self.buffers[k]) < self.cfg.seed_tasks + 1]
            if not short:
                break
            for kind in short:
                _, tasks, _ = self.propose(kind, self.cfg.batch_size, gen)
                for t in tasks:
                    if t is not None:
                        self._add_to_buffer(t)
        seeded = Notice("reason.seeded", **{k: len(self.buffers[k]) for k in TASK_TYPES})
        self.events.emit("log", step=self.step, message=str(seeded), code=seeded.code, params=seeded.params)

    # -- one step

    def rl_step(self, gen: torch.Generator) -> dict:
        cfg = self.cfg
        rows, rewards, groups = [], [], []
        m: dict = {}
        for kind in TASK_TYPES:
            if cfg.mode == "solver_only":
                tasks = [program_task(kind, self.gen.program(), self.gen, cfg.induction_inputs)
                         for _ in range(cfg.batch_size)]
                prop_rows, prop_tasks, formed = [], [], []
            else:
                prop_rows, prop_tasks, formed = self.propose(kind, cfg.batch_size, gen)
                tasks = [t for t in prop_tasks if t is not None]
                for t in tasks:
                    self._add_to_buffer(t)
                m[f"{kind}_valid_rate"] = sum(t is not None for t in prop_tasks) / len(prop_tasks)
                m[f"{kind}_format_rate"] = sum(formed) / len(formed)
                if tasks:
                    m[f"{kind}_complexity"] = float(np.mean([program_complexity(t.code) for t in tasks]))
                    self.events.emit("sample", step=self.step + 1, prompt=f"proposed {kind} task",
                                     text=task_text(tasks[0]), rank=kind)
            # The solver answers each proposed task n times (r̄), plus buffer tasks up to the batch size.
            extra = [Task.from_dict(d) for d in self.rng.sample(self.buffers[kind],
                                                                min(len(self.buffers[kind]),
                                                                    max(0, cfg.batch_size - len(tasks))))]
            solve = tasks + extra
            solve_rows = [t for t in solve for _ in range(cfg.n_samples)]
            n_new = cfg.max_program_tokens if kind == "induction" else cfg.max_answer_tokens
            samples = sample_until_end(self.model, self.tokenizer, [t.solver_prompt(self.fmt) for t in solve_rows],
                                       max_new_tokens=n_new, temperature=cfg.temperature, generator=gen,
                                       stop=self.fmt.stop, interrupt=self.stop_requested, compile=self.long_decode)
            graded = grade_answers(solve_rows, [s[2] for s in samples], self.limits, self.fmt, self.stop_requested)
            # Sandbox runs of this grading: one per well-formed abduction, one per held-out pair of a
            # well-formed induction program (deduction answers are compared as values).
            self.programs_checked += sum((len(t.held_out()) if t.kind == "induction" else t.kind == "abduction")
                                         for t, g in zip(solve_rows, graded) if g.well_formed)
            rbar = [float(np.mean([g.correct for g in graded[j * cfg.n_samples:(j + 1) * cfg.n_samples]]))
                    for j in range(len(solve))]
            for (p, o, _), g in zip(samples, graded):
                rows.append((p, o))
                rewards.append(g.reward)
                groups.append((kind, "solve"))
            m[f"{kind}_solve_acc"] = float(np.mean([g.correct for g in graded])) if graded else None
            m[f"{kind}_solve_format"] = float(np.mean([g.well_formed for g in graded])) if graded else None
            if cfg.mode != "solver_only":
                rbar_of = dict(zip(map(id, tasks), rbar))
                prop_r = [(learnability(rbar_of[id(t)]) if t is not None else -0.5 if f else -1.0)
                          for t, f in zip(prop_tasks, formed)]
                proposed_rbar = [rbar_of[id(t)] for t in tasks]
                m[f"{kind}_rbar"] = proposed_rbar
                m[f"{kind}_propose_reward"] = float(np.mean(prop_r))
                if cfg.mode == "azr":
                    rows += prop_rows
                    rewards += prop_r
                    groups += [(kind, "propose")] * len(prop_r)
        adv = trr_advantages(rewards, groups)
        loss, kl = self._policy_update(rows, adv)
        m.update(loss=loss, kl=kl, rows=len(rows))
        return m

    def lm_step(self) -> dict:
        """Continued pretraining on fresh generator documents (the ``pretrain`` ablation)."""
        cfg, seq = self.cfg, self.mcfg.max_seq_len
        need = cfg.lm_batch_size * (seq + 1)
        ids: list[int] = []
        while len(ids) < need:
            ids += self.tokenizer.encode("".join(programs.pretraining_documents(self.gen, 12)))
        t = torch.tensor(ids[:need]).view(cfg.lm_batch_size, seq + 1).to(self.device)
        self.model.train()
        _, loss = self.model(t[:, :-1], t[:, 1:])
        loss.backward()
        self._optimizer_step()
        return {"loss": float(loss.detach()), "rows": cfg.lm_batch_size}

    def _policy_update(self, rows, adv: torch.Tensor) -> tuple[float, float | None]:
        """REINFORCE with a token-mean loss over every row of the step (and the KL term)."""
        cfg = self.cfg
        decode.release(self.model)  # the rollouts' decode weights: stale after this update
        self.model.train()
        total_tokens = sum(len(o) for _, o in rows)
        loss_sum, kl_sum = 0.0, 0.0
        order = list(range(len(rows)))
        for i in range(0, len(order), 16):  # micro-batches keep memory flat
            if i:
                self.stop_requested(self.optimizer)
            idx = order[i:i + 16]
            x, y, mask = pack_rows([rows[j] for j in idx], self.mcfg.max_seq_len)
            x, y, mask = x.to(self.device), y.to(self.device), mask.to(self.device)
            logits, _ = self.model(x)
            logits = logits.float()
            logp = torch.log_softmax(logits / cfg.temperature, -1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
            a = adv[idx].to(self.device)
            loss = -(a[:, None] * logp * mask).sum() / max(1, total_tokens)
            if self.ref is not None:
                with torch.no_grad():
                    ref_logits, _ = self.ref(x)
                kl = (exact_kl(logits, ref_logits) * mask).sum() / max(1, total_tokens)
                loss = loss + cfg.kl_weight * kl
                kl_sum += float(kl.detach())
            loss.backward()
            loss_sum += float(loss.detach())
        self._optimizer_step()
        check_finite(loss_sum, self.step + 1, cfg.learning_rate)
        return loss_sum, (kl_sum if self.ref is not None else None)

    def _optimizer_step(self) -> None:
        cfg = self.cfg
        lr = warmup_cosine(cfg.learning_rate, self.step, cfg.warmup_iters, self.budget_used(cfg.warmup_iters),
                          cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -- saving and evaluating

    def save(self, kind: str, last_eval: dict | None) -> Path:
        obj = checkpoint_obj(self, self.model, self.mcfg, self.tokenizer, self.optimizer, self.run_id,
                             {"model": self.name, "books": self.meta_books, "kind": "reason", "reason_kind": kind,
                              "run": self.run_id, "eval": last_eval},
                             reason_config=asdict(self.cfg), buffers=self.buffers,
                             programs_checked=self.programs_checked, start=self.start_info,
                             rng={"python": _list_state(self.rng.getstate()),
                                  "generator": _list_state(self.gen.rng.getstate())})
        path = save_step(obj, self.folder, self.cfg.keep_last)
        # The buffers on their own too: the studio shows them without loading the weights.
        atomic_write_json(layout.buffers_file(self.folder), {"step": self.step, "buffers": self.buffers})
        self.events.emit("checkpoint", step=self.step, path=str(path), best=False, kind=kind)
        return path

    def evaluate(self, full: bool = False, tasks: list[Task] | None = None) -> dict:
        """The held-out tasks' accuracies. A stop (pause, cancel) cuts an eval short; the eval a
        paused or cancelled run ends with takes the first STOP_EVAL_TASKS tasks of each type, so
        that the run answers within seconds."""
        tasks = tasks or self.eval_set
        stopping = self.stop is not None and self.stop.reason is not None
        if stopping:
            tasks = [t for kind in TASK_TYPES for t in [t for t in tasks if t.kind == kind][:STOP_EVAL_TASKS]]
        res = evaluate_tasks(self.model, self.tokenizer, tasks, self.limits,
                             max_answer_tokens=self.cfg.max_answer_tokens,
                             max_program_tokens=self.cfg.max_program_tokens, fmt=self.fmt,
                             interrupt=None if stopping else self.stop_requested)
        res["tasks_per_type"] = max(sum(t.kind == kind for t in tasks) for kind in TASK_TYPES)
        res["buffer_sizes"] = {k: len(v) for k, v in self.buffers.items()}
        self.events.emit("eval", step=self.step, **res)
        return res

    # -- the run, as run_loop drives it

    def start_fields(self) -> dict:
        cfg = self.cfg
        return dict(max_iterations=cfg.max_iterations, device=str(self.device), threads=self.threads,
                    parameters=self.model.num_parameters(), start=self.start_info, config=self.mcfg.to_dict(),
                    reason_config=asdict(cfg), prompt_format=self.fmt.name, sandbox=executor.sandbox_features())

    def before_loop(self) -> dict | None:
        if self.resuming:
            return None
        start_eval = self.evaluate()
        if self.cfg.mode in ("azr", "frozen_proposer"):
            self.seed(self.sample_gen)
        return start_eval

    def train_step(self) -> None:
        t0, checked0 = time.time(), self.programs_checked
        m = self.lm_step() if self.cfg.mode == "pretrain" else self.rl_step(self.sample_gen)
        dt = time.time() - t0
        m.update(step_seconds=dt, grad_norm=self.grad_norm, programs_checked=self.programs_checked,
                 programs_per_s=(self.programs_checked - checked0) / max(1e-9, dt),
                 buffer_sizes={k: len(v) for k, v in self.buffers.items()},
                 lr=self.optimizer.param_groups[0]["lr"])
        self.metrics = m

    def step_fields(self, now: float) -> dict:
        return self.metrics

    def oom_error(self) -> UserError:
        return UserError("run.oom.reason", step=self.step)

    def summary(self, status, message, last_eval, start_eval, wall, checkpoints) -> dict:
        cfg = self.cfg
        return {
            "model": self.name, "run": self.run_id, "kind": "reason", "mode": cfg.mode, "status": status,
            "message": message, "step": self.step, "max_iterations": cfg.max_iterations, "start": self.start_info,
            "start_eval": start_eval, "eval": last_eval, "programs_checked": self.programs_checked,
            "buffer_sizes": {k: len(v) for k, v in self.buffers.items()},
            "wall_seconds": wall, "device": str(self.device), "threads": self.threads,
            "checkpoints": checkpoints, "checkpoint": checkpoints[-1] if checkpoints else None,
            "events": str(self.events.path),
        }


def _list_state(state) -> list:
    """random.Random state as nested lists (a checkpoint loads with weights_only=True)."""
    return [state[0], list(state[1]), state[2]]


def _tuple_state(state) -> tuple:
    return (state[0], tuple(state[1]), state[2])


def read_buffers(model_dir: Path, run_id: str | None = None) -> dict:
    """The task buffers of a reasoning run's newest checkpoint (for ``azr reason --show-buffers``)."""
    path = latest_run_checkpoint(model_dir, "reason", run_id)
    if path is None:
        raise UserError("reason.no_run", name=model_dir.name)
    if layout.buffers_file(path.parent).exists():
        return read_json(layout.buffers_file(path.parent))["buffers"]
    return safe_load(path)["buffers"]
