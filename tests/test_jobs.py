"""The studio's pieces without HTTP: memorisation meter, registry, job runner."""

import json
import signal
import time

import pytest
from sqlalchemy import select, text

from azr_trainer import books, osdeps, registry, store
from azr_trainer.home import Conflict, UserError
from azr_trainer.jobs import JobRunner, crash_message
from azr_trainer.memorisation import BookIndex, IndexCache, find_copies
from azr_trainer.model import ModelConfig
from azr_trainer.registry import Registry, Run
from azr_trainer.train import run_dir

from conftest import WORDS_RU, make_text

TINY = ModelConfig(vocab_size=300, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_seq_len=32, tokenizer="char")
RUN_PARAMS = dict(max_iterations=30, batch_size=4, learning_rate=3e-3, save_every=1000, eval_every=1000, threads=1)


# ---------------------------------------------------------------------------- memorisation


def test_copies_are_found_with_their_book_and_share():
    play, poem = make_text(seed=1), make_text(WORDS_RU, seed=2)
    index = BookIndex.build({"play": play, "poem": poem})
    own = "Nothing like this sentence appears anywhere in either book, I am sure. "
    copied_en, copied_ru = play[500:620], poem[300:345]
    output = own + copied_en + " zzz qqq " + copied_ru + " end."
    result = find_copies(output, index)
    spans = result["spans"]
    assert [s["book"] for s in spans] == ["play", "poem"]
    # Each span covers at least the copied stretch (neighbouring characters may agree by chance).
    first, second = spans
    assert first["start"] <= len(own) and first["end"] >= len(own) + len(copied_en)
    assert output[first["start"]:first["end"]] in play
    assert output[second["start"]:second["end"]] in poem
    assert first["end"] <= second["start"]  # never overlapping
    assert all(s["length"] == s["end"] - s["start"] >= 20 for s in spans)
    assert result["copied_fraction"] == pytest.approx(sum(s["length"] for s in spans) / len(output))


def test_short_matches_and_no_books_count_as_original():
    index = BookIndex.build({"play": make_text(seed=1)})
    assert find_copies("the king said", index) == {"spans": [], "copied_fraction": 0.0}
    assert find_copies("", index)["copied_fraction"] == 0.0
    assert find_copies("x" * 100, BookIndex.build({}))["spans"] == []


def test_a_whole_copy_is_one_span():
    play = make_text(seed=3)
    index = BookIndex.build({"play": play})
    result = find_copies(play[1000:3000], index)
    assert len(result["spans"]) == 1 and result["copied_fraction"] == 1.0


def test_index_cache_builds_once_per_key():
    cache, calls = IndexCache(size=1), []

    def load():
        calls.append(1)
        return {"b": "some text " * 10}

    assert cache.get(("b", 1), load) is cache.get(("b", 1), load)
    cache.get(("b", 2), load)  # the book changed: a new index, the old one evicted
    cache.get(("b", 1), load)
    assert len(calls) == 3


# ---------------------------------------------------------------------------- registry


def add_finished_run(reg, run_id, model):
    with reg.session() as s:
        s.add(Run(id=run_id, model=model, books=["play"], params={}, state="completed", max_iterations=1,
                  created_at="2024-01-01T00:00:00", step=0, events_offset=0, events_count=0))
        s.commit()


