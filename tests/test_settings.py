"""One declaration per setting: the CLI, the API, the page and the configs agree with settings.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from azr_trainer import settings, store
from azr_trainer.cli import build_parser
from azr_trainer.errors import UserError
from azr_trainer.model import ModelConfig
from azr_trainer.reasoning import ReasonConfig
from azr_trainer.routes.requests import RunRequest
from azr_trainer.sample import SamplingParams
from azr_trainer.selfplay import SelfPlayConfig
from azr_trainer.server import create_app
from azr_trainer.train import TrainConfig, run_dir
from azr_trainer.worker import main as worker_main
from azr_trainer.worker import write_run_file

WEB = Path(settings.__file__).parent / "web"
CONFIGS = {"train": TrainConfig(books=["b"]), "selfplay": SelfPlayConfig(), "reason": ReasonConfig(),
           "model": ModelConfig(), "generate": SamplingParams()}
COMMANDS = {"train": ["train", "m", "--books", "b"], "selfplay": ["selfplay", "m"], "reason": ["reason", "m"]}


def test_generation_defaults_are_declared_once():
    actions = _actions(["generate"])
    for s in settings.GENERATE:
        assert actions[s.name].default == s.default and actions[s.name].type is s.type, s.name
    from azr_trainer.routes.requests import GenerateRequest
    assert {k: v for k, v in GenerateRequest(model="m").model_dump().items() if k in settings.GENERATE.settings} \
        == {s.name: s.default for s in settings.GENERATE}
    with pytest.raises(UserError, match="temperature must be at most 10"):
        SamplingParams(temperature=11).validate()
    SamplingParams(top_k=None, top_p=None).validate()  # None: off


def _actions(argv: list[str]) -> dict:
    """The options of the subcommand ``argv`` names, by destination."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[argv[0]]
    return {a.dest: a for a in sub._actions}


@pytest.mark.parametrize("group", ["train", "selfplay", "reason", "model", "generate"])
def test_configs_take_their_defaults_from_the_declarations(group):
    config = CONFIGS[group]
    names = {f.name for f in fields(config)}
    for s in settings.GROUPS[group]:
        if s.name in names:
            assert getattr(config, s.name) == s.default, s.name
    config.validate()  # the declared defaults are within the declared bounds


@pytest.mark.parametrize("group", ["train", "selfplay", "reason"])
def test_the_cli_offers_every_setting_with_its_default_and_bounds(group):
    actions = _actions(COMMANDS[group])
    parsed = vars(build_parser().parse_args(COMMANDS[group]))
    config = {"train": TrainConfig, "selfplay": SelfPlayConfig, "reason": ReasonConfig}[group]
    names = {f.name for f in fields(config)}
    extra = {"books": ["b"]} if group == "train" else {}
    built = config(**extra, **{k: v for k, v in parsed.items() if k in names and k != "books" and v is not None})
    for s in settings.GROUPS[group]:
        action = actions[s.name]
        assert action.type in (s.type, None), s.name
        assert all(choice in action.help for choice in s.choices or ()), (s.name, action.help)
        # Unset: the config's own default applies (a resumed run can tell what was given) ...
        assert parsed[s.name] in (None, False), s.name
        # ... which is the declared one, and the help says it.
        if s.name in names:
            assert getattr(built, s.name) == s.default, s.name
        if s.default not in (None, False, True):
            assert settings._show(s.default) in action.help, (s.name, action.help)


def test_the_studio_flags_left_the_public_cli():
    for argv in COMMANDS.values():
        options = {o for a in _actions(argv).values() for o in a.option_strings}
        assert not options & {"--control-file", "--watch-parent"}, argv


def _bound(prop: dict, *keys: str):
    for part in [prop, *prop.get("anyOf", [])]:
        for key in keys:
            if key in part:
                return part[key]
    return None


