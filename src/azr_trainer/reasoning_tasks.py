"""The tasks of Absolute Zero reasoning (Zhao et al., 2025), how answers are graded and how a
model's rollouts are sampled and scored; reasoning.py runs the self-play on them.

Tasks are triplets (program p, input i, output o = p(i)) of three types:
- deduction: given p and i, predict o;
- abduction: given p and o, give any i with p(i) = o;
- induction: given a message and some (i, o) pairs, write p; graded on held-out pairs.

Rewards as the paper: the solver gets 1 for a correct answer, −0.5 for a well-formed wrong one,
−1 for a malformed one; the proposer gets 1 − r̄ when 0 < r̄ < 1 (r̄: the solver's success rate on
its task), 0 when r̄ is 0 or 1. TRR++: advantages are normalised within each (task type, role)
group. Every program an answer names runs in the sandbox (executor.py), the only judge.
"""
from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import executor, programs
from .formats import FORMATS, CompactFormat, is_arguments, is_literal, shown_count, triplet_text
from .sample import SamplingParams, steps

TASK_TYPES = ("deduction", "abduction", "induction")


# ---- tasks ---------------------------------------------------------------------------------------

@dataclass
class Task:
    kind: str
    code: str
    input: str = ""                     # deduction/abduction: the argument, as source text
    output: str = ""                    # its repr
    message: str = ""                   # induction
    pairs: list = None                  # induction: [(input, output)], the first half shown

    def shown(self) -> list:
        return self.pairs[:shown_count(len(self.pairs))]

    def held_out(self) -> list:
        return self.pairs[shown_count(len(self.pairs)):]

    def solver_prompt(self, fmt=FORMATS["compact"]) -> str:
        if self.kind == "deduction":
            return fmt.deduction(self.code, self.input)
        if self.kind == "abduction":
            return fmt.abduction(self.code, self.output)
        return fmt.induction(self.message, self.shown())

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "code": self.code, "input": self.input, "output": self.output}
        if self.kind == "induction":
            d.update(message=self.message, pairs=[list(p) for p in self.pairs])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        pairs = [tuple(p) for p in d["pairs"]] if d.get("pairs") is not None else None
        return cls(d["kind"], d["code"], d.get("input", ""), d.get("output", ""), d.get("message", ""), pairs)


def program_task(kind: str, prog: programs.Program, gen: programs.Generator, n_inputs: int) -> Task:
    """A task made by the random generator (outputs from the primitives' Python twins)."""
    if kind == "induction":
        xs = gen.inputs(n_inputs)
        return Task(kind, prog.source, message=prog.describe(),
                    pairs=[(programs.arg_text(x), repr(prog(x))) for x in xs])
    x = gen.input()
    return Task(kind, prog.source, programs.arg_text(x), repr(prog(x)))


def heldout_tasks(n_per_type: int, seed: int = 4242, n_inputs: int = 6, split: str = "test") -> list[Task]:
    """The evaluation set: tasks from the generator's shifted ``test`` distribution."""
    gen = programs.Generator(split, seed)
    return [program_task(kind, gen.program(), gen, n_inputs) for kind in TASK_TYPES for _ in range(n_per_type)]


def seed_buffers() -> dict[str, list[dict]]:
    """The paper's start: the identity function on one input."""
    ident = programs.IDENTITY
    return {"deduction": [Task("deduction", ident, "[1, 2, 3]", "[1, 2, 3]").to_dict()],
            "abduction": [Task("abduction", ident, "[1, 2, 3]", "[1, 2, 3]").to_dict()],
            "induction": [Task("induction", ident, message="identity",
                               pairs=[("[1, 2, 3]", "[1, 2, 3]"), ("[]", "[]"), ("[5]", "[5]"),
                                      ("[0, -4]", "[0, -4]")]).to_dict()]}


# ---- parsing and grading -------------------------------------------------------------------------

@dataclass
class Graded:
    correct: bool
    well_formed: bool

    @property
    def reward(self) -> float:
        return 1.0 if self.correct else -0.5 if self.well_formed else -1.0


def grade_answers(tasks: list[Task], texts: list[str], limits: executor.Limits,
                  fmt=FORMATS["compact"], interrupt: Callable[[], None] | None = None) -> list[Graded]:
    """Grade solver answers (``texts[i]`` answers ``tasks[i]``); every program run is sandboxed,
    and all of them go to the executor in one batch (in pieces with ``interrupt``, a stop check
    that raises)."""
    out: list[Graded | None] = [None] * len(tasks)
    jobs, owners = [], []  # (code, input) runs and which answer each belongs to
    for i, (task, text) in enumerate(zip(tasks, texts)):
        raw, finished = fmt.answer(text)
        ans = raw.strip()
        if task.kind == "deduction":
            ok = is_literal(ans)
            out[i] = Graded(ok and executor.outputs_equal(ans, task.output), ok)
        elif task.kind == "abduction":
            if not is_arguments(ans):
                out[i] = Graded(False, False)
            else:
                jobs.append((task.code, ans))
                owners.append(i)
        else:
            code = fmt.induction_program(raw)
            if not finished or executor.check_program(code) is not None:
                out[i] = Graded(False, False)
            else:
                for inp, _ in task.held_out():
                    jobs.append((code, inp))
                    owners.append(i)
    results = executor.run_many(jobs, limits, interrupt=interrupt) if jobs else []
    verdict: dict[int, bool] = {}
    held_index: dict[int, int] = {}
    for owner, res in zip(owners, results):
        task = tasks[owner]
        if task.kind == "abduction":
            gold = task.output
        else:
            k = held_index.get(owner, 0)
            held_index[owner] = k + 1
            gold = task.held_out()[k][1]
        good = bool(res.ok and executor.outputs_equal(res.output, gold))
        verdict[owner] = verdict.get(owner, True) and good
    for owner, good in verdict.items():
        out[owner] = Graded(good, True)
    return out


