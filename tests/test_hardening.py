"""What a hostile or broken input can make the studio, the CLI and the importer do.

Model files whose config asks for far more than their weights hold, zip bombs, codecs that are
not for text, oversized requests, a data folder that is a file, what a killed studio leaves
behind, and pages on other sites (or other ports of localhost) driving the studio.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from azr_trainer import cli, reasoning
from azr_trainer.checkpoint import FORMAT, build_model
from azr_trainer.export import export_hf_zip
from azr_trainer.home import STALE_AFTER, UserError
from azr_trainer.importer import import_model
from azr_trainer.model import ModelConfig, Transformer
from azr_trainer.server import check_token, create_app
from azr_trainer.tokenizer import train_char

from conftest import make_text

TINY = dict(vocab_size=300, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_seq_len=32, tokenizer="char")
STUDIO = "http://127.0.0.1:8000"


def model_obj(cfg: ModelConfig, state: dict | None = None) -> dict:
    tok = train_char([make_text(n_lines=50)], cfg.vocab_size)
    if state is None:
        state = Transformer(cfg).state_dict()
    return {"format": FORMAT, "format_version": 1, "config": cfg.to_dict(), "state_dict": state,
            "tokenizer": tok.to_json()}


def run_cli(capsys, *args) -> tuple[int, str]:
    code = cli.main(list(args))
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------- model files


def test_a_small_file_asking_for_a_big_model_is_refused_before_anything_is_allocated(tmp_path):
    """The config asks for ~140 M parameters, the file holds none: refused by reading the config
    against the weights, without building the model (whose memory is measured in the child)."""
    big = ModelConfig(vocab_size=8000, d_model=1024, num_layers=8, num_heads=8, d_ff=4096, max_seq_len=64,
                      tokenizer="char")
    path = tmp_path / "big.pt"
    torch.save(model_obj(big, state={}), path)
    assert path.stat().st_size < 100_000
    child = ("import resource, sys\n"
             "from azr_trainer.checkpoint import build_model, safe_load\n"
             "from azr_trainer.home import UserError\n"
             "obj = safe_load(sys.argv[1])\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "try:\n"
             "    build_model(obj)\n"
             "except UserError as e:\n"
             "    print(e.code)\n"
             "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    p = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    code, grown_mib = p.stdout.split()
    assert code == "input.model_missing_weight"
    assert int(grown_mib) < 100  # building it first would take ~570 MB


@pytest.mark.parametrize("trick", ["zero_stride", "one_storage"])
def test_weights_that_only_look_like_the_shape_are_refused(trick):
    """Tensors of the right shapes whose numbers are not in the file: a zero-stride view of one
    number, or every tensor a view of the same storage."""
    cfg = ModelConfig(**TINY)
    expected = Transformer(cfg).state_dict()
    if trick == "zero_stride":
        state = {k: torch.zeros(1).expand(v.shape) for k, v in expected.items()}
    else:
        pool = torch.zeros(max(v.numel() for v in expected.values()))
        state = {k: pool[: v.numel()].view(v.shape) for k, v in expected.items()}
    with pytest.raises(UserError) as err:
        build_model(model_obj(cfg, state))
    assert err.value.code == "input.model_hollow"


def test_weights_of_the_wrong_type_or_name_are_refused():
    cfg = ModelConfig(**TINY)
    good = Transformer(cfg).state_dict()
    cases = [({**good, "model.norm.weight": torch.ones(32, dtype=torch.int64)}, "input.model_wrong_type"),
             ({**good, "model.norm.weight": "not a tensor"}, "input.model_wrong_type"),
             ({**good, "extra.weight": torch.ones(1)}, "input.model_extra_weight"),
             ({**good, "model.norm.weight": torch.ones(7)}, "input.model_wrong_shape")]
    for state, code in cases:
        with pytest.raises(UserError) as err:
            build_model(model_obj(cfg, state))
        assert err.value.code == code, (code, err.value)
    model, _, _ = build_model(model_obj(cfg, {k: v.to(torch.bfloat16) for k, v in good.items()}))
    assert next(model.parameters()).dtype == torch.float32  # half-precision weights still load


def test_a_pickle_with_code_is_refused_without_pytorchs_advice(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"format": FORMAT, "config": Evil()}, tmp_path / "evil.pt")
    code, err = run_cli(capsys, "--home", str(tmp_path / "home"), "generate", "--model", str(tmp_path / "evil.pt"),
                        "hi")
    assert code == 2 and "can load safely" in err
    assert "weights_only" not in err and "\x1b[" not in err and "Traceback" not in err


# ---------------------------------------------------------------------------- import


def hf_zip(tmp_path: Path, extra: dict[str, bytes] | None = None) -> Path:
    cfg = ModelConfig(**TINY)
    path = export_hf_zip(model_obj(cfg), tmp_path / "m-hf.zip")
    if extra:
        with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in extra.items():
                zf.writestr(name, data)
    return path


def fresh_home(tmp_path) -> Path:
    home = tmp_path / "home"
    (home / "books").mkdir(parents=True)
    (home / "models").mkdir()
    return home


def test_a_zip_bomb_is_refused_from_its_declared_sizes_before_unpacking(tmp_path):
    """A tiny model's zip whose weights expand to 40 MB (the config allows ~16 MB): refused from
    the config and the entry's declared size; nothing is unpacked."""
    home = fresh_home(tmp_path)
    good = hf_zip(tmp_path)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".safetensors"):
                data = data + bytes(40 << 20)
            dst.writestr(info.filename, data)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(UserError) as err:
        import_model(home, bomb, "bomb")
    assert err.value.code == "import.zip_entry_too_big"
    leftovers = list((home / ".tmp").rglob("*")) if (home / ".tmp").exists() else []
    assert leftovers == [] and [p.name for p in (home / "models").iterdir()] == []
    # the same zip without the padding imports
    assert import_model(home, good, "fine")["name"] == "fine"


