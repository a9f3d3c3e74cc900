"""Upgrading a data folder's registry written by an earlier release."""

import json
import sqlite3

from sqlalchemy import select, text

from azr_trainer import layout, registry, store
from azr_trainer.jobs import JobRunner
from azr_trainer.model import ModelConfig
from azr_trainer.registry import Registry

TINY = ModelConfig(vocab_size=300, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_seq_len=32, tokenizer="char")

# The tables as schema version 2 had them (books and models mirrored from their folders,
# samples copied out of the events), as that release's SQLAlchemy created them.
SCHEMA_2 = """
CREATE TABLE schema_version (id INTEGER NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (id));
CREATE TABLE books (name VARCHAR NOT NULL, encoding VARCHAR NOT NULL, chars INTEGER NOT NULL,
    text_bytes INTEGER NOT NULL, source_bytes INTEGER NOT NULL, created_at VARCHAR NOT NULL, PRIMARY KEY (name));
CREATE TABLE models (name VARCHAR NOT NULL, config JSON NOT NULL, parameters INTEGER NOT NULL,
    created_at VARCHAR NOT NULL, trained_steps INTEGER NOT NULL, best_val_bpb DOUBLE, last_trained VARCHAR,
    PRIMARY KEY (name));
CREATE TABLE runs (id VARCHAR NOT NULL, model VARCHAR NOT NULL, books JSON NOT NULL, params JSON NOT NULL,
    state VARCHAR NOT NULL, message VARCHAR, message_code VARCHAR, message_params JSON, pid INTEGER,
    step INTEGER NOT NULL, max_iterations INTEGER NOT NULL, created_at VARCHAR NOT NULL, queued_at VARCHAR,
    started_at VARCHAR, finished_at VARCHAR, best_val_bpb DOUBLE, last_metrics JSON, last_eval JSON,
    milestones JSON, real_words DOUBLE, last_checkpoint_step INTEGER, stop_requested VARCHAR,
    events_offset INTEGER NOT NULL, events_count INTEGER NOT NULL, PRIMARY KEY (id));
CREATE INDEX ix_runs_state ON runs (state);
CREATE INDEX ix_runs_model ON runs (model);
CREATE TABLE checkpoints (model VARCHAR NOT NULL, file VARCHAR NOT NULL, step INTEGER, val_bpb DOUBLE,
    bytes INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, PRIMARY KEY (model, file));
CREATE TABLE metrics (run_id VARCHAR NOT NULL, seq INTEGER NOT NULL, step INTEGER, kind VARCHAR NOT NULL,
    data JSON NOT NULL, PRIMARY KEY (run_id, seq), FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE);
CREATE TABLE samples (id INTEGER NOT NULL, run_id VARCHAR NOT NULL, step INTEGER NOT NULL, prompt VARCHAR NOT NULL,
    text VARCHAR NOT NULL, PRIMARY KEY (id), FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE);
CREATE INDEX ix_samples_run_id ON samples (run_id);
INSERT INTO schema_version VALUES (1, 2);
"""

EVENTS = [
    {"type": "status", "state": "started", "step": 0},
    {"type": "step", "step": 10, "loss": 3.0, "max_iterations": 20},
    {"type": "eval", "step": 10, "val_loss": 2.9, "val_bpb": 4.2},
    {"type": "sample", "step": 10, "prompt": "\n", "text": "the king"},
    {"type": "sample", "step": 10, "prompt": "KING:", "text": "KING: said"},
    {"type": "status", "state": "completed", "step": 20},
]


def schema_2_folder(home):
    """A data folder whose registry release 2 wrote: a book row, a model row, a finished run
    of model "m" with its events (and its samples a second time)."""
    store.create_model(home, "m", TINY)
    db = sqlite3.connect(home / "azr.sqlite")
    db.executescript(SCHEMA_2)
    db.execute("INSERT INTO books VALUES ('play', 'utf_8', 10, 10, 10, '2025-01-01T00:00:00+00:00')")
    db.execute("INSERT INTO models VALUES ('m', ?, 1000, '2025-01-01T00:00:00+00:00', 20, 4.2, NULL)",
               (json.dumps(TINY.to_dict()),))
    db.execute("INSERT INTO runs (id, model, books, params, state, step, max_iterations, created_at, best_val_bpb, "
               "last_metrics, events_offset, events_count) VALUES ('r1', 'm', '[\"play\"]', '{}', 'completed', 20, "
               "20, '2025-01-01T00:00:00', 4.2, ?, 0, ?)", (json.dumps(EVENTS[1]), len(EVENTS)))
    for seq, event in enumerate(EVENTS):
        db.execute("INSERT INTO metrics VALUES ('r1', ?, ?, ?, ?)",
                   (seq, event.get("step"), event["type"], json.dumps({**event, "seq": seq})))
        if event["type"] == "sample":
            db.execute("INSERT INTO samples (run_id, step, prompt, text) VALUES ('r1', ?, ?, ?)",
                       (event["step"], event["prompt"], event["text"]))
    db.commit()
    db.close()


def test_a_schema_2_registry_drops_its_copies_and_keeps_its_runs(home):
    schema_2_folder(home)
    reg = Registry(home)
    with reg.engine.connect() as conn:
        assert conn.execute(select(registry.SchemaVersion.version)).scalar_one() == registry.latest_version()
        tables = {row[0] for row in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
    assert not tables & {"books", "models", "samples"}
    runner = JobRunner(home, reg)
    run = runner.get_run("r1", detail=True)
    assert (run["state"], run["step"], run["best_val_bpb"], run["events"]) == ("completed", 20, 4.2, len(EVENTS))
    assert run["samples"] == [{"step": 10, "prompt": "\n", "text": "the king"},
                              {"step": 10, "prompt": "KING:", "text": "KING: said"}]  # from its events
    assert [e["type"] for e in runner.events("r1")] == [e["type"] for e in EVENTS]
    assert [r["id"] for r in runner.list_runs()] == ["r1"]
    reg.close()
    Registry(home).close()  # opened again: already current


def test_a_runs_samples_are_its_sample_events(home):
    """Samples are kept once, as the run's events; the run shows its newest twelve, oldest first."""
    store.create_model(home, "m", TINY)
    reg = Registry(home)
    runner = JobRunner(home, reg)
    with reg.session() as s:
        s.add(registry.Run(id="r1", model="m", books=[], params={}, state="running", max_iterations=20,
                           created_at="2025-01-01T00:00:00", step=0, events_offset=0, events_count=0))
        s.commit()
    events = [{"type": "sample", "step": i, "prompt": "KING:", "text": f"text {i}"} for i in range(15)]
    events.insert(5, {"type": "step", "step": 4, "loss": 3.0, "max_iterations": 20})
    folder = layout.run_dir(home, "m", "r1")
    folder.mkdir(parents=True)
    layout.events_file(folder).write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    runner.recover()  # reads what the worker wrote
    run = runner.get_run("r1", detail=True)
    assert [x["text"] for x in run["samples"]] == [f"text {i}" for i in range(3, 15)]
    stored = [e for e in runner.events("r1") if e["type"] == "sample"]
    assert [e["text"] for e in stored] == [f"text {i}" for i in range(15)]
    reg.close()
