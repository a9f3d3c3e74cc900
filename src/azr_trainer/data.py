"""From stored books to token arrays on disk, and batches from them.

The tokenizer is trained on the training split of the model's books the first time the
model trains, then frozen with the model. Each book's last ``val_fraction`` is validation:
neither the tokenizer nor training ever sees it. Token ids live in memory-mapped
``.bin`` files so a 100 MB book does not sit in RAM several times over.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import books as books_mod
from . import layout, osdeps
from .errors import Notice
from .home import UserError, atomic_write_bytes, atomic_write_json, read_json
from .tokenizer import Tokenizer, text_chunks, train_tokenizer, vocab_size_warning


@dataclass
class PreparedData:
    train: np.ndarray      # token ids, books joined by <|endoftext|>
    val: np.ndarray        # starts with <|endoftext|> so the first real token is predicted too
    val_bytes: int         # UTF-8 bytes of the validation text (the bpb denominator)
    train_bytes: int
    tokenizer: Tokenizer
    warnings: list[str]  # Notices: English text, with a code and parameters for the page


def _book_splits(home: Path, names: list[str], val_fraction: float):
    """(name, train text, val text, train UTF-8 bytes) per book; one book in memory at a time."""
    for name in names:
        text = books_mod.read_book_text(home, name)
        train, val = books_mod.split_train_val(text, val_fraction)
        del text
        # the stored size minus the small validation part: no second copy of a big book as bytes
        train_bytes = books_mod.get_book(home, name).text_bytes - len(val.encode("utf-8"))
        yield name, train, val, train_bytes


def _data_key(home: Path, names: list[str], val_fraction: float, tokenizer_json: str) -> str:
    h = hashlib.sha256()
    for name in names:
        info = books_mod.get_book(home, name)
        h.update(f"{name}|{info.text_bytes}|{info.created_at}|".encode())
    h.update(f"{val_fraction}|".encode())
    h.update(hashlib.sha256(tokenizer_json.encode()).digest())
    return h.hexdigest()[:16]


def prepare_data(home: Path, model_dir: Path, book_names: list[str], kind: str, vocab_size: int,
                 val_fraction: float = 0.1, log=print) -> PreparedData:
    if not book_names:
        raise UserError("data.no_books")
    for name in book_names:
        books_mod.get_book(home, name)  # raises NotFound with the right hint
    warnings: list[str] = []
    tok_path = layout.tokenizer_file(model_dir)
    if tok_path.exists():
        tokenizer = Tokenizer.load(tok_path)
    else:
        log(Notice("data.training_tokenizer", kind=kind, vocab_size=vocab_size, books=list(book_names)))

        def train_texts():
            for _, train, _, _ in _book_splits(home, book_names, val_fraction):
                yield from text_chunks(train)

        tokenizer = train_tokenizer(kind, train_texts(), vocab_size)
        tokenizer.save(tok_path)
        if tokenizer.vocab_size < vocab_size:
            warnings.append(Notice("data.vocab_unused", tokens=tokenizer.vocab_size, vocab_size=vocab_size))
    if tokenizer.vocab_size > vocab_size:
        raise UserError("data.tokenizer_too_big", tokens=tokenizer.vocab_size, vocab_size=vocab_size)

    key = _data_key(home, book_names, val_fraction, tokenizer.to_json())
    meta_path = layout.data_info(model_dir)
    if meta_path.exists() and read_json(meta_path).get("key") == key:
        meta = read_json(meta_path)
    else:
        log(Notice("data.tokenizing"))
        train_parts, val_parts = [], []
        train_bytes = val_bytes = 0
        eot = np.asarray([tokenizer.eot_id], dtype=np.uint32)
        for _, train, val, n_train_bytes in _book_splits(home, book_names, val_fraction):
            train_parts += [eot, tokenizer.encode_to_array(text_chunks(train)).astype(np.uint32)]
            val_parts += [eot, tokenizer.encode_to_array(text_chunks(val)).astype(np.uint32)]
            train_bytes += n_train_bytes
            val_bytes += len(val.encode("utf-8"))
        dtype = np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32
        train_ids = np.concatenate(train_parts).astype(dtype)
        val_ids = np.concatenate(val_parts).astype(dtype)
        # A new tokenization gets files of its own, never written over the old ones: Windows
        # cannot replace a file while a process has it memory-mapped (the old data of a run
        # still going, or of an earlier run in this process), and a reader keeps a whole set.
        # A fresh name each time, even for books chosen again: an old set may still be mapped.
        version = secrets.token_hex(6)
        atomic_write_bytes(layout.data_file(model_dir, "train", version), train_ids.tobytes())
        atomic_write_bytes(layout.data_file(model_dir, "val", version), val_ids.tobytes())
        meta = {"key": key, "version": version, "books": book_names, "val_fraction": val_fraction,
                "dtype": np.dtype(dtype).name, "train_tokens": int(train_ids.size), "val_tokens": int(val_ids.size),
                "train_bytes": train_bytes, "val_bytes": val_bytes}
        atomic_write_json(meta_path, meta)
    remove_old_versions(model_dir, meta)
    train_ids, val_ids = open_data(model_dir, meta)
    w = vocab_size_warning(kind, vocab_size, meta["train_bytes"])
    if w:
        warnings.append(w)
    if meta["val_bytes"] == 0:
        warnings.append(Notice("data.no_validation"))
    return PreparedData(train_ids, val_ids, meta["val_bytes"], meta["train_bytes"], tokenizer, warnings)


def open_data(model_dir: Path, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """The train and val token ids that data.json (``meta``) names, memory-mapped."""
    dtype, version = np.dtype(meta["dtype"]), meta.get("version")
    return tuple(np.memmap(layout.data_file(model_dir, split, version), dtype=dtype, mode="r")
                 for split in ("train", "val"))


def remove_old_versions(model_dir: Path, meta: dict) -> None:
    """Delete the token files data.json no longer names. One still mapped by a process stays
    (Windows refuses to delete it) and goes at a later call; POSIX deletes it at once while the
    mapping lives on."""
    keep = {layout.data_file(model_dir, split, meta.get("version")).name for split in ("train", "val")}
    for path in layout.data_dir(model_dir).glob("*.bin"):
        if path.name not in keep:
            osdeps.remove_file(path)


class BatchSampler:
    """Random windows of the training tokens, drawn from its own generator so that saving
    and restoring that generator's state resumes the exact data order."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int):
        if len(tokens) < seq_len + 2:
            raise UserError("data.text_too_short", tokens=len(tokens), needed=seq_len + 1)
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def next(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.tokens) - self.seq_len - 1, (self.batch_size,), generator=self.gen)
        rows = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts.tolist()]).astype(np.int64)
        xy = torch.from_numpy(rows)
        x, y = xy[:, :-1], xy[:, 1:]
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    def state(self) -> torch.Tensor:
        return self.gen.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.gen.set_state(state)


def validation_windows(val: np.ndarray, seq_len: int, limit: int | None = None):
    """Non-overlapping windows that together predict every validation token after the leading
    <|endoftext|>. With ``limit``, an evenly spaced, fixed subset (cheap periodic evals)."""
    n_windows = max(0, (len(val) - 1 + seq_len - 1) // seq_len)
    idx = range(n_windows)
    if limit is not None and n_windows > limit:
        idx = [round(i * (n_windows - 1) / (limit - 1)) for i in range(limit)] if limit > 1 else [0]
    for w in idx:
        s = w * seq_len
        chunk = np.asarray(val[s:s + seq_len + 1], dtype=np.int64)
        yield torch.from_numpy(chunk[:-1]), torch.from_numpy(chunk[1:])