def test_a_zip_entry_larger_than_it_declares_is_refused(tmp_path):
    home = fresh_home(tmp_path)
    path = hf_zip(tmp_path, {"notes.txt": b"x" * 100_000})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("notes.txt")
    # Declare 1,000 bytes in the central directory (what ZipInfo.file_size reads) and the local header.
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(b"notes.txt"))
    data[central + 24:central + 28] = (1000).to_bytes(4, "little")
    local = info.header_offset
    data[local + 22:local + 26] = (1000).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("notes.txt").file_size == 1000
    with pytest.raises(UserError) as err:
        import_model(home, path, "liar")
    assert err.value.code in ("import.zip_entry_lies", "import.zip_damaged")
    assert [p.name for p in (home / "models").iterdir()] == []


def test_a_zip_needing_more_disk_than_is_free_is_refused(tmp_path, monkeypatch):
    home = fresh_home(tmp_path)
    path = hf_zip(tmp_path)
    real = __import__("shutil").disk_usage
    monkeypatch.setattr("azr_trainer.importer.shutil.disk_usage",
                        lambda p: real(p)._replace(free=1 << 20))
    with pytest.raises(UserError) as err:
        import_model(home, path, "nospace")
    assert err.value.code == "import.no_space"


def test_a_folder_whose_weights_exceed_its_config_is_refused_before_reading_them(tmp_path):
    folder = tmp_path / "folder"
    with zipfile.ZipFile(hf_zip(tmp_path)) as zf:
        zf.extractall(folder)
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes() + bytes(20 << 20))
    with pytest.raises(UserError) as err:
        import_model(fresh_home(tmp_path), folder, "padded")
    assert err.value.code == "import.weights_too_big"


# ---------------------------------------------------------------------------- books, home, reasoning


@pytest.mark.parametrize("encoding", ["idna", "punycode", "utf-8\x00", "undefined", "rot13"])
def test_codecs_that_are_not_for_text_are_a_coded_400(tmp_path, encoding):
    app = create_app(tmp_path / "home")
    with TestClient(app, base_url=STUDIO) as client:
        r = client.post("/api/books", files={"file": ("b.txt", "Книга. Глава первая.\n".encode("utf-8"))},
                        data={"name": "b", "encoding": encoding})
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "input.encoding_unknown"
        assert client.post("/api/books", files={"file": ("b.txt", b"A book.\n")},
                           data={"name": "b", "encoding": "utf-8"}).status_code == 201


