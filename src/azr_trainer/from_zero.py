"""A reasoning model from zero: a small char-tokenizer model and its pretraining book of
generator triplets (programs.py), which train.py trains before the reasoning run starts."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import layout, programs, store
from .errors import Notice
from .home import UserError

FROM_ZERO_SHAPE = dict(vocab_size=384, d_model=128, num_layers=4, num_heads=4, d_ff=512, max_seq_len=512)


def write_triplet_book(path: Path, n_docs: int, seed: int = 0, progress: Callable[[int], None] | None = None) -> int:
    """The from-zero pretraining text: ``n_docs`` documents of the six prompt kinds, every one
    made by the random program generator (train distribution); returns its size in characters."""
    docs = programs.pretraining_documents(programs.Generator("train", seed), n_docs, progress=progress)
    text = "".join(docs)
    path.write_text(text, encoding="utf-8")
    return len(text)


# The triplets book: 40,000 documents (the default) are ~1.2 MB and take seconds to write; the
# bound keeps one request from writing tens of MB (1,000,000 documents took ~50 s and 30 MB).
MIN_CORPUS_DOCS, MAX_CORPUS_DOCS = 100, 200_000


def create_from_zero(home: Path, name: str, *, shape: dict | None = None, n_docs: int = 40000, seed: int = 0,
                     max_memory: int | None = None, log: Callable[[str], None] = print) -> str:
    """Create model ``name`` (a char tokenizer, FROM_ZERO_SHAPE unless ``shape``; refused when
    training it would need more than ``max_memory`` bytes) and its book of generator triplets,
    ``<name>-triplets``; returns the book's name. Train it with train.train (the CLI's
    ``azr reason NAME`` does both). The model is made first, so a refused shape writes nothing;
    a failed book removes the model again."""
    from .model import ModelConfig
    _check_corpus_docs(n_docs)
    cfg = ModelConfig(**{**FROM_ZERO_SHAPE, **(shape or {}), "tokenizer": "char"})
    store.create_model(home, name, cfg, max_memory=max_memory)
    try:
        book = write_from_zero_book(home, name, n_docs=n_docs, seed=seed, overwrite=True)
    except BaseException:
        store.delete_model(home, name)
        raise
    log(Notice("reason.book_written", book=book, count=n_docs))
    return book


def _check_corpus_docs(n_docs) -> None:
    if isinstance(n_docs, bool) or not isinstance(n_docs, int) or not MIN_CORPUS_DOCS <= n_docs <= MAX_CORPUS_DOCS:
        raise UserError("input.corpus_docs", min=MIN_CORPUS_DOCS, max=MAX_CORPUS_DOCS, count=str(n_docs))


def write_from_zero_book(home: Path, name: str, *, n_docs: int, seed: int = 0, overwrite: bool = False,
                         progress: Callable[[int], None] | None = None) -> str:
    """Write model ``name``'s book of ``n_docs`` generator triplets, ``<name>-triplets`` (the
    studio's corpus run: the model exists already; ``progress(done)`` as documents are made)."""
    import os
    import tempfile

    from . import books
    _check_corpus_docs(n_docs)
    book = f"{name}-triplets"
    layout.tmp_dir(home).mkdir(exist_ok=True)  # on the data's disk; a killed process's is cleaned at start
    with tempfile.TemporaryDirectory(prefix=f"triplets-{os.getpid()}-", dir=layout.tmp_dir(home),
                                     ignore_cleanup_errors=True) as tmp:
        path = Path(tmp) / f"{book}.txt"
        write_triplet_book(path, n_docs, seed, progress=progress)
        books.add_book(home, path, name=book, overwrite=overwrite)
    return book
