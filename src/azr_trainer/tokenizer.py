"""Tokenizers, both built with Hugging Face ``tokenizers`` and saved as one tokenizer.json.

- ``bpe``: byte-level BPE (GPT-2 style) trained on the training split of the model's books.
  Every byte is in the base alphabet, so any Unicode text round-trips exactly.
- ``char``: one token per character seen in the training text, plus 256 byte tokens
  (``<0x41>``) that unseen characters fall back to, so it round-trips too. For tiny texts.

Token 0 is always ``<|endoftext|>``: it separates books and ends generation.

A third kind, ``hf``, is a pretrained tokenizer that came with an imported model
(importer.py); it is kept as it is, and its own end-of-sequence token (``eos_token``)
plays the part of ``<|endoftext|>``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .errors import Notice
from .home import UserError

EOT = "<|endoftext|>"


class Tokenizer:
    def __init__(self, hf: HFTokenizer, kind: str, eos_token: str = EOT):
        self.hf = hf
        self.kind = kind
        self.eos_token = eos_token
        self.eot_id = hf.token_to_id(eos_token)
        if self.eot_id is None:
            raise UserError("tokenizer.no_eos", token=eos_token)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def to_json(self) -> str:
        d = {"kind": self.kind, "tokenizer": json.loads(self.hf.to_str())}
        if self.eos_token != EOT:
            d["eos_token"] = self.eos_token
        return json.dumps(d, ensure_ascii=False)

    @classmethod
    def from_json(cls, s: str) -> "Tokenizer":
        try:
            d = json.loads(s)
            return cls(HFTokenizer.from_str(json.dumps(d["tokenizer"])), d["kind"], d.get("eos_token", EOT))
        except (KeyError, TypeError, ValueError, Exception) as e:  # tokenizers raises its own Exception type
            if isinstance(e, UserError):
                raise
            raise UserError("tokenizer.damaged", reason=str(e).splitlines()[0][:200] if str(e) else type(e).__name__) from e

    def save(self, path: Path) -> None:
        from .home import atomic_write_bytes
        atomic_write_bytes(path, self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: Path) -> "Tokenizer":
        return cls.from_json(path.read_text(encoding="utf-8"))

    def encode_to_array(self, chunks: Iterable[str], batch: int = 64) -> np.ndarray:
        """Encode a long text given as chunks (cut at newlines) without building a Python list of all ids."""
        dtype = np.uint16 if self.vocab_size <= 65535 else np.uint32
        parts, pending = [], []
        for chunk in chunks:
            pending.append(chunk)
            if len(pending) >= batch:
                parts.extend(np.asarray(ids, dtype=dtype) for ids in self.encode_batch(pending))
                pending = []
        if pending:
            parts.extend(np.asarray(ids, dtype=dtype) for ids in self.encode_batch(pending))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def text_chunks(text: str, size: int = 1 << 16) -> Iterator[str]:
    """Cut text into pieces that end at a newline, so BPE never merges across a cut."""
    i = 0
    while i < len(text):
        j = min(len(text), i + size)
        if j < len(text):
            nl = text.rfind("\n", i, j)
            if nl > i:
                j = nl + 1
        yield text[i:j]
        i = j


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf, "bpe")


def train_char(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(t)
    if vocab_size < 257:
        raise UserError("tokenizer.char_vocab_small", min=257)
    chars = [c for c, _ in counts.most_common(vocab_size - 1 - 256)]
    vocab = {EOT: 0}
    for tok in chars + [f"<0x{b:02X}>" for b in range(256)]:
        vocab.setdefault(tok, len(vocab))
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    hf.add_special_tokens([EOT])
    return Tokenizer(hf, "char")


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    if kind == "bpe":
        return train_bpe(texts, vocab_size)
    if kind == "char":
        return train_char(texts, vocab_size)
    raise UserError("tokenizer.unknown", value=kind, options=["bpe", "char"])


# A BPE vocabulary entry wants about this many bytes of training text to learn its merge from.
BYTES_PER_VOCAB_ENTRY = 200


def vocab_size_warning(kind: str, vocab_size: int, train_bytes: int) -> Notice | None:
    """BPE with too many merges for too little text learns whole rare words and overfits."""
    if kind == "bpe" and vocab_size > 256 and train_bytes < vocab_size * BYTES_PER_VOCAB_ENTRY:
        suggested = max(260, min(vocab_size, train_bytes // (2 * BYTES_PER_VOCAB_ENTRY)))
        return Notice("tokenizer.vocab_large", vocab_size=vocab_size, bytes=train_bytes, suggested=suggested)
    return None
