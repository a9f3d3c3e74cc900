"""Sandboxed executor for model-written programs (Absolute Zero self-play).

A program is one top-level ``def f(...)`` (optionally preceded by imports from ``SAFE_MODULES``);
an input is a Python literal argument list such as ``"[1, 2], 3"``, meaning ``f([1, 2], 3)``.

This module is the public face (task semantics: run, validate, check answers); the layers live in
the ``sandbox`` package, which uses the standard library only because its server imports it
under ``python -S -s``: ``codecheck`` (the allow-list, literal guards), ``protocol`` (pipe
framing, ``Limits``, ``RunResult``), ``pool`` (the trainer's server processes), ``server`` (the
fork loop and verdicts) and ``child`` (confinement and the run of one job).

Layers, outermost first:

1. **AST allow-list** (``check_program``), in the trainer before anything runs and again in the
   sandbox: one top-level ``def f``; imports only from ``SAFE_MODULES`` (and only their listed
   names); no forbidden names (``open``, ``eval``, ``getattr``, ``type``, ...), no name starting
   with ``__``, no attribute starting with ``_`` or naming a frame/code/generator internal
   (``gi_frame``, ``f_back``, ``tb_frame``, ...); no ``global``/``nonlocal``/``class``/``async``.
   ``match`` class patterns count as attribute access, and so do format fields: ``.format`` and
   ``.format_map`` may only be called on a string literal whose fields name an argument and
   never reach into it (no ``.`` or ``[`` in a field, nested specs included), because
   ``'{0.__class__}'.format(x)`` is ``getattr`` and ``'{0[k]}'`` is ``__getitem__`` by name;
   ``str.format`` as a value, a format string in a variable, ``string.Formatter``/``Template``
   (any module attribute not listed) are rejected. ``%``-formatting (``'%(k)s' % m`` is
   ``m['k']``) and f-strings (their fields are code, checked like code) stay allowed, as does
   ``format(x, spec)``. The program sees only ``SAFE_BUILTINS`` and proxies of the safe modules
   holding just the listed names; its ``__import__`` is defined in a namespace of its own.
2. **Fork server**: one long-lived ``python -S -s`` per hash seed, started with an environment
   holding only ``PYTHONHASHSEED``, cwd in its own temp dir, in new network/IPC/UTS namespaces
   (so no network), as a child subreaper. It gets a batch of jobs as length-prefixed JSON over a
   pipe, forks a fresh child per job, ``workers`` at a time, and exits (killing its children) when
   the trainer's pipe closes. A dead or stuck server is restarted and the batch retried once.
   With everything pre-imported a program costs ~3 ms of CPU in all, against ~45 ms for a fresh
   interpreter per program (benchmarks/executor_throughput.py). Nothing model-written is
   evaluated in the trainer: it only ``ast.parse``-s size-capped code and ``literal_eval``-s
   size- and depth-capped literals.
3. **Per-job child**: right after the fork the child unwinds every server frame (an exception
   caught at the top of the server's stack), so the batch, the other jobs and the server's state
   are freed before anything runs; the program runs with fresh globals from a stack that holds
   only its own code and input. New session, its own IPC namespace (SysV/POSIX IPC objects of
   one job never reach another), stdin/stdout/stderr on /dev/null (prints cannot touch the
   protocol; results go over a private pipe), every other fd closed, cwd a fresh empty
   directory (removed afterwards), rlimits CPU (whole seconds, rounded up), address space
   (interpreter + ``memory_mb``), file size, process count 0, open files, no core dumps, plus a
   profiling timer that kills at exactly ``cpu_seconds`` of CPU; then it drops root to
   ``nobody`` (so RLIMIT_NPROC binds and files are only world-readable), sets parent-death
   SIGKILL and no-new-privs, and installs a seccomp filter (x86_64) that fails open/creat/
   socket/fork/clone/exec/kill/ptrace/namespace/mount/SysV IPC/... with EPERM.
   The server kills the child's process group at the wall-time limit (and reports a child that
   used more than ``cpu_seconds`` of CPU as a timeout, whatever it printed).
4. **Output rules**: the result is ``repr``-ed in the child; longer than ``output_chars`` →
   ``truncated`` (invalid, not an error); a repr that does not ``literal_eval`` back to an equal
   value (functions, generators, ``nan``, ``range``, ...) → ``error``.

Determinism: ``validate_task`` runs the program in two separate processes of two servers with
PYTHONHASHSEED 0 and 1, and requires equal outputs by value. Same-seed reruns could only differ
through randomness, timing or addresses; the allow-list removes the first two, and the two
servers are separately exec'd (own ASLR), so ``repr`` of an object address differs too. The
second seed adds what a same-seed rerun misses: dependence on str/bytes hash order
(``list({'a', 'b'})``). A set compared by value is fine. The gold output is the seed-0 repr;
``run_program``/``check_abduction`` use the seed-0 server. Batch versions: ``run_many`` and
``validate_many`` (much faster than one call per program).

``sandbox_features()`` reports which protections the running server verified (a probe child
tries to open a file, fork, create a socket and reach the network, and reports its IPC
namespace). Each layer degrades gracefully: not root → no uid drop (and the namespaces need user
namespaces; without them children share the trainer's IPC namespace); not x86_64 → no seccomp;
the AST layer, the clean child stack and rlimits always apply.

NOT defended (known limits): a hole in CPython or in a safe module reachable from pure Python
(memory-corruption bugs) would bypass layer 1; then only layers 2–3 remain. The seccomp filter
is a deny-list and x86_64 only; stat/readlink of paths stay allowed (existence leaks). Without
seccomp a child can read world-readable files (/proc included) and create empty files in
world-writable directories (RLIMIT_FSIZE stops contents only). Without the uid drop (trainer
not root) children run as the trainer's user; a child still root would ignore RLIMIT_NPROC, so
only seccomp would stop fork. No PID or mount namespace, and the network and UTS namespaces are
the server's: without seccomp, children running at the same time could talk over loopback or
abstract sockets, and a job could leave empty files with telling names in world-writable
directories for a later one. Code that escaped layer 1 still sees process facts (pid, cwd name,
fd numbers, timing) that vary with a job's place in a batch, could read freed memory of the
server (the batch) through ``ctypes``, and the safe modules' real functions lead (through
``__globals__``) to ``sys.modules``: layer 1 is what keeps programs away from them. The child
writes its own verdict, so code that escaped layer 1 could forge its own result (never another
job's). RLIMIT_CPU has 1 s granularity; the exact CPU limit is a SIGPROF timer, which code with
the real builtins (never a checked program) could ignore until RLIMIT_CPU. Wall timeouts and
memory limits on a loaded machine make verdicts near the limits nondeterministic. Denied
``open`` means codecs that are not preloaded (``'x'.encode('idna')``) fail inside programs.
"""