def learnability(rbar: float) -> float:
    """The proposer's reward: tasks the solver sometimes solves are worth the most."""
    return 1.0 - rbar if 0.0 < rbar < 1.0 else 0.0


def trr_advantages(rewards: list[float], groups: list[tuple[str, str]], eps: float = 1e-6) -> torch.Tensor:
    """TRR++: (r − mean) / std within each (task type, role) group of the batch; a group whose
    rewards are all equal teaches nothing (advantage 0)."""
    r = torch.tensor(rewards, dtype=torch.float64)
    adv = torch.zeros_like(r)
    for g in set(groups):
        idx = torch.tensor([i for i, gg in enumerate(groups) if gg == g])
        vals = r[idx]
        std = vals.std(unbiased=False)
        if len(idx) > 1 and std > 1e-8:
            adv[idx] = (vals - vals.mean()) / (std + eps)
    return adv.float()

def program_complexity(code: str) -> int:
    """AST nodes in a program: a rough size of what the proposer writes."""
    try:
        return sum(1 for _ in ast.walk(ast.parse(code)))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return 0


# ---- sampling ------------------------------------------------------------------------------------

# A stop request is seen between pieces of a generation: every few new tokens, and, on a CPU,
# between groups of rows whose prompts add up to about this many tokens (the prompts' first pass
# is one forward that cannot be cut; hundreds of rows of it took a slow CPU over ten seconds).
# A GPU gets all rows at once: small batches would waste it, and its first pass is quick.
STOP_EVERY_TOKENS = 8
CPU_PROMPT_TOKENS = 4096


