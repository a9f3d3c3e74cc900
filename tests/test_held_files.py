"""Files another program holds open, as Windows treats them: a rename, replace or delete fails
while a virus scanner, the indexer, an editor or a memory map holds the file (here: the os calls
made to fail the way Windows does). Moments of holding are waited out; a lasting hold changes
nothing and says what to do. Also the other Windows-only details: Ctrl-Break, torchrun's store."""

from __future__ import annotations

import os
import signal
import stat
import time

import numpy as np
import pytest

from azr_trainer import books, cli_runs, layout, osdeps, store, worker
from azr_trainer.data import prepare_data
from azr_trainer.errors import Conflict, NotFound
from azr_trainer.model import ModelConfig

from conftest import make_text

TINY = ModelConfig(vocab_size=260, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_seq_len=64, tokenizer="char")
HELD = "platform.in_use"


@pytest.fixture
def pauses(monkeypatch):
    waited = []
    monkeypatch.setattr(time, "sleep", waited.append)
    return waited


def hold(monkeypatch, call: str, is_held, times: int = 10**6) -> list[int]:
    """Make os.<call> fail like Windows while ``is_held(path)``: ``times`` times, then let go."""
    real, left = getattr(os, call), [times]

    def windows_like(*args, **kwargs):
        if left[0] and any(is_held(os.fspath(a)) for a in args if isinstance(a, (str, os.PathLike))):
            left[0] -= 1
            raise PermissionError(13, "The process cannot access the file because it is being used", str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, call, windows_like)
    return left


def inside(folder):
    folder = os.fspath(folder)
    return lambda p: p == folder or p.startswith(folder + os.sep)


# ---- renames


def test_a_new_model_folder_held_for_a_moment_still_moves_into_place(home, monkeypatch, pauses):
    new_model = lambda p: os.path.basename(p).startswith(layout.TMP_PREFIX)  # noqa: E731
    hold(monkeypatch, "rename", new_model, times=2)
    store.create_model(home, "m", TINY)
    assert [m.name for m in store.list_models(home)] == ["m"] and len(pauses) == 2

    hold(monkeypatch, "rename", new_model)  # held for good: refused, and nothing is left behind
    with pytest.raises(Conflict) as e:
        store.create_model(home, "n", TINY)
    assert e.value.code == HELD and e.value.params["path"] == str(store.model_dir(home, "n"))
    assert [p.name for p in layout.models_dir(home).iterdir()] == ["m"]


def test_deleting_a_model_or_book_a_program_holds_changes_nothing_and_says_what_to_do(home, book, monkeypatch,
                                                                                     pauses):
    store.create_model(home, "m", TINY)
    mdir, bdir = store.model_dir(home, "m"), layout.book_dir(home, book)
    hold(monkeypatch, "rename", inside(mdir))
    hold(monkeypatch, "replace", inside(bdir))
    with pytest.raises(Conflict) as e:
        store.delete_model(home, "m")
    assert e.value.code == HELD and e.value.status == 409
    assert str(mdir) in e.value.render("en") and "try again" in e.value.render("en")
    with pytest.raises(Conflict) as e:
        books.delete_book(home, book)
    assert e.value.code == HELD and "попробуйте снова" in e.value.render("ru")
    # all there, nothing half-deleted, no hidden trash left
    assert [m.name for m in store.list_models(home)] == ["m"] and store.get_model(home, "m").config == TINY
    assert books.read_book_text(home, book) == make_text()
    assert sorted(p.name for p in layout.models_dir(home).iterdir()) == ["m"]
    assert sorted(p.name for p in layout.books_dir(home).iterdir()) == [book]


def test_a_file_still_held_after_the_delete_stays_hidden_for_a_later_start(home, monkeypatch, pauses):
    store.create_model(home, "m", TINY)
    ckpt = store.model_dir(home, "m") / "checkpoints" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    hold(monkeypatch, "unlink", lambda p: os.path.basename(p) == "best.pt")
    store.delete_model(home, "m")
    assert store.list_models(home) == []
    with pytest.raises(NotFound):
        store.get_model(home, "m")
    # the model is gone; what the other program holds waits, hidden, in a folder named for this
    # process, which clean_leftovers removes once this process has ended
    (left,) = layout.models_dir(home).iterdir()
    assert left.name.startswith(layout.TMP_PREFIX + str(os.getpid()) + "-")
    assert [p.name for p in left.rglob("*") if p.is_file()] == ["best.pt"]


