"""The setup program (scripts/setup.py) and the launchers that call it.

The setup runs in plan mode in a scratch folder, with a pretend ``nvidia-smi`` on PATH or
none, and a pretend operating system, and we read which PyTorch it would install; nothing
is downloaded. The Windows launchers cannot run here: they are read, and must call the setup
with the same arguments as the bash ones."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup.py"
TORCH = "torch==2.13.0"
posix_only = pytest.mark.skipif(os.name == "nt", reason="pretend programs are shell scripts")


def fake_program(folder: Path, name: str, script: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return path


def setup(tmp_path: Path, *args: str, gpu: bool = False, platform: str = "linux", cpu_index: bool = True,
          venv: Path | None = None, **env: str) -> list[str]:
    """Run the setup program; its output lines. ``cpu_index``: whether PyTorch's CPU index answers
    (a local folder stands in for it)."""
    bin_dir = tmp_path / ("bin-gpu" if gpu else "bin-none")
    bin_dir.mkdir(exist_ok=True)
    if gpu:
        fake_program(bin_dir, "nvidia-smi", 'echo "GPU 0: NVIDIA GeForce RTX 3060 (UUID: GPU-1234)"')
    index = tmp_path / "cpu-index"
    if cpu_index:
        index.mkdir(exist_ok=True)
    full_env = {"PATH": str(bin_dir), "AZR_LANG": "en", "AZR_SETUP_PLATFORM": platform,
                "AZR_TORCH_CPU_INDEX": index.as_uri() if cpu_index else (tmp_path / "nowhere").as_uri(),
                "SYSTEMROOT": os.environ.get("SYSTEMROOT", ""), **env}
    out = subprocess.run([sys.executable, str(SETUP), "--venv", str(venv or tmp_path / ".venv"), *args],
                         env=full_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.splitlines()


def commands(lines: list[str]) -> list[str]:
    return [line[2:] for line in lines if line.startswith("+ ")]


def torch_command(lines: list[str]) -> str:
    [cmd] = [c for c in commands(lines) if " -m pip install torch" in c]
    return cmd


@posix_only
def test_no_nvidia_gpu_gets_the_cpu_build_from_pytorchs_index(tmp_path):
    lines = setup(tmp_path, "--print-plan")
    assert torch_command(lines).endswith(f"-m pip install {TORCH} --extra-index-url {(tmp_path / 'cpu-index').as_uri()}")
    assert any("the build for the processor" in line for line in lines)
    assert not (tmp_path / ".venv").exists()  # a plan changes nothing


@posix_only
def test_where_pytorchs_index_cannot_be_reached_the_plain_package_is_installed(tmp_path):
    lines = setup(tmp_path, "--print-plan", cpu_index=False)
    assert torch_command(lines).endswith(f"-m pip install {TORCH}")
    assert any("cannot be reached" in line for line in lines)


@posix_only
def test_the_cpu_index_is_asked_over_http_once(tmp_path):
    import functools
    import http.server

    site = tmp_path / "site"
    (site / "whl" / "cpu" / "torch").mkdir(parents=True)
    (site / "whl" / "cpu" / "torch" / "index.html").write_text("<a>torch</a>")
    (site / "whl" / "empty").mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    handler = functools.partial(Handler, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{httpd.server_address[1]}/whl"
        try:
            found = setup(tmp_path, "--print-plan", AZR_TORCH_CPU_INDEX=f"{base}/cpu")
            missing = setup(tmp_path, "--print-plan", AZR_TORCH_CPU_INDEX=f"{base}/empty")
        finally:
            httpd.shutdown()
    assert torch_command(found).endswith(f"install {TORCH} --extra-index-url {base}/cpu")
    assert torch_command(missing).endswith(f"install {TORCH}")  # the page for torch answers 404
    assert requests == ["/whl/cpu/torch/", "/whl/empty/torch/"]


@posix_only
def test_an_nvidia_gpu_gets_the_default_cuda_build(tmp_path):
    lines = setup(tmp_path, "--print-plan", gpu=True)
    assert torch_command(lines).endswith(f"-m pip install {TORCH}")
    assert any("CUDA build for the graphics card NVIDIA GeForce RTX 3060" in line for line in lines)


@posix_only
def test_windows_picks_the_same_way_and_explains_the_gpu_case(tmp_path):
    cpu = setup(tmp_path, "--print-plan", platform="windows")
    assert "--extra-index-url" in torch_command(cpu)
    assert any(c.startswith(str(tmp_path / ".venv" / "Scripts" / "python.exe")) for c in commands(cpu))
    gpu = setup(tmp_path, "--print-plan", platform="windows", gpu=True)
    assert torch_command(gpu).endswith(f"-m pip install {TORCH}")
    assert any("TORCH_INDEX" in line and "NVIDIA GeForce RTX 3060" in line for line in gpu)


@posix_only
def test_macos_gets_the_default_build_even_with_an_nvidia_smi_around(tmp_path):
    lines = setup(tmp_path, "--print-plan", platform="darwin", gpu=True)
    assert torch_command(lines).endswith(f"-m pip install {TORCH}")
    assert any("macOS" in line for line in lines)


@posix_only
def test_torch_spec_and_torch_index_override_the_choice(tmp_path):
    spec = setup(tmp_path, "--print-plan", TORCH_SPEC="torch==2.5.1 --index-url https://example.org/whl/cu124")
    assert torch_command(spec).endswith("-m pip install torch==2.5.1 --index-url https://example.org/whl/cu124")
    index = setup(tmp_path, "--print-plan", TORCH_INDEX="https://example.org/whl/cu130")
    assert torch_command(index).endswith(f"-m pip install {TORCH} --extra-index-url https://example.org/whl/cu130")


@posix_only
def test_the_plan_names_every_step_and_the_extras(tmp_path):
    cmds = commands(setup(tmp_path, "--print-plan", "--extras", "test"))
    assert cmds[0].endswith(f"-m venv {tmp_path / '.venv'}")
    assert cmds[1].endswith("-m pip install --upgrade pip")
    assert cmds[-1].endswith("-m pip install -e '.[test]'")
    assert all(" -q" not in c for c in cmds)  # pip shows what it downloads, with sizes


@posix_only
def test_offline_installs_only_from_the_folder(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    cmds = commands(setup(tmp_path, "--print-plan", "--offline", str(wheels), cpu_index=False))
    pip = [c for c in cmds if " pip " in c]
    assert len(pip) == 3 and all(f"--no-index --find-links {wheels}" in c for c in pip)
    assert "--extra-index-url" not in " ".join(pip)


@posix_only
def test_a_second_run_installs_nothing(tmp_path):
    # A pretend environment whose Python reports PyTorch and AZR Trainer as installed.
    venv = tmp_path / "env"
    fake_program(venv / "bin", "python", """case "$*" in
  *importlib.metadata*) echo '{"torch": "2.13.0+cpu", "azr-trainer": "0.1.0"}' ;;