def test_runs_follow_their_model_folder(home, book):
    """Books and models are their folders (no copies in the registry); the runs of a model
    deleted with the CLI go with it, when the studio starts and when runs are listed."""
    reg = Registry(home)
    with reg.engine.connect() as conn:
        tables = {row[0] for row in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
    assert not tables & {"books", "models"}
    for name in ("m", "kept"):
        store.create_model(home, name, TINY)  # made "with the CLI": files only
        add_finished_run(reg, f"run-{name}", name)
    runner = JobRunner(home, reg)
    assert {r["id"] for r in runner.list_runs()} == {"run-m", "run-kept"}
    store.delete_model(home, "m")
    assert [r["id"] for r in runner.list_runs()] == ["run-kept"]
    add_finished_run(reg, "run-gone", "gone")  # a model deleted while no studio was running
    reg.reconcile()
    with reg.session() as s:
        assert s.scalars(select(Run.id)).all() == ["run-kept"]  # their folders are gone, so is their history


def test_a_damaged_model_json_keeps_its_runs(home):
    reg = Registry(home)
    store.create_model(home, "m", TINY)
    add_finished_run(reg, "r1", "m")
    (home / "models" / "m" / "model.json").write_text("{broken", encoding="utf-8")
    reg.reconcile()
    assert [r["id"] for r in JobRunner(home, reg).list_runs()] == ["r1"]
    assert store.list_models(home) == []  # left out of the listing, never fatal for it


def test_schema_versions(home, monkeypatch):
    Registry(home).close()
    # An older folder is upgraded by the migrations it has not seen yet.
    ran = []

    def add_column(conn):
        ran.append(1)
        conn.execute(text("ALTER TABLE runs ADD COLUMN note TEXT"))

    current = registry.latest_version()
    monkeypatch.setattr(registry, "MIGRATIONS", [*registry.MIGRATIONS, add_column])
    reg = Registry(home)
    with reg.engine.connect() as conn:
        assert conn.execute(select(registry.SchemaVersion.version)).scalar_one() == current + 1
        assert "note" in [row[1] for row in conn.execute(text("PRAGMA table_info(runs)"))]
    reg.close()
    assert ran == [1]
    Registry(home).close()  # already current: nothing runs again
    assert ran == [1]
    # A folder from a newer release is refused, not damaged.
    monkeypatch.setattr(registry, "MIGRATIONS", [])
    with pytest.raises(UserError, match="newer AZR Trainer"):
        Registry(home)


def test_a_folder_from_before_coded_run_messages_keeps_its_runs(home):
    reg = Registry(home)
    with reg.engine.begin() as conn:  # the runs table as version 1 had it, with one finished run
        for column in ("message_code", "message_params", "milestones", "real_words"):
            conn.execute(text(f"ALTER TABLE runs DROP COLUMN {column}"))
        conn.execute(text("UPDATE schema_version SET version = 1"))
        conn.execute(text("INSERT INTO runs (id, model, books, params, state, message, step, max_iterations, "
                          "created_at, events_offset, events_count) VALUES ('old', 'm', '[]', '{}', 'cancelled', "
                          "'Cancelled at step 5.', 5, 10, '2024-01-01T00:00:00', 0, 0)"))
    reg.close()
    run = JobRunner(home, Registry(home)).get_run("old")
    assert run["message"] == "Cancelled at step 5." and run["message_code"] is None
    assert run["milestones"] == [] and run["real_words"] is None


# ---------------------------------------------------------------------------- job runner


def test_crash_messages(tmp_path):
    """Only for a worker that died without its final event: an explained error is an event."""
    log = tmp_path / "worker.log"
    log.write_text("Traceback (most recent call last):\n  File …\nValueError: bad thing\n", encoding="utf-8")
    assert "ValueError: bad thing" in crash_message(log, 1) and "exit code 1" in crash_message(log, 1)
    assert "SIGKILL" in crash_message(log, -9) and "memory" in crash_message(log, -9)


def wait_state(runner, run_id, states, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        runner.poll()
        run = runner.get_run(run_id)
        if run["state"] in states:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} still {run['state']} after {timeout} s")


def test_a_book_deleted_before_the_worker_reads_it_fails_readably(home, book):
    store.create_model(home, "m", TINY)
    reg = Registry(home)
    runner = JobRunner(home, reg)  # polled by hand: no monitor thread
    run = runner.create_run("m", [book], RUN_PARAMS)
    assert run["state"] == "running"
    books.delete_book(home, book)  # the worker is still importing torch
    run = wait_state(runner, run["id"], ("failed", "completed"))
    assert run["state"] == "failed"
    assert run["message"] == "There is no book named “play”."
    statuses = [e for e in runner.events(run["id"]) if e["type"] == "status"]
    assert [e["state"] for e in statuses] == ["queued", "running", "failed"]
    # The worker reported it (with the error's code), the studio did not guess it from the log.
    assert statuses[-1].get("source") != "studio" and statuses[-1]["code"] and statuses[-1]["params"] is not None
    spec = json.loads((run_dir(home, "m", run["id"]) / "run.json").read_text(encoding="utf-8"))
    assert spec["kind"] == "train" and spec["books"] == [book] and spec["settings"] == RUN_PARAMS


def test_queue_runs_one_at_a_time_and_recover_interrupts(home, book):
    for name in ("a", "b"):
        store.create_model(home, name, TINY)
    reg = Registry(home)
    runner = JobRunner(home, reg, max_concurrent=1)
    first = runner.create_run("a", [book], RUN_PARAMS)
    second = runner.create_run("b", [book], RUN_PARAMS)
    assert (first["state"], second["state"]) == ("running", "queued")
    with pytest.raises(Conflict, match="already has a run in progress") as refused:
        runner.create_run("a", [book], RUN_PARAMS)
    assert refused.value.code == "runs.has_active_run" and refused.value.params["run"] == first["id"]
    with pytest.raises(UserError, match="batch_size"):
        runner.create_run("b", [book], {**RUN_PARAMS, "batch_size": 0})
    wait_state(runner, first["id"], ("completed",))
    wait_state(runner, second["id"], ("running", "completed"))
    # A new studio finds the second run "running" with nobody watching it.
    fresh = JobRunner(home, Registry(home))
    fresh.recover()
    run = fresh.get_run(second["id"])
    assert run["state"] in ("interrupted", "completed")  # completed if it finished before the "restart"
    if run["state"] == "interrupted":
        assert "Resume it" in run["message"]
    wait_state(fresh, second["id"], ("interrupted", "paused", "completed"))  # the orphan stops and reports


def test_run_kinds_are_checked_and_runs_from_before_kinds_are_training(home, book):
    store.create_model(home, "m", TINY)
    reg = Registry(home)
    with reg.session() as s:  # a row written before runs had a kind
        s.add(Run(id="old", model="m", books=["play"], params={"max_iterations": 5}, state="completed",
                  max_iterations=5, created_at="2024-01-01T00:00:00", step=5, events_offset=0, events_count=0))
        s.commit()
    runner = JobRunner(home, reg)
    assert runner.get_run("old")["kind"] == "train"
    with pytest.raises(UserError, match="kind must be one of train, selfplay, reason"):
        runner.create_run("m", [book], RUN_PARAMS, kind="dream")
    with pytest.raises(UserError, match="A selfplay run has no setting batch_size"):
        runner.create_run("m", [], RUN_PARAMS, kind="selfplay")
    with pytest.raises(UserError, match="no trained checkpoint yet"):
        runner.create_run("m", [], {"max_iterations": 2, "threads": 1}, kind="selfplay")
    reason_cases = [([book], {"max_iterations": 2}, "reasoning run needs no books"),
                    ([], {"group_size": 4}, "A reason run has no setting group_size"),
                    ([], {"max_iterations": 2, "threads": 1}, r"no trained checkpoint yet.*the Training page")]
    for books_, params, refusal in reason_cases:
        if not osdeps.reasoning_available():  # off Linux: refused before its settings are looked at
            refusal = "Reasoning mode is not available on"
        with pytest.raises(UserError, match=refusal):
            runner.create_run("m", books_, params, kind="reason")
    assert [r["id"] for r in runner.list_runs()] == ["old"]


def test_a_studio_run_with_a_time_budget_needs_no_steps(home, book):
    store.create_model(home, "m", TINY)
    runner = JobRunner(home, Registry(home))
    budget = {k: v for k, v in RUN_PARAMS.items() if k != "max_iterations"} | {"minutes": 0.02}
    run = runner.create_run("m", [book], budget)
    assert "max_iterations" not in run["params"] and run["params"]["minutes"] == 0.02
    run = wait_state(runner, run["id"], ("completed", "failed"))
    assert run["state"] == "completed" and run["progress"] == 1.0, run
    started = next(e for e in runner.events(run["id"]) if e["type"] == "status" and e.get("state") == "started")
    assert (started["train_config"]["max_time"], started["train_config"]["schedule"]) == (1.2, "time")
    with pytest.raises(UserError, match="minutes must be above 0"):
        runner.create_run("m", [book], budget | {"minutes": 0})


@pytest.mark.slow
def test_the_studio_starts_a_two_process_run(home, book):
    store.create_model(home, "m", TINY)
    runner = JobRunner(home, Registry(home))
    with pytest.raises(UserError, match="divisible by nproc"):
        runner.create_run("m", [book], {**RUN_PARAMS, "batch_size": 3, "nproc": 2})
    run = runner.create_run("m", [book], {**RUN_PARAMS, "batch_size": 4, "nproc": 2, "threads": 1})
    run = wait_state(runner, run["id"], ("completed", "failed"), timeout=180)
    assert run["state"] == "completed", run["message"]
    started = [e for e in runner.events(run["id"]) if e["type"] == "status" and e.get("state") == "started"]
    assert started and started[0]["processes"] == 2 and started[0]["train_config"]["batch_size"] == 4
    assert run["step"] == RUN_PARAMS["max_iterations"]


def test_a_cancelled_corpus_run_stops_and_writes_no_book(home):
    from azr_trainer import worker
    from azr_trainer.events import read_events
    store.create_model(home, "z", ModelConfig(vocab_size=260, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                                              max_seq_len=320, tokenizer="char"))
    folder = run_dir(home, "z", "r1")
    folder.mkdir(parents=True)
    (folder / "control").write_text("cancel", encoding="utf-8")  # asked before its first report
    path = worker.write_run_file(folder, home=home, kind="corpus", model="z", run_id="r1", books=[],
                                 settings={"corpus_docs": 5000, "seed": 0}, resume=False)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        assert worker.main([str(path)]) == 0
    finally:  # the worker takes over Ctrl-C, as in its own process
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    events, _ = read_events(folder / "events.jsonl")
    last = events[-1]
    assert last["type"] == "status" and last["state"] == "cancelled" and last["code"] == "run.cancelled"
    assert last["step"] == 1000 and not any(e["type"] == "step" for e in events)
    with pytest.raises(UserError):
        books.get_book(home, "z-triplets")
