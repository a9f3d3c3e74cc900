"""Sandboxed executor for model-written programs (Absolute Zero self-play).

A program is one top-level ``def f(...)`` (optionally preceded by imports from ``SAFE_MODULES``);
an input is a Python literal argument list such as ``"[1, 2], 3"``, meaning ``f([1, 2], 3)``.

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

import ast
import json
import math
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

# --- allow-list -------------------------------------------------------------------------------

# module → names a program may use from it (None: every public non-module name).
SAFE_MODULE_NAMES: dict[str, tuple[str, ...] | None] = {
    "math": None,
    "itertools": None,
    "heapq": None,
    "bisect": None,
    "functools": ("reduce", "partial", "lru_cache", "cache", "cmp_to_key"),
    "collections": ("Counter", "defaultdict", "deque", "OrderedDict"),
    # string: constants only (string.Formatter().get_field returns real attribute objects)
    "string": ("ascii_letters", "ascii_lowercase", "ascii_uppercase", "digits", "hexdigits",
               "octdigits", "punctuation", "printable", "whitespace"),
    "re": ("compile", "match", "fullmatch", "search", "sub", "subn", "split", "findall", "finditer",
           "escape", "error", "IGNORECASE", "I", "MULTILINE", "M", "DOTALL", "S", "VERBOSE", "X",
           "ASCII", "A"),
}
SAFE_MODULES = tuple(SAFE_MODULE_NAMES)

SAFE_BUILTINS = (
    "abs", "all", "any", "ascii", "bin", "bool", "bytearray", "bytes", "callable", "chr", "complex",
    "dict", "divmod", "enumerate", "filter", "float", "format", "frozenset", "hex", "int",
    "isinstance", "issubclass", "iter", "len", "list", "map", "max", "min", "next", "oct", "ord",
    "pow", "print", "range", "repr", "reversed", "round", "set", "slice", "sorted", "str", "sum",
    "tuple", "zip",
    "ArithmeticError", "AssertionError", "Exception", "IndexError", "KeyError", "LookupError",
    "NotImplementedError", "OverflowError", "RecursionError", "RuntimeError", "StopIteration",
    "TypeError", "ValueError", "ZeroDivisionError",
)

FORBIDDEN_NAMES = frozenset({
    "open", "eval", "exec", "compile", "globals", "locals", "vars", "getattr", "setattr", "delattr",
    "hasattr", "input", "breakpoint", "help", "exit", "quit", "memoryview", "type", "object", "super",
    "dir", "id", "hash", "classmethod", "staticmethod", "property", "copyright", "credits",
    "license", "BaseException", "SystemExit", "KeyboardInterrupt", "GeneratorExit",
})
# Attributes of frames, code objects, tracebacks and generators lead back to real globals.
_FORBIDDEN_ATTR_PREFIXES = ("_", "gi_", "cr_", "ag_", "f_", "tb_", "co_")
_FORBIDDEN_NODES = {
    ast.Global: "global", ast.Nonlocal: "nonlocal", ast.ClassDef: "class definition",
    ast.AsyncFunctionDef: "async def", ast.Await: "await", ast.AsyncFor: "async for",
    ast.AsyncWith: "async with",
}

MAX_CODE_CHARS = 20_000     # before ast.parse in the trainer; AZR programs are a few hundred chars
MAX_NODES = 5_000
MAX_INPUT_CHARS = 10_000
MAX_LITERAL_CHARS = 20_000  # outputs_equal: longer strings are compared as text only
MAX_LITERAL_DEPTH = 100
KINDS = ("ok", "rejected", "error", "timeout", "memory", "truncated", "nondeterministic", "crash",
         "wrong")
SEEDS = (0, 1)  # primary (gold outputs, answer checks) and determinism-check hash seeds


def _module_allowed_names(name: str) -> tuple[str, ...]:
    listed = SAFE_MODULE_NAMES[name]
    if listed is not None:
        return listed
    mod = __import__(name)
    return tuple(sorted(k for k, v in vars(mod).items()
                        if not k.startswith("_") and type(v).__name__ != "module"))


_ALLOWED_FROM: dict[str, frozenset[str]] = {}


def _allowed_from(module: str) -> frozenset[str]:
    if module not in _ALLOWED_FROM:
        _ALLOWED_FROM[module] = frozenset(_module_allowed_names(module))
    return _ALLOWED_FROM[module]


def _check_import(node: ast.AST) -> str | None:
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name not in SAFE_MODULE_NAMES:
                return f"import of '{a.name}' is not allowed"
            if a.asname and a.asname.startswith("__"):
                return f"forbidden name '{a.asname}'"
        return None
    assert isinstance(node, ast.ImportFrom)
    if node.level or node.module not in SAFE_MODULE_NAMES:
        return f"import from '{node.module or '.'}' is not allowed"
    allowed = _allowed_from(node.module)
    for a in node.names:
        if a.name == "*":
            return "star import is not allowed"
        if a.name not in allowed:
            return f"import of '{node.module}.{a.name}' is not allowed"
        if a.asname and a.asname.startswith("__"):
            return f"forbidden name '{a.asname}'"
    return None


# str.format/format_map look fields up by name: '{0.__class__}' is getattr, '{0[k]}' __getitem__.
_FORMAT_METHODS = ("format", "format_map")


def _check_format_template(template: str, depth: int = 0) -> str | None:
    """A format string may name fields (``{0}``, ``{name}``, ``{!r}``, ``{:>{w}}``) but never reach
    into them: no ``.`` or ``[`` in a field name, in the string or in a nested spec."""
    import _string
    if depth > 1:  # str.format itself allows one nested level
        return "format string too deeply nested"
    try:
        parts = list(_string.formatter_parser(template))
    except ValueError:
        return "malformed format string"
    for _, field, spec, _ in parts:
        if field is None:
            continue
        if "." in field or "[" in field:
            return "format field with '.' or '[' is not allowed"
        if spec and "{" in spec:
            reason = _check_format_template(spec, depth + 1)
            if reason:
                return reason
    return None


def _check_attribute(node: ast.Attribute, modules: dict[str, str]) -> str | None:
    if node.attr.startswith(_FORBIDDEN_ATTR_PREFIXES):
        return f"forbidden attribute '{node.attr}'"
    if node.attr in _FORMAT_METHODS:
        if not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return f"'.{node.attr}' is allowed on a string literal only"
        return _check_format_template(node.value.value)
    if isinstance(node.value, ast.Name) and node.value.id in modules:
        module = modules[node.value.id]
        if node.attr not in _allowed_from(module):  # e.g. string.Formatter, re.enum
            return f"'{module}.{node.attr}' is not allowed"
    return None


def check_program(code: str) -> str | None:
    """The AST allow-list: None when ``code`` may run, else a short reason."""
    if not isinstance(code, str):
        return "program is not a string"
    if len(code) > MAX_CODE_CHARS:
        return "program too long"
    try:
        tree = ast.parse(code, mode="exec")
    except (SyntaxError, ValueError):
        return "syntax error"
    except (MemoryError, RecursionError):  # parser limits on absurd nesting
        return "program too deeply nested"
    body = tree.body
    if not body or not isinstance(body[-1], ast.FunctionDef) or body[-1].name != "f":
        return "program must be one top-level 'def f(...)'"
    for node in body[:-1]:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            return "only imports may precede 'def f'"
    modules = {}  # name bound by `import m [as name]` → m
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update((a.asname or a.name, a.name) for a in node.names if a.name in SAFE_MODULE_NAMES)
    n = 0
    for node in ast.walk(tree):  # iterative: no recursion on deep trees
        n += 1
        if n > MAX_NODES:
            return "program too long"
        bad = _FORBIDDEN_NODES.get(type(node))
        if bad:
            return f"{bad} is not allowed"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            reason = _check_import(node)
            if reason:
                return reason
        elif isinstance(node, ast.Name):
            if node.id in FORBIDDEN_NAMES or node.id.startswith("__"):
                return f"forbidden name '{node.id}'"
        elif isinstance(node, ast.Attribute):
            reason = _check_attribute(node, modules)
            if reason:
                return reason
        elif isinstance(node, ast.MatchClass):  # `case int(__class__=t)` reads an attribute
            for attr in node.kwd_attrs:
                if attr.startswith(_FORBIDDEN_ATTR_PREFIXES):
                    return f"forbidden attribute '{attr}'"
                if attr in _FORMAT_METHODS:  # `case str(format=fm)` binds any string's format
                    return f"'.{attr}' is allowed on a string literal only"
        elif isinstance(node, (ast.FunctionDef, ast.Lambda)):
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]:
                if arg is not None and arg.arg.startswith("__"):
                    return f"forbidden name '{arg.arg}'"
            if isinstance(node, ast.FunctionDef) and node.name.startswith("__"):
                return f"forbidden name '{node.name}'"
        elif isinstance(node, ast.ExceptHandler):
            if node.name and node.name.startswith("__"):
                return f"forbidden name '{node.name}'"
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)):
            if node.name and node.name.startswith("__"):
                return f"forbidden name '{node.name}'"
    return None


def parse_args(input_text: str) -> tuple:
    """``"[1, 2], 3"`` → ``([1, 2], 3)``; ValueError unless it is a plain literal argument list."""
    if not isinstance(input_text, str) or len(input_text) > MAX_INPUT_CHARS:
        raise ValueError("input too long")
    if _nesting_depth(input_text) > MAX_LITERAL_DEPTH:
        raise ValueError("input too deeply nested")
    if not input_text.strip():
        return ()
    try:
        tree = ast.parse("_(" + input_text + "\n)", mode="eval")
        call = tree.body
        if (not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.func.id != "_"
                or call.keywords or any(isinstance(a, ast.Starred) for a in call.args)):
            raise ValueError
        return tuple(ast.literal_eval(a) for a in call.args)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        raise ValueError("input is not a literal argument list") from None


_FAIL = object()


def _nesting_depth(s: str) -> int:
    """Bracket depth outside string literals (approximate: enough to refuse pathological input)."""
    depth = best = 0
    quote = None
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
            best = max(best, depth)
        elif c in ")]}":
            depth -= 1
        i += 1
    return best


def safe_literal(text: str):
    """``ast.literal_eval`` with size and nesting guards; returns ``_FAIL`` when it is no literal."""
    if not isinstance(text, str) or len(text) > MAX_LITERAL_CHARS or _nesting_depth(text) > MAX_LITERAL_DEPTH:
        return _FAIL
    try:
        return ast.literal_eval(text.strip())
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return _FAIL


def outputs_equal(a: str | None, b: str | None) -> bool:
    """Two literal strings equal by value (Python ``==``: ``1 == 1.0 == True``, like the AZR
    reference); when either is not a literal, by stripped text."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    a, b = a.strip(), b.strip()
    if a == b:
        return True
    va, vb = safe_literal(a), safe_literal(b)
    if va is _FAIL or vb is _FAIL:
        return False
    try:
        return bool(va == vb)
    except (RecursionError, MemoryError, TypeError, ValueError):
        return False


# --- public types -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    cpu_seconds: float = 1.0       # CPU time (rlimit rounds up to whole seconds; checked exactly)
    wall_seconds: float = 2.0      # wall time from fork to result, then SIGKILL to the group
    memory_mb: int = 256           # address space on top of the interpreter's own
    output_chars: int = 1000       # longer repr → "truncated"
    file_size_bytes: int = 0       # RLIMIT_FSIZE
    max_processes: int = 0         # RLIMIT_NPROC (binds once the child is no longer root)


@dataclass
class RunResult:
    ok: bool
    output: str | None = None      # repr of f(*args) when the program ran
    error: str | None = None       # short reason when not ok
    kind: str = "ok"               # one of KINDS; "wrong" only from check_abduction/check_induction

    def __bool__(self) -> bool:    # so `if check_abduction(...)` means "correct"
        return self.ok


def _result(kind: str, output: str | None = None, error: str | None = None) -> RunResult:
    return RunResult(ok=kind == "ok", output=output, error=error, kind=kind)


# --- framing (both sides) -----------------------------------------------------------------------

def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _send(fd: int, obj) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    _write_all(fd, struct.pack(">I", len(data)) + data)


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("sandbox server did not answer")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(fd: int, limit: int, deadline: float | None = None):
    head = _read_exact(fd, 4, deadline)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > limit:
        raise ValueError("sandbox message too long")
    data = _read_exact(fd, n, deadline)
    if data is None:
        return None
    return json.loads(data)


# --- trainer side: server processes -------------------------------------------------------------

class SandboxError(RuntimeError):
    pass


_BOOT = ("import sys, runpy\n"
         "if sys.path and sys.path[0] in ('', '.'): del sys.path[0]\n"
         "runpy.run_path(sys.argv[1], run_name=sys.argv[2])\n")


class _Server:
    """One fork server (one hash seed). Restarted transparently when it dies or misbehaves."""

    def __init__(self, seed: int, flags: tuple[str, ...] = ()):
        self.seed = seed
        self.flags = flags  # tests only: "no-seccomp"
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.base: str | None = None
        self.owner = 0
        self.features: dict = {}
        self.restarts = -1

    def _start(self) -> None:
        self.base = tempfile.mkdtemp(prefix=f"azr-sandbox-{self.seed}-")
        os.chmod(self.base, 0o711)  # the unprivileged child may pass through, not list
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-s", "-B", "-c", _BOOT, os.path.abspath(__file__), "__azr_sandbox_server__",
             self.base, ",".join(self.flags)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None if os.environ.get("AZR_SANDBOX_DEBUG") else subprocess.DEVNULL,
            env={"PYTHONHASHSEED": str(self.seed)}, cwd=self.base, start_new_session=True, close_fds=True)
        self.owner = os.getpid()
        self.restarts += 1
        hello = _recv(self.proc.stdout.fileno(), 1 << 20, time.monotonic() + 30)
        if not isinstance(hello, dict) or not hello.get("ready"):
            self._stop()
            raise SandboxError("sandbox server failed to start")
        self.features = hello.get("features", {})

    def _stop(self) -> None:
        if self.owner != os.getpid():  # a forked trainer: the parent's server is not ours
            self.proc, self.base = None, None
            return
        p, self.proc = self.proc, None
        if p is not None:
            try:
                os.killpg(p.pid, 9)
            except OSError:
                pass
            for f in (p.stdin, p.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.base:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def _ensure(self) -> None:
        if self.owner != os.getpid() or self.proc is None or self.proc.poll() is not None:
            self._stop()
            self._start()

    def _post(self, msg: dict) -> None:
        self._ensure()
        _send(self.proc.stdin.fileno(), msg)

    def _collect(self, n: int, limits: Limits, timeout: float) -> list:
        limit = n * (8 * limits.output_chars + 1024) + (1 << 20)
        reply = _recv(self.proc.stdout.fileno(), limit, time.monotonic() + timeout)
        if not isinstance(reply, dict) or not isinstance(reply.get("results"), list) \
                or len(reply["results"]) != n:
            raise SandboxError("sandbox server died or answered nonsense")
        return [_checked(r, limits) for r in reply["results"]]

    def stop(self) -> None:
        with self.lock:
            self._stop()


def _checked(r, limits: Limits) -> RunResult:
    """A server's answer as a RunResult, trusting nothing about its shape."""
    if not (isinstance(r, list) and len(r) == 3 and r[0] in KINDS):
        return _result("crash", error="malformed sandbox answer")
    kind, out, err = r
    if kind == "ok" and not (isinstance(out, str) and len(out) <= limits.output_chars):
        return _result("crash", error="malformed sandbox answer")
    if kind != "ok":
        out = None
    err = err[:200] if isinstance(err, str) else None
    return _result(kind, out, err)


_SERVERS: dict[tuple, _Server] = {}
_SERVERS_LOCK = threading.Lock()


def _server(seed: int, flags: tuple[str, ...] = ()) -> _Server:
    with _SERVERS_LOCK:
        if (seed, flags) not in _SERVERS:
            _SERVERS[(seed, flags)] = _Server(seed, flags)
        return _SERVERS[(seed, flags)]


def shutdown() -> None:
    """Stop the sandbox servers (they restart on the next call)."""
    for s in list(_SERVERS.values()):
        s.stop()


import atexit  # noqa: E402

atexit.register(shutdown)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _batch_timeout(n: int, workers: int, limits: Limits) -> float:
    return 30.0 + (math.ceil(n / workers) + 1) * (limits.wall_seconds + 1.0)


def _run_on_servers(requests: list[tuple[int, list[dict]]], limits: Limits, workers: int,
                    flags: tuple[str, ...] = ()) -> list[list[RunResult]]:
    """Run job lists on several seeds' servers at once; each server runs ``workers`` children."""
    servers = [_server(seed, flags) for seed, _ in requests]
    msgs = [{"jobs": jobs, "limits": asdict(limits), "workers": workers} for _, jobs in requests]
    out: list[list[RunResult] | None] = [None] * len(requests)
    order = sorted(range(len(servers)), key=lambda i: servers[i].seed)  # fixed lock order
    for i in order:
        servers[i].lock.acquire()
    try:
        posted = []
        for i, (s, (_, jobs)) in enumerate(zip(servers, requests)):
            if not jobs:
                out[i] = []
                continue
            try:
                s._post(msgs[i])
                posted.append(i)
            except (OSError, ValueError, SandboxError, TimeoutError):
                s._stop()
        for i in posted:
            try:
                out[i] = servers[i]._collect(len(requests[i][1]), limits,
                                             _batch_timeout(len(requests[i][1]), workers, limits))
            except (OSError, ValueError, SandboxError, TimeoutError):
                servers[i]._stop()
            except BaseException:
                servers[i]._stop()  # interrupted mid-answer: the pipe is out of step now
                raise
        for i, res in enumerate(out):  # one retry on a fresh server, then report a crash
            if res is None:
                n = len(requests[i][1])
                try:
                    servers[i]._post(msgs[i])
                    out[i] = servers[i]._collect(n, limits, _batch_timeout(n, workers, limits))
                except (OSError, ValueError, SandboxError, TimeoutError):
                    servers[i]._stop()
                    out[i] = [_result("crash", error="sandbox failure") for _ in range(n)]
    finally:
        for i in order:
            servers[i].lock.release()
    return out  # type: ignore[return-value]


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


def run_many(jobs: list[tuple[str, str]], limits: Limits = Limits(), workers: int | None = None, *,
             _unsafe: bool = False, _flags: tuple[str, ...] = ()) -> list[RunResult]:
    """Run ``f(*input)`` for each ``(code, input_text)``, each in its own sandboxed process,
    ``workers`` at a time (default: the usable CPUs). Results are in job order.

    ``_unsafe`` (tests only) skips the AST check and gives the program the real builtins, to show
    that the process-level layers contain it on their own; ``_flags=("no-seccomp",)`` (tests only)
    uses a server without the seccomp filter, to show what rlimits, uid drop and kill do alone."""
    workers = workers or _default_workers()
    early, todo, where = _prepare(jobs, _unsafe)
    if todo:
        for i, res in zip(where, _run_on_servers([(SEEDS[0], todo)], limits, workers, _flags)[0]):
            early[i] = res
    return early  # type: ignore[return-value]


def run_program(code: str, input_text: str, limits: Limits = Limits(), *, _unsafe: bool = False,
                _flags: tuple[str, ...] = ()) -> RunResult:
    """``f(*input)`` in the sandbox; ``output`` is its repr when ``ok``."""
    return run_many([(code, input_text)], limits, workers=1, _unsafe=_unsafe, _flags=_flags)[0]


def validate_many(jobs: list[tuple[str, str]], limits: Limits = Limits(),
                  workers: int | None = None) -> list[RunResult]:
    """``validate_task`` for a batch: both seeds' servers run the whole batch at the same time."""
    workers = workers or _default_workers()
    early, todo, where = _prepare(jobs, False)
    if todo:
        first, second = _run_on_servers([(SEEDS[0], todo), (SEEDS[1], todo)], limits, workers)
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


# --- sandbox side (runs in the server / child processes only) ---------------------------------

_CLONE_NEWNET, _CLONE_NEWIPC, _CLONE_NEWUTS, _CLONE_NEWUSER = 0x40000000, 0x08000000, 0x04000000, 0x10000000
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _PR_SET_CHILD_SUBREAPER = 1, 38, 22, 36
_NOBODY = 65534

# x86_64 syscalls a child never needs; they fail with EPERM.
_DENY_X86_64 = (
    2, 85, 257, 437,                            # open, creat, openat, openat2
    41, 42, 43, 44, 46, 49, 50, 53, 288, 307,   # socket, connect, accept, sendto, sendmsg, bind,
                                                # listen, socketpair, accept4, sendmmsg
    56, 57, 58, 59, 322, 435,                   # clone, fork, vfork, execve, execveat, clone3
    62, 200, 234, 424, 434, 438,                # kill, tkill, tgkill, pidfd_send_signal/open/getfd
    101, 310, 311,                              # ptrace, process_vm_readv/writev
    109, 112, 160, 302,                         # setpgid, setsid, setrlimit, prlimit64
    161, 155, 165, 166, 272, 308,               # chroot, pivot_root, mount, umount2, unshare, setns
    428, 429, 430, 431, 432, 433,               # new mount API
    82, 83, 84, 86, 87, 88, 90, 92, 94, 76, 77, 133,  # rename mkdir rmdir link unlink symlink chmod
                                                # chown lchown truncate ftruncate mknod
    258, 259, 260, 263, 264, 265, 266, 268, 316,  # *at variants, renameat2
    135, 169, 175, 176, 246, 248, 249, 250,     # personality, reboot, modules, kexec, keys
    298, 313, 319, 321, 323, 425, 426, 427,     # perf, finit_module, memfd, bpf, userfaultfd, io_uring
    167, 168, 170, 171, 172, 173, 163, 179,     # swap, hostname, iopl/ioperm, acct, quotactl
    129, 297, 141, 312, 440, 448,               # rt_(tg)sigqueueinfo, setpriority, kcmp, process_madvise/mrelease
    132, 235, 261, 280, 452,                    # utime, utimes, futimesat, utimensat, fchmodat2
    188, 189, 190, 197, 198, 199,               # set/remove xattr
    240, 300, 303, 304, 442, 447, 103, 153,     # mq_open, fanotify, handles, mount_setattr, memfd_secret,
                                                # syslog, vhangup
    29, 30, 31, 67, 64, 65, 66, 220, 68, 69, 70, 71,  # SysV shm, sem and msg
)


def _seccomp_program():
    """A classic-BPF filter: kill on a foreign arch, EPERM on x32 and ``_DENY_X86_64``."""
    import ctypes
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    checks = [(jge, 0x40000000)] + [(jeq, nr) for nr in sorted(set(_DENY_X86_64))]
    n = len(checks)
    ins = [(ld, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, 0x80000000), (ld, 0, 0, 0)]
    ins += [(op, n - j, 0, k) for j, (op, k) in enumerate(checks)]
    ins += [(ret, 0, 0, 0x7FFF0000), (ret, 0, 0, 0x00050000 | 1)]  # allow; errno EPERM
    raw = b"".join(struct.pack("HBBI", *i) for i in ins)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = Prog(len(ins), ctypes.addressof(buf))
    return prog, buf  # keep buf alive


class _Sandbox:
    """Per-server state: namespaces, the uid to drop to, the seccomp filter, preloaded modules."""

    def __init__(self, base: str):
        import ctypes
        import resource
        self.base = base
        self.resource = resource
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.prctl = self.libc.prctl
        self.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        os.environ.clear()  # started with PYTHONHASHSEED only
        self.features: dict = {"empty_env": True, "temp_cwd": True, "separate_process": True}
        self.features["network_namespace"] = self._unshare()
        self.features["subreaper"] = self.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # The server itself: bounded memory; a child sets its own (tighter) limits.
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
        self.uid = self.gid = None
        if os.geteuid() == 0 and not self.features.get("user_namespace"):
            try:
                import pwd
                pw = pwd.getpwnam("nobody")
                self.uid, self.gid = pw.pw_uid, pw.pw_gid
            except (ImportError, KeyError):
                self.uid = self.gid = _NOBODY
        try:
            self.seccomp = _seccomp_program()
        except Exception:
            self.seccomp = None
        import builtins
        safe = {k: getattr(builtins, k) for k in SAFE_BUILTINS}
        safe["__import__"] = _minimal_import({name: self._proxy(name) for name in SAFE_MODULES})
        self.safe_builtins = safe
        self.base_vm = self._vm_bytes()

    def _unshare(self) -> bool:
        self.child_unshare = 0  # namespaces each child gets of its own (the server's are shared)
        if self.libc.unshare(_CLONE_NEWNET) == 0:
            for flag, name in ((_CLONE_NEWIPC, "ipc_namespace"), (_CLONE_NEWUTS, "uts_namespace")):
                self.features[name] = self.libc.unshare(flag) == 0
            self.child_unshare = _CLONE_NEWIPC if self.features["ipc_namespace"] else 0
            return True
        if self.libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWIPC) == 0:  # unprivileged
            self.features["user_namespace"] = True
            self.child_unshare = _CLONE_NEWIPC  # the server holds CAP_SYS_ADMIN in its user namespace
            return True
        return False

    @staticmethod
    def _proxy(name: str):
        import types
        mod = __import__(name)
        return types.SimpleNamespace(**{k: getattr(mod, k) for k in _module_allowed_names(name) if hasattr(mod, k)})

    @staticmethod
    def _vm_bytes() -> int:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmSize:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 64 << 20

    # -- in the forked child --

    def child_setup(self, limits: dict, wfd: int, workdir: str) -> None:
        """Confine this (freshly forked) process. Raises if a protection the server has fails."""
        r = self.resource
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader (spawn mode)
        nul = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(nul, fd)
        if wfd != 3:
            os.dup2(wfd, 3)
        os.closerange(4, 1 << 16)
        os.chdir(workdir)
        cpu = max(1, math.ceil(float(limits["cpu_seconds"])))
        mem = self.base_vm + int(limits["memory_mb"]) * (1 << 20)
        for res, val in ((r.RLIMIT_CPU, (cpu, cpu + 1)), (r.RLIMIT_AS, (mem, mem)),
                         (r.RLIMIT_FSIZE, (int(limits["file_size_bytes"]),) * 2),
                         (r.RLIMIT_NPROC, (int(limits["max_processes"]),) * 2),
                         (r.RLIMIT_NOFILE, (8, 8)), (r.RLIMIT_CORE, (0, 0)), (r.RLIMIT_MEMLOCK, (0, 0))):
            r.setrlimit(res, val)
        if self.child_unshare and self.libc.unshare(self.child_unshare) != 0:
            raise OSError("unshare")  # SysV IPC objects of one job must not reach the next
        if self.uid is not None:
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)
        self.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # after setuid, which clears it
        if os.getppid() != self.server_pid:
            os._exit(1)
        if self.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError("no_new_privs")
        if self.seccomp is not None:
            import ctypes
            if self.prctl(_PR_SET_SECCOMP, 2, ctypes.addressof(self.seccomp[0]), 0, 0) != 0:
                raise OSError("seccomp")
        if hasattr(sys, "set_int_max_str_digits"):
            sys.set_int_max_str_digits(4300)
        import signal
        # RLIMIT_CPU counts whole seconds; the profiling timer's default action kills at the exact limit
        signal.setitimer(signal.ITIMER_PROF, float(limits["cpu_seconds"]))

    def probe(self) -> dict:
        """What a confined child can still do (run once at server start)."""
        seen = {"uid": os.getuid()}
        try:
            seen["ipc_ns"] = os.readlink("/proc/self/ns/ipc")
        except OSError:
            pass
        try:
            os.close(os.open("/etc/hostname" if os.path.exists("/etc/hostname") else "/", os.O_RDONLY))
            seen["open_blocked"] = False
        except OSError:
            seen["open_blocked"] = True
        try:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            seen["fork_blocked"] = False
        except OSError:
            seen["fork_blocked"] = True
        import socket
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            seen["socket_blocked"] = False
            try:
                s.settimeout(1)
                s.connect(("1.1.1.1", 53))
                seen["network_unreachable"] = False
            except OSError:
                seen["network_unreachable"] = True
            s.close()
        except OSError:
            seen["socket_blocked"] = True
            seen["network_unreachable"] = True
        return seen