esac""")
    first = setup(tmp_path, "--extras", "test", venv=venv)
    assert "[2/3] PyTorch 2.13.0+cpu is installed." in first
    assert commands(first) == [f"{venv / 'bin' / 'python'} -m pip install -e '.[test]'"]  # no record yet
    second = setup(tmp_path, "--extras", "test", venv=venv)
    assert commands(second) == []
    assert "[3/3] AZR Trainer is installed and up to date." in second
    assert commands(setup(tmp_path, venv=venv)) == []  # what the tests installed covers the studio
    assert commands(setup(tmp_path, "--extras", "export", venv=venv))[0].endswith("-m pip install -e '.[export]'")
    assert commands(setup(tmp_path, "--extras", "test,export", venv=venv)) == []
    assert commands(setup(tmp_path, venv=venv, TORCH_SPEC="torch==2.12.0"))[0].endswith(
        "-m pip install torch==2.12.0")  # another version asked for: installed


def test_the_setup_program_needs_only_the_standard_library():
    tree = ast.parse(SETUP.read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}


def test_the_setup_speaks_russian_on_a_russian_system(tmp_path):
    out = subprocess.run([sys.executable, str(SETUP), "--print-plan", "--venv", str(tmp_path / ".venv"),
                          "--offline", str(tmp_path)], env={**os.environ, "AZR_LANG": "ru"},
                         capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert "Создаю окружение Python" in out.stdout and "из папки" in out.stdout


# --------------------------------------------------------------------------- the launchers


def setup_args(path: str) -> list[str]:
    """The arguments a launcher passes to scripts/setup.py."""
    text = (ROOT / path).read_text(encoding="utf-8-sig")
    [line] = [ln for ln in text.splitlines() if re.search(r"scripts[\\/]setup\.py", ln) and not ln.lstrip().startswith(("#", "rem "))]
    return line.split("setup.py", 1)[1].split()


def test_windows_launchers_call_the_setup_like_the_bash_ones():
    assert setup_args("studio.sh") == setup_args("studio.cmd") == setup_args("studio.ps1") == []
    assert setup_args("test.sh") == setup_args("test.cmd") == ["--extras", "test"]
    for path in ("studio.sh", "studio.cmd", "studio.ps1"):
        assert "azr serve --open" in (ROOT / path).read_text(encoding="utf-8-sig").replace(".exe", "").replace(
            "\\", "/").replace('"', "").replace(".venv/Scripts/azr", "azr").replace(".venv/bin/azr", "azr")
    assert "-m pytest -q %*" in (ROOT / "test.cmd").read_text()
    assert "-m pytest -q \"$@\"" in (ROOT / "test.sh").read_text()


def test_windows_launchers_are_written_the_way_windows_reads_them():
    for path in ("studio.cmd", "test.cmd", "studio.ps1"):
        data = (ROOT / path).read_bytes()
        assert b"\n" not in data.replace(b"\r\n", b""), f"{path}: cmd.exe wants CRLF line ends"
    # cmd.exe would read a byte-order mark as part of the first command; PowerShell 5 needs one
    # to read the Russian message as UTF-8.
    assert not (ROOT / "studio.cmd").read_bytes().startswith(b"\xef\xbb\xbf")
    assert (ROOT / "studio.ps1").read_bytes().startswith(b"\xef\xbb\xbf")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_the_license_is_an_spdx_string_for_a_setuptools_that_reads_it():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["license"] == "MIT"
    [req] = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert tuple(int(x) for x in req.split(">=")[1].split(".")) >= (77,)


def test_serve_open_shows_the_page_once_the_server_answers(tmp_path, monkeypatch):
    """``azr serve --open`` (what the launchers run) opens the browser at the studio's address
    when the server accepts connections, with the token when one is needed."""
    import webbrowser

    from azr_trainer import cli, server

    opened, served = threading.Event(), {}
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: (served.setdefault("url", url), opened.set()))
    monkeypatch.setenv("DISPLAY", ":0")

    def fake_serve(host, port, home, max_runs, max_upload_mb, token):
        served["token"] = token
        with socket.create_server(("127.0.0.1", port)) as s:
            s.settimeout(60)
            s.accept()[0].close()  # the opener's check that the server is up
            assert opened.wait(60)

    monkeypatch.setattr(server, "serve", fake_serve)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert cli.main(["--home", str(tmp_path), "serve", "--open", "--port", str(port)]) == 0
    assert served == {"token": None, "url": f"http://127.0.0.1:{port}/"}

    opened.clear(), served.clear()
    assert cli.main(["--home", str(tmp_path), "serve", "--open", "--host", "0.0.0.0", "--port", str(port)]) == 0
    assert served["token"] and served["url"] == f"http://127.0.0.1:{port}/?token={served['token']}"
