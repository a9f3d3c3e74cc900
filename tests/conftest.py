"""Shared fixtures: every test gets its own data folder and makes its own small texts."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from azr_trainer import books, osdeps

WORDS_EN = ("the king said that his horse was lost in the night and the queen wept for the old town "
            "where a young fool sang of bread wine love and death under a cold moon").split()
WORDS_RU = ("король сказал что его конь пропал ночью и королева плакала о старом городе где молодой "
            "шут пел о хлебе вине любви и смерти под холодной луной").split()


def make_text(words=WORDS_EN, n_lines: int = 400, seed: int = 0) -> str:
    """A small deterministic 'book': short lines of words, with speaker names like a play."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if i % 6 == 0:
            lines.append(rng.choice(["KING:", "QUEEN:", "FOOL:"]) if words is WORDS_EN else
                         rng.choice(["КОРОЛЬ:", "КОРОЛЕВА:", "ШУТ:"]))
        n = rng.randint(4, 10)
        line = " ".join(rng.choice(words) for _ in range(n))
        lines.append(line[0].upper() + line[1:] + rng.choice([".", ",", "!", "?", ";"]))
    return "\n".join(lines) + "\n"


# Generation decodes from the model's own fp32 weights and training runs in fp32 (no speed probe in
# every fresh data folder), so that outputs are exact and the same in every process; tests of the
# faster precisions ask for them (tests/test_decode.py, tests/test_autosize.py).
EXACT = {"AZR_DECODE_PRECISION": "fp32", "AZR_TRAIN_PRECISION": "fp32"}


@pytest.fixture(autouse=True)
def exact_decoding(monkeypatch):
    for name, value in EXACT.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    (h / "books").mkdir(parents=True)
    (h / "models").mkdir()
    monkeypatch.setenv("AZR_HOME", str(h))
    return h


@pytest.fixture
def book(home, tmp_path) -> str:
    src = tmp_path / "play.txt"
    src.write_text(make_text(), encoding="utf-8")
    return books.add_book(home, src, name="play").name


def pytest_collection_modifyitems(config, items):
    """Off Linux, and in portable mode, reasoning mode is refused up front: the tests that run
    programs in the sandbox cannot run; tests/test_osdeps.py checks the refusal instead."""
    if osdeps.reasoning_available():
        return
    skip = pytest.mark.skip(reason=f"the sandbox is Linux only; on {osdeps.system_name()} reasoning mode is "
                                   "refused (checked in tests/test_osdeps.py)")
    for item in items:
        if "sandbox" in item.keywords:
            item.add_marker(skip)