class _Forked(BaseException):
    """Raised in a freshly forked child: unwinds the server's frames up to ``_server_main``."""


def _child_main(start: list) -> None:
    """A forked child, on a stack that holds no server frame: confine, run one job, report, exit."""
    sb, job, limits, wfd, workdir = start
    start.clear()
    try:
        sb.child_setup(limits, wfd, workdir)
        if job.get("probe"):
            msg = sb.probe()
        else:
            safe_builtins = sb.safe_builtins
            sb = wfd = workdir = None  # the job's frames see its own code and input, no server state
            msg = dict(zip("koe", _execute(job["code"], job["input"], bool(job.get("unsafe")), safe_builtins,
                                           int(limits["output_chars"]))))
        data = json.dumps(msg).encode()
    except BaseException as e:
        data = json.dumps({"k": "crash", "e": f"sandbox setup failed: {type(e).__name__}: {e}"[:200]}).encode()
    try:
        _write_all(3, data)
    finally:
        os._exit(0)


def _minimal_import(modules: dict):
    """The programs' ``__import__``, defined in a namespace of its own: its ``__globals__`` hold the
    safe module proxies and nothing of this module."""
    ns = {"__builtins__": {"ImportError": ImportError, "repr": repr}, "modules": modules}
    exec("def __import__(name, globals=None, locals=None, fromlist=(), level=0):\n"
         "    if level or name not in modules:\n"
         "        raise ImportError('import of ' + repr(name) + ' is not allowed')\n"
         "    return modules[name]\n", ns)
    return ns["__import__"]