def test_the_run_request_schema_carries_the_declared_bounds():
    schema = RunRequest.model_json_schema()["properties"]
    studio = {s.name for g in settings.RUN_GROUPS.values() for s in g if s.studio}
    assert set(schema) - studio == {"model", "kind", "books"} and studio <= set(schema)
    for name in studio:
        # A setting two kinds share (batch_size of train and reason) gets the looser bounds;
        # each kind's config checks its own.
        shared = [g[name] for g in settings.RUN_GROUPS.values() if name in g.settings]
        uppers = [s.upper for s in shared]
        lowers = [s.min for s in shared]
        assert _bound(schema[name], "maximum", "exclusiveMaximum") == (None if None in uppers else max(uppers)), name
        assert _bound(schema[name], "minimum", "exclusiveMinimum") == (None if None in lowers else min(lowers)), name


def test_get_settings_is_what_the_page_builds_its_forms_from(tmp_path):
    with TestClient(create_app(tmp_path / "home"), base_url="http://127.0.0.1") as client:
        got = client.get("/api/settings").json()
    assert got["cores"] == os.cpu_count()
    for name, group in settings.GROUPS.items():
        for s in group:
            d = got[name][s.name]
            assert (d["type"], d["min"], d["max"], d["unit"]) == (s.type.__name__, s.min, s.upper, s.unit)
            assert d["default"] == s.page_default and d["cli_default"] == s.default
            assert d["help"].startswith("settings.help.")
    # A studio run has an end where the CLI runs until stopped; it starts where the page does.
    assert got["selfplay"]["max_iterations"]["default"] == 150 and SelfPlayConfig().max_iterations is None
    # Training in the studio starts from ten minutes with the steps left empty (until the time is
    # up); the command line keeps its 1,000 steps.
    assert got["train"]["minutes"]["default"] == 10 and got["train"]["max_iterations"]["default"] is None
    assert got["train"]["max_iterations"]["cli_default"] == TrainConfig(books=[]).max_iterations == 1000
    assert TrainConfig(books=[]).max_time is None
    assert got["selfplay"]["reward"]["choices"] == ["default", "original"]


def test_no_default_or_bound_is_written_in_the_page():
    """The forms' inputs carry no value, min or max of their own; the scripts none either."""
    html = (WEB / "index.html").read_text(encoding="utf-8")
    for prefix, names in (("t", "max_iterations|batch_size|learning_rate|save_every|eval_every"),
                          ("sp", "max_iterations|group_size|temperature|kl_weight|lm_weight"),
                          ("rs", "max_iterations|batch_size|n_samples|temperature|learning_rate|pretrain_minutes"),
                          ("m", "vocab_size|d_model|num_layers|num_heads|d_ff|max_seq_len"),
                          ("g", "max_length|seed|temperature|top_k|top_p|rep")):
        tags = re.findall(rf'<input id="{prefix}-(?:{names})"[^>]*>', html)
        assert len(tags) == len(names.split("|")), prefix
        for tag in tags:
            assert not re.search(r'\s(value|min|max)="', tag), tag
    training = (WEB / "training.js").read_text(encoding="utf-8")
    create = (WEB / "create.js").read_text(encoding="utf-8")
    assert "LIMITS" not in create and "RECOMMENDED" not in create and "< 260" not in create
    for literal in ("batch_size: 16", "learning_rate: 0.001", "|| 256", "v.group_size < 2", "v.n_samples < 2"):
        assert literal not in training, literal


def _events_until(client, run_id: str, found, timeout: float = 120) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = client.get(f"/api/runs/{run_id}/events").json()["events"]
        if found(events):
            return events
        time.sleep(0.1)
    raise AssertionError(f"not seen in {timeout} s: {events}")


