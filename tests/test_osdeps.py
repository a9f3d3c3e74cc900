"""What differs between operating systems (osdeps.py): the package without POSIX-only modules,
reasoning mode refused off Linux (in the library, the API, the CLI), Windows' process checks
through kernel32, and replacing a file another program holds for a moment."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from azr_trainer import executor, osdeps, store
from azr_trainer.cli import main
from azr_trainer.errors import UserError
from azr_trainer.jobs import JobRunner
from azr_trainer.model import ModelConfig
from azr_trainer.reasoning import ReasonConfig, reason
from azr_trainer.registry import Registry
from azr_trainer.server import create_app

SRC = Path(__file__).resolve().parent.parent / "src"
REFUSED = "platform.reasoning_linux_only"
TINY = ModelConfig(vocab_size=260, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_seq_len=320, tokenizer="char")

# Imports every module of the package on a Python without what Windows lacks: the POSIX-only
# modules, os and signal functions, then uses the calls that have a fallback.
WITHOUT_POSIX = r"""
import os, pkgutil, importlib, signal, sys, tempfile
from pathlib import Path
for name in ("fcntl", "resource", "termios", "pwd", "grp", "posix"):
    sys.modules[name] = None
for name in ("fork", "forkpty", "killpg", "setsid", "getpgid", "setpgid", "getsid", "sched_getaffinity",
             "sysconf", "getuid", "geteuid", "setuid", "setgid", "wait3", "wait4"):
    if hasattr(os, name):
        delattr(os, name)
for name in ("SIGKILL", "SIGHUP", "SIGPROF", "SIGALRM", "SIGCHLD", "SIGUSR1", "SIGUSR2", "SIGXCPU", "SIGQUIT"):
    if hasattr(signal, name):
        delattr(signal, name)
import azr_trainer
names = [m.name for m in pkgutil.walk_packages(azr_trainer.__path__, "azr_trainer.")]
for name in names:
    importlib.import_module(name)
from azr_trainer import device, osdeps
assert osdeps.process_alive(os.getpid()) and osdeps.usable_cpus() >= 1
assert osdeps.malloc_trim() is None and osdeps.resident_bytes() is None and osdeps.own_group_kwargs() == {}
trimmer = device.MemoryTrimmer()
for _ in range(200):
    trimmer.after_step()
assert trimmer.trims == 0
device.release_free_memory()
with tempfile.TemporaryDirectory() as tmp:
    target = Path(tmp) / "a.json"
    osdeps.atomic_write_bytes(target, b"1")
    osdeps.atomic_write_bytes(target, b"2")
    assert target.read_bytes() == b"2" and sorted(os.listdir(tmp)) == ["a.json"]
    assert osdeps.create_exclusive(Path(tmp) / "lock", "7") and not osdeps.create_exclusive(Path(tmp) / "lock", "8")