def _execute(code: str, inp: str, unsafe: bool, safe_builtins: dict, cap: int) -> tuple[str, str | None, str | None]:
    """Run one job in this confined child: (kind, output, error). Fresh globals per job."""
    if not unsafe:
        reason = check_program(code)
        if reason:
            return "rejected", None, reason
    try:
        args = parse_args(inp)
    except ValueError as e:
        return "rejected", None, str(e)
    import builtins
    g = {"__builtins__": vars(builtins) if unsafe else safe_builtins, "__name__": "sandbox"}
    try:
        exec(compile(code, "<program>", "exec", dont_inherit=True), g)
        f = g.get("f")
        if not callable(f):
            return "error", None, "no function f"
        result = f(*args)
    except MemoryError:
        return "memory", None, "memory"
    except BaseException as e:  # SystemExit, KeyboardInterrupt and the rest: all contained
        return "error", None, f"exception: {type(e).__name__}"
    try:
        out = repr(result)
    except MemoryError:
        return "memory", None, "memory"
    except BaseException as e:  # int too long to show, too deeply nested, ...
        return "error", None, f"output cannot be shown ({type(e).__name__})"
    if len(out) > cap:
        return "truncated", None, f"output too long ({len(out)} > {cap} chars)"
    try:  # must round-trip: functions, generators, nan, range, ... are no gold outputs
        back = ast.literal_eval(out)
        same = type(back) is type(result) and bool(back == result)
    except MemoryError:
        return "memory", None, "memory"
    except BaseException:
        same = False
    if not same:
        return "error", None, "output is not a literal"
    return "ok", out, None


