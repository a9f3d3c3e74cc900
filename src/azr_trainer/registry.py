"""The studio's registry: an SQLite store of runs and their events, and an index of checkpoints.

Books and models are their folders (books.py, store.py) and are listed from them; nothing
here copies them, so the CLI and the studio always see the same ones. What lives only here
is the runs (state, summary, queue order) and their events, ingested from each run's
events.jsonl by the job runner. The checkpoint rows are a cache: each file's step and bpb,
read once, and read again when the file's size or time changes. Rows of a model whose
folder is gone (deleted with the CLI or by hand) are dropped by ``forget_missing_models``.

The database is ``$AZR_HOME/azr.sqlite`` in WAL mode, so the page's reads never wait for
the job runner's writes. ``schema_version`` holds one row; ``MIGRATIONS`` upgrades an
older data folder step by step, and a folder written by a newer release is refused with a
message instead of being damaged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import torch
from sqlalchemy import JSON, URL, Connection, ForeignKey, Index, create_engine, delete, event, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from . import layout, store
from .checkpoint import checkpoint_dir
from .home import UserError

DB_FILE = layout.DB_FILE


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    id: Mapped[int] = mapped_column(primary_key=True)  # always 1: a single row
    version: Mapped[int]


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(index=True)
    books: Mapped[list] = mapped_column(JSON)
    params: Mapped[dict] = mapped_column(JSON)
    # queued, running, paused, completed, failed, cancelled, interrupted
    state: Mapped[str] = mapped_column(index=True)
    message: Mapped[str | None]  # English, for readers that know no codes
    message_code: Mapped[str | None]  # the same message as a catalogue code (msg.<code>) and its params,
    message_params: Mapped[dict | None] = mapped_column(JSON)  # so the page shows it in its own language
    pid: Mapped[int | None]
    step: Mapped[int] = mapped_column(default=0)
    max_iterations: Mapped[int]
    created_at: Mapped[str]
    queued_at: Mapped[str | None]  # the queue starts runs in this order
    started_at: Mapped[str | None]
    finished_at: Mapped[str | None]
    best_val_bpb: Mapped[float | None]
    last_metrics: Mapped[dict | None] = mapped_column(JSON)  # the latest step event
    last_eval: Mapped[dict | None] = mapped_column(JSON)
    milestones: Mapped[list | None] = mapped_column(JSON)  # the worker's milestone events, oldest first
    real_words: Mapped[float | None]  # the latest share of written words found in the books
    last_checkpoint_step: Mapped[int | None]  # None: nothing to resume from, a resume starts over
    stop_requested: Mapped[str | None]  # "pause"/"cancel" written to the control file, not yet honoured
    events_offset: Mapped[int] = mapped_column(default=0)  # bytes of events.jsonl already ingested
    events_count: Mapped[int] = mapped_column(default=0)  # events stored in metrics (the next seq)


class Checkpoint(Base):
    """What is inside each checkpoint file, so listing them never loads one twice."""

    __tablename__ = "checkpoints"
    model: Mapped[str] = mapped_column(primary_key=True)
    file: Mapped[str] = mapped_column(primary_key=True)  # step_0000100.pt or best.pt
    step: Mapped[int | None]
    val_bpb: Mapped[float | None]
    bytes: Mapped[int]
    mtime_ns: Mapped[int]


class Metric(Base):
    """Every event of a run, numbered from 0 (``seq``): the charts, the SSE replay and the run's
    latest samples (its "sample" events) read these."""

    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_kind", "run_id", "kind", "seq"),)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True)
    step: Mapped[int | None]
    kind: Mapped[str]
    data: Mapped[dict] = mapped_column(JSON)


# MIGRATIONS[i] upgrades a database at version i + 1 to version i + 2 (ALTER TABLE and the like).
# A new database is created from the current tables directly and stamped with the latest version.
def _run_messages_and_milestones(conn: Connection) -> None:
    # Version 2: a run's message as a code with params, its milestones and its real-word share.
    for column in ("message_code VARCHAR", "message_params JSON", "milestones JSON", "real_words FLOAT"):
        conn.execute(text(f"ALTER TABLE runs ADD COLUMN {column}"))


def _drop_book_and_model_rows(conn: Connection) -> None:
    # Version 3: books and models are listed from their folders; their copies here are gone.
    conn.execute(text("DROP TABLE IF EXISTS books"))
    conn.execute(text("DROP TABLE IF EXISTS models"))


def _samples_from_events(conn: Connection) -> None:
    # Version 4: a run's samples are its "sample" events (in metrics); their copy is gone.
    conn.execute(text("DROP TABLE IF EXISTS samples"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_metrics_run_kind ON metrics (run_id, kind, seq)"))


MIGRATIONS: list[Callable[[Connection], None]] = [_run_messages_and_milestones, _drop_book_and_model_rows,
                                                  _samples_from_events]


def latest_version() -> int:
    return 1 + len(MIGRATIONS)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor the other way round
    cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a power cut may lose the last commit only
    cur.execute("PRAGMA foreign_keys=ON")  # deleting a run deletes its events
    cur.close()


class Registry:
    def __init__(self, home: Path):
        self.home = Path(home)
        # URL.create rather than an f-string: the path may hold spaces or non-ASCII letters.
        url = URL.create("sqlite", database=str(layout.registry_file(self.home)))
        self.engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Two checkpoint listings at once would both insert the same new row: they take turns.
        self._sync_lock = threading.Lock()
        self._migrate()

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()

    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            if not self.engine.dialect.has_table(conn, SchemaVersion.__tablename__):
                Base.metadata.create_all(conn)
                conn.execute(SchemaVersion.__table__.insert().values(id=1, version=latest_version()))
                return
            version = conn.execute(select(SchemaVersion.version)).scalar_one()
            if version > latest_version():
                raise UserError("registry.newer", folder=str(self.home), version=version, known=latest_version())
            for migrate in MIGRATIONS[version - 1:]:
                migrate(conn)
            conn.execute(SchemaVersion.__table__.update().values(version=latest_version()))

    # ------------------------------------------------------------------ rows of models that are gone

    def reconcile(self) -> None:
        """Start-up check: no rows for models whose folder is gone."""
        self.forget_missing_models()

    def forget_missing_models(self) -> list[str]:
        """Drop the runs and checkpoint rows of models whose folder is gone (deleted with the CLI
        or by hand); returns their names. Only a missing folder counts: a damaged model.json
        alone must not erase a model's history. One query and a stat per model with rows."""
        with self._sync_lock, self.session() as s, s.begin():
            named = set(s.scalars(select(Run.model).distinct())) | set(s.scalars(select(Checkpoint.model).distinct()))
            gone = sorted(name for name in named if not _folder_exists(self.home, name))
            if gone:
                s.execute(delete(Run).where(Run.model.in_(gone)))
                s.execute(delete(Checkpoint).where(Checkpoint.model.in_(gone)))
        return gone

    def forget_model(self, name: str) -> None:
        """Drop every row of a model whose folder was just deleted."""
        with self._sync_lock, self.session() as s, s.begin():
            s.execute(delete(Run).where(Run.model == name))
            s.execute(delete(Checkpoint).where(Checkpoint.model == name))

    def sync_checkpoints(self, model: str) -> list[Checkpoint]:
        """Rows for the checkpoint files of a model. A file not seen before (or rewritten) is
        opened once, memory-mapped so that only its small metadata is read."""
        folder = checkpoint_dir(store.model_dir(self.home, model))
        files = {}
        for path in folder.glob("*.pt") if folder.is_dir() else []:
            try:
                files[path.name] = path.stat()
            except FileNotFoundError:  # pruned by a training run just now
                continue
        with self._sync_lock, self.session() as s, s.begin():
            rows = {c.file: c for c in s.scalars(select(Checkpoint).where(Checkpoint.model == model))}
            out = []
            for name, st in sorted(files.items()):
                row = rows.pop(name, None)
                if row is None or row.mtime_ns != st.st_mtime_ns or row.bytes != st.st_size:
                    step, bpb = _checkpoint_meta(folder / name)
                    row = s.merge(Checkpoint(model=model, file=name, step=step, val_bpb=bpb, bytes=st.st_size,
                                             mtime_ns=st.st_mtime_ns))
                out.append(row)
            for gone in rows.values():
                s.delete(gone)
        return out


def _folder_exists(home: Path, name: str) -> bool:
    try:
        return layout.model_dir(home, name).is_dir()
    except UserError:  # not a name a model can have: no folder can be its
        return False


def _checkpoint_meta(path: Path) -> tuple[int | None, float | None]:
    """(step, val_bpb) stored in a checkpoint; (None, None) when it is damaged or not ours."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(obj["step"]), (obj.get("meta") or {}).get("val_bpb")
    except Exception:
        return None, None
