#!/usr/bin/env python3
"""Sets up AZR Trainer in this folder: the Python environment .venv, PyTorch, the project.

Every launcher (studio.sh, test.sh, studio.cmd, studio.ps1, test.cmd) runs this first; it
needs only the standard library, so it works before anything is installed.

    python3 scripts/setup.py                   # .venv + PyTorch + AZR Trainer
    python3 scripts/setup.py --extras test     # ... and the test tools
    python3 scripts/setup.py --print-plan      # only print the pip commands it would run
    python3 scripts/setup.py --download DIR    # fetch every package into DIR (for later)
    python3 scripts/setup.py --offline DIR     # install from DIR alone, without internet

PyTorch comes first, so that no dependency pulls a build nobody asked for:
  * no NVIDIA GPU (Windows, Linux): the CPU build, from PyTorch's CPU index as an extra index;
    where that index cannot be reached (a private mirror), the plain package name;
  * an NVIDIA GPU (``nvidia-smi -L`` lists one): the plain package from the default index,
    which on Linux is the CUDA build;
  * macOS: the plain package (it uses the Apple GPU).
TORCH_SPEC overrides what is installed (words of a pip command, e.g. "torch --index-url URL");
TORCH_INDEX names an extra index to take PyTorch from instead of the choice above.
A second run checks what is there and installs nothing new, without touching the network.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TORCH = "torch==2.13.0"  # the version the project is tested with
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_TIMEOUT_S = 5
STAMP = "azr-setup.json"  # inside .venv: what the last successful run installed


def _load_catalogue():
    # The catalogue module by its path: importing the package would need its dependencies.
    spec = importlib.util.spec_from_file_location("_azr_catalogue", ROOT / "src" / "azr_trainer" / "catalogue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_catalogue = _load_catalogue()
LANG = _catalogue.language_from_environment()


def say(code: str, **params) -> None:
    print(_catalogue.message(f"setup.{code}", LANG, **params), flush=True)


def show(cmd: list[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


# --------------------------------------------------------------------------- the machine


def target_platform() -> str:
    """windows, darwin or linux; AZR_SETUP_PLATFORM pretends another (for the tests)."""
    forced = os.environ.get("AZR_SETUP_PLATFORM", "").strip().lower()
    if forced:
        return forced
    if sys.platform.startswith("win"):
        return "windows"
    return "darwin" if sys.platform == "darwin" else "linux"


def nvidia_gpu() -> str | None:
    """The first NVIDIA GPU's name as ``nvidia-smi -L`` lists it, else None."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        if line.startswith("GPU "):
            return line.split(":", 1)[1].split("(UUID")[0].strip() or "GPU"
    return None


def reachable(index: str) -> bool:
    """Whether pip could read ``index``'s page for torch: one quick request, no retries (pip
    itself would retry an unreachable index for minutes)."""
    if index.startswith("file:"):
        return Path(urllib.request.url2pathname(index[5:].removeprefix("//"))).is_dir()
    answer = []

    def probe():
        try:
            with urllib.request.urlopen(index.rstrip("/") + "/torch/", timeout=PROBE_TIMEOUT_S) as r:
                answer.append(r.status == 200)
        except (OSError, ValueError):  # URLError, HTTPError, timeouts are all OSErrors
            answer.append(False)

    # In a thread: the socket timeout does not cover a name lookup that hangs.
    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(PROBE_TIMEOUT_S + 1)
    return bool(answer and answer[0])


def choose_torch(plat: str, offline: str | None) -> tuple[list[str], str, dict]:
    """The words after ``pip install`` for PyTorch, and why (a catalogue code and parameters)."""
    spec = shlex.split(os.environ.get("TORCH_SPEC") or DEFAULT_TORCH)
    spec_text = " ".join(spec)
    if offline or os.environ.get("TORCH_SPEC"):
        return spec, ("build_offline" if offline else "build_spec"), {"spec": spec_text, "path": offline}
    if os.environ.get("TORCH_INDEX"):
        return spec + ["--extra-index-url", os.environ["TORCH_INDEX"]], "build_index", \
            {"spec": spec_text, "url": os.environ["TORCH_INDEX"]}
    if plat == "darwin":
        return spec, "build_mac", {"spec": spec_text}
    gpu = nvidia_gpu()
    if gpu:
        return spec, ("build_cuda_windows" if plat == "windows" else "build_cuda"), {"spec": spec_text, "gpu": gpu}
    cpu_index = os.environ.get("AZR_TORCH_CPU_INDEX") or CPU_INDEX
    if reachable(cpu_index):
        return spec + ["--extra-index-url", cpu_index], "build_cpu", {"spec": spec_text}
    return spec, "build_cpu_fallback", {"spec": spec_text, "url": cpu_index}


# --------------------------------------------------------------------------- what is there


def venv_python(venv: Path, plat: str) -> Path:
    return venv / ("Scripts/python.exe" if plat == "windows" else "bin/python")


_INSPECT = (
    "import importlib.metadata as m, json\n"
    "def v(n):\n"
    "    try: return m.version(n)\n"
    "    except m.PackageNotFoundError: return None\n"
    "print(json.dumps({'torch': v('torch'), 'azr-trainer': v('azr-trainer')}))\n"
)