def test_cli_books_add_with_a_codec_not_for_text_is_a_message(tmp_path, capsys):
    (tmp_path / "b.txt").write_text("Longer than sixty-three characters without a single dot in between them all\n",
                                    encoding="utf-8")
    code, err = run_cli(capsys, "--home", str(tmp_path / "home"), "books", "add", str(tmp_path / "b.txt"),
                        "--encoding", "idna")
    assert code == 2 and "not a text encoding" in err and "Traceback" not in err


def test_a_data_folder_that_cannot_be_made_is_a_message(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = run_cli(capsys, "--home", str(tmp_path / "file"), "books", "list")
    assert code == 2 and "is a file, not a folder" in err and "Traceback" not in err
    code, err = run_cli(capsys, "--home", str(tmp_path / "file" / "below"), "books", "list")
    assert code == 2 and "is a file, not a folder" in err
    if os.path.isdir("/proc/1"):
        code, err = run_cli(capsys, "--home", "/proc/1/nope", "books", "list")
        assert code == 2 and "cannot be used" in err and "Traceback" not in err


def test_the_triplets_book_has_a_bounded_size(tmp_path):
    home = fresh_home(tmp_path)
    with pytest.raises(UserError) as err:
        reasoning.create_from_zero(home, "r", n_docs=reasoning.MAX_CORPUS_DOCS + 1, log=lambda m: None)
    assert err.value.code == "input.corpus_docs"
    assert [p.name for p in (home / "models").iterdir()] == []
    app = create_app(home)
    with TestClient(app, base_url=STUDIO) as client:
        r = client.post("/api/reason/models", json={"name": "r", "corpus_docs": 1_000_000})
        assert r.status_code == 422 and "corpus_docs" in r.json()["fields"]


# ---------------------------------------------------------------------------- leftovers


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_what_a_killed_studio_left_is_removed_at_start_and_nothing_live(tmp_path):
    home = tmp_path / "home"
    create_app(home)  # makes the folders
    dead, live = dead_pid(), os.getppid()
    left = {
        "upload": home / ".tmp" / f"upload-{dead}-0a1b2c3d",  # a killed upload's copy
        "book": home / "books" / f".tmp-{dead}-0a1b2c3d4e5f6a7b",  # a killed decode
        "model": home / "models" / f".tmp-{dead}-00aa11bb",  # a killed import
        "old": home / ".tmp" / "tmpk3j_x9a1",  # from before owners were named, untouched for long
    }
    kept = {
        "live": home / "books" / f".tmp-{live}-0a1b2c3d4e5f6a7b",  # another process is writing it
        "recent": home / ".tmp" / "tmpq8w_e7r2",  # no owner, but changed a moment ago
    }
    for folder in [*left.values(), *kept.values()]:
        folder.mkdir(parents=True)
        (folder / "part").write_bytes(bytes(1000))
    past = time.time() - STALE_AFTER - 60
    for path in (left["old"], left["old"] / "part"):
        os.utime(path, (past, past))
    (home / "books" / "real").mkdir()  # a book, never touched
    (home / "books" / "real" / "text.txt").write_text("kept")
    app = create_app(home)
    with TestClient(app, base_url=STUDIO) as client:
        assert client.get("/api/health").status_code == 200
    assert [name for name, p in left.items() if p.exists()] == []
    assert [name for name, p in kept.items() if not p.exists()] == []
    assert (home / "books" / "real" / "text.txt").read_text() == "kept"


# ---------------------------------------------------------------------------- the guard


@pytest.fixture
def client(tmp_path):
    app = create_app(tmp_path / "home")
    with TestClient(app, base_url=STUDIO) as c:
        yield c


def test_only_the_studios_own_origin_is_trusted(client):
    for origin in ("http://[::1]:1234", "http://localhost:8001", "http://127.0.0.1:1234", "null",
                   "https://evil.example", "http://127.0.0.1:8000.evil.example"):
        r = client.delete("/api/books/nope", headers={"Origin": origin})
        assert r.status_code == 403, origin
        assert r.json()["code"] == "guard.other_site"
        assert client.get("/api/books", headers={"Origin": origin}).status_code == 403, origin
    assert client.delete("/api/books/nope", headers={"Origin": STUDIO}).status_code == 404
    r = client.delete("/api/books/nope", headers={"Origin": "http://[::1]:1234", "Accept-Language": "ru"})
    assert "других сайтов" in r.json()["detail"]


def test_other_sites_cannot_make_the_studio_work_with_a_get(client):
    download = "/api/models/nope/download?format=gguf"
    for site, mode, dest in (("cross-site", "no-cors", "image"), ("same-site", "no-cors", "image"),
                             ("cross-site", "navigate", "document"), ("cross-site", "cors", "empty")):
        headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": dest}
        r = client.get(download, headers=headers)
        assert r.status_code == 403 and r.json()["code"] == "guard.other_site", (site, mode, dest)
    # The page's own download link, and a URL typed or bookmarked, get through (404: no such model).
    for site in ("same-origin", "none"):
        assert client.get(download, headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate"}).status_code == 404
    # A link from elsewhere to the page itself opens it.
    page = client.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                                    "Sec-Fetch-Dest": "document"})
    assert page.status_code == 200