@torch.no_grad()
def sample_until_end(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
                     generator: torch.Generator | None, stop: str | tuple[str, ...] = CompactFormat.stop,
                     interrupt: Callable[[], None] | None = None,
                     compile: bool = False) -> list[tuple[list[int], list[int], str]]:
    """Continue each prompt until it writes ``stop`` (or one of several) or ``max_new_tokens``;
    returns (prompt ids, new ids up to and including the stop, new text) per prompt.
    Temperature 0: greedy. ``interrupt``: a stop check that raises, called between pieces of the
    work (see STOP_EVERY_TOKENS). ``compile``: see sample.Batch."""
    max_prompt = model.cfg.max_seq_len - max_new_tokens
    ids = [tokenizer.encode(p)[-max_prompt:] for p in prompts]
    groups = [ids]
    if interrupt is not None and next(model.parameters()).device.type == "cpu" and ids:
        rows = max(1, CPU_PROMPT_TOKENS * len(ids) // max(1, sum(map(len, ids))))
        groups = [ids[i:i + rows] for i in range(0, len(ids), rows)]
    outs: list[list[int]] = []
    for group in groups:
        if interrupt is not None:
            interrupt()
        outs += _continue(model, tokenizer, group, max_new_tokens, temperature, generator, stop, interrupt, compile)
    return [(p, o, tokenizer.decode(o)) for p, o in zip(ids, outs)]


def _stop_tokens(tokenizer, stops: tuple[str, ...], vocab_size: int) -> torch.Tensor:
    """Which token ids can complete one of ``stops`` (vocab_size,): those whose text holds a
    stop's last character, or, when that character is not ASCII, part of a character (a
    byte-level piece: ASCII bytes decode to themselves even next to broken ones), or that do
    not decode. Kept on the tokenizer per stop strings."""
    held = tokenizer.__dict__.setdefault("_stop_tokens", {})
    key = (stops, vocab_size)
    if key not in held:
        lasts = {s[-1] for s in stops}
        if any(c.isspace() and c != "\n" for c in lasts):  # a decoder may drop a token's leading space
            held[key] = torch.ones(vocab_size, dtype=torch.bool)
            return held[key]
        ends = torch.ones(vocab_size, dtype=torch.bool)
        ascii_ends = all(c.isascii() for c in lasts)
        for i in range(vocab_size):
            try:
                text = tokenizer.decode([i])
            except Exception:  # noqa: BLE001 - ids past the tokenizer's own vocabulary: checked by text
                continue
            ends[i] = any(c in text for c in lasts) or (not ascii_ends and "\ufffd" in text)
        held[key] = ends
    return held[key]


def _continue(model, tokenizer, ids: list[list[int]], max_new_tokens: int, temperature: float,
              generator: torch.Generator | None, stop: str | tuple[str, ...],
              interrupt: Callable[[], None] | None, compile: bool = False) -> list[list[int]]:
    """The new ids of each row, up to and including its stop string. A step's bookkeeping is
    tensor operations over the batch; text is decoded only for the rows whose new token can
    complete a stop."""
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    tail = max(map(len, stops)) + 2
    B = len(ids)
    can_stop = _stop_tokens(tokenizer, stops, model.cfg.vocab_size)
    tokens = torch.zeros(B, max_new_tokens, dtype=torch.long)
    count = torch.zeros(B, dtype=torch.long)  # a row's tokens so far (they are a prefix of its steps)
    done = torch.zeros(B, dtype=torch.bool)
    params = SamplingParams(max_new_tokens, temperature, None, None, 1.0, None)
    for n, (nxt, going) in enumerate(steps(model, ids, params, eot_id=tokenizer.eot_id, generator=generator,
                                           compile=compile)):
        if interrupt is not None and n % STOP_EVERY_TOKENS == STOP_EVERY_TOKENS - 1:
            interrupt()
        nxt, going = nxt.cpu(), going.cpu()
        active = going & ~done
        tokens[:, n] = nxt
        count += active
        done |= ~going
        for i in (active & can_stop[nxt]).nonzero().flatten().tolist():
            c = int(count[i])
            if any(s in tokenizer.decode(tokens[i, max(0, c - tail):c].tolist()) for s in stops):
                done[i] = True
        if bool(done.all()):
            break
    return [row[:c] for row, c in zip(tokens.tolist(), count.tolist())]


def evaluate_tasks(model, tokenizer, tasks: list[Task], limits: executor.Limits, *, k: int = 1,
                   temperature: float = 0.0, seed: int = 0, max_answer_tokens: int = 48,
                   max_program_tokens: int = 200, fmt=FORMATS["compact"],
                   interrupt: Callable[[], None] | None = None) -> dict:
    """Accuracy per task type: greedy exact match (k=1, temperature 0) or pass@k (k samples at
    ``temperature``, a task passes when any is correct). ``interrupt``: see sample_until_end."""
    gen = torch.Generator().manual_seed(seed)
    res = {}
    for kind in TASK_TYPES:
        ts = [t for t in tasks if t.kind == kind]
        if not ts:
            continue
        rows = [t for t in ts for _ in range(k)]
        n_new = max_program_tokens if kind == "induction" else max_answer_tokens
        texts = []
        for i in range(0, len(rows), 64):
            chunk = rows[i:i + 64]
            texts += [s[2] for s in sample_until_end(model, tokenizer, [t.solver_prompt(fmt) for t in chunk],
                                                     max_new_tokens=n_new, temperature=temperature, generator=gen,
                                                     stop=fmt.stop, interrupt=interrupt)]
        graded = grade_answers(rows, texts, limits, fmt, interrupt)
        passed = [any(g.correct for g in graded[j * k:(j + 1) * k]) for j in range(len(ts))]
        metric = "acc" if k == 1 else f"pass@{k}"
        res[f"{kind}_{metric}"] = float(np.mean(passed))
        hard = [not t for t in constant_solvable(ts, limits)]
        if any(hard):
            res[f"nontrivial_{kind}_{metric}"] = float(np.mean([p for p, h in zip(passed, hard) if h]))
        res[f"nontrivial_{kind}_tasks"] = sum(hard)
    for prefix in ("", "nontrivial_"):
        vals = [res[f"{prefix}{kind}_{metric}"] for kind in TASK_TYPES if f"{prefix}{kind}_{metric}" in res]
        res[f"{prefix}mean_{metric}"] = float(np.mean(vals)) if vals else 0.0
    return res


CONSTANT_ANSWERS = {"deduction": ("[]", "0", "1"), "abduction": ("[]", "[0]", "[1]")}


def constant_solvable(tasks: list[Task], limits: executor.Limits) -> list[bool]:
    """Which tasks one fixed answer solves, whatever the program: an output of [] or 0, an
    abduction that [] satisfies, an induction whose held-out outputs are all the same. A solver
    that learns to always say "[]" scores on these without reading the program, so the
    evaluation reports accuracy on the rest too."""
    fmt = FORMATS["compact"]
    out = []
    for t in tasks:
        if t.kind == "induction":
            outs = {o for _, o in t.held_out()}
            out.append(len(outs) == 1)
            continue
        answers = CONSTANT_ANSWERS[t.kind]
        out.append(any(g.correct for g in grade_answers([t] * len(answers), [a + fmt.stop for a in answers],
                                                        limits, fmt)))
    return out


def task_text(task: Task) -> str:
    if task.kind == "induction":
        return f"{task.code}\n# {task.message}\n" + "\n".join(f"f({i}) = {o}" for i, o in task.pairs)
    return triplet_text(task.code, task.input, task.output)