def installed(py: Path) -> dict | None:
    """Versions of torch and azr-trainer in the environment; None when its Python does not run."""
    try:
        out = subprocess.run([str(py), "-c", _INSPECT], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_satisfied(version: str | None, spec: list[str], stamp: dict) -> bool:
    if version is None:
        return False
    if stamp.get("torch_spec") == spec:
        return True
    # An environment made before this program kept a stamp: a pinned version that matches will do.
    pinned = [w.split("==", 1)[1] for w in spec if w.startswith("torch==")]
    return bool(pinned) and version.split("+")[0] == pinned[0]


def project_fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]


def read_stamp(venv: Path) -> dict:
    try:
        return json.loads((venv / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------- doing it


class Runner:
    def __init__(self, plan: bool):
        self.plan = plan

    def __call__(self, cmd: list, *, fatal: bool = True) -> bool:
        cmd = [str(c) for c in cmd]
        print("+ " + show(cmd), flush=True)
        if self.plan:
            return True
        code = subprocess.call(cmd, cwd=ROOT)
        if code != 0 and fatal:
            say("failed", code=code, command=show(cmd))
            raise SystemExit(1)
        return code == 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Set up AZR Trainer in .venv (see the top of this file).")
    p.add_argument("--extras", default=os.environ.get("EXTRAS", ""),
                   help="optional parts to add, comma-separated (test, export)")
    p.add_argument("--venv", default=str(ROOT / ".venv"), help="where the environment lives (default: .venv)")
    p.add_argument("--print-plan", "--dry-run", dest="plan", action="store_true",
                   help="print the commands it would run; download and change nothing")
    p.add_argument("--offline", metavar="DIR", help="install only from the packages in DIR (no internet)")
    p.add_argument("--download", metavar="DIR", help="download every package needed into DIR for --offline")
    args = p.parse_args(argv)
    if sys.version_info < (3, 10):
        say("python_old", version=".".join(map(str, sys.version_info[:3])))
        return 1
    if args.offline and args.download:
        p.error("--offline and --download exclude each other")
    started = time.monotonic()
    plat = target_platform()
    run = Runner(args.plan)
    venv = Path(args.venv)
    py = venv_python(venv, plat)
    extras = ",".join(e.strip() for e in args.extras.split(",") if e.strip())
    offline = str(Path(args.offline).resolve()) if args.offline else None
    source = ["--no-index", "--find-links", offline] if offline else []
    if args.plan:
        say("plan")

    # 1. The environment: made once; remade only when its Python no longer starts.
    have = installed(py) if py.exists() else None
    if have is None:
        say("step_venv", path=venv)
        run([sys.executable, "-m", "venv", *(["--clear"] if py.exists() else []), venv])
        # A current pip shows download sizes and progress; without it the bundled one will do.
        run([py, "-m", "pip", "install", "--upgrade", "pip", *source], fatal=False)
        have = {"torch": None, "azr-trainer": None}
    else:
        say("venv_ok", path=venv)
    stamp = read_stamp(venv)

    if args.download:
        return download(run, py, Path(args.download).resolve(), plat, extras)

    # 2. PyTorch, before anything that depends on it.
    spec = shlex.split(os.environ.get("TORCH_SPEC") or DEFAULT_TORCH)
    if torch_satisfied(have["torch"], spec, stamp):
        say("torch_ok", version=have["torch"])
    else:
        words, why, params = choose_torch(plat, offline)
        say("step_torch", spec=" ".join(spec))
        say(why, **params)
        run([py, "-m", "pip", "install", *words, *source])

    # 3. The project itself, editable, with its extras; skipped when pyproject.toml is unchanged
    #    and the extras asked for were installed before (test.sh's cover studio.sh's).
    fingerprint, wanted = project_fingerprint(), set(filter(None, extras.split(",")))
    before = set(stamp.get("extras", [])) if stamp.get("project") == fingerprint else set()
    if have["azr-trainer"] and stamp.get("project") == fingerprint and wanted <= before:
        say("project_ok")
    else:
        target = f".[{extras}]" if extras else "."
        say("step_project", target=target)
        run([py, "-m", "pip", "install", *source, "-e", target])

    if not args.plan:
        record = {"torch_spec": spec, "project": fingerprint, "extras": sorted(wanted | before)}
        (venv / STAMP).write_text(json.dumps(record) + "\n", encoding="utf-8")
    say("ready", seconds=round(time.monotonic() - started))
    return 0


def download(run: Runner, py: Path, folder: Path, plat: str, extras: str) -> int:
    """Fill ``folder`` with wheels for this computer (same OS and Python), for --offline later."""
    folder.mkdir(parents=True, exist_ok=True)
    words, why, params = choose_torch(plat, None)
    say(why, **params)
    # One resolution: the project's dependencies with PyTorch pinned to the chosen build, and
    # what building the project needs (offline, pip's build step installs from the folder too).
    run([py, "-m", "pip", "download", "-d", folder, *words, "pip", "setuptools>=77",
         f".[{extras}]" if extras else "."])
    say("download_done", path=folder)
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(errors="replace")  # a console that cannot show Cyrillic gets '?'
    sys.exit(main())