def _fork_job(sb: _Sandbox, job: dict, limits: dict):
    """Fork one confined child for ``job``; returns (pid, read fd, workdir)."""
    sb.counter += 1
    workdir = os.path.join(sb.base, f"j{sb.counter}")
    if not os.path.isdir(sb.base):  # e.g. removed by a /tmp cleaner
        os.makedirs(sb.base, exist_ok=True)
        os.chmod(sb.base, 0o711)
    os.mkdir(workdir, 0o700)
    if sb.uid is not None:
        os.chown(workdir, sb.uid, sb.gid)
    rfd, wfd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(rfd)
        os.close(wfd)
        os.rmdir(workdir)
        raise
    if pid == 0:  # child: leave every server frame (the batch, the other jobs) before anything runs
        raise _Forked([sb, job, limits, wfd, workdir])
    os.close(wfd)
    return pid, rfd, workdir


_SIGNAMES = {4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV", 24: "SIGXCPU",
             25: "SIGXFSZ", 27: "SIGPROF", 31: "SIGSYS"}


def _verdict(st: dict, status: int, rusage, limits: dict):
    """[kind, output, error] for a finished child, trusting nothing it wrote."""
    cpu = rusage.ru_utime + rusage.ru_stime if rusage is not None else 0.0
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    if st["timed_out"]:
        return ["timeout", None, "timeout"]
    if st["flooded"]:
        return ["crash", None, "crash: result pipe flooded"]
    if cpu > float(limits["cpu_seconds"]) or sig in (24, 27) or (sig == 9 and cpu >= int(limits["cpu_seconds"])):
        return ["timeout", None, "timeout (cpu)"]
    msg = None
    try:
        msg = json.loads(bytes(st["buf"]))
    except ValueError:
        pass
    if isinstance(msg, dict) and msg.get("k") in KINDS and msg["k"] != "wrong":
        kind, out, err = msg["k"], msg.get("o"), msg.get("e")
        if kind == "ok" and not (isinstance(out, str) and len(out) <= int(limits["output_chars"])):
            return ["crash", None, "malformed result"]
        return [kind, out if kind == "ok" else None, err[:200] if isinstance(err, str) else None]
    if sig:
        return ["crash", None, f"crash: {_SIGNAMES.get(sig, f'signal {sig}')}"]
    return ["crash", None, f"crash: exit {os.WEXITSTATUS(status) if os.WIFEXITED(status) else '?'}"]


