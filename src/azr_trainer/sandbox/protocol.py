"""What crosses the trainer ↔ sandbox-server pipe: length-prefixed JSON frames, the run limits and
the result of one run (``Limits``, ``RunResult``), and the trainer's distrustful reading of a
server's answer. Standard library only (imported by the server too)."""

from __future__ import annotations

import json
import os
import select
import struct
import time
from dataclasses import dataclass

KINDS = ("ok", "rejected", "error", "timeout", "memory", "truncated", "nondeterministic", "crash",
         "wrong")


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