from __future__ import annotations

from collections.abc import Callable

from .sandbox.codecheck import (  # noqa: F401
    FORBIDDEN_NAMES,
    MAX_CODE_CHARS,
    MAX_INPUT_CHARS,
    MAX_LITERAL_CHARS,
    MAX_LITERAL_DEPTH,
    MAX_NODES,
    SAFE_BUILTINS,
    SAFE_MODULE_NAMES,
    SAFE_MODULES,
    check_program,
    outputs_equal,
    parse_args,
    safe_literal,
)
from .sandbox.pool import (  # noqa: F401
    _SERVERS,
    SandboxError,
    _default_workers,
    _run_on_servers,
    _server,
    shutdown,
)
from .sandbox.protocol import KINDS, Limits, RunResult, _result  # noqa: F401

SEEDS = (0, 1)  # primary (gold outputs, answer checks) and determinism-check hash seeds


def _prepare(jobs, _unsafe: bool) -> tuple[list[RunResult | None], list[dict], list[int]]:
    """Static checks in the trainer; returns early results, jobs to run and their positions."""
    early: list[RunResult | None] = [None] * len(jobs)
    todo, where = [], []
    for i, (code, inp) in enumerate(jobs):
        if not _unsafe:
            reason = check_program(code)
            if reason:
                early[i] = _result("rejected", error=reason)
                continue
        try:
            parse_args(inp)
        except ValueError as e:
            early[i] = _result("rejected", error=str(e))
            continue
        todo.append({"code": code, "input": inp, "unsafe": bool(_unsafe)})
        where.append(i)
    return early, todo, where


def _pieces(todo: list[dict], workers: int, interrupt: Callable[[], None] | None):
    """The batch whole, or, with an ``interrupt`` check (it raises to stop), in pieces of a few
    rounds of the workers with the check before each: a piece of programs that all run out of
    time takes seconds, so a run that is asked to stop is not held for the whole batch."""
    if interrupt is None:
        yield todo
        return
    size = 4 * workers
    for i in range(0, len(todo), size):
        interrupt()
        yield todo[i:i + size]