def _kill_group(pid: int) -> None:
    for fn in (os.killpg, os.kill):
        try:
            fn(pid, 9)
        except OSError:
            pass


def _drain(st: dict, cap: int) -> None:
    """Read what a child wrote so far (non-blocking); kill it if it floods the pipe."""
    while True:
        try:
            chunk = os.read(st["fd"], 65536)
        except BlockingIOError:
            return
        if not chunk:
            st["eof"] = True
            return
        if not st["flooded"]:
            st["buf"] += chunk
            if len(st["buf"]) > cap:
                st["flooded"] = True
                _kill_group(st["pid"])


def _run_children(sb: _Sandbox, jobs: list, limits: dict, workers: int, finish) -> list:
    """Run ``jobs`` in confined children, ``workers`` at a time; ``finish(state, status, rusage)``
    turns each finished child into its result. A pidfd tells when a child has exited."""
    from collections import deque
    sb.base_vm = sb._vm_bytes()  # the RLIMIT_AS baseline; the server may have grown
    cap = 8 * int(limits["output_chars"]) + 4096
    wall = float(limits["wall_seconds"])
    pending = deque(enumerate(jobs))
    results: list = [None] * len(jobs)
    running: list[dict] = []
    by_fd: dict[int, dict] = {}
    poller = select.poll()
    hup = getattr(sb, "proto_in", None)  # the trainer's pipe: a hang-up means it is gone
    if hup is not None:
        poller.register(hup, select.POLLHUP | select.POLLERR)
    while pending or running:
        while pending and len(running) < max(1, workers):
            i, job = pending.popleft()
            try:
                pid, rfd, wd = _fork_job(sb, job, limits)
            except OSError as e:
                results[i] = ["crash", None, f"crash: fork failed ({e.errno})"]
                continue
            os.set_blocking(rfd, False)
            try:
                pidfd = os.pidfd_open(pid)
            except (AttributeError, OSError):
                pidfd = None
            st = {"i": i, "pid": pid, "fd": rfd, "pidfd": pidfd, "wd": wd, "buf": bytearray(), "eof": False,
                  "exited": False, "timed_out": False, "flooded": False, "deadline": time.monotonic() + wall}
            running.append(st)
            for fd in (rfd, pidfd):
                if fd is not None:
                    by_fd[fd] = st
                    poller.register(fd, select.POLLIN)
        if not running:
            continue
        wait = min(st["deadline"] for st in running) - time.monotonic()
        if any(st["eof"] and st["pidfd"] is None for st in running):
            wait = min(wait, 0.001)  # no pidfd: poll for the exit
        for fd, ev in poller.poll(max(0.0, wait) * 1000):
            if fd == hup:
                if ev & (select.POLLHUP | select.POLLERR):
                    _abandon(sb, running)
                continue
            st = by_fd[fd]
            if fd == st["pidfd"]:
                st["exited"] = True
                poller.unregister(fd)
            elif not st["eof"]:
                _drain(st, cap)
                if st["eof"]:
                    poller.unregister(fd)
        now = time.monotonic()
        for st in list(running):
            pid = st["pid"]
            if st["eof"] and st["pidfd"] is None and not st["exited"]:
                # without a pidfd: has it exited? (WNOWAIT: the zombie keeps its pid for the kill below)
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                st["exited"] = info is not None
            if not st["exited"] and now < st["deadline"]:
                continue
            st["timed_out"] = not st["exited"]
            _kill_group(pid)  # the child and anything left in its group; not reaped yet, so no pid reuse
            _, status, ru = os.wait4(pid, 0)
            if not st["eof"]:
                _drain(st, cap)
            for fd in (st["fd"], st["pidfd"]):
                if fd is not None:
                    if fd in by_fd:
                        del by_fd[fd]
                    try:
                        poller.unregister(fd)
                    except KeyError:
                        pass
                    os.close(fd)
            running.remove(st)
            results[st["i"]] = finish(st, status, ru)
            try:
                os.rmdir(st["wd"])
            except OSError:
                shutil.rmtree(st["wd"], ignore_errors=True)
    if hup is not None:
        poller.unregister(hup)
    if not sb.seccomp_active:
        _reap_strays()
    return results


