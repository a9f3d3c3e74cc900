"""A random program generator: the only source of tasks that AZR reasoning ever sees besides
the model's own proposals (no curated tasks).

A program is a composition of a few primitives over one argument ``x``, a list of small ints:
list→list steps (map, filter, sort, slice, …), then optionally one reduction to an int and a
few int→int steps. Each primitive has its Python source *and* a twin Python function, so the
generator knows every output without running source code (the twin and the sandboxed source
are checked against each other in the tests).

Two distributions share the same primitives:
- ``train``: 1–3 steps, never containing one of the held-out ordered primitive pairs;
- ``test``: 3–5 steps, always containing at least one held-out pair, and longer inputs
  (a shifted distribution for the held-out evaluation set).

``pretraining_documents`` writes the from-zero model's pretraining text: the six prompt/answer
kinds (three task types × proposer/solver) in formats.py's compact format.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

END = "\n\n"  # the compact format ends every answer with a blank line (formats.CompactFormat.stop)


@dataclass(frozen=True)
class Primitive:
    name: str
    kind: str  # "list" (list→list), "reduce" (list→int) or "int" (int→int)
    template: str  # one line of source; {k} is the parameter, x the list, n the int
    fn: Callable
    params: tuple = (None,)
    words: str = ""  # a short description for induction messages; {k} as above

    def line(self, k) -> str:
        return self.template.format(k=k)

    def describe(self, k) -> str:
        return (self.words or self.name).format(k=k)


def _cumsum(x):
    out, s = [], 0
    for v in x:
        s += v
        out.append(s)
    return out


def _dedupe(x):
    return [v for i, v in enumerate(x) if v not in x[:i]]


PRIMITIVES: tuple[Primitive, ...] = (
    Primitive("add", "list", "x = [v + {k} for v in x]", lambda x, k: [v + k for v in x], (1, 2, 3, 5), "add {k}"),
    Primitive("sub", "list", "x = [v - {k} for v in x]", lambda x, k: [v - k for v in x], (1, 2, 3), "subtract {k}"),
    Primitive("mul", "list", "x = [v * {k} for v in x]", lambda x, k: [v * k for v in x], (2, 3, -1), "times {k}"),
    Primitive("mod", "list", "x = [v % {k} for v in x]", lambda x, k: [v % k for v in x], (2, 3, 5), "mod {k}"),
    Primitive("abs", "list", "x = [abs(v) for v in x]", lambda x, k: [abs(v) for v in x], words="absolute"),
    Primitive("square", "list", "x = [v * v for v in x]", lambda x, k: [v * v for v in x], words="square"),
    Primitive("even", "list", "x = [v for v in x if v % 2 == 0]", lambda x, k: [v for v in x if v % 2 == 0],
              words="keep even"),
    Primitive("odd", "list", "x = [v for v in x if v % 2 == 1]", lambda x, k: [v for v in x if v % 2 == 1],
              words="keep odd"),
    Primitive("gt", "list", "x = [v for v in x if v > {k}]", lambda x, k: [v for v in x if v > k], (-2, 0, 2, 4),
              "keep > {k}"),
    Primitive("reverse", "list", "x = x[::-1]", lambda x, k: x[::-1], words="reverse"),
    Primitive("sort", "list", "x = sorted(x)", lambda x, k: sorted(x), words="sort"),
    Primitive("sortdesc", "list", "x = sorted(x, reverse=True)", lambda x, k: sorted(x, reverse=True),
              words="sort down"),
    Primitive("take", "list", "x = x[:{k}]", lambda x, k: x[:k], (1, 2, 3, 4), "first {k}"),
    Primitive("drop", "list", "x = x[{k}:]", lambda x, k: x[k:], (1, 2), "drop {k}"),
    Primitive("rotate", "list", "x = x[1:] + x[:1]", lambda x, k: x[1:] + x[:1], words="rotate"),
    Primitive("dedupe", "list", "x = [v for i, v in enumerate(x) if v not in x[:i]]", lambda x, k: _dedupe(x),
              words="unique"),
    Primitive("cumsum", "list", "x = [sum(x[:i + 1]) for i in range(len(x))]", lambda x, k: _cumsum(x),
              words="running sum"),
    Primitive("pairsum", "list", "x = [a + b for a, b in zip(x, x[1:])]", lambda x, k: [a + b for a, b in zip(x, x[1:])],
              words="pair sums"),
    Primitive("sum", "reduce", "n = sum(x)", lambda x, k: sum(x), words="sum"),
    Primitive("len", "reduce", "n = len(x)", lambda x, k: len(x), words="count"),
    Primitive("max", "reduce", "n = max(x) if x else 0", lambda x, k: max(x) if x else 0, words="max"),
    Primitive("min", "reduce", "n = min(x) if x else 0", lambda x, k: min(x) if x else 0, words="min"),
    Primitive("count", "reduce", "n = x.count({k})", lambda x, k: x.count(k), (0, 1, 2), "count {k}s"),
    Primitive("first", "reduce", "n = x[0] if x else 0", lambda x, k: x[0] if x else 0, words="first"),
    Primitive("iadd", "int", "n = n + {k}", lambda n, k: n + k, (1, 3, 10), "plus {k}"),
    Primitive("imul", "int", "n = n * {k}", lambda n, k: n * k, (2, 3), "times {k}"),
    Primitive("imod", "int", "n = n % {k}", lambda n, k: n % k, (3, 7, 10), "mod {k}"),
    Primitive("ihalf", "int", "n = n // 2", lambda n, k: n // 2, words="halve"),
)
BY_NAME = {p.name: p for p in PRIMITIVES}
IDENTITY = "def f(x):\n    return x"


def held_out_pairs() -> frozenset[tuple[str, str]]:
    """About a fifth of the ordered pairs of primitives (fixed, seed-independent): pretraining
    never shows one of them back to back; every test program contains one."""
    rng = random.Random(20250506)
    pairs = [(a.name, b.name) for a in PRIMITIVES for b in PRIMITIVES if _can_follow(a, b)]
    return frozenset(rng.sample(pairs, len(pairs) // 5))


def _can_follow(a: Primitive, b: Primitive) -> bool:
    if a.kind == "list":
        return b.kind in ("list", "reduce")
    return b.kind == "int"


@dataclass
class Program:
    steps: list[tuple[str, object]] = field(default_factory=list)  # (primitive name, parameter)

    @property
    def source(self) -> str:
        lines = ["def f(x):"] + ["    " + BY_NAME[n].line(k) for n, k in self.steps]
        returns_int = any(BY_NAME[n].kind != "list" for n, _ in self.steps)
        return "\n".join(lines + ["    return n" if returns_int else "    return x"])

    def __call__(self, x: list[int]):
        value = list(x)
        for n, k in self.steps:
            value = BY_NAME[n].fn(value, k)
        return value

    def describe(self) -> str:
        return ", ".join(BY_NAME[n].describe(k) for n, k in self.steps) or "identity"

    def pairs(self) -> list[tuple[str, str]]:
        names = [n for n, _ in self.steps]
        return list(zip(names, names[1:]))

    @property
    def depth(self) -> int:
        return len(self.steps)


class Generator:
    """Random programs and inputs from the ``train`` or ``test`` distribution."""

    def __init__(self, split: str = "train", seed: int = 0):
        if split not in ("train", "test"):
            raise ValueError(f"split must be train or test, got {split!r}")
        self.split = split
        self.rng = random.Random(seed)
        self.held_out = held_out_pairs()
        self.depths = (1, 2, 3) if split == "train" else (3, 4, 5)
        self.max_len = 6 if split == "train" else 8

    def program(self) -> Program:
        while True:
            prog = self._random_program(self.rng.choice(self.depths))
            has_held = any(p in self.held_out for p in prog.pairs())
            if has_held == (self.split == "test"):
                return prog

    def _random_program(self, depth: int) -> Program:
        steps, prev = [], None
        for i in range(depth):
            options = [p for p in PRIMITIVES if (p.kind == "list" if prev is None else _can_follow(prev, p))]
            if prev is None and i == depth - 1:
                options += [p for p in PRIMITIVES if p.kind == "reduce"]
            prev = self.rng.choice(options)
            steps.append((prev.name, self.rng.choice(prev.params)))
        return Program(steps)

    def input(self) -> list[int]:
        return [self.rng.randint(-9, 9) for _ in range(self.rng.randint(0, self.max_len))]

    def inputs(self, n: int) -> list[list[int]]:
        """``n`` distinct inputs (as far as chance allows)."""
        seen, out = set(), []
        for _ in range(n * 20):
            x = self.input()
            if tuple(x) not in seen:
                seen.add(tuple(x))
                out.append(x)
            if len(out) == n:
                break
        return out


# ---- pretraining documents -------------------------------------------------------------------

def arg_text(x) -> str:
    return repr(x)


def pretraining_documents(gen: Generator, n: int, references: int = 2, induction_pairs: int = 6,
                          progress: Callable[[int], None] | None = None) -> list[str]:
    """``n`` documents of the six kinds in the compact format (prompt + correct answer + its
    end), in equal shares. The proposer documents teach the format of a proposal; their
    content is the generator's. ``progress(done)`` is called every 1,000 documents."""
    from .formats import FORMATS, shown_count
    fmt = FORMATS["compact"]
    docs = []
    for i in range(n):
        if progress is not None and i and i % 1000 == 0:
            progress(i)
        prog = gen.program()
        code = prog.source
        x = gen.input()
        out = repr(prog(x))
        inp = arg_text(x)
        kind = i % 6
        if kind == 0:
            docs.append(fmt.deduction(code, inp) + out + END)
        elif kind == 1:
            docs.append(fmt.abduction(code, out) + inp + END)
        elif kind == 2:
            xs = gen.inputs(induction_pairs)
            shown = [(arg_text(v), repr(prog(v))) for v in xs[:shown_count(len(xs))]]
            docs.append(fmt.induction(prog.describe(), shown) + fmt.induction_answer(code) + END)
        elif kind in (3, 4):
            refs = []
            for _ in range(references):
                p = gen.program()
                v = gen.input()
                refs.append((p.source, arg_text(v), repr(p(v))))
            docs.append(fmt.proposer("deduction" if kind == 3 else "abduction", refs)
                        + fmt.proposal(code, inp) + END)
        else:
            xs = gen.inputs(induction_pairs)
            docs.append(fmt.induction_proposer(code, induction_pairs)
                        + fmt.induction_proposal(prog.describe(), [arg_text(v) for v in xs]) + END)
    return docs
