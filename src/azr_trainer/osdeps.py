"""What differs between operating systems, in one place.

Every call the product makes that only some systems have (process liveness and start times,
process groups, the C library's ``malloc_trim``, ``/proc``, renaming, replacing or deleting a
file another program holds open, directory fsync, torchrun's rendezvous store) is here with a
fallback for the others; the rest of the package calls these functions instead. The sandbox's own internals (sandbox/child.py, server.py:
seccomp, namespaces, the fork server) stay Linux-only; reasoning mode, the only user of the
sandbox, is refused elsewhere (:func:`require_reasoning`).

Named ``osdeps``, not ``platform``: the standard library's ``platform`` is imported by this
package (autosize.py) and by torch and SQLAlchemy, and a module of that name in the package
folder would shadow it whenever that folder lands on ``sys.path`` (running one of its files
directly, some editors' run buttons).

Portable mode: ``AZR_PORTABLE=1`` makes the product behave as it does off Linux (no
Linux-only layer, the other systems' branches wherever they can run on this machine), so that
CI, which only has Linux, proves the paths Windows and macOS take. It is read at each call:
tests may set it for one test, and the worker processes a studio starts inherit it.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PORTABLE_ENV = "AZR_PORTABLE"


def portable() -> bool:
    return os.environ.get(PORTABLE_ENV, "") == "1"


def linux() -> bool:
    """Linux, with its Linux-only layers (``/proc``, glibc, the sandbox) in use."""
    return sys.platform.startswith("linux") and not portable()


def windows() -> bool:
    return os.name == "nt"


def posix() -> bool:
    """POSIX calls (signals to a pid, process groups, directory fsync) in use."""
    return os.name == "posix" and not windows() and not portable()


def system_name() -> str:
    if portable():
        return f"{_plain_system_name()} ({PORTABLE_ENV}=1)"
    return _plain_system_name()


def _plain_system_name() -> str:
    if windows():
        return "Windows"
    if sys.platform == "darwin":
        return "macOS"
    if sys.platform.startswith("linux"):
        return "Linux"
    return sys.platform


# ---- reasoning mode ----------------------------------------------------------------------------

def reasoning_available() -> bool:
    """Reasoning mode runs programs the model writes; only the Linux sandbox (seccomp,
    namespaces, rlimits, a fork server) confines them well enough, so it is Linux only. A
    weaker confinement elsewhere is not something we would defend."""
    return linux()


def reasoning_refusal() -> dict | None:
    """Why reasoning mode is refused here, as ``{"code", "params"}`` (for the page), or None."""
    if reasoning_available():
        return None
    return {"code": "platform.reasoning_linux_only", "params": {"system": system_name()}}


def require_reasoning() -> None:
    """Refuse reasoning mode up front, before anything is created or run."""
    refusal = reasoning_refusal()
    if refusal is not None:
        from .errors import UserError
        raise UserError(refusal["code"], **refusal["params"])


# ---- processes ---------------------------------------------------------------------------------

_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_STILL_ACTIVE = 259
_ERROR_ACCESS_DENIED = 5
_EPOCH_AS_FILETIME = 116444736000000000  # 1970-01-01 in 100 ns ticks since 1601-01-01


def _kernel32():
    """kernel32 with the signatures this module uses (Windows only)."""
    import ctypes
    k = ctypes.WinDLL("kernel32", use_last_error=True)
    handle, dword = ctypes.c_void_p, ctypes.c_uint32
    k.OpenProcess.restype = handle
    k.OpenProcess.argtypes = (dword, ctypes.c_int, dword)
    k.GetExitCodeProcess.argtypes = (handle, ctypes.POINTER(dword))
    k.GetProcessTimes.argtypes = (handle,) + (ctypes.POINTER(ctypes.c_uint64),) * 4
    k.CloseHandle.argtypes = (handle,)
    return k


def _win_process(pid: int, query: Callable):
    """``query(kernel32, handle)`` on process ``pid``; "gone" when no such process exists,
    "unknown" when it exists but cannot be asked (another user's)."""
    import ctypes
    k = _kernel32()
    h = k.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, 0, pid)
    if not h:
        return "unknown" if ctypes.get_last_error() == _ERROR_ACCESS_DENIED else "gone"
    try:
        return query(k, h)
    finally:
        k.CloseHandle(h)


def _win_exit_code(k, h):
    import ctypes
    code = ctypes.c_uint32()
    return code.value if k.GetExitCodeProcess(h, ctypes.byref(code)) else None


