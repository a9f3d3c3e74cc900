"""What the studio keeps loaded between requests: models for generation, reasoning runs' task
buffers, tokenizers. Each is keyed by file and modification time, so a new checkpoint is
picked up at once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

from .. import layout
from ..checkpoint import build_model, safe_load
from ..home import read_json
from ..tokenizer import Tokenizer


class ModelCache:
    """Loaded models by checkpoint file and modification time: a new best.pt is picked up at once."""

    def __init__(self, size: int = 2):
        self.size = size
        self._items: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path):
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:  # held while loading, so that two requests never load the same file twice
            if key not in self._items:
                model, cfg, tokenizer = build_model(safe_load(path))
                model.eval()
                self._items[key] = (model, cfg, tokenizer)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            self._items.move_to_end(key)
            return self._items[key]


class BuffersCache:
    """A reasoning checkpoint's (step, buffers), by file and modification time: the page polls
    them, and loading a checkpoint reads the whole model."""

    def __init__(self, size: int = 4):
        self.size = size
        self._items: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> tuple[int, dict]:
        side = layout.buffers_file(path.parent)  # written with every reasoning checkpoint: no weights to load
        if side.exists():
            d = read_json(side)
            return d["step"], d["buffers"]
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key not in self._items:
                obj = safe_load(path)
                self._items[key] = (obj.get("step"), obj["buffers"])
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            self._items.move_to_end(key)
            return self._items[key]


@lru_cache(maxsize=8)
def load_tokenizer(path: str, _mtime_ns: int) -> Tokenizer:
    return Tokenizer.load(Path(path))
