"""The best model for N minutes: a plan's shape and training recipe, kept with the model and
used by its train runs (the command line and the studio), and the plan endpoint."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from azr_trainer.books import split_train_val
from azr_trainer import autosize, recipe, store
from azr_trainer.server import create_app

from conftest import make_text

SLOW_CPU = autosize.MachineSpeed(threads=1, fp32_gflops=20.0, bf16_gflops=2.0)


def azr(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "AZR_HOME": str(home), "PYTHONIOENCODING": "utf-8", "AZR_LANG": "en"}
    p = subprocess.run([sys.executable, "-m", "azr_trainer.cli", *args], capture_output=True, text=True,
                       encoding="utf-8", env=env, timeout=180)
    if check and p.returncode != 0:
        raise AssertionError(f"azr {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def started(events: Path) -> dict:
    with events.open(encoding="utf-8") as f:
        return next(e for e in map(json.loads, f) if e["type"] == "status" and e["state"] == "started")


def test_cli_creates_an_auto_sized_model_and_trains_it_with_its_recipe(tmp_path):
    home = tmp_path / "home"
    (tmp_path / "play.txt").write_text(make_text(), encoding="utf-8")
    azr(home, "books", "add", str(tmp_path / "play.txt"), "--name", "play")
    # Half a shape with the plan: refused, and nothing is made.
    bad = azr(home, "models", "create", "m", "--auto", "--books", "play", "--minutes", "0.05", "--d-model", "64",
              check=False)
    assert bad.returncode == 2 and "d_model" in bad.stderr and "--" not in bad.stderr.split(":", 1)[1]
    assert not (home / "models" / "m").exists()

    out = json.loads(azr(home, "models", "create", "m", "--auto", "--books", "play", "--minutes", "0.05",
                         "--threads", "1", "--json").stdout)
    plan = out["plan"]
    assert out["config"] == plan["model"] and out["parameters"] == plan["parameters"]
    saved = json.loads((home / "models" / "m" / "model.json").read_text(encoding="utf-8"))
    rec = saved["recipe"]
    assert rec["minutes"] == 0.05 and rec["books"] == ["play"] and rec["settings"]["threads"] == 1
    assert {k: rec["settings"][k] for k in recipe.SETTINGS} == {k: plan[k] for k in recipe.SETTINGS}
    assert rec["expected"]["epochs"] == plan["epochs"] and rec["precision"] in ("fp32", "bf16")
    # beta2 0.99 and lr 3e-3 are the plan's, not the command line's defaults (0.95, 3e-4)
    assert plan["beta2"] != 0.95 and plan["learning_rate"] != 3e-4

    # No settings given: the recipe's, and its minutes (the time schedule).
    summary = json.loads(azr(home, "train", "m", "--books", "play", "--json").stdout)
    start = started(Path(summary["events"]))
    cfg = start["train_config"]
    assert {k: cfg[k] for k in recipe.SETTINGS} == {k: plan[k] for k in recipe.SETTINGS}
    # the plan's tokenizer fits the book exactly: no warning about its vocabulary in the log
    assert plan["model"]["tokenizer"] == "char" and start["warnings"] == [] and \
        start["tokenizer_vocab"] == plan["model"]["vocab_size"]
    assert cfg["schedule"] == "time" and cfg["max_time"] == pytest.approx(3.0) and cfg["threads"] == 1
    # A setting given wins over the recipe; the rest still come from it.
    summary = json.loads(azr(home, "train", "m", "--books", "play", "--minutes", "0.03", "--learning-rate", "1e-3",
                             "--beta2", "0.9", "--json").stdout)
    cfg = started(Path(summary["events"]))["train_config"]
    assert (cfg["learning_rate"], cfg["beta2"], cfg["max_time"]) == (1e-3, 0.9, pytest.approx(1.8))
    assert (cfg["batch_size"], cfg["warmup_iters"], cfg["min_lr_ratio"]) == \
        (plan["batch_size"], plan["warmup_iters"], plan["min_lr_ratio"])


def test_the_optimiser_settings_are_command_line_options(tmp_path):
    """P1's recipe (benchmarks/pretrain_budget.py) with `azr models create` and `azr train` flags."""
    home = tmp_path / "home"
    (tmp_path / "play.txt").write_text(make_text(), encoding="utf-8")
    azr(home, "books", "add", str(tmp_path / "play.txt"), "--name", "play")
    azr(home, "models", "create", "p", "--vocab-size", "300", "--d-model", "32", "--num-layers", "1",
        "--num-heads", "2", "--d-ff", "64", "--max-seq-len", "32", "--tokenizer", "char")
    assert "recipe" not in json.loads((home / "models" / "p" / "model.json").read_text(encoding="utf-8"))
    summary = json.loads(azr(home, "train", "p", "--books", "play", "--max-iterations", "2", "--learning-rate",
                             "3e-3", "--warmup-iters", "1", "--min-lr-ratio", "0.05", "--weight-decay", "0.2",
                             "--beta2", "0.99", "--dropout", "0.1", "--threads", "1", "--json").stdout)
    cfg = started(Path(summary["events"]))["train_config"]
    assert (cfg["min_lr_ratio"], cfg["weight_decay"], cfg["beta2"], cfg["schedule"]) == (0.05, 0.2, 0.99, "steps")
    assert cfg["dropout"] == 0.1
    bad = azr(home, "train", "p", "--books", "play", "--beta2", "1.5", check=False)
    assert bad.returncode == 2 and "beta2" in bad.stderr


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setattr(autosize, "machine_speed", lambda home, threads, device=None: SLOW_CPU)  # no probe in the test
    with TestClient(create_app(tmp_path / "home"), base_url="http://127.0.0.1:8000") as c:
        r = c.post("/api/books", files={"file": ("play.txt", make_text().encode(), "text/plain")},
                   data={"name": "play"})
        assert r.status_code == 201, r.text
        yield c


