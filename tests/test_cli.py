"""The `azr` command as a user runs it: real subprocesses, real files, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import WORDS_RU, make_text

RUSSIAN = make_text(WORDS_RU, n_lines=300, seed=1)
TINY = ["--vocab-size", "300", "--d-model", "32", "--num-layers", "1", "--num-heads", "2", "--d-ff", "64",
        "--max-seq-len", "32"]


def azr(home: Path, *args: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "AZR_HOME": str(home), "PYTHONIOENCODING": "utf-8"}
    p = subprocess.run([sys.executable, "-m", "azr_trainer.cli", *args], capture_output=True, text=True,
                       encoding="utf-8", env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"azr {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def snapshot(home: Path) -> dict:
    return {str(p.relative_to(home)): (p.stat().st_size, p.stat().st_mtime_ns) for p in home.rglob("*") if p.is_file()}


@pytest.fixture
def trained(tmp_path):
    """A data folder with a cp1251 book, a UTF-16 book and a trained tiny model."""
    home = tmp_path / "home"
    (tmp_path / "kashtanka.txt").write_bytes(RUSSIAN.replace("\n", "\r\n").encode("cp1251"))
    (tmp_path / "play.txt").write_bytes(make_text().encode("utf-16"))
    out = json.loads(azr(home, "books", "add", str(tmp_path / "kashtanka.txt"), "--json").stdout)
    assert out["encoding"] == "cp1251" and out["chars"] == len(RUSSIAN)
    out = json.loads(azr(home, "books", "add", str(tmp_path / "play.txt"), "--name", "play", "--json").stdout)
    assert out["encoding"].startswith("utf_16")
    azr(home, "models", "create", "m", *TINY)
    summary = json.loads(azr(home, "train", "m", "--books", "kashtanka,play", "--max-iterations", "30",
                             "--batch-size", "4", "--learning-rate", "3e-3", "--save-every", "10",
                             "--eval-every", "10", "--threads", "1", "--json").stdout)
    return home, summary


def test_book_to_text_through_the_cli(trained, tmp_path):
    home, summary = trained
    for key in ("step", "train_loss", "val_loss", "val_bpb", "tokens_per_s", "wall_seconds", "checkpoints"):
        assert summary[key] is not None, key
    assert summary["step"] == 30 and summary["status"] == "completed"
    assert all(Path(p).exists() for p in summary["checkpoints"])

    listed = json.loads(azr(home, "books", "list", "--json").stdout)
    assert [b["name"] for b in listed] == ["kashtanka", "play"]
    assert azr(home, "books", "cat", "kashtanka").stdout == RUSSIAN  # UTF-8, \n newlines

    shown = json.loads(azr(home, "models", "show", "m", "--json").stdout)
    assert shown["trained_steps"] == 30 and shown["checkpoints"][-1] == 30

    gen = azr(home, "generate", "m", "КОРОЛЬ:", "--max-length", "20", "--seed", "1").stdout
    assert gen.startswith("КОРОЛЬ:") and len(gen) > len("КОРОЛЬ:")
    again = azr(home, "generate", "m", "КОРОЛЬ:", "--max-length", "20", "--seed", "1").stdout
    assert gen == again

    pt = tmp_path / "m.pt"
    azr(home, "models", "export", "m", "--format", "pt", "-o", str(pt))
    obj = torch.load(pt, weights_only=True)
    assert obj["config"]["d_model"] == 32 and "optimizer" not in obj
    elsewhere = tmp_path / "other-home"
    greedy = azr(elsewhere, "generate", "--model", str(pt), "ШУТ:", "--temperature", "0", "--max-length", "15").stdout
    assert greedy == azr(home, "generate", "m", "ШУТ:", "--temperature", "0", "--max-length", "15").stdout


def test_bad_input_is_refused_and_changes_nothing(trained, tmp_path):
    home, _ = trained
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("  \n\n ", encoding="utf-8")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20)
    (tmp_path / "ru.txt").write_bytes(RUSSIAN.encode("cp1251"))
    pt = tmp_path / "m.pt"
    azr(home, "models", "export", "m", "-o", str(pt))
    data = pt.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    torch.save({"format": "azr-trainer", "config": Evil()}, tmp_path / "evil.pt")

    before = snapshot(home)
    cases = [
        (["books", "add", str(tmp_path / "empty.txt")], "empty"),
        (["books", "add", str(tmp_path / "blank.txt")], "only whitespace"),
        (["books", "add", str(tmp_path / "image.txt")], "binary"),
        (["books", "add", str(tmp_path / "missing.txt")], ""),
        (["books", "add", str(tmp_path / "ru.txt"), "--encoding", "utf-8", "--name", "ru"], "utf"),
        (["books", "add", str(tmp_path / "ru.txt"), "--encoding", "klingon", "--name", "ru"], "encoding"),
        (["books", "add", str(tmp_path / "ru.txt"), "--name", "../escape"], "not allowed"),
        (["books", "add", str(tmp_path / "ru.txt"), "--name", "kashtanka"], "already"),
        (["books", "cat", "nope"], "No book"),
        (["models", "create", "a/b", *TINY], "not allowed"),
        (["models", "create", "x", "--d-model", "250", "--num-heads", "8"], "divisible by the number of attention heads"),
        (["models", "create", "x", "--num-layers", "-1"], "greater than 0"),
        (["models", "create", "x", "--d-model", "0"], "greater than 0"),
        (["models", "create", "x", "--max-seq-len", "100000", "--d-model", "4096", "--num-heads", "32",
          "--d-ff", "16384", "--num-layers", "64"], "GiB"),
        (["models", "create", "m", *TINY], "already exists"),
        (["models", "show", "nope"], "No model"),
        (["train", "nope", "--books", "play"], "No model"),
        (["train", "m", "--books", "nope"], "No book"),
        (["generate", "nope", "hi"], "No model"),
        (["generate", "--model", str(tmp_path / "truncated.pt"), "hi"], "not a readable"),
        (["generate", "--model", str(tmp_path / "evil.pt"), "hi"], "can load safely"),
        (["generate", "--model", str(tmp_path / "image.txt"), "hi"], "not a readable"),
    ]
    for args, fragment in cases:
        p = azr(home, *args, check=False)
        assert p.returncode != 0, args
        assert p.stderr.startswith("Error:") and "Traceback" not in p.stderr, (args, p.stderr)
        assert fragment.lower() in p.stderr.lower(), (args, p.stderr)
    assert snapshot(home) == before
    assert not (tmp_path / "pwned").exists()


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
    home = tmp_path / "home"
    (tmp_path / "play.txt").write_text(make_text(), encoding="utf-8")
    azr(home, "books", "add", str(tmp_path / "play.txt"))
    azr(home, "models", "create", "m", *TINY)
    env = {**os.environ, "AZR_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "azr_trainer.cli", "train", "m", "--books", "play",
                             "--max-iterations", "100000", "--batch-size", "4", "--threads", "1", "--log-every", "1",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    runs = home / "models" / "m" / "runs"
    deadline = time.time() + 60
    while time.time() < deadline:
        files = list(runs.glob("*/events.jsonl")) if runs.exists() else []
        if files and '"type": "step"' in files[0].read_text(encoding="utf-8"):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["status"] == "interrupted" and summary["step"] > 0
    assert Path(summary["checkpoints"][-1]).exists()
    resumed = json.loads(azr(home, "train", "m", "--books", "play", "--resume", "--batch-size", "4",
                             "--max-iterations", str(summary["step"] + 5), "--threads", "1", "--json").stdout)
    assert resumed["step"] == summary["step"] + 5 and resumed["run"] == summary["run"]


def test_a_training_run_reports_its_progress_in_russian(tmp_path):
    """Under a Russian locale every line a training run prints (log, bar, evals, samples, summary)
    is Russian; the numbers keep their decimal point."""
    from test_messages import russian_problem
    home = tmp_path / "home"
    (tmp_path / "kashtanka.txt").write_text(RUSSIAN, encoding="utf-8")
    azr(home, "books", "add", str(tmp_path / "kashtanka.txt"))
    azr(home, "models", "create", "m", *TINY, "--tokenizer", "char")
    env = {**os.environ, "AZR_HOME": str(home), "PYTHONIOENCODING": "utf-8", "AZR_LANG": "ru"}
    p = subprocess.run([sys.executable, "-m", "azr_trainer.cli", "train", "m", "--books", "kashtanka",
                        "--max-iterations", "6", "--eval-every", "3", "--batch-size", "4", "--threads", "1"],
                       capture_output=True, text=True, encoding="utf-8", env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = [line.strip() for line in (p.stdout + p.stderr).replace("\r", "\n").splitlines() if line.strip()]
    for line in lines:
        assert russian_problem(line) is None, (russian_problem(line), line)
    assert any(line.startswith("шаг 3: потеря на проверке ") for line in lines), lines
    summary = next(line for line in lines if line.startswith("завершено: шаг 6/6"))
    assert float(summary.split("бит на байт ")[1].split(",")[0]) > 0
    assert any(line.startswith("Контрольная точка: ") for line in lines), lines


def test_a_run_that_stops_early_says_why_in_the_locale_language(monkeypatch):
    """The summary of a run that stopped before its end is followed by the reason, the same
    sentence the page's run log shows; a run that completed needs none."""
    from azr_trainer.cli_progress import RunEnd
    monkeypatch.setenv("AZR_LANG", "ru")
    end = RunEnd()
    end({"type": "status", "state": "started", "step": 0})
    assert end.sentence() is None
    end({"type": "status", "state": "stopped", "step": 897, "code": "run.learned_enough",
         "params": {"step": 897, "best_step": 700, "best_bpb": 1.25}})
    assert end.sentence().startswith("Остановлено на шаге 897: модель выучила всё"), end.sentence()
    assert "шаг 700" in end.sentence()
    end({"type": "status", "state": "completed", "step": 900, "code": "run.completed", "params": {"step": 900}})
    assert end.sentence() is None
