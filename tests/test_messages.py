"""Messages a person sees come from the one catalogue (web/i18n msg.*), in their language.

The bad inputs a person can send through the API get an answer in the language they asked
for (Accept-Language), with a code the page can render itself; every code the source raises
is in both catalogues with the same placeholders; no message names a command-line flag; the
CLI speaks the locale's language.
"""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from azr_trainer import catalogue, osdeps
from azr_trainer.data import prepare_data
from azr_trainer.errors import Notice
from azr_trainer.server import create_app


SRC = Path(__file__).resolve().parents[1] / "src" / "azr_trainer"
I18N = SRC / "web" / "i18n"
TINY = dict(vocab_size=300, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_seq_len=32, tokenizer="char")
RU = {"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.5"}

_CYRILLIC = re.compile(r"[А-Яа-яЁё]")
_ENGLISH_RUN = re.compile(r"\b[A-Za-z]{2,}(?:\s+[A-Za-z]{2,}){2,}\b")  # three English words in a row
_FLAG = re.compile(r"(?<![\w-])--[a-z]")
_CODE = re.compile(r"^[a-z_]+(?:\.[a-z0-9_]+)+$")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_RAISERS = {"UserError", "NotFound", "Conflict", "Notice"}


def russian_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a Russian sentence for a person, or None."""
    if not _CYRILLIC.search(text):
        return "no Cyrillic"
    # Technical bits (file names, Python calls, commands) are quoted or in parentheses.
    prose = re.sub(r"«[^»]*»|\([^)]*\)", " ", text)
    if m := _ENGLISH_RUN.search(prose):
        return f"English words: {m.group(0)!r}"
    if _FLAG.search(text):
        return "names a command-line flag"
    return None


def catalogue_entry(lang: str, code: str):
    node = json.loads((I18N / f"{lang}.json").read_text(encoding="utf-8"))["msg"]
    for part in code.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def placeholders(entry) -> set[str]:
    texts = entry.values() if isinstance(entry, dict) else [entry]
    return {p for t in texts for p in _PLACEHOLDER.findall(t)}


def assert_russian(answer: dict) -> None:
    assert set(answer) >= {"detail", "code", "params"}, answer
    problem = russian_problem(answer["detail"])
    assert problem is None, (problem, answer)
    for lang in ("en", "ru"):
        assert catalogue_entry(lang, answer["code"]) is not None, (lang, answer["code"])


# ---------------------------------------------------------------------------- through the API


@pytest.fixture
def client(home):
    with TestClient(create_app(home), base_url="http://127.0.0.1:8000") as c:
        yield c


def test_bad_inputs_through_the_api_are_answered_in_russian(client):
    def upload(name, data, filename="book.txt"):
        return client.post("/api/books", files={"file": (filename, data, "text/plain")}, data={"name": name},
                           headers=RU)

    assert client.post("/api/models", json={"name": "blank", **TINY}).status_code == 201
    assert upload("tale", "Жил-был кот. Он любил молоко.\n".encode() * 40).status_code == 201

    def run(**body):
        return client.post("/api/runs", json={"model": "blank", "max_iterations": 2, **body}, headers=RU)

    cases = [
        ("empty upload", upload("empty", b""), 400, "book.empty"),
        ("binary upload", upload("bin", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50, "photo.txt"), 400,
         "book.binary_nul"),
        ("bad book name", upload("../x", b"hello\n"), 400, "name.invalid"),
        ("bad model name", client.post("/api/models", json={"name": "../x", **TINY}, headers=RU), 400,
         "name.invalid"),
        ("heads", client.post("/api/models", json={"name": "odd", **TINY, "d_model": 250, "num_heads": 8},
                              headers=RU), 400, "model.heads_divide"),
        ("vocabulary", client.post("/api/models", json={"name": "small", **TINY, "vocab_size": 100}, headers=RU),
         400, "model.vocab_small"),
        ("model exists", client.post("/api/models", json={"name": "blank", **TINY}, headers=RU), 409,
         "model.exists"),
        ("unknown model", client.get("/api/models/nope", headers=RU), 404, "model.not_found"),
        ("delete unknown model", client.delete("/api/models/nope", headers=RU), 404, "model.not_found"),
        ("unknown book", client.get("/api/books/nope", headers=RU), 404, "book.not_found"),
        ("untrained", client.post("/api/generate", json={"model": "blank", "prompt": "a"}, headers=RU), 400,
         "checkpoint.untrained"),
        ("temperature", client.post("/api/generate", json={"model": "blank", "temperature": 50}, headers=RU),
         400, "settings.at_most"),
        ("step", client.post("/api/generate", json={"model": "blank", "checkpoint": "sometime"}, headers=RU),
         400, "checkpoint.bad_choice"),
        ("run without books", run(books=[]), 400, "data.no_books"),
        ("the same book twice", run(books=["tale", "tale"]), 400, "runs.book_twice"),
        ("self-play untrained", run(kind="selfplay"), 400, "runs.selfplay_untrained"),
        ("self-play with books", run(kind="selfplay", books=["tale"]), 400, "runs.selfplay_books"),
        ("unknown run", client.get("/api/runs/nope", headers=RU), 404, "runs.not_found"),
        ("pause unknown run", client.post("/api/runs/nope/pause", headers=RU), 404, "runs.not_found"),
    ]
    if osdeps.reasoning_available():  # elsewhere reasoning is refused before its model is looked at
        cases += [("reasoning untrained", run(kind="reason"), 400, "runs.reason_untrained"),
                  ("reasoning with books", run(kind="reason", books=["tale"]), 400, "runs.reason_books")]
    for what, r, status, code in cases:
        assert r.status_code == status, (what, r.text)
        answer = r.json()
        assert answer["code"] == code, (what, answer)
        assert_russian(answer)
    # The same error in English when English is asked for, with the same code and parameters.
    r = client.post("/api/models", json={"name": "odd", **TINY, "d_model": 250, "num_heads": 8},
                    headers={"Accept-Language": "en-US,en;q=0.9"})
    assert r.json()["code"] == "model.heads_divide" and r.json()["params"] == {"d_model": 250, "num_heads": 8,
                                                                              "suggest": 5}
    assert r.json()["detail"].startswith("The model width")


def test_a_bug_is_owned_up_to_in_the_asked_language(home):
    app = create_app(home)

    def broken():
        raise RuntimeError("something inside went wrong")

    app.add_api_route("/api/broken", broken)
    with TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as c:
        r = c.get("/api/broken", headers=RU)
    assert r.status_code == 500 and r.json()["code"] == "codes.internal"
    assert r.json()["params"] == {"error": "RuntimeError: something inside went wrong"}
    assert_russian(r.json())


def test_the_studio_says_where_it_is_in_the_locale_language(home, monkeypatch, capsys):
    import torch
    import uvicorn
    from azr_trainer.server import serve
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setenv("AZR_LANG", "ru")
    serve("0.0.0.0", 8123, home, token="s3cret")
    out = capsys.readouterr().out
    assert out.startswith("Студия AZR Trainer: http://0.0.0.0:8123/?token=s3cret\nПапка данных: ")
    assert "нужен ключ доступа" in out and all(russian_problem(line) is None for line in out.splitlines()), out


def test_estimate_explains_a_shape_in_the_asked_language(client):
    est = client.post("/api/models/estimate", json={"name": "../x", "d_model": 250, "num_heads": 8},
                      headers=RU).json()
    assert [p["code"] for p in est["problems"]] == ["name.invalid", "model.heads_divide"]
    assert est["errors"] == [p["detail"] for p in est["problems"]]
    for problem in est["problems"]:
        assert_russian(problem)


def test_a_vocabulary_too_large_for_the_books_is_warned_about_in_russian(home, book, tmp_path):
    data = prepare_data(home, tmp_path / "model", [book], "bpe", 4000, log=lambda m: None)
    large = [w for w in data.warnings if isinstance(w, Notice) and w.code == "tokenizer.vocab_large"]
    assert len(large) == 1, data.warnings
    assert large[0].params["vocab_size"] == 4000 and large[0].params["suggested"] < 4000
    assert "character tokenizer" in large[0]  # the English text, as logs and events carry it
    assert russian_problem(large[0].render("ru")) is None, large[0].render("ru")
    assert "символьный токенизатор" in large[0].render("ru")


# ---------------------------------------------------------------------------- the catalogue


def _raised_codes() -> list[tuple[str, str, set[str] | None]]:
    """(where, code, keyword names or None when **params is passed) for every coded message the
    source raises or reports."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name not in _RAISERS:
                continue
            first = node.args[0]
            options = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
            keywords = None if any(k.arg is None for k in node.keywords) else {k.arg for k in node.keywords}
            for option in options:
                if isinstance(option, ast.Constant) and isinstance(option.value, str) and _CODE.match(option.value):
                    found.append((f"{path.name}:{node.lineno}", option.value, keywords))
    return found


