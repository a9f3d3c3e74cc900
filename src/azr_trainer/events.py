"""One interface for everything a run reports: step metrics, evals, samples, checkpoints, status.

Each event is a flat JSON object with ``type``, ``run`` and ``time``. The event log appends
it to ``events.jsonl`` in the run's folder (flushed at once, so a killed process loses at
most the line being written) and passes it to listeners: the CLI's progress bar now, the
studio's live page through the same file.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

Listener = Callable[[dict], None]


def utc_now() -> str:
    """The time in UTC, ISO 8601 to the second (checkpoint metadata, the model registry)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id(prefix: str, unique: bool = True) -> str:
    """``prefix-YYYYmmdd-HHMMSS`` (UTC), sortable by time; ``unique`` adds four hex digits so two
    runs started in the same second differ."""
    stamp = datetime.now(timezone.utc).strftime(f"{prefix}-%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}" if unique else stamp


class EventLog:
    def __init__(self, path: Path | None, run_id: str, listeners: list[Listener] | None = None):
        self.path = path
        self.run_id = run_id
        self.listeners = list(listeners or [])
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8", newline="\n")

    def emit(self, type: str, **fields) -> dict:
        event = {"type": type, "run": self.run_id, "time": round(time.time(), 3), **fields}
        if self._file is not None:
            self._file.write(json.dumps(event, ensure_ascii=False) + "\n")
            self._file.flush()
        for listener in self.listeners:
            listener(event)
        return event

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_events(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Events appended since byte ``offset``; returns them and the new offset. A half-written
    last line (the writer is mid-flush) is left for the next call."""
    path = Path(path)
    if not path.exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    events, consumed = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        consumed += len(line)
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash: skip it, never stop reading
    return events, offset + consumed


def iter_events(path: Path) -> Iterator[dict]:
    yield from read_events(path)[0]
