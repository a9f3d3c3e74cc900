"""Names Windows cannot hold are refused everywhere (with a message by code), and the atomic
replace survives Windows' moments of "file in use"."""

from __future__ import annotations

import os

import pytest

from azr_trainer import books, home as home_mod, store
from azr_trainer.errors import Conflict, UserError
from azr_trainer.home import atomic_write_bytes, name_taken_ignoring_case, validate_name
from azr_trainer.model import ModelConfig


def tiny_config() -> ModelConfig:
    return ModelConfig(vocab_size=300, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=32)


def code_of(call) -> tuple[str, dict]:
    with pytest.raises(UserError) as e:
        call()
    return e.value.code, e.value.params


@pytest.mark.parametrize("name", ["CON", "con", "Nul", "aux.txt", "con .txt", "PRN.tar.gz", "COM1", "com9.log",
                                  "LPT1", "lpt9", "COM¹", "Lpt³.txt"])
def test_windows_device_names_are_refused(name):
    assert code_of(lambda: validate_name(name)) == ("name.reserved", {"name": name})


@pytest.mark.parametrize("name", ["console", "COM10", "com0", "LPT", "connection.txt", "Нуль", "aux_book"])
def test_names_that_only_look_like_devices_are_fine(name):
    assert validate_name(name) == name


def test_a_trailing_dot_is_refused_and_trailing_spaces_are_dropped():
    assert code_of(lambda: validate_name("book.")) == ("name.trailing_dot", {"name": "book."})
    assert code_of(lambda: validate_name("Каштанка. ")) == ("name.trailing_dot", {"name": "Каштанка."})
    assert validate_name("  Каштанка  ") == "Каштанка"


def test_messages_in_both_languages():
    e = UserError("name.trailing_dot", name="book.")
    assert "book." in e.render("en") and "Windows" in e.render("en")
    assert "точкой" in e.render("ru")
    for code in ("name.case_taken", "name.path_too_long"):
        err = UserError(code, name="x", other="X", room=12)
        assert err.coded and "{" not in err.render("en") and "{" not in err.render("ru")


def test_name_taken_ignoring_case(tmp_path):
    (tmp_path / "Kashtanka").mkdir()
    assert name_taken_ignoring_case(tmp_path, "kashtanka") == "Kashtanka"
    assert name_taken_ignoring_case(tmp_path, "KASHTANKA") == "Kashtanka"
    assert name_taken_ignoring_case(tmp_path, "Kashtanka") is None  # the same name: not a case twin
    assert name_taken_ignoring_case(tmp_path, "other") is None
    assert name_taken_ignoring_case(tmp_path / "missing", "x") is None


def test_a_book_differing_only_in_case_is_refused(home, tmp_path):
    src = tmp_path / "k.txt"
    src.write_text("Молодая рыжая собака бегала взад и вперёд.\n" * 20, encoding="utf-8")
    books.add_book(home, src, name="Каштанка")
    with pytest.raises(Conflict) as e:
        books.add_book(home, src, name="КАШТАНКА")
    assert (e.value.code, e.value.params) == ("name.case_taken", {"name": "КАШТАНКА", "other": "Каштанка"})
    assert sorted(p.name for p in (home / "books").iterdir() if not p.name.startswith(".")) == ["Каштанка"]
    books.add_book(home, src, name="Каштанка", overwrite=True)  # replacing the same book still works


def test_a_model_differing_only_in_case_is_refused(home):
    store.create_model(home, "MyModel", tiny_config())
    with pytest.raises(Conflict) as e:
        store.create_model(home, "mymodel", tiny_config())
    assert (e.value.code, e.value.params) == ("name.case_taken", {"name": "mymodel", "other": "MyModel"})


def test_names_whose_paths_would_pass_windows_limit_are_refused(tmp_path):
    # A data folder whose models/ path leaves room for exactly 20 characters of name.
    prefix = str(tmp_path) + os.sep
    pad = home_mod.WINDOWS_MAX_PATH - home_mod.DEEPEST_INSIDE - 20 - 1 - len(prefix) - len(os.sep + "models")
    deep = tmp_path / ("d" * pad)
    (deep / "models").mkdir(parents=True)
    (deep / "books").mkdir()
    assert len(str(deep / "models")) + 1 + 20 + home_mod.DEEPEST_INSIDE == home_mod.WINDOWS_MAX_PATH
    store.create_model(deep, "n" * 20, tiny_config())
    with pytest.raises(UserError) as e:
        store.create_model(deep, "n" * 21, tiny_config())
    assert (e.value.code, e.value.params) == ("name.path_too_long", {"name": "n" * 21, "room": 20})
    src = tmp_path / "b.txt"
    src.write_text("some words in a book\n" * 10, encoding="utf-8")
    # books/ is one character shorter than models/: one more for the name
    assert code_of(lambda: books.add_book(deep, src, name="b" * 22)) == (
        "name.path_too_long", {"name": "b" * 22, "room": 21})
    assert books.add_book(deep, src, name="b" * 21).name == "b" * 21


def test_atomic_replace_retries_while_the_file_is_in_use(tmp_path, monkeypatch):
    target = tmp_path / "model.json"
    target.write_bytes(b"old")
    real_replace, calls = os.replace, []

    def busy_twice(src, dst):
        calls.append(dst)
        if len(calls) <= 2:
            raise PermissionError(13, "The process cannot access the file because it is being used")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", busy_twice)
    monkeypatch.setattr(home_mod.time, "sleep", lambda s: None)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and len(calls) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]  # no temp file left behind


def test_atomic_replace_gives_up_on_a_lasting_permission_error(tmp_path, monkeypatch):
    target = tmp_path / "model.json"
    target.write_bytes(b"old")
    calls = []

    def always_busy(src, dst):
        calls.append(dst)
        raise PermissionError(13, "denied")

    monkeypatch.setattr(os, "replace", always_busy)
    monkeypatch.setattr(home_mod.time, "sleep", lambda s: None)
    with pytest.raises(PermissionError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and len(calls) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]
