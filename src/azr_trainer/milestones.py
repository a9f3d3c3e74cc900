"""Milestones in plain words: how a run's numbers compare with things a person knows.

- **Better than xz**: a language model is a compressor; its bits per byte on the held-out text
  are compared with what ``xz -9`` needs for the same text. A model below that line has learned
  more about the language than a general-purpose compressor finds in the text.
- **Real words**: the share of the words in its samples that occur in the model's books (the
  training split). Early samples are letter soup; a model worth reading writes mostly real
  words.

The numbers are computed once per run (``Baselines``) and checked at every evaluation;
``reached`` returns the codes of the milestones a new evaluation passes, each once per run:
``passed`` is saved in the run's checkpoints and restored on resume, so a paused and resumed
run does not announce again what it already reached.
"""

from __future__ import annotations

import lzma
import re
from dataclasses import dataclass, field

import numpy as np

# Letters only (any script): punctuation and digits are not words a person would call made up.
_WORD_RE = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
# Enough text for a stable compressor figure and a word list, at a bounded cost on huge books.
MAX_SAMPLE_CHARS = 1_000_000
# Tokens of a split decoded for them (a word set and xz need text, not tokens).
MAX_TOKENS = 400_000
REAL_WORDS_STEPS = (50, 70, 85, 95)


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.casefold())


def split_text(tokenizer, ids) -> str:
    """The first MAX_TOKENS tokens of a split (train or val) as text."""
    return tokenizer.decode(np.asarray(ids[:MAX_TOKENS], dtype=np.int64).tolist())


def book_vocabulary(train_text: str) -> set[str]:
    """The words of the model's books: what counts as a real word, in the milestone and in the
    self-play reward alike."""
    return set(words(train_text[:MAX_SAMPLE_CHARS * 5]))


def xz_bits_per_byte(text: str) -> float | None:
    data = text[:MAX_SAMPLE_CHARS].encode("utf-8")
    if not data:
        return None
    # the raw LZMA2 stream of `xz -9e`, without the .xz container's ~60 bytes of headers, which
    # would make a small book's held-out text look harder to compress than it is
    packed = lzma.compress(data, format=lzma.FORMAT_RAW,
                           filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])
    return 8 * len(packed) / len(data)


def real_word_share(sample: str, vocabulary: set[str]) -> float | None:
    ws = words(sample)
    if not ws or not vocabulary:
        return None
    return sum(w in vocabulary for w in ws) / len(ws)


@dataclass
class Baselines:
    xz_bpb: float | None
    vocabulary: set[str] = field(repr=False, default_factory=set)
    passed: set[str] = field(default_factory=set)

    @classmethod
    def from_texts(cls, train_text: str, val_text: str) -> "Baselines":
        return cls(xz_bpb=xz_bits_per_byte(val_text), vocabulary=book_vocabulary(train_text))

    def measure(self, val_bpb: float | None, samples: list[str]) -> dict:
        """The figures an evaluation reports beside its loss."""
        share = real_word_share("\n".join(samples), self.vocabulary)
        return {"xz_bpb": None if self.xz_bpb is None else round(self.xz_bpb, 4),
                "real_words": None if share is None else round(share, 4)}

    def reached(self, val_bpb: float | None, real_words: float | None) -> list[dict]:
        """Milestones passed for the first time: ``{"code", "params"}`` for the catalogue."""
        new = []
        if val_bpb is not None and self.xz_bpb is not None and val_bpb < self.xz_bpb and "xz" not in self.passed:
            self.passed.add("xz")
            new.append({"code": "milestone.beats_xz", "params": {"bpb": round(val_bpb, 3), "xz": round(self.xz_bpb, 3)}})
        if real_words is not None:
            for step in REAL_WORDS_STEPS:
                key = f"words{step}"
                if real_words * 100 >= step and key not in self.passed:
                    self.passed.add(key)
                    new.append({"code": "milestone.real_words", "params": {"percent": step}})
        return new
