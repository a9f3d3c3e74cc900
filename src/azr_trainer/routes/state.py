"""The studio's shared state, one object per app (``app.state.studio``), which every route
reaches through the ``StudioDep`` dependency; and the helpers that need it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from .. import books as books_mod
from .. import catalogue, layout, store
from ..checkpoint import list_step_checkpoints
from ..errors import UserError
from ..jobs import JobRunner, lock_holder
from ..memorisation import IndexCache, find_copies
from ..registry import Registry
from .caches import BuffersCache, ModelCache


@dataclass
class Studio:
    home: Path
    registry: Registry
    runner: JobRunner
    models_cache: ModelCache = field(default_factory=ModelCache)
    buffers_cache: BuffersCache = field(default_factory=BuffersCache)
    copies_index: IndexCache = field(default_factory=IndexCache)
    # Two requests for one reasoning model's name: the second must not overwrite the first's model.
    reason_create_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def tmp_root(self) -> Path:
        """Uploads and downloads in progress, on the same disk as the data."""
        return layout.tmp_dir(self.home)

    def model_info(self, name: str) -> store.ModelInfo:
        try:
            return store.get_model(self.home, name)
        except (ValueError, KeyError, TypeError):  # ValueError includes a damaged JSON file
            raise UserError("model.damaged", name=name) from None

    def model_dict(self, info: store.ModelInfo, training: set[str]) -> dict:
        folder = store.model_dir(self.home, info.name)
        steps = list_step_checkpoints(folder)
        best = layout.best_checkpoint(folder)
        newest = best if best.exists() else (steps[-1][1] if steps else None)
        try:
            file_bytes = newest.stat().st_size if newest is not None else None
        except OSError:  # pruned between the listing and now
            file_bytes = None
        return {**info.to_dict(), "file_bytes": file_bytes, "checkpoints": [s for s, _ in steps],
                "training": info.name in training or lock_holder(self.home, info.name) is not None}

    def memorisation(self, books_names: list[str] | None, text: str) -> dict:
        infos = [b for b in books_mod.list_books(self.home) if b.name in set(books_names or [])]
        if not infos:
            return {"spans": [], "copied_fraction": 0.0, "books": []}
        key = tuple((b.name, b.text_bytes, b.created_at) for b in infos)
        index = self.copies_index.get(key, lambda: {b.name: books_mod.read_book_text(self.home, b.name)
                                                    for b in infos})
        return {**find_copies(text, index), "books": [b.name for b in infos]}


async def _studio(request: Request) -> Studio:  # async: no thread-pool hop just to read app.state
    return request.app.state.studio


StudioDep = Annotated[Studio, Depends(_studio)]


def language(request: Request) -> str:
    """The request's language for messages (Accept-Language)."""
    return catalogue.language_from_accept(request.headers.get("accept-language"))