# ---- deletes


def test_remove_tree_clears_read_only_marks_and_waits_out_a_hold(tmp_path, monkeypatch, pauses):
    real_unlink = os.unlink

    def windows_unlink(path, *, dir_fd=None):  # Windows refuses to delete a read-only file
        if not os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode & stat.S_IWRITE:
            raise PermissionError(13, "Access is denied", path)
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", windows_unlink)
    folder = tmp_path / "run"
    (folder / "sub").mkdir(parents=True)
    for f in (folder / "notes.txt", folder / "sub" / "held.bin"):
        f.write_text("x")
        f.chmod(stat.S_IREAD)
    left = hold(monkeypatch, "unlink", lambda p: os.path.basename(p) == "held.bin", times=2)
    assert osdeps.remove_tree(folder) and not folder.exists() and left == [0] and pauses

    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("x")
    (folder / "sub" / "held.bin").write_text("x")
    left[0] = 10**6  # held for good: what can go goes, the held file stays, and it says so
    assert not osdeps.remove_tree(folder)
    assert [p.name for p in folder.rglob("*") if p.is_file()] == ["held.bin"]
    assert not osdeps.remove_file(folder / "sub" / "held.bin")
    left[0] = 0
    assert osdeps.remove_file(folder / "sub" / "held.bin") and osdeps.remove_file(folder / "sub" / "held.bin")


# ---- memory-mapped training data


def test_new_books_tokenize_beside_the_data_a_run_still_has_mapped(home, tmp_path, monkeypatch, pauses):
    (tmp_path / "more.txt").write_text(make_text(n_lines=200, seed=3), encoding="utf-8")
    (tmp_path / "play.txt").write_text(make_text(), encoding="utf-8")
    for name in ("play", "more"):
        books.add_book(home, tmp_path / f"{name}.txt", name=name)
    store.create_model(home, "m", TINY)
    mdir = store.model_dir(home, "m")
    first = prepare_data(home, mdir, ["play"], "char", 260, log=lambda m: None)
    before = np.array(first.train)
    mapped = {os.fspath(first.train.filename), os.fspath(first.val.filename)}  # Windows: neither replaced nor deleted while mapped
    for call in ("replace", "rename", "unlink"):
        hold(monkeypatch, call, lambda p: os.path.abspath(p) in mapped)

    second = prepare_data(home, mdir, ["play", "more"], "char", 260, log=lambda m: None)
    assert len(second.train) > len(first.train) and np.array_equal(first.train, before)
    assert {os.fspath(second.train.filename), os.fspath(second.val.filename)}.isdisjoint(mapped)
    assert pauses and all(os.path.exists(p) for p in mapped)  # still mapped: kept for now

    mapped.clear()  # the old run has ended: its files go at the next preparation
    again = prepare_data(home, mdir, ["play", "more"], "char", 260, log=lambda m: None)
    assert again.train.filename == second.train.filename and np.array_equal(again.train, second.train)
    assert sorted(p.name for p in layout.data_dir(mdir).glob("*.bin")) == sorted(
        os.path.basename(p) for p in (second.train.filename, second.val.filename))


# ---- Ctrl-Break, torchrun


def test_ctrl_break_saves_and_stops_like_ctrl_c(monkeypatch):
    # Windows' SIGBREAK, played by a signal this system has
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        stop = cli_runs.stop_on_signals()
        assert signal.getsignal(signal.SIGUSR1) is signal.getsignal(signal.SIGINT)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.reason  # the loop checks this flag: checkpoint, then stop
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@pytest.mark.parametrize("system", ["windows", "linux", "portable"])
def test_torchrun_gets_the_store_this_system_has(monkeypatch, system):
    monkeypatch.delenv("USE_LIBUV", raising=False)
    monkeypatch.setenv("AZR_PORTABLE", "1" if system == "portable" else "0")
    monkeypatch.setattr(osdeps, "windows", lambda: system == "windows")
    env = worker.torchrun_env(2, None)
    assert env.get("USE_LIBUV") == (None if system == "linux" else "0")
    monkeypatch.setenv("USE_LIBUV", "1")  # a person's own choice wins
    assert worker.torchrun_env(2, None)["USE_LIBUV"] == "1"