def test_the_plan_endpoint_and_a_model_made_from_it(client):
    r = client.post("/api/models/plan", json={"books": ["play"], "minutes": 10})
    assert r.status_code == 200, r.text
    answer = r.json()
    expected = autosize.plan(len(make_text().encode()), 10, SLOW_CPU)
    # a book this small gets the character tokenizer, sized to exactly the characters it uses
    train_part = split_train_val(make_text())[0]
    assert expected.model.tokenizer == "char"
    expected.model.vocab_size = 1 + 256 + len(set(train_part))
    assert answer["model"] == expected.model.to_dict() and answer["warnings"] == []
    assert answer["recipe"]["settings"]["learning_rate"] == expected.learning_rate
    assert answer["recipe"]["expected"]["epochs"] == expected.epochs

    # The manual fields' shape (the defaults: a vocabulary of 8,000) is too big for a small book.
    shape = {"vocab_size": 8000, "d_model": 256, "num_layers": 6, "num_heads": 8, "d_ff": 1024, "max_seq_len": 256}
    r = client.post("/api/models/plan", json={"books": ["play"], "minutes": 10, "shape": shape},
                    headers={"Accept-Language": "ru"})
    codes = [p["code"] for p in r.json()["problems"]]
    assert "auto.vocab_large" in codes and "Размер словаря (8\u00a0000)" in " ".join(r.json()["warnings"])
    planned = answer["recipe"]["minutes"]
    r = client.post("/api/models/plan", json={"books": ["play"], "minutes": planned, "shape": answer["model"]})
    assert r.json()["problems"] == []  # the recommended shape for the plan's time has nothing to warn about
    # ... but given the ten minutes asked, a run would only learn the book by heart: the fix is the plan's time
    r = client.post("/api/models/plan", json={"books": ["play"], "minutes": 10, "shape": answer["model"]},
                    headers={"Accept-Language": "ru"})
    [problem] = r.json()["problems"]
    assert problem["code"] == "auto.epochs_learned" and problem["fix"] == {"run": {"minutes": math.ceil(planned)}}
    assert "заучивает" in r.json()["warnings"][0]
    assert client.post("/api/models/plan", json={"books": [], "minutes": 10}).json()["code"] == "auto.no_books"
    assert client.post("/api/models/plan", json={"books": ["nope"], "minutes": 10}).status_code == 404

    r = client.post("/api/models", json={"name": "best", "auto": {"books": ["play"], "minutes": 10}})
    assert r.status_code == 201, r.text
    made = r.json()["recipe"]
    assert r.json()["config"] == answer["model"] and made["asked_minutes"] == 10
    # a book this small would be read hundreds of times in ten minutes: the plan takes less time
    assert made["minutes"] == answer["recipe"]["minutes"] == expected.max_time / 60 < 10
    r = client.post("/api/models", json={"name": "half", "d_model": 64, "auto": {"books": ["play"], "minutes": 10}})
    assert r.status_code == 400 and r.json()["code"] == "auto.shape_given"

    # A studio run of it: the recipe fills in what the run leaves out; what it gives wins.
    r = client.post("/api/runs", json={"model": "best", "books": ["play"], "minutes": 0.05, "batch_size": 4})
    assert r.status_code in (200, 201), r.text
    params = r.json()["params"]
    client.post(f"/api/runs/{r.json()['id']}/cancel")
    deadline = time.time() + 60  # its worker is gone before the data folder is
    while client.get(f"/api/runs/{r.json()['id']}").json()["state"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.2)
    assert params["batch_size"] == 4 and params["learning_rate"] == expected.learning_rate
    assert (params["beta2"], params["seq_len"], params["warmup_iters"]) == \
        (expected.beta2, expected.seq_len, expected.warmup_iters)


