"""Where to compute: picks cuda, mps or cpu, sets CPU threads, and knows how much memory there is."""

from __future__ import annotations

import os

import torch

from .home import UserError


def pick_device(name: str = "auto") -> torch.device:
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise UserError("device.unknown", name=name, options=["auto", "cpu", "cuda", "cuda:N", "mps"]) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device.no_cuda")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device.no_mps")
    return dev


def default_threads() -> int:
    # OMP_NUM_THREADS wins (torchrun sets it per process); otherwise every core.
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 2))


def set_threads(threads: int | None) -> int:
    n = threads or default_threads()
    if n < 1:
        raise UserError("device.threads", value=n)
    torch.set_num_threads(n)
    return n


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory a run could use: free GPU memory, or RAM available to this process. None if unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _load_malloc_trim():
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (macOS, Windows, musl): nothing to do


_malloc_trim = _load_malloc_trim() if os.name == "posix" else None


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS. glibc keeps them after each step's big activation
    tensors are freed, and the heap fragments: peak RSS of the default model drops from
    ~1.8 GB to ~1.5 GB when this runs after every CPU training step (cost: about a millisecond)."""
    if _malloc_trim is not None:
        _malloc_trim(0)