def _win_creation_time(k, h):
    import ctypes
    created, exited, kernel, user = (ctypes.c_uint64() for _ in range(4))
    if not k.GetProcessTimes(h, ctypes.byref(created), ctypes.byref(exited), ctypes.byref(kernel),
                             ctypes.byref(user)):
        return None
    return (created.value - _EPOCH_AS_FILETIME) / 1e7


def process_alive(pid: int) -> bool:
    """Is process ``pid`` running? When that cannot be told, yes (the cautious answer).
    Windows: os.kill(pid, 0) there would end the process, so kernel32 is asked instead.
    Portable mode keeps this machine's own check: there is no other way to ask."""
    if pid <= 0:
        return False
    if windows():
        try:
            state = _win_process(pid, _win_exit_code)
        except (OSError, AttributeError):
            return True
        if state == "gone":
            return False
        return state in ("unknown", None, _STILL_ACTIVE)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch; None where that is unknown.
    Linux: /proc/<pid>/stat field 22 (clock ticks after boot) plus the boot time. Windows:
    kernel32's creation time. Elsewhere (macOS, portable mode) unknown."""
    if windows():
        try:
            started = _win_process(pid, _win_creation_time)
        except (OSError, AttributeError):
            return None
        return started if isinstance(started, float) else None
    if not linux():
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # after "pid (name)" the fields count from 3
        with open("/proc/stat", encoding="utf-8") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def parent_gone(parent: int, since: float) -> bool:
    """Has the process that started this one (pid ``parent``, seen at ``since``) exited?
    POSIX hands an orphan to another parent, so a changed ``getppid`` says it. Windows keeps
    reporting the dead parent's pid, so there: is that pid still alive, and not reused by a
    process started after ``since``?"""
    if posix():
        return os.getppid() != parent
    if not process_alive(parent):
        return True
    started = process_start_time(parent)
    return started is not None and started > since + 1.0


def own_group_kwargs() -> dict:
    """``subprocess.Popen`` arguments that put the child (and what it starts) in its own
    group, so that :func:`kill_group` ends all of them and a Ctrl-C in the console does not."""
    if posix():
        return {"start_new_session": True}
    if windows():
        import subprocess
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {}


def kill_group(proc) -> None:
    """End ``proc`` and, on POSIX, everything in its process group (see own_group_kwargs).
    Elsewhere only ``proc`` itself: its children must end with it on their own."""
    try:
        if posix():
            os.killpg(proc.pid, 9)
        else:
            proc.kill()
    except OSError:
        pass


def torchrun_env() -> dict:
    """Environment variables torchrun (PyTorch's launcher) needs here, beyond this process's.
    Its rendezvous store asks for libuv by default since PyTorch 2.4, and PyTorch's Windows
    builds have none ("use_libuv was requested but PyTorch was built without libuv support"):
    there, and in portable mode (to prove that path), the older store. A value already set wins."""
    return {"USE_LIBUV": "0"} if windows() or portable() else {}


def usable_cpus() -> int:
    """CPUs this process may run on (Linux: its affinity mask), at least 1."""
    if linux() and hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


# ---- memory ------------------------------------------------------------------------------------

_TRIM: list = []  # [glibc's malloc_trim or None], looked up once


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (hands freed heap pages back to the system), or None: other C
    libraries (macOS, Windows, musl) and portable mode have nothing to call."""
    if not linux():
        return None
    if not _TRIM:
        try:
            import ctypes
            _TRIM.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):
            _TRIM.append(None)
    return _TRIM[0]


def resident_bytes() -> int | None:
    """This process's resident memory (Linux: /proc), None elsewhere."""
    if not linux():
        return None
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def available_ram() -> int | None:
    """RAM available to new allocations, in bytes; None where unknown. Linux: MemAvailable
    (counts reclaimable cache); Windows: kernel32's available physical memory; other POSIX
    systems that have it (and portable mode on Linux): free pages."""
    if linux():
        try:
            with open("/proc/meminfo", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    if windows():
        return _win_available_ram()
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _win_available_ram() -> int | None:
    import ctypes

    class MemoryStatusEx(ctypes.Structure):
        _fields_ = [("dwLength", ctypes.c_uint32), ("dwMemoryLoad", ctypes.c_uint32),
                    ("ullTotalPhys", ctypes.c_uint64), ("ullAvailPhys", ctypes.c_uint64),
                    ("ullTotalPageFile", ctypes.c_uint64), ("ullAvailPageFile", ctypes.c_uint64),
                    ("ullTotalVirtual", ctypes.c_uint64), ("ullAvailVirtual", ctypes.c_uint64),
                    ("ullAvailExtendedVirtual", ctypes.c_uint64)]
    status = MemoryStatusEx()
    status.dwLength = ctypes.sizeof(MemoryStatusEx)
    try:
        if ctypes.WinDLL("kernel32").GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.ullAvailPhys)
    except (OSError, AttributeError):
        pass
    return None


