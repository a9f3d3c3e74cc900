"""Where to compute: picks cuda, mps or cpu, sets CPU threads, and knows how much memory there is."""

from __future__ import annotations

import os

import torch

from . import osdeps
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


def check_processes(nproc: int | None, batch_size: int, choice: str = "auto", machines: int = 1) -> None:
    """``nproc`` training processes on each of ``machines``: together they must share a batch
    evenly (each trains on its own share), and those of one machine that will train on CUDA take
    one GPU each (DDP with nccl): more processes than GPUs would fail inside the launcher, so say
    it before the start."""
    processes = (nproc or 1) * machines
    if processes > 1 and batch_size % processes:
        raise UserError("settings.nproc_batch", batch_size=batch_size, nproc=processes)
    if not nproc or nproc <= 1 or choice not in (None, "", "auto", "cuda") or not torch.cuda.is_available():
        return
    gpus = torch.cuda.device_count()
    if nproc > gpus:
        raise UserError("device.too_few_gpus", nproc=nproc, gpus=gpus)


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
    return osdeps.available_ram()


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after big tensors are freed)."""
    trim = osdeps.malloc_trim()
    if trim is not None:
        trim(0)


def resident_bytes() -> int | None:
    """This process's resident memory (Linux), None elsewhere."""
    return osdeps.resident_bytes()


class MemoryTrimmer:
    """Hands the heap's free pages back to the OS after a CPU training step, when it pays.

    glibc keeps the pages of each step's freed activations and the heap fragments: trimming
    after every step lowers the peak resident set (default model, batch 16: ~1.6 GB instead of
    ~1.8 GB) but costs every step the call (~50 ms at batch 4, ~250 ms at batch 16, one thread)
    and the page faults that bring the pages back. So: the resident set after the first
    ``warmup`` steps (optimizer state and gradients exist by then) plus a margin (10%, at least
    ``grow_bytes``) is the mark. Above the mark (the heap is creeping) or while memory is short
    (less available than this process holds) it trims after every step, as it always did;
    otherwise only every ``every`` steps."""

    def __init__(self, grow_bytes: int = 64 * 2**20, every: int = 100, warmup: int = 3, check_every: int = 10):
        self.grow_bytes, self.every, self.warmup, self.check_every = grow_bytes, every, warmup, check_every
        self.steps = self.trims = 0
        self.mark: int | None = None
        self.short = False

    def after_step(self) -> None:
        if osdeps.malloc_trim() is None:
            return
        self.steps += 1
        rss = resident_bytes()
        if rss is None:  # no /proc: trim now and then
            if self.steps % self.every == 0:
                self._trim()
            return
        if self.steps % self.check_every == 1:
            free = available_memory_bytes(torch.device("cpu"))
            self.short = free is not None and free < rss
        if self.steps <= self.warmup:
            self.mark = max(self.mark or 0, rss + max(self.grow_bytes, rss // 10))
            if self.short:
                self._trim()
            return
        if self.short or rss > self.mark or self.steps % self.every == 0:
            self._trim()

    def _trim(self) -> None:
        release_free_memory()
        self.trims += 1