def test_with_a_token_a_link_from_elsewhere_still_cannot_download(tmp_path):
    app = create_app(tmp_path / "home", token="s3cret")
    with TestClient(app) as client:
        headers = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
        r = client.get("/api/models/nope/download", params={"token": "s3cret"}, headers=headers)
        assert r.status_code == 403
        assert client.get("/", params={"token": "s3cret"}, headers=headers).status_code == 200


def test_guard_refusals_are_coded(tmp_path):
    app = create_app(tmp_path / "home", token="s3cret")
    with TestClient(app) as client:
        r = client.get("/api/health", headers={"Accept-Language": "ru"})
        assert r.status_code == 401 and r.json()["code"] == "guard.token_needed" and "ключ" in r.json()["detail"]
    app = create_app(tmp_path / "home")
    with TestClient(app) as client:  # Host: testserver
        r = client.get("/api/health")
        assert r.status_code == 400 and r.json()["code"] == "guard.host"


def test_serve_refuses_an_empty_token(tmp_path):
    p = subprocess.run([sys.executable, "-m", "azr_trainer.cli", "serve", "--home", str(tmp_path / "home"),
                        "--host", "0.0.0.0", "--port", "1", "--token", ""], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "access token" in p.stderr and "http://" not in p.stdout + p.stderr


@pytest.mark.parametrize("token", ["  ", "a b", "tok;en", "жетон"])
def test_tokens_that_would_not_travel_unchanged_are_refused(token):
    with pytest.raises(UserError) as err:
        check_token(token)
    assert err.value.code in ("guard.token_empty", "guard.token_chars")
    assert check_token("s3cret-Token_1.2~") == "s3cret-Token_1.2~"


def test_a_book_a_waiting_or_running_run_needs_cannot_be_deleted(client):
    assert client.post("/api/books", files={"file": ("play.txt", make_text(n_lines=300).encode())},
                       data={"name": "play"}).status_code == 201
    assert client.post("/api/models", json={"name": "m", **TINY}).status_code == 201
    run = client.post("/api/runs", json={"model": "m", "books": ["play"], "max_iterations": 100_000,
                                         "batch_size": 2, "threads": 1}).json()
    try:
        r = client.delete("/api/books/play")
        assert r.status_code == 409, r.text
        assert r.json()["code"] == "guard.book_in_use" and run["id"] in r.json()["detail"]
        assert "play" in [b["name"] for b in client.get("/api/books").json()]
    finally:
        client.post(f"/api/runs/{run['id']}/cancel")
        deadline = time.time() + 120
        while client.get(f"/api/runs/{run['id']}").json()["state"] in ("queued", "running"):
            assert time.time() < deadline
            time.sleep(0.2)
    assert client.delete("/api/books/play").status_code == 204