def cpu_name() -> str | None:
    """The CPU's model name where the system says it cheaply (Linux: /proc/cpuinfo)."""
    if not linux():
        return None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


# ---- files -------------------------------------------------------------------------------------

REPLACE_PAUSES = (0.1, 0.25, 0.5, 1.0)  # seconds between the 5 tries: a virus scan of a big checkpoint
REMOVE_PAUSES = (0.1, 0.25, 0.5)  # seconds between the 4 tries of a delete


def _retried(call: Callable[[], object], pauses: tuple, retry_on: tuple = (PermissionError,)) -> None:
    for pause in (*pauses, None):
        try:
            call()
            return
        except retry_on:
            if pause is None:
                raise
            time.sleep(pause)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """os.replace, tried again a few times on PermissionError: on Windows it fails while another
    program (a virus scanner, the indexer, a reader of the old file) has ``dst`` (or something
    in a folder being renamed) open, which lasts moments. A lasting PermissionError (POSIX
    permissions) comes back after the last try."""
    _retried(lambda: os.replace(src, dst), REPLACE_PAUSES)


def rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """os.rename with replace's tries. Unlike replace, on Windows it never takes the place of an
    existing ``dst``: for a new folder whose name must still be free (a model, a trash folder)."""
    _retried(lambda: os.rename(src, dst), REPLACE_PAUSES)


def in_use(path: str | os.PathLike):
    """The error for a file or folder that another program keeps open past the tries above
    (409: the same request succeeds once that program lets go)."""
    from .errors import Conflict
    return Conflict("platform.in_use", path=str(path))


def _writable_again(path: str) -> None:
    # Windows refuses to delete a read-only file (a book copied from a CD, a file git made)
    try:
        os.chmod(path, stat.S_IWRITE | stat.S_IREAD | (stat.S_IEXEC if os.path.isdir(path) else 0))
    except OSError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except PermissionError:
        _writable_again(path)
        os.unlink(path)


def _rmtree(path: str) -> None:
    """shutil.rmtree that goes on past what it cannot delete (so everything else goes), clearing
    read-only marks on the way; then raises the first failure, for _retried to try again."""
    failed: list[OSError] = []

    def on_error(func, p, error):
        if isinstance(error, FileNotFoundError):
            return
        if func in (os.unlink, os.remove, os.rmdir):
            _writable_again(p)
            try:
                func(p)
                return
            except FileNotFoundError:
                return
            except OSError as again:
                error = again
        failed.append(error)

    if sys.version_info >= (3, 12):  # onerror is deprecated there
        shutil.rmtree(path, onexc=on_error)
    else:
        shutil.rmtree(path, onerror=lambda func, p, info: on_error(func, p, info[1]))
    if failed:
        raise failed[0]


def remove_file(path: str | os.PathLike) -> bool:
    """Delete a file (a missing one is fine), clearing a read-only mark, and trying again for a
    moment while another program holds it (Windows refuses to delete an open or memory-mapped
    file). True when it is gone; False when it is still held after the tries."""
    try:
        _retried(lambda: _unlink(os.fspath(path)), REMOVE_PAUSES, (OSError,))
    except OSError:
        pass
    return not os.path.lexists(path)


def remove_tree(path: str | os.PathLike) -> bool:
    """Delete a folder and everything in it like remove_file deletes a file (a file or a link
    given: only it). True when it is gone. False when something in it is still held after the
    tries: what could go is gone, the rest stays (call it on hidden or temp folders only, or
    after renaming the folder out of sight, so nobody sees it half-deleted)."""
    path = os.fspath(path)

    def once():
        if os.path.islink(path) or not os.path.isdir(path):
            _unlink(path)
        else:
            _rmtree(path)

    try:
        _retried(once, REMOVE_PAUSES, (OSError,))
    except OSError:
        pass
    return not os.path.lexists(path)


def fsync_dir(path: Path) -> None:
    # Makes a rename durable on POSIX; directories cannot be opened on Windows.
    if not posix():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists (then False). O_EXCL is atomic on every
    system and on network drives, unlike advisory locks, which differ between systems."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return True


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp file name beside ``path`` to write to; when the block ends without an error the
    file is fsynced and renamed over ``path``: readers (and a crash) see the old file or the
    new one, never a half-written one. For writers that want a file name (GGUF, zip)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        remove_file(tmp)  # never raises: the error that stopped the write is the one to see
        raise


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Let ``write`` fill the file through a file object, atomically (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))
