"""The memorisation meter: which stretches of generated text were copied verbatim from the books.

Matching is exact, character for character. Books are stored NFC with "\\n" newlines and
generated text is decoded from the same tokens, so a copied passage matches as it is;
no whitespace or case folding, which would also count near-copies as copies.

How it stays fast on megabytes of books: the index holds a hash of every K-character
window that starts at a multiple of STRIDE in the books (about one entry per STRIDE
characters, kept in sorted numpy arrays). Any copied stretch at least K + STRIDE - 1
characters long contains one of those windows, so looking up every K-character window of
the output finds it; each hit is then checked against the book text and extended left
and right as far as the characters agree. Spans are taken greedily from left to right
(the longest stretch starting at the first hit), so they never overlap.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

K = 12  # characters per indexed window
STRIDE = 8  # an indexed window starts every STRIDE characters: every copy of >= K + STRIDE - 1 = 19 is found
MIN_LENGTH = 20  # shorter matches are common phrases, not copying
MAX_TRIES = 64  # book positions checked per hit; a window this common is a stock phrase
_SEPARATOR = "\x00"  # between books, so that no match runs from one book into the next


@dataclass
class BookIndex:
    text: str  # all books joined by _SEPARATOR
    starts: list[int]  # where each book begins in text
    names: list[str]
    hashes: np.ndarray  # sorted window hashes
    positions: np.ndarray  # text position of each hash

    @classmethod
    def build(cls, books: dict[str, str]) -> "BookIndex":
        names, starts, parts, offset = [], [], [], 0
        for name, text in books.items():
            names.append(name)
            starts.append(offset)
            parts.append(text)
            offset += len(text) + len(_SEPARATOR)
        text = _SEPARATOR.join(parts)
        positions = np.arange(0, max(0, len(text) - K + 1), STRIDE, dtype=np.int64)
        # hash() of a str is computed in C; the index lives in this process only, so its
        # per-process randomisation does not matter.
        hashes = np.fromiter((hash(text[p:p + K]) for p in positions.tolist()), dtype=np.int64,
                             count=len(positions))
        order = np.argsort(hashes, kind="stable")
        return cls(text, starts, names, hashes[order], positions[order])

    def book_at(self, position: int) -> str:
        return self.names[bisect.bisect_right(self.starts, position) - 1]


def find_copies(output: str, index: BookIndex, min_length: int = MIN_LENGTH) -> dict:
    """{"spans": [{"start", "end", "length", "book"}], "copied_fraction"} for ``output``."""
    spans = []
    n = len(output)
    if n >= K and len(index.hashes):
        windows = np.fromiter((hash(output[i:i + K]) for i in range(n - K + 1)), dtype=np.int64, count=n - K + 1)
        lo = np.searchsorted(index.hashes, windows, side="left")
        hi = np.searchsorted(index.hashes, windows, side="right")
        i = 0  # output before i is already covered by a span (or has been given up on)
        for j in np.flatnonzero(hi > lo).tolist():  # output positions whose window is indexed
            if j < i:
                continue
            best = _longest_at(output, j, i, index, range(int(lo[j]), int(min(hi[j], lo[j] + MAX_TRIES))))
            if best and best[1] - best[0] >= min_length:
                start, end, book_pos = best
                spans.append({"start": start, "end": end, "length": end - start, "book": index.book_at(book_pos)})
                i = end
    copied = sum(s["length"] for s in spans)
    return {"spans": spans, "copied_fraction": copied / n if n else 0.0}


def _longest_at(output: str, j: int, floor: int, index: BookIndex, candidates: range):
    """The longest stretch of output around the window at j found at one of the candidate book
    positions, not reaching left of ``floor``: (start, end, book position) or None."""
    text = index.text
    best = None
    for c in candidates:
        p = int(index.positions[c])
        if text[p:p + K] != output[j:j + K]:  # a hash collision
            continue
        left = 0
        while j - left > floor and p - left > 0 and output[j - left - 1] == text[p - left - 1]:
            left += 1
        right = K
        while j + right < len(output) and p + right < len(text) and output[j + right] == text[p + right]:
            right += 1
        if best is None or left + right > best[1] - best[0]:
            best = (j - left, j + right, p - left)
    return best


class IndexCache:
    """Indexes of recently used book sets, so that each generation does not rebuild one."""

    def __init__(self, size: int = 4):
        self.size = size
        self._items: OrderedDict[tuple, BookIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, load_books) -> BookIndex:
        """``key`` must change whenever the books do (e.g. names with their sizes and dates);
        ``load_books()`` returns {name: text} and is called only on a miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        index = BookIndex.build(load_books())  # outside the lock: building takes a moment
        with self._lock:
            self._items[key] = index
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return index