def test_the_training_forms_defaults_start_a_run_the_time_ends(home, book):
    """What the Training form sends as it loads (the declared page defaults: ten minutes, no
    steps) makes a run that ten minutes end, its learning rate decaying over them; a request with
    steps of its own gets no default time on top, one with neither gets the ten minutes."""
    for name in ("m", "n", "o"):
        store.create_model(home, name, ModelConfig(vocab_size=300, d_model=32, num_layers=1, num_heads=2, d_ff=64,
                                                   max_seq_len=32, tokenizer="char"))
    with TestClient(create_app(home), base_url="http://127.0.0.1") as client:
        declared = client.get("/api/settings").json()["train"]
        form = ("minutes", "max_iterations", "batch_size", "learning_rate", "save_every", "eval_every")
        page = {k: declared[k]["default"] for k in form if declared[k]["default"] is not None}
        assert page["minutes"] == 10 and "max_iterations" not in page
        r = client.post("/api/runs", json={"model": "m", "books": [book], "threads": 1, **page})
        assert r.status_code == 201, r.text
        run = r.json()
        assert run["params"]["minutes"] == 10 and "max_iterations" not in run["params"]
        assert run["max_iterations"] == 0  # no step count: the page shows the time instead
        # Queued behind it (one run at a time): steps of their own, and nothing at all.
        steps = client.post("/api/runs", json={"model": "n", "books": [book], "max_iterations": 20}).json()
        assert steps["params"]["max_iterations"] == 20 and "minutes" not in steps["params"]
        bare = client.post("/api/runs", json={"model": "o", "books": [book]}).json()
        assert bare["params"]["minutes"] == 10 and "max_iterations" not in bare["params"]
        for queued in (steps, bare):
            assert client.post(f"/api/runs/{queued['id']}/cancel").status_code == 200
        events = _events_until(client, run["id"], lambda evs: any(e.get("state") == "started" for e in evs))
        cfg = next(e for e in events if e.get("state") == "started")["train_config"]
        assert (cfg["max_time"], cfg["schedule"]) == (600.0, "time") and cfg["max_iterations"] == 10**9
        assert client.post(f"/api/runs/{run['id']}/cancel").status_code == 200
        _events_until(client, run["id"], lambda evs: any(e.get("state") == "cancelled" for e in evs))