def _abandon(sb: _Sandbox, running: list) -> None:
    """The trainer died mid-batch: kill the children, clean up, exit."""
    for st in running:
        _kill_group(st["pid"])
        try:
            os.wait4(st["pid"], 0)
        except ChildProcessError:
            pass
    if not sb.seccomp_active:
        _reap_strays()
    shutil.rmtree(sb.base, ignore_errors=True)
    os._exit(0)


def _run_batch(sb: _Sandbox, jobs: list, limits: dict, workers: int) -> list:
    return _run_children(sb, jobs, limits, workers, lambda st, status, ru: _verdict(st, status, ru, limits))


def _probe(sb: _Sandbox) -> dict | None:
    """Confine a child exactly like a job child and record what it can still do."""
    def finish(st, status, ru):
        try:
            seen = json.loads(bytes(st["buf"]))
        except ValueError:
            return None
        return seen if isinstance(seen, dict) and "uid" in seen else None
    return _run_children(sb, [{"probe": True}], asdict(Limits(wall_seconds=10)), 1, finish)[0]


def _reap_strays() -> None:
    """Kill and reap orphans reparented to this subreaper (only possible without seccomp). Killing
    one reparents its own children here, so repeat until none is left."""
    me = os.getpid()
    for _ in range(1000):
        killed = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    stat = fh.read()
                if int(stat[stat.rindex(b")") + 2:].split()[1]) == me:
                    os.kill(int(name), 9)
                    killed.append(int(name))
            except (OSError, ValueError):
                pass
        for pid in killed:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if not killed:
            break
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break