def test_every_code_in_the_source_is_in_both_catalogues_with_the_same_placeholders():
    found = _raised_codes()
    assert len(found) > 100  # the walk really sees the raises
    for where, code, keywords in found:
        en, ru = catalogue_entry("en", code), catalogue_entry("ru", code)
        assert en is not None and ru is not None, (where, code)
        assert placeholders(en) == placeholders(ru), (where, code)
        if keywords is not None:
            assert placeholders(en) <= keywords, (where, code, placeholders(en) - keywords)


def test_no_message_names_a_flag_and_russian_ones_are_russian():
    for lang in ("en", "ru"):
        msg = json.loads((I18N / f"{lang}.json").read_text(encoding="utf-8"))["msg"]
        stack = [("", msg)]
        while stack:
            prefix, node = stack.pop()
            for key, value in node.items():
                code = f"{prefix}{key}"
                if isinstance(value, dict) and not set(value) <= {"one", "few", "many", "other"}:
                    stack.append((code + ".", value))
                    continue
                for text in value.values() if isinstance(value, dict) else [value]:
                    assert not _FLAG.search(text), (lang, code, text)
                    if lang == "ru":
                        sample = _PLACEHOLDER.sub("1", text)
                        assert russian_problem(sample) is None, (code, russian_problem(sample), text)


