"""Several processes through torchrun (DDP, gloo on CPU) follow the same loss curve as one."""

from __future__ import annotations

import json

import pytest

from azr_trainer.events import iter_events

from conftest import make_text
from test_cli import TINY, azr


def losses(home, name):
    out = {}
    for path in sorted((home / "models" / name / "runs").glob("*/events.jsonl")):
        out.update({e["step"]: e["loss"] for e in iter_events(path) if e["type"] == "step"})
    return out


@pytest.mark.slow
def test_two_processes_match_one_and_resume_across_the_switch(tmp_path):
    home = tmp_path / "home"
    (tmp_path / "play.txt").write_text(make_text(n_lines=600), encoding="utf-8")
    azr(home, "books", "add", str(tmp_path / "play.txt"))
    common = ["--books", "play", "--batch-size", "4", "--learning-rate", "3e-3", "--log-every", "1",
              "--eval-every", "100", "--save-every", "100", "--threads", "1", "--json"]
    for name in ("one", "two", "switch"):
        azr(home, "models", "create", name, *TINY)
    one = json.loads(azr(home, "train", "one", "--max-iterations", "8", *common).stdout)
    two = json.loads(azr(home, "train", "two", "--max-iterations", "8", "--nproc", "2", *common,
                         timeout=300).stdout)
    assert one["step"] == two["step"] == 8
    l1, l2 = losses(home, "one"), losses(home, "two")
    assert sorted(l1) == sorted(l2) == list(range(1, 9))
    for s in l1:
        assert l2[s] == pytest.approx(l1[s], abs=2e-4), s
    assert two["val_bpb"] == pytest.approx(one["val_bpb"], abs=1e-3)

    # 1 process for 4 steps, then resume under 2 processes to 8: same curve as "one" resumed the same way
    azr(home, "train", "switch", "--max-iterations", "4", *common)
    resumed = json.loads(azr(home, "train", "switch", "--max-iterations", "8", "--resume", "--nproc", "2",
                             *common, timeout=300).stdout)
    assert resumed["step"] == 8
    azr(home, "models", "delete", "one")
    azr(home, "models", "create", "one", *TINY)
    azr(home, "train", "one", "--max-iterations", "4", *common)
    azr(home, "train", "one", "--max-iterations", "8", "--resume", *common)
    ls, lo = losses(home, "switch"), losses(home, "one")
    for s in range(1, 9):
        assert ls[s] == pytest.approx(lo[s], abs=2e-4), s