_PRELOAD = ("bisect", "collections", "collections.abc", "functools", "heapq", "itertools", "re", "string",
            "signal", "socket", "types", "pwd", "ctypes", "platform", "resource", "json.decoder",
            "json.encoder", "encodings.ascii", "encodings.latin_1", "encodings.utf_16", "encodings.utf_32")


def _preload() -> None:
    # Everything a confined child might import lazily must be imported now: it cannot open files.
    import importlib
    for name in _PRELOAD:
        importlib.import_module(name)


def _setup_sandbox(base: str, server_pid: int, flags: tuple[str, ...] = ()) -> _Sandbox:
    """Namespaces, probe, and fallbacks: drop the uid drop, then seccomp, if the probe child fails."""
    import gc
    _preload()
    sb = _Sandbox(base)
    sb.server_pid = server_pid
    sb.counter = 0
    sb.seccomp_active = False
    if "no-seccomp" in flags:
        sb.seccomp = None
    for name in SAFE_MODULES:
        _allowed_from(name)
    gc.collect()
    gc.freeze()  # fewer copy-on-write faults after fork
    server_ipc = os.readlink("/proc/self/ns/ipc")
    seen = _probe(sb)
    if seen is None and sb.child_unshare:
        sb.child_unshare = 0
        seen = _probe(sb)
    if seen is None and sb.uid is not None:
        sb.uid = sb.gid = None
        seen = _probe(sb)
    if seen is None and sb.seccomp is not None:
        sb.seccomp = None
        seen = _probe(sb)
    seen = seen or {}
    f = sb.features
    f["probe"] = seen
    f["uid_drop"] = sb.uid is not None and seen.get("uid") == sb.uid
    f["sandbox_uid"] = seen.get("uid")
    f["seccomp"] = sb.seccomp is not None and bool(seen.get("open_blocked") and seen.get("socket_blocked")
                                                    and seen.get("fork_blocked"))
    f["no_new_privs"] = bool(seen)
    f["pdeathsig"] = bool(seen)
    f["rlimits"] = ["cpu", "address_space", "file_size", "processes", "open_files", "core", "memlock"] if seen else []
    f["network_blocked"] = bool(seen.get("network_unreachable"))
    f["ipc_namespace_per_child"] = bool(seen.get("ipc_ns")) and seen.get("ipc_ns") != server_ipc
    f["working"] = bool(seen)
    sb.seccomp_active = f["seccomp"]
    return sb