print(len(names), "modules")
"""


def test_every_module_imports_and_the_fallbacks_work_without_posix_only_calls():
    env = {**os.environ, "AZR_PORTABLE": "1", "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}
    p = subprocess.run([sys.executable, "-c", WITHOUT_POSIX], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert int(p.stdout.split()[0]) > 30  # every module, the sandbox's internals included


# ---- reasoning mode: Linux only, refused up front elsewhere


@pytest.fixture
def off_linux(monkeypatch):
    monkeypatch.setenv("AZR_PORTABLE", "1")


def test_portable_mode_is_off_linux(off_linux):
    assert not osdeps.linux() and not osdeps.posix() and not osdeps.reasoning_available()
    assert osdeps.malloc_trim() is None and osdeps.process_start_time(os.getpid()) is None
    assert osdeps.reasoning_refusal() == {"code": REFUSED, "params": {"system": osdeps.system_name()}}


def test_no_model_written_program_runs_off_linux(off_linux):
    servers = dict(executor._SERVERS)
    for call in (lambda: executor.run_program("def f():\n    return 1", ""),
                 lambda: executor.validate_task("def f():\n    return 1", ""),
                 executor.sandbox_features):
        with pytest.raises(UserError) as e:
            call()
        assert e.value.code == REFUSED
    assert executor._SERVERS == servers  # no sandbox server was started


def test_the_library_refuses_reasoning_before_loading_anything(home, off_linux):
    with pytest.raises(UserError) as e:
        reason(home, "no-such-model", ReasonConfig(max_iterations=1))
    assert e.value.code == REFUSED and "WSL" in str(e.value)


def test_the_cli_refuses_reasoning_in_the_users_language(home, off_linux, monkeypatch, capsys):
    assert main(["--home", str(home), "reason", "fresh", "--max-iterations", "1"]) == 2
    assert "Reasoning mode is not available on" in capsys.readouterr().err
    assert not (home / "models" / "fresh").exists()  # refused before a model was made
    monkeypatch.setenv("AZR_LANG", "ru")
    assert main(["--home", str(home), "reason", "fresh"]) == 2
    assert "Режим рассуждений недоступен" in capsys.readouterr().err


@pytest.mark.parametrize("portable", [False, True])
def test_the_studio_says_before_a_start_whether_reasoning_runs_here(home, monkeypatch, portable):
    if portable:
        monkeypatch.setenv("AZR_PORTABLE", "1")
    elif not osdeps.reasoning_available():
        pytest.skip("this system has no reasoning mode: the other case checks the refusal")
    store.create_model(home, "m", TINY)
    with TestClient(create_app(home), base_url="http://127.0.0.1:8000") as client:
        said = client.get("/api/health").json()["reasoning"]
        run = client.post("/api/runs", json={"model": "m", "kind": "reason", "max_iterations": 1})
        made = client.post("/api/reason/models", json={"name": "m"}, headers={"Accept-Language": "ru"})
    if not portable:  # on to the next checks: an untrained model, a name taken
        assert said == {"available": True}
        assert run.status_code == 400 and run.json()["code"] == "runs.reason_untrained"
        assert made.status_code == 409 and made.json()["code"] == "model.exists"
        return
    assert said == {"available": False, "code": REFUSED, "params": {"system": osdeps.system_name()}}
    assert run.status_code == 400 and run.json()["code"] == REFUSED
    assert made.status_code == 400 and made.json()["code"] == REFUSED
    assert made.json()["detail"].startswith("Режим рассуждений недоступен")


def test_text_runs_work_off_linux(home, book, off_linux):
    store.create_model(home, "m", ModelConfig(vocab_size=300, d_model=32, num_layers=1, num_heads=2, d_ff=64,
                                              max_seq_len=32, tokenizer="char"))
    runner = JobRunner(home, Registry(home))  # polled by hand: no monitor thread
    with pytest.raises(UserError) as e:
        runner.create_run("m", [], {"max_iterations": 1}, kind="reason")
    assert e.value.code == REFUSED
    run = runner.create_run("m", [book], dict(max_iterations=5, batch_size=4, save_every=1000, eval_every=1000,
                                              threads=1))
    deadline = time.time() + 120
    while runner.get_run(run["id"])["state"] in ("queued", "running") and time.time() < deadline:
        runner.poll()
        time.sleep(0.1)
    assert runner.get_run(run["id"])["state"] == "completed"  # a worker started as off Linux


# ---- processes


def test_parent_watch_sees_a_dead_parent_on_every_branch(monkeypatch):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for portable in ("0", "1"):
        monkeypatch.setenv("AZR_PORTABLE", portable)
        assert not osdeps.parent_gone(os.getppid(), time.time())
        assert osdeps.parent_gone(gone.pid, time.time())
    monkeypatch.setenv("AZR_PORTABLE", "1")
    assert osdeps.own_group_kwargs() == {}


class FakeKernel32:
    """kernel32 as Windows answers: ``procs`` maps a pid to (exit code, creation FILETIME)."""

    def __init__(self, procs: dict, denied=()):
        self.procs, self.denied, self.open = procs, set(denied), []

    def OpenProcess(self, access, inherit, pid):
        assert access == 0x1000  # limited query rights: granted for other users' processes too
        if pid in self.procs:
            self.open.append(pid)
            return pid
        self.error = 5 if pid in self.denied else 87  # access denied, or no such process
        return None

    def GetExitCodeProcess(self, handle, code):
        code._obj.value = self.procs[handle][0]
        return 1

    def GetProcessTimes(self, handle, created, exited, kernel, user):
        created._obj.value = self.procs[handle][1]
        return 1

    def CloseHandle(self, handle):
        self.open.remove(handle)


def test_windows_branch_asks_kernel32_and_reads_its_times(monkeypatch):
    jan_2020 = 1577836800
    k = FakeKernel32({10: (259, (jan_2020 * 10**7) + 116444736000000000), 11: (0, 0)}, denied={12})
    monkeypatch.setattr(osdeps, "windows", lambda: True)
    monkeypatch.setattr(osdeps, "_kernel32", lambda: k)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: k.error, raising=False)
    monkeypatch.setattr(os, "kill", lambda *a: pytest.fail("os.kill(pid, 0) ends the process on Windows"))
    assert osdeps.process_alive(10)           # STILL_ACTIVE
    assert not osdeps.process_alive(11)       # exited; someone still holds a handle
    assert not osdeps.process_alive(13)       # no such process
    assert osdeps.process_alive(12)           # another user's: cannot tell, so alive
    assert osdeps.process_start_time(10) == jan_2020
    assert osdeps.process_start_time(13) is None
    # Windows keeps reporting a dead parent's pid: the parent is gone when its pid is, or when
    # the pid now belongs to a process that started after this one did.
    assert not osdeps.parent_gone(10, jan_2020 + 60)
    assert osdeps.parent_gone(10, jan_2020 - 60)
    assert osdeps.parent_gone(13, jan_2020)
    assert k.open == []  # every handle closed


# ---- files


def test_replace_waits_out_a_moment_of_another_programs_hold(tmp_path, monkeypatch):
    src, dst = tmp_path / "new", tmp_path / "old"
    src.write_text("new")
    dst.write_text("old")
    real, held, pauses = os.replace, [3], []

    def replace_while_held(a, b):
        if held[0]:
            held[0] -= 1
            raise PermissionError(13, "The process cannot access the file", str(b))
        real(a, b)

    monkeypatch.setattr(os, "replace", replace_while_held)
    monkeypatch.setattr(time, "sleep", pauses.append)
    osdeps.replace(src, dst)
    assert dst.read_text() == "new" and len(pauses) == 3
    held[0] = 100  # held for good: the error comes back after a couple of seconds of tries
    src.write_text("newer")
    with pytest.raises(PermissionError):
        osdeps.replace(src, dst)
    assert 1 < sum(pauses[3:]) < 3 and dst.read_text() == "new"
