"""The fork server (a process of its own, one per hash seed): reads batches from the trainer's
pipe, forks one confined child per job, ``workers`` at a time, kills at the limits, turns each
finished child into a verdict without trusting what it wrote, and sweeps up stray processes.
Started by pool.py as ``python -S -s -B -c BOOT``; standard library only.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import sys
import time
from dataclasses import asdict

from .child import _execute, _Sandbox
from .codecheck import SAFE_MODULES, _allowed_from
from .protocol import KINDS, Limits, _recv, _send, _write_all


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


def _run_children(sb: _Sandbox, jobs: list, limits: dict, workers: int, finish) -> list:  # noqa: C901 - the fork loop: each child outcome (exit, signal, limit, wall kill) handled where it is reaped
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
    unshare = sb.child_unshare
    if seen is None and unshare:
        sb.child_unshare = 0
        seen = _probe(sb)
    if seen is None and sb.uid is not None:
        sb.uid = sb.gid = None
        seen = _probe(sb)
    if seen is None and sb.seccomp is not None:
        sb.seccomp = None
        seen = _probe(sb)
    if unshare and not sb.child_unshare and seen is not None:  # dropped first: was it the cause?
        sb.child_unshare = unshare
        again = _probe(sb)
        sb.child_unshare = unshare if again is not None else 0
        seen = again or seen
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


def main(argv: list[str]) -> None:
    """Entry point of the server process (``serve BASE FLAGS``) or of one spawned run (``one BASE``)."""
    if argv[0] == "serve":
        _server_main(argv[1], tuple(f for f in argv[2].split(",") if f))
    elif argv[0] == "one":
        _spawn_main(argv[1])