def test_apply_leaves_a_hand_made_model_alone(tmp_path):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    assert recipe.apply(home, "nobody", {"learning_rate": 1e-3, "seq_len": None}) == {"learning_rate": 1e-3}
    store.create_model(home, "r", autosize.plan(50_000, 5, SLOW_CPU).model,
                       recipe={"minutes": 5, "settings": {"learning_rate": 2e-3, "batch_size": 8}})
    assert recipe.apply(home, "r", {"max_iterations": 10}) == {"learning_rate": 2e-3, "batch_size": 8,
                                                               "max_iterations": 10}
    assert recipe.apply(home, "r", {})["minutes"] == 5


def test_the_plan_says_what_a_shape_and_batch_cost_here_each_with_its_fix(client, monkeypatch):
    """Before the start: a vocabulary too big for the book, a shape that does not fit memory and
    one whose step takes longer than the time allows, each with the values that fix it."""
    monkeypatch.setattr(recipe, "_memory", lambda: 2 * 2**30)
    plan = client.post("/api/models/plan", json={"books": ["play"], "minutes": 1}).json()
    large = {"vocab_size": 15000, "d_model": 512, "num_layers": 12, "num_heads": 8, "d_ff": 2048, "max_seq_len": 512}
    r = client.post("/api/models/plan", json={"books": ["play"], "minutes": 1, "shape": large, "batch_size": 16},
                    headers={"Accept-Language": "ru"})
    assert r.status_code == 200, r.text
    problems = {p["code"]: p for p in r.json()["problems"]}
    assert set(problems) >= {"auto.vocab_large", "plan.memory", "plan.step_slow"}, problems
    assert problems["auto.vocab_large"]["fix"] == {"model": {"vocab_size": plan["model"]["vocab_size"]}}
    shape = {k: plan["model"][k] for k in (*large, "tokenizer")}
    for code in ("plan.memory", "plan.step_slow"):
        assert problems[code]["fix"]["model"] == shape, code  # the recommended shape
    assert "ГиБ" in problems["plan.memory"]["detail"]
    # a step's time in seconds, as the time asked is in minutes: "около 9,6 с", not "0,16 мин"
    assert problems["plan.step_slow"]["params"]["step_seconds"] > 0
    assert re.search(r"около [\d\u00a0,]+ с: за 1 мин", problems["plan.step_slow"]["detail"])
    # the fixes for a model already made: a batch that fits, and time for the steps and a pass
    batch = problems["plan.memory"]["fix"]["run"]["batch_size"]
    assert 1 <= batch < 16
    fits = client.post("/api/models/plan", json={"books": ["play"], "minutes": 1, "shape": large,
                                                  "batch_size": batch}).json()["problems"]
    assert "plan.memory" not in {p["code"] for p in fits}
    slow = problems["plan.step_slow"]["fix"]["run"]
    assert slow.get("minutes", 0) > 1 or slow.get("batch_size", 16) < 16
    # the recommended shape at the recommended batch: nothing to fix
    r = client.post("/api/models/plan", json={"books": ["play"], "minutes": 1, "shape": plan["model"],
                                              "batch_size": plan["plan"]["batch_size"]})
    assert r.json()["problems"] == []


def test_the_recipe_says_why_its_plan_takes_less_time_than_asked():
    laptop = autosize.MachineSpeed(threads=2, fp32_gflops=77.0, bf16_gflops=129.0)
    novel = recipe.describe(autosize.plan(330_000, 30, laptop), 30, 330_000)
    assert novel["asked_minutes"] == 30 and novel["minutes"] < 30 and novel["shorter_because"] == "passes"
    story = recipe.describe(autosize.plan(20_000, 10, laptop), 10, 20_000)  # read ~100 times even in 3 minutes
    assert story["minutes"] == autosize.SHORTEST_PLAN_S / 60 and story["shorter_because"] == "floor"
    library = recipe.describe(autosize.plan(50_000_000, 10, laptop), 10, 50_000_000)
    assert library["minutes"] == 10 and "shorter_because" not in library


def test_a_shape_wrong_for_the_books_is_fixed_by_the_plans_shape():
    slow = autosize.MachineSpeed(threads=1, fp32_gflops=20.0, bf16_gflops=2.0)
    library = autosize.plan(100_000_000, 10, slow)
    huge = autosize.shape_for_layers(12, 1024, 512, "bpe")  # far too large to read much of it in ten minutes
    [(error, fix)] = [w for w in recipe.warnings(huge, 100_000_000, 10, slow, library) if w[0].code == "auto.epochs_few"]
    assert fix["model"] == {k: v for k, v in library.model.to_dict().items() if k in recipe.SHAPE_FIELDS}
