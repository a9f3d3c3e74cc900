"""Trainer side of the sandbox: one fork-server process per hash seed, started on demand,
restarted when it dies or answers nonsense, stopped at exit; batches go to several servers at once.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict

from .. import osdeps
from .protocol import Limits, RunResult, _checked, _recv, _result, _send


class SandboxError(RuntimeError):
    pass


# The directory holding the azr_trainer package: the server imports azr_trainer.sandbox from it,
# appended after the standard library so that nothing there is shadowed.
SRC_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOOT = ("import sys\n"
        "if sys.path and sys.path[0] in ('', '.'): del sys.path[0]\n"
        "sys.path.append(sys.argv[1])\n"
        "from azr_trainer.sandbox import server\n"
        "server.main(sys.argv[2:])\n")


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
            [sys.executable, "-S", "-s", "-B", "-c", BOOT, SRC_DIR, "serve", self.base, ",".join(self.flags)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None if os.environ.get("AZR_SANDBOX_DEBUG") else subprocess.DEVNULL,
            env={"PYTHONHASHSEED": str(self.seed)}, cwd=self.base, close_fds=True, **osdeps.own_group_kwargs())
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
            osdeps.kill_group(p)  # the server and every child it forked
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


_SERVERS: dict[tuple, _Server] = {}
_SERVERS_LOCK = threading.Lock()


def _server(seed: int, flags: tuple[str, ...] = ()) -> _Server:
    osdeps.require_reasoning()  # the last guard: no model-written program runs off Linux
    with _SERVERS_LOCK:
        if (seed, flags) not in _SERVERS:
            _SERVERS[(seed, flags)] = _Server(seed, flags)
        return _SERVERS[(seed, flags)]


def shutdown() -> None:
    """Stop the sandbox servers (they restart on the next call)."""
    for s in list(_SERVERS.values()):
        s.stop()


atexit.register(shutdown)


def _default_workers() -> int:
    return osdeps.usable_cpus()


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