def test_threads_are_bounded_by_the_cores_with_a_coded_error(home, book):
    too_many = os.cpu_count() + 1
    with pytest.raises(UserError) as e:
        TrainConfig(books=[book], threads=too_many).validate()
    assert e.value.code == "settings.threads_cores" and e.value.params["cores"] == os.cpu_count()
    assert "CPU cores" in str(e.value) and "ядер" in e.value.render("ru")
    store.create_model(home, "m", ModelConfig(vocab_size=300, d_model=32, num_layers=1, num_heads=2, d_ff=64,
                                              max_seq_len=32, tokenizer="char"))
    env = {**os.environ, "AZR_HOME": str(home), "AZR_LANG": "en"}
    p = subprocess.run([sys.executable, "-m", "azr_trainer.cli", "train", "m", "--books", book, "--threads",
                        "100000"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert p.returncode == 2 and "more than the" in p.stderr and "Traceback" not in p.stderr, p.stderr
    with TestClient(create_app(home), base_url="http://127.0.0.1") as client:
        r = client.post("/api/runs", json={"model": "m", "books": [book], "threads": 100000})
        assert r.status_code == 400 and r.json()["code"] == "settings.threads_cores", r.text
        r = client.post("/api/runs", json={"model": "m", "books": [book], "max_iterations": 0},
                        headers={"Accept-Language": "ru"})
        assert r.status_code == 400 and r.json()["code"] == "settings.at_least"
        assert r.json()["detail"] == "Значение max_iterations должно быть не меньше 1, а получено 0."


def test_a_worker_reports_an_error_as_a_coded_event(home, book):
    """The studio's contract with a worker: a run file in, events out (never a grepped log)."""
    folder = run_dir(home, "m", "run-x")
    path = write_run_file(folder, home=home, kind="selfplay", model="m", run_id="run-x", books=[],
                          settings={"group_size": 1}, resume=False)
    assert json.loads(path.read_text(encoding="utf-8"))["settings"] == {"group_size": 1}
    assert worker_main([str(path)]) == 2
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert events[-1]["type"] == "status" and events[-1]["state"] == "failed"
    assert events[-1]["code"] == "settings.at_least" and events[-1]["params"]["name"] == "group_size"
    assert events[-1]["message"] == "group_size must be at least 2, got 1."
    damaged = folder / "damaged.json"
    damaged.write_text("{", encoding="utf-8")
    assert worker_main([str(damaged)]) == 2


def test_minutes_are_a_time_budget():
    budget = settings.time_budget("train", {"minutes": 2, "batch_size": 4})
    assert budget == {"max_time": 120.0, "schedule": "time", "max_iterations": 10**9, "batch_size": 4}
    TrainConfig(books=["b"], **budget).validate()
    assert settings.time_budget("train", {"minutes": 2, "max_iterations": 50})["max_iterations"] == 50
    assert settings.time_budget("train", {"minutes": 2, "max_time": 30})["max_time"] == 30  # the sooner end
    assert settings.time_budget("selfplay", {"minutes": 0.5}) == {"max_time": 30.0}
    assert settings.time_budget("reason", {"max_iterations": 3}) == {"max_iterations": 3}  # nothing changes
    with pytest.raises(UserError) as e:  # several processes keep the step schedule: it needs the steps
        settings.time_budget("train", {"minutes": 2}, processes=2)
    assert e.value.code == "settings.minutes_processes"
    with pytest.raises(UserError, match="minutes must be above 0"):
        settings.time_budget("reason", {"minutes": 0})


def test_the_studios_default_self_play_run_ends_within_a_sitting():
    # what the studio queues when nothing is changed: its steps, or a time budget that leaves
    # room for the start, the final eval and the save within a quarter of an hour
    defaults = settings.SELFPLAY.studio_defaults()
    assert defaults["max_iterations"] == 150
    config = SelfPlayConfig(**settings.time_budget("selfplay", defaults)).validate()
    assert config.max_iterations == 150 and 0 < config.max_time <= 13 * 60
    assert SelfPlayConfig().max_time is None  # the command line runs until stopped, as before


def test_the_studios_default_reasoning_run_ends_within_a_sitting():
    # after the from-zero pretraining (five minutes), reasoning's own end leaves the whole
    # path near a quarter of an hour even where its steps run slower than measured
    from azr_trainer.reasoning import ReasonConfig
    defaults = settings.REASON.studio_defaults()
    assert defaults["max_iterations"] == 150
    config = ReasonConfig(**settings.time_budget("reason", defaults)).validate()
    assert config.max_iterations == 150 and 0 < config.max_time <= 8 * 60
    assert ReasonConfig().max_time is None  # the command line runs until stopped


def test_the_cli_trains_for_a_number_of_minutes(home, book):
    store.create_model(home, "m", ModelConfig(vocab_size=300, d_model=32, num_layers=1, num_heads=2, d_ff=64,
                                              max_seq_len=32, tokenizer="char"))
    env = {**os.environ, "AZR_HOME": str(home), "AZR_LANG": "en"}
    p = subprocess.run([sys.executable, "-m", "azr_trainer.cli", "train", "m", "--books", book, "--minutes", "0.02",
                        "--batch-size", "4", "--threads", "1", "--eval-every", "100000", "--run-id", "budget",
                        "--json"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["status"] == "stopped" and 0 < summary["step"] < 10**9
    events = [json.loads(line) for line in (run_dir(home, "m", "budget") / "events.jsonl").read_text(
        encoding="utf-8").splitlines()]
    started = next(e for e in events if e["type"] == "status" and e["state"] == "started")
    cfg = started["train_config"]
    assert (cfg["max_time"], cfg["schedule"], cfg["max_iterations"]) == (1.2, "time", 10**9)
