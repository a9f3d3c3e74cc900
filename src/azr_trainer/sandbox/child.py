"""Confinement of one sandbox child (in the fork server's children only): namespaces, rlimits,
uid drop, no-new-privs, the seccomp filter, the programs' builtins and import, and the run of one
job with its output rules. Standard library only (imported by the server under ``python -S -s``).
"""

from __future__ import annotations

import ast
import math
import os
import struct
import sys

from .codecheck import (
    SAFE_BUILTINS,
    SAFE_MODULES,
    _module_allowed_names,
    check_program,
    parse_args,
)

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