def _server_main(base: str, flags: tuple[str, ...]) -> None:
    try:
        _serve(base, flags)  # never returns in the server
    except _Forked as forked:  # a job's child; dropping the traceback frees the batch
        start = forked.args[0]
    _child_main(start)


def _serve(base: str, flags: tuple[str, ...]) -> None:
    proto_in, proto_out = os.dup(0), os.dup(1)
    nul = os.open(os.devnull, os.O_RDWR)
    os.dup2(nul, 0)
    os.dup2(nul, 1)  # a stray print must not corrupt the protocol
    try:
        sb = _setup_sandbox(base, os.getpid(), flags)
        sb.proto_in = proto_in
        _send(proto_out, {"ready": True, "features": sb.features})
        while True:
            try:
                msg = _recv(proto_in, 1 << 30)
            except (OSError, ValueError):
                msg = None
            if msg is None:
                break
            results = _run_batch(sb, msg["jobs"], msg["limits"], int(msg.get("workers", 1)))
            try:
                _send(proto_out, {"results": results})
            except OSError:  # the trainer is gone
                break
    except _Forked:
        raise  # a child on its way out of the server's frames: no server clean-up
    except BaseException:
        pass
    # children die with us (parent-death signal); the job dirs go here
    shutil.rmtree(base, ignore_errors=True)
    os._exit(0)


def _spawn_main(base: str) -> None:
    """One job in this fresh interpreter (the benchmark's baseline): same confinement, no fork."""
    req = json.loads(sys.stdin.buffer.read())
    wfd = os.dup(1)
    _preload()
    sb = _Sandbox(base)
    sb.server_pid = os.getppid()
    if sb.uid is not None:
        os.chown(base, sb.uid, sb.gid)
    try:
        sb.child_setup(req["limits"], wfd, base)
        job, limits = req["job"], req["limits"]
        data = json.dumps(dict(zip("koe", _execute(job["code"], job["input"], bool(job.get("unsafe")),
                                                   sb.safe_builtins, int(limits["output_chars"]))))).encode()
    except BaseException as e:
        data = json.dumps({"k": "crash", "e": f"sandbox setup failed: {type(e).__name__}"}).encode()
    _write_all(3, data)
    os._exit(0)


def _run_spawned(code: str, input_text: str, limits: Limits = Limits()) -> RunResult:
    """Baseline for benchmarks: a fresh ``python`` per program instead of the fork server."""
    early, todo, _ = _prepare([(code, input_text)], False)
    if not todo:
        return early[0]
    base = tempfile.mkdtemp(prefix="azr-spawn-")
    os.chmod(base, 0o711)
    p = subprocess.Popen([sys.executable, "-S", "-s", "-B", "-c", _BOOT, os.path.abspath(__file__),
                          "__azr_sandbox_one__", base], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env={"PYTHONHASHSEED": str(SEEDS[0])}, cwd=base,
                         start_new_session=True)
    try:
        out, _ = p.communicate(json.dumps({"job": todo[0], "limits": asdict(limits)}).encode(),
                               timeout=limits.wall_seconds + 2.0)  # + interpreter start-up
    except subprocess.TimeoutExpired:
        _kill_group(p.pid)
        p.wait()
        return _result("timeout", error="timeout")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    st = {"buf": out, "timed_out": False, "flooded": len(out) > 8 * limits.output_chars + 4096}
    status = -p.returncode if p.returncode < 0 else p.returncode << 8  # back to a wait() status
    return _checked(_verdict(st, status, None, asdict(limits)), limits)


if __name__ == "__azr_sandbox_server__":
    _server_main(sys.argv[3], tuple(f for f in sys.argv[4].split(",") if f))
elif __name__ == "__azr_sandbox_one__":
    _spawn_main(sys.argv[3])