# The only calls whose first argument passes a code along instead of naming one, by function, and why.
PASS_THROUGH = {
    ("errors.py", "os_reason"): "msg.reason.os.<errno> for the errnos in _OS_REASONS (checked below)",
    ("errors.py", "_notice"): "rebuilds an unpickled Notice from the code it was made with",
    ("osdeps.py", "require_reasoning"): "raises the refusal reasoning_refusal() also hands the page (checked below)",
    ("guard.py", "_send_json"): "the guards' refusals: each call names its code (checked below)",
}


def _raiser_calls():
    """(file, enclosing function, call) for every UserError/NotFound/Conflict/Notice call in the source."""
    found = []

    def visit(node, path, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and (getattr(child.func, "id", None)
                                                or getattr(child.func, "attr", None)) in _RAISERS:
                found.append((path, function, child))
            visit(child, path, inner)

    for path in sorted(SRC.rglob("*.py")):
        visit(ast.parse(path.read_text(encoding="utf-8")), path, None)
    return found


def _literal_code(node) -> bool:
    options = [node.body, node.orelse] if isinstance(node, ast.IfExp) else [node]
    return all(isinstance(o, ast.Constant) and isinstance(o.value, str) and _CODE.match(o.value) for o in options)


def test_every_message_the_source_raises_names_a_catalogue_code(monkeypatch):
    """A sentence written in place is never translated: the first argument of every UserError,
    NotFound, Conflict and Notice is a code from the catalogue (checked above to be in both), but
    for the few functions in PASS_THROUGH that hand on a code made elsewhere."""
    calls = _raiser_calls()
    assert len(calls) > 200  # the walk really sees them
    passing = set()
    for path, function, call in calls:
        if call.args and _literal_code(call.args[0]):
            continue
        where = (path.name, function)
        assert where in PASS_THROUGH, (f"{path.relative_to(SRC)}:{call.lineno}",
                                       ast.unparse(call.args[0]) if call.args else "no code")
        passing.add(where)
    assert passing == set(PASS_THROUGH)  # no stale excuse left behind
    # What the pass-throughs hand on is coded too.
    from azr_trainer import errors
    for name in errors._OS_REASONS:
        assert catalogue_entry("en", f"reason.os.{name}") and catalogue_entry("ru", f"reason.os.{name}"), name
    monkeypatch.setattr(osdeps, "reasoning_available", lambda: False)
    refusal = osdeps.reasoning_refusal()
    assert catalogue_entry("en", refusal["code"]) and catalogue_entry("ru", refusal["code"]), refusal
    guard = ast.parse((SRC / "routes" / "guard.py").read_text(encoding="utf-8"))
    sends = [n for n in ast.walk(guard) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "_send_json"]
    assert len(sends) >= 4
    for send in sends:
        code = send.args[3]
        assert _literal_code(code) and catalogue_entry("ru", code.value) is not None, ast.unparse(send)


def test_catalogue_renders_placeholders_and_russian_numbers():
    assert catalogue.message("book.empty", "ru", file="a.txt") == "Файл «a.txt» пуст: выберите .txt с текстом."
    text = catalogue.message("data.text_too_short", "ru", tokens=1234, needed=33)
    assert "1\u00a0234" in text and "33" in text


# ---------------------------------------------------------------------------- the CLI


def test_the_cli_speaks_the_locale_language(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if k not in ("AZR_LANG", "LC_ALL", "LC_MESSAGES", "LANGUAGE")}
    src = str(SRC.parent)
    env.update(LANG="ru_RU.UTF-8", PYTHONIOENCODING="utf-8",
               PYTHONPATH=os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-m", "azr_trainer.cli", "--home", str(tmp_path / "home"), "books", "add",
                        str(empty)], env=env, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("Ошибка: Файл «empty.txt» пуст"), r.stderr
    assert russian_problem(r.stderr) is None, r.stderr