def run_many(jobs: list[tuple[str, str]], limits: Limits = Limits(), workers: int | None = None, *,
             interrupt: Callable[[], None] | None = None, _unsafe: bool = False,
             _flags: tuple[str, ...] = ()) -> list[RunResult]:
    """Run ``f(*input)`` for each ``(code, input_text)``, each in its own sandboxed process,
    ``workers`` at a time (default: the usable CPUs). Results are in job order. ``interrupt``:
    called between pieces of the batch (see _pieces).

    ``_unsafe`` (tests only) skips the AST check and gives the program the real builtins, to show
    that the process-level layers contain it on their own; ``_flags=("no-seccomp",)`` (tests only)
    uses a server without the seccomp filter, to show what rlimits, uid drop and kill do alone."""
    workers = workers or _default_workers()
    early, todo, where = _prepare(jobs, _unsafe)
    results: list[RunResult] = []
    for piece in _pieces(todo, workers, interrupt) if todo else ():
        results += _run_on_servers([(SEEDS[0], piece)], limits, workers, _flags)[0]
    for i, res in zip(where, results):
        early[i] = res
    return early  # type: ignore[return-value]


def run_program(code: str, input_text: str, limits: Limits = Limits(), *, _unsafe: bool = False,
                _flags: tuple[str, ...] = ()) -> RunResult:
    """``f(*input)`` in the sandbox; ``output`` is its repr when ``ok``."""
    return run_many([(code, input_text)], limits, workers=1, _unsafe=_unsafe, _flags=_flags)[0]


def validate_many(jobs: list[tuple[str, str]], limits: Limits = Limits(), workers: int | None = None, *,
                  interrupt: Callable[[], None] | None = None) -> list[RunResult]:
    """``validate_task`` for a batch: both seeds' servers run the whole batch (or each piece of
    it, with ``interrupt``: see _pieces) at the same time."""
    workers = workers or _default_workers()
    early, todo, where = _prepare(jobs, False)
    if todo:
        first, second = [], []
        for piece in _pieces(todo, workers, interrupt):
            a, b = _run_on_servers([(SEEDS[0], piece), (SEEDS[1], piece)], limits, workers)
            first += a
            second += b
        for i, a, b in zip(where, first, second):
            if not a.ok:
                early[i] = a
            elif not b.ok:
                early[i] = b
            elif not outputs_equal(a.output, b.output):
                early[i] = _result("nondeterministic", error="nondeterministic")
            else:
                early[i] = a
    return early  # type: ignore[return-value]


def validate_task(code: str, input_text: str, limits: Limits = Limits()) -> RunResult:
    """A proposed (program, input) as a task: runs twice (hash seeds 0 and 1, separate processes);
    ``ok`` only when both runs succeed with equal outputs. ``output`` is the gold output."""
    return validate_many([(code, input_text)], limits, workers=1)[0]


def check_deduction(predicted_output: str, gold_output: str) -> bool:
    """A deduction answer (an output literal) against the gold output."""
    return outputs_equal(predicted_output, gold_output)


def check_abduction(code: str, proposed_input: str, gold_output: str, limits: Limits = Limits()) -> RunResult:
    """Does ``f(proposed_input)`` give ``gold_output``? ``ok`` (and truthiness) means yes;
    kind ``"wrong"`` means it ran but gave another output (which is in ``output``)."""
    res = run_program(code, proposed_input, limits)
    if not res.ok:
        return res
    if outputs_equal(res.output, gold_output):
        return res
    return RunResult(ok=False, output=res.output, error="wrong output", kind="wrong")


def check_induction(code: str, pairs: list[tuple[str, str]], limits: Limits = Limits()) -> RunResult:
    """Does the program map every ``(input, output)`` pair right? Runs them in one batch."""
    results = run_many([(code, inp) for inp, _ in pairs], limits)
    for res, (_, gold) in zip(results, pairs):
        if not res.ok:
            return res
        if not outputs_equal(res.output, gold):
            return RunResult(ok=False, output=res.output, error="wrong output", kind="wrong")
    return _result("ok")


def sandbox_features() -> dict:
    """The protections the (started) primary server verified, plus static facts."""
    s = _server(SEEDS[0])
    with s.lock:
        s._ensure()
        feats = dict(s.features)
    feats.update(ast_allow_list=True, safe_modules=list(SAFE_MODULES), hash_seeds=list(SEEDS),
                 isolation="fork server, one process per run", restarts=s.restarts)
    return feats
