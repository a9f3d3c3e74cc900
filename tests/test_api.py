"""The REST API through real HTTP: `azr serve` in a subprocess on a free loopback port.

Every endpoint, the bad inputs a person (or a hostile page) can send, and training runs
end to end: complete, pause/resume, cancel, a killed worker, a restarted studio.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from azr_trainer import autosize, store
from azr_trainer.model import ModelConfig
from azr_trainer.registry import Registry, Run
from azr_trainer.server import create_app
from azr_trainer.train import run_dir

from conftest import EXACT, WORDS_RU, make_text

TINY = dict(vocab_size=300, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_seq_len=32, tokenizer="char")
FAST = dict(batch_size=4, learning_rate=3e-3, save_every=1000, eval_every=200, threads=1)
TERMINAL = ("completed", "failed", "cancelled", "paused", "interrupted")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Studio:
    """An `azr serve` process and an HTTP client for it."""

    def __init__(self, home: Path, *extra: str):
        self.home, self.extra = home, extra
        self.start()

    def start(self) -> None:
        self.port = free_port()
        self.log = (self.home.parent / f"serve-{self.port}.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "azr_trainer.cli", "serve", "--home", str(self.home),
                                      "--port", str(self.port), *self.extra], stdout=self.log,
                                     stderr=subprocess.STDOUT, env={**os.environ, **EXACT})  # started before the fixture sets them
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, "the server exited at start"
            try:
                if self.http.get("/api/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("the server did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
        self.proc.wait(10)
        self.http.close()
        self.log.close()

    def stop(self) -> None:
        for run in self.http.get("/api/runs").json():
            if run["state"] in ("running", "queued"):
                self.http.post(f"/api/runs/{run['id']}/cancel")
        self.proc.terminate()
        self.proc.wait(10)
        self.http.close()
        self.log.close()

    # ---- helpers

    def upload(self, name: str, data: bytes, filename: str = "book.txt", **form) -> httpx.Response:
        return self.http.post("/api/books", files={"file": (filename, data, "text/plain")},
                              data={"name": name, **form})

    def wait(self, run_id: str, states=TERMINAL, timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.http.get(f"/api/runs/{run_id}").json()
            if run["state"] in states:
                return run
            time.sleep(0.1)
        raise AssertionError(f"run still {run['state']}: {run}")

    def wait_for_resumed(self, run_id: str, timeout: float = 60) -> list[dict]:
        """The run's started/resumed status events, once its resumed worker has reported."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            events = self.http.get(f"/api/runs/{run_id}/events").json()["events"]
            starts = [e for e in events if e["type"] == "status" and e["state"] in ("started", "resumed")]
            if len(starts) == 2:
                break
            time.sleep(0.1)
        return starts

    def wait_for_step(self, run_id: str, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.http.get(f"/api/runs/{run_id}").json()
            if run["last_step"] is not None or run["state"] in TERMINAL:
                return run
            time.sleep(0.05)
        raise AssertionError("no step event")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    home = tmp_path_factory.mktemp("studio") / "home"
    server = Studio(home, "--max-upload-mb", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def play(studio):
    """A small English book in the studio."""
    r = studio.upload("play", make_text(n_lines=600).encode("utf-8"), filename="play.txt")
    assert r.status_code == 201, r.text
    return "play"


def new_model(studio, name, **shape):
    r = studio.http.post("/api/models", json={"name": name, **TINY, **shape})
    assert r.status_code == 201, r.text
    return r.json()


def sse_events(response: httpx.Response, until) -> list[dict]:
    """Read `data:` events (with their `id:`) until ``until(event)`` is true."""
    events, current_id = [], None
    for line in response.iter_lines():
        if line.startswith("id: "):
            current_id = int(line[4:])
        elif line.startswith("data: "):
            event = json.loads(line[6:])
            event["_id"] = current_id
            events.append(event)
            if until(event):
                break
    return events


# ---------------------------------------------------------------------------- basics


def test_health_docs_and_page(studio):
    assert studio.http.get("/api/health").json()["ok"] is True
    assert studio.http.get("/docs").status_code == 200
    paths = studio.http.get("/openapi.json").json()["paths"]
    assert "/api/runs/{run_id}/stream" in paths and "/api/generate/stream" in paths
    page = studio.http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert studio.http.get("/static/%2e%2e/server.py").status_code == 404


def test_requests_for_other_hosts_or_from_other_sites_are_refused(studio):
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1
    assert studio.http.get("/api/books", headers={"Host": "evil.example"}).status_code == 400
    r = studio.http.post("/api/models", json={"name": "x", **TINY}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert studio.http.get("/api/models/x").status_code == 404  # nothing was created


def test_unknown_things_are_404_with_a_message(studio):
    for path in ("/api/books/nope", "/api/books/nope/tokens", "/api/models/nope", "/api/models/nope/checkpoints",
                 "/api/models/nope/download", "/api/runs/nope", "/api/runs/nope/events"):
        r = studio.http.get(path)
        assert r.status_code == 404, path
        assert "nope" in r.json()["detail"]
    for action in ("pause", "resume", "cancel"):
        assert studio.http.post(f"/api/runs/nope/{action}").status_code == 404
    assert studio.http.delete("/api/books/nope").status_code == 404
    assert studio.http.delete("/api/models/nope").status_code == 404


# ---------------------------------------------------------------------------- books


def test_books_upload_list_show_tokens_delete(studio):
    r = studio.upload("", make_text(seed=5).encode("utf-8"), filename="Гамлет.txt")  # name from the file
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["name"] == "Гамлет" and info["encoding"] == "utf_8" and info["chars"] > 1000
    assert "Гамлет" in [b["name"] for b in studio.http.get("/api/books").json()]
    shown = studio.http.get("/api/books/Гамлет").json()
    assert len(shown["preview"]) == 2000 and shown["preview"] == make_text(seed=5)[:2000]
    tokens = studio.http.get("/api/books/Гамлет/tokens", params={"limit": 5}).json()["tokens"]
    assert [t["text"] for t in tokens] == list(make_text(seed=5)[:5])
    assert studio.http.delete("/api/books/Гамлет").status_code == 204
    assert studio.http.get("/api/books/Гамлет").status_code == 404


def test_a_cp1251_book_is_detected_and_an_override_is_honoured(studio):
    russian = make_text(WORDS_RU, n_lines=200, seed=7)
    r = studio.upload("ru", russian.encode("cp1251"))
    assert r.status_code == 201, r.text
    assert r.json()["encoding"] == "cp1251" and r.json()["detected"] is True
    assert studio.http.get("/api/books/ru").json()["preview"] == russian[:2000]
    # Declared wrong: the bytes are not UTF-8, and the message says where.
    r = studio.upload("ru2", russian.encode("cp1251"), encoding="utf-8")
    assert r.status_code == 400 and "not valid utf_8" in r.json()["detail"]
    r = studio.upload("ru2", russian.encode("koi8_r"), encoding="koi8-r")
    assert r.status_code == 201 and r.json()["detected"] is False
    assert studio.http.get("/api/books/ru2").json()["preview"] == russian[:2000]
    assert studio.upload("ru3", b"text", encoding="no-such-codec").status_code == 400


@pytest.mark.parametrize("data, filename, name, message", [
    (b"", "e.txt", "empty", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(300), "p.png", "png", "binary"),
    (b"some text", "a.txt", "../evil", "not allowed"),
    (b"some text", "a.txt", "a/b", "not allowed"),
    (b"some text", "-x.txt", "", "give the book a name yourself"),
], ids=["empty", "binary", "dotdot", "slash", "bad-filename"])
def test_bad_uploads_are_400_and_leave_nothing(studio, data, filename, name, message):
    before = studio.http.get("/api/books").json()
    r = studio.upload(name, data, filename=filename)
    assert r.status_code == 400 and message in r.json()["detail"]
    assert studio.http.get("/api/books").json() == before


def test_a_second_book_of_the_same_name_is_409(studio, play):
    r = studio.upload("play", b"other text entirely")
    assert r.status_code == 409 and "already exists" in r.json()["detail"]


def test_uploads_over_the_limit_are_413(studio):
    big = b"word " * 300_000  # 1.5 MB against a 1 MiB limit
    r = studio.upload("big", big)
    assert r.status_code == 413 and "1 MiB" in r.json()["detail"]
    # Without Content-Length (chunked), the limit is enforced while streaming.
    boundary = "azrboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n"
            "Content-Type: text/plain\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(30):
            yield b"word " * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = studio.http.post("/api/books", content=body(),
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413
    assert "big" not in [b["name"] for b in studio.http.get("/api/books").json()]


def test_malformed_requests_are_422_with_readable_messages(studio):
    r = studio.http.post("/api/models", content=b'{"name": "x",', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    r = studio.http.post("/api/models", json={"name": "x", "d_model": "wide"})
    assert r.status_code == 422 and r.json()["detail"].startswith("d_model: ") and "d_model" in r.json()["fields"]
    r = studio.http.post("/api/runs", json={"model": "x"})
    assert r.status_code == 422 and "books" in r.json()["detail"]
    assert studio.http.post("/api/books").status_code == 422  # no file
    assert studio.http.get("/api/runs/x/events", params={"after": -1}).status_code == 422
    assert studio.http.post("/api/generate", json=["not", "an", "object"]).status_code == 422


# ---------------------------------------------------------------------------- models


def test_the_estimates_times_are_at_this_machines_measured_speed(tmp_path):
    """The Create page's times (and the Training page's before a run has its own speed) come
    from this machine's probe, measured once and cached like the auto-sizing plan's, never from
    a fixed laptop figure."""
    home = tmp_path / "home"
    with TestClient(create_app(home), base_url="http://127.0.0.1") as client:
        est = client.post("/api/models/estimate", json=TINY).json()  # measures the machine once
        first = est["speed"]
        cache = json.loads((home / autosize.SPEED_FILE).read_text(encoding="utf-8"))
        (key, entry), = cache.items()
        at_width = autosize.as_trained(autosize.MachineSpeed(**entry), "fp32").gflops_at(TINY["d_model"])
        assert first["gflops"] == pytest.approx(at_width) and first["threads"] == entry["threads"]
        assert first["gflops"] > 0 and len(entry["fp32_by_width"]) == 2  # the rate for this width, measured
        assert first["seconds_per_token"] == pytest.approx(
            est["flops_per_token"] / (first["gflops"] * 1e9 * autosize.STEP_EFFICIENCY))
        assert first["step_overhead_s"] > 0
        # Later estimates read the cache: a machine measured twice as fast trains twice as fast.
        cache[key] = {**entry, "fp32_gflops": 2 * entry["fp32_gflops"],
                      "fp32_by_width": [2 * r for r in entry["fp32_by_width"]]}
        (home / autosize.SPEED_FILE).write_text(json.dumps(cache), encoding="utf-8")
        second = client.post("/api/models/estimate", json=TINY).json()["speed"]
        assert second["gflops"] == pytest.approx(2 * first["gflops"], abs=0.02)
        assert second["seconds_per_token"] == pytest.approx(first["seconds_per_token"] / 2)
        assert client.post("/api/models/estimate", json={"num_layers": 0}).json()["speed"] is None


def test_models_create_estimate_show_delete(studio):
    est = studio.http.post("/api/models/estimate", json={"d_model": 250, "num_heads": 8}).json()
    assert len(est["errors"]) == 1 and est["errors"][0].startswith(
        "The model width (d_model, 250) must be divisible by the number of attention heads (num_heads, 8)")
    assert est["problems"][0]["code"] == "model.heads_divide" and est["problems"][0]["params"]["num_heads"] == 8
    assert est["parameters"] > 0 and est["memory_bytes"] > 0 and est["flops_per_token"] > 0
    ok = studio.http.post("/api/models/estimate", json={"name": "fresh", **TINY}).json()
    assert ok["errors"] == [] and ok["parameters"] == 19936
    assert studio.http.post("/api/models/estimate", json={"num_layers": 0}).json()["parameters"] is None
    assert studio.http.post("/api/models/estimate", json={"name": "../x"}).json()["errors"][0].startswith(
        "The name “../x” is not allowed")

    r = studio.http.post("/api/models", json={"name": "odd", **TINY, "d_model": 250, "num_heads": 8})
    assert r.status_code == 400 and "(d_model, 250) must be divisible by the number of attention heads (num_heads, 8)" \
        in r.json()["detail"]
    assert studio.http.post("/api/models", json={"name": "../up", **TINY}).status_code == 400
    assert studio.http.post("/api/models", json={**TINY}).status_code == 400  # no name

    model = new_model(studio, "shape")
    assert model["parameters"] == 19936 and model["file_bytes"] is None and model["checkpoints"] == []
    assert model["training"] is False and model["config"]["d_model"] == 32
    assert studio.http.post("/api/models", json={"name": "shape", **TINY}).status_code == 409
    assert studio.http.post("/api/models/estimate", json={"name": "shape", **TINY}).json()["errors"] == [
        "A model named “shape” already exists. Choose another name, or delete the old model first."]
    assert "shape" in [m["name"] for m in studio.http.get("/api/models").json()]
    assert studio.http.get("/api/models/shape").json()["name"] == "shape"
    assert studio.http.get("/api/models/shape/checkpoints").json() == []
    r = studio.http.get("/api/models/shape/download")
    assert r.status_code == 400 and "no checkpoint yet" in r.json()["detail"]
    r = studio.http.post("/api/models/shape/exports", json={"format": "gguf"})
    assert r.status_code == 400 and "no checkpoint yet" in r.json()["detail"]
    r = studio.http.get("/api/books/play/tokens", params={"model": "shape"})
    assert r.status_code == 409 and "no tokenizer yet" in r.json()["detail"]
    assert studio.http.delete("/api/models/shape").status_code == 204
    assert studio.http.get("/api/models/shape").status_code == 404


def test_books_and_models_made_with_the_cli_show_up(studio, tmp_path):
    src = tmp_path / "cli.txt"
    src.write_text(make_text(seed=9), encoding="utf-8")
    env = {**os.environ, "AZR_HOME": str(studio.home)}
    azr = [sys.executable, "-m", "azr_trainer.cli"]
    subprocess.run([*azr, "books", "add", str(src), "--name", "from-cli"], check=True, env=env, capture_output=True)
    subprocess.run([*azr, "models", "create", "cli-model", "--vocab-size", "300", "--d-model", "32", "--num-layers",
                    "1", "--num-heads", "2", "--d-ff", "64", "--max-seq-len", "32"], check=True, env=env,
                   capture_output=True)
    assert "from-cli" in [b["name"] for b in studio.http.get("/api/books").json()]
    assert studio.http.get("/api/models/cli-model").status_code == 200
    # …and the other way round.
    assert studio.http.delete("/api/books/from-cli").status_code == 204
    listed = subprocess.run([*azr, "books", "list", "--json"], check=True, env=env, capture_output=True, text=True,
                            encoding="utf-8")
    assert "from-cli" not in [b["name"] for b in json.loads(listed.stdout)]


# ---------------------------------------------------------------------------- training


def test_train_watch_generate_download(studio, play, tmp_path):
    new_model(studio, "tiny")
    r = studio.http.post("/api/runs", json={"model": "tiny", "books": [play], "max_iterations": 60, **FAST,
                                            "eval_every": 20})
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["state"] in ("queued", "running") and run["max_iterations"] == 60
    # Watch it live over SSE until it completes.
    with studio.http.stream("GET", f"/api/runs/{run['id']}/stream") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        live = sse_events(stream, lambda e: e["type"] == "status" and e["state"] in TERMINAL)
    assert live[-1]["state"] == "completed"
    assert [e["_id"] for e in live] == list(range(len(live)))
    steps = [e for e in live if e["type"] == "step"]
    assert steps[-1]["step"] == 60 and {"loss", "lr", "tokens_per_s", "elapsed", "eta"} <= set(steps[-1])
    assert any(e["type"] == "eval" and "val_bpb" in e for e in live)
    assert any(e["type"] == "sample" for e in live)

    done = studio.wait(run["id"])
    assert done["state"] == "completed" and done["step"] == 60 and done["progress"] == 1.0
    assert done["best_val_bpb"] > 0 and done["last_eval"]["val_bpb"] > 0 and done["samples"]
    # The same events for charts, from any point.
    events = studio.http.get(f"/api/runs/{run['id']}/events").json()
    assert [e["seq"] for e in events["events"]] == list(range(events["next"]))
    assert events["next"] >= len(live)
    later = studio.http.get(f"/api/runs/{run['id']}/events", params={"after": 5}).json()
    assert later["events"] == events["events"][5:] and later["next"] == events["next"]
    # A reconnecting browser gets only what it missed.
    with studio.http.stream("GET", f"/api/runs/{run['id']}/stream", headers={"Last-Event-ID": "3"}) as stream:
        again = sse_events(stream, lambda e: e["_id"] == events["next"] - 1)
    assert again[0]["_id"] == 4 and len(again) == events["next"] - 4

    runs = studio.http.get("/api/runs", params={"model": "tiny"}).json()
    assert [r["id"] for r in runs] == [run["id"]]
    model = studio.http.get("/api/models/tiny").json()
    assert model["trained_steps"] == 60 and model["file_bytes"] > 0 and 60 in model["checkpoints"]
    checkpoints = studio.http.get("/api/models/tiny/checkpoints").json()
    assert checkpoints[-1]["step"] == 60 and checkpoints[-1]["best"] and checkpoints[-1]["val_bpb"] > 0
    tokens = studio.http.get("/api/books/play/tokens", params={"model": "tiny", "limit": 10}).json()
    assert tokens["tokenizer"] == "char" and len(tokens["tokens"]) == 10
    assert "".join(t["text"] for t in tokens["tokens"]) == make_text(n_lines=600)[:10]

    body = {"model": "tiny", "prompt": "The king", "max_length": 30, "seed": 3, "temperature": 0.8}
    out = studio.http.post("/api/generate", json=body).json()
    assert out["prompt"] == "The king" and out["tokens"] == 30 and len(out["text"]) > 0
    assert set(out["memorisation"]) == {"spans", "copied_fraction", "books"}
    assert out["memorisation"]["books"] == ["play"] and out["decode_precision"] == "fp32"  # as the tests ask
    assert studio.http.post("/api/generate", json=body).json()["text"] == out["text"]  # seeded
    with studio.http.stream("POST", "/api/generate/stream", json=body) as stream:
        pieces = sse_events(stream, lambda e: e.get("done"))
    assert "".join(p["delta"] for p in pieces[:-1]) == pieces[-1]["text"] == out["text"]
    r = studio.http.post("/api/generate", json={**body, "temperature": -1})
    assert r.status_code == 400 and "temperature" in r.json()["detail"]
    r = studio.http.post("/api/generate", json={**body, "checkpoint": 12345})
    assert r.status_code == 400 and "There is no checkpoint at step 12345;" in r.json()["detail"]

    r = studio.http.get("/api/models/tiny/download", params={"format": "pt", "checkpoint": "best"})
    assert r.status_code == 200 and 'filename="tiny.pt"' in r.headers["content-disposition"]
    path = tmp_path / "tiny.pt"
    path.write_bytes(r.content)
    obj = torch.load(path, weights_only=True)
    assert obj["config"]["d_model"] == 32 and "model.embed_tokens.weight" in obj["state_dict"]
    assert "optimizer" not in obj
    deadline = time.time() + 5
    while list((studio.home / ".tmp").iterdir()) and time.time() < deadline:
        time.sleep(0.05)
    assert not list((studio.home / ".tmp").iterdir())  # the export is removed once sent
    # A finished run can be neither paused nor resumed.
    ended = [studio.http.post(f"/api/runs/{run['id']}/{action}") for action in ("pause", "resume")]
    assert [(r.status_code, r.json()["code"]) for r in ended] == [(409, "runs.cannot_pause"),
                                                                   (409, "runs.cannot_resume")]


def _export(studio, model: str, **body) -> dict:
    r = studio.http.post(f"/api/models/{model}/exports", json=body)
    assert r.status_code == 202, r.text
    return r.json()["run"]


def test_export_runs_beside_training_and_its_file_downloads_and_loads(studio, play, tmp_path):
    gguf = pytest.importorskip("gguf")
    new_model(studio, "portable")
    train = studio.http.post("/api/runs", json={"model": "portable", "books": [play], "max_iterations": 20000,
                                                **FAST}).json()
    studio.wait_for_step(train["id"])
    assert studio.http.post(f"/api/runs/{train['id']}/pause").status_code == 200
    paused = studio.wait(train["id"])
    assert paused["state"] == "paused" and paused["last_checkpoint_step"] == paused["step"], paused

    # A paused training run holds the model, yet an export (which only reads a checkpoint) starts.
    run = _export(studio, "portable", format="hf")
    assert run["kind"] == "export" and run["state"] in ("queued", "running")
    assert run["params"]["dtype"] == "f32" and run["params"]["zip"] is True and run["params"]["checkpoint"] == "best"
    r = studio.http.get(f"/api/models/portable/exports/{run['id']}")
    if r.status_code != 200:  # not finished yet (it almost never is this soon)
        assert r.status_code == 409 and r.json()["code"] == "export.not_ready", r.text
    done = studio.wait(run["id"])
    assert done["state"] == "completed", done
    steps = [e for e in studio.http.get(f"/api/runs/{run['id']}/events").json()["events"] if e["type"] == "step"]
    assert [e["step"] for e in steps] == [0, 1, 2] and steps[-1]["max_iterations"] == 2
    # It never showed the model as training, and the paused run can still be resumed.
    assert studio.http.get("/api/models/portable").json()["training"] is False
    assert studio.http.get(f"/api/runs/{train['id']}").json()["state"] == "paused"

    r = studio.http.get(f"/api/models/portable/exports/{run['id']}")
    assert r.status_code == 200, r.text
    assert 'filename="portable-hf-f32.zip"' in r.headers["content-disposition"]
    made = [e for e in studio.http.get(f"/api/runs/{run['id']}/events").json()["events"] if e["type"] == "export"]
    assert made[0]["file"] == "portable-hf-f32.zip" and made[0]["bytes"] == len(r.content), made
    path = tmp_path / "portable-hf.zip"
    path.write_bytes(r.content)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
        config = json.loads(zf.read("config.json"))
        zf.extractall(tmp_path / "hf")
    assert config["model_type"] == "llama" and config["hidden_size"] == 32
    transformers = pytest.importorskip("transformers")
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf")
    assert loaded.config.num_hidden_layers == 1

    resumed = studio.http.post(f"/api/runs/{train['id']}/resume")
    assert resumed.status_code == 200, resumed.text
    studio.wait(train["id"], states=("running",))
    # While it trains (the studio runs one training run at a time), a GGUF export still starts.
    first = _export(studio, "portable", format="gguf", checkpoint="latest")
    assert studio.wait(first["id"])["state"] == "completed"
    assert studio.http.get("/api/models/portable").json()["training"] is True  # the training run, not the export
    r = studio.http.get(f"/api/models/portable/exports/{first['id']}")
    assert r.status_code == 200 and 'filename="portable-f16.gguf"' in r.headers["content-disposition"]
    path = tmp_path / "portable-f16.gguf"
    path.write_bytes(r.content)
    arch = gguf.GGUFReader(path).fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    assert studio.http.post(f"/api/runs/{train['id']}/cancel").status_code == 200
    assert studio.wait(train["id"])["state"] == "cancelled"

    # Only the newest export of a format and number format is kept; other number formats stay.
    q8 = _export(studio, "portable", format="gguf", dtype="q8_0")
    second = _export(studio, "portable", format="gguf")
    assert studio.wait(q8["id"])["state"] == studio.wait(second["id"])["state"] == "completed"
    r = studio.http.get(f"/api/models/portable/exports/{first['id']}")
    assert r.status_code == 404 and r.json()["code"] == "export.gone"
    assert studio.http.get(f"/api/models/portable/exports/{second['id']}").status_code == 200
    r = studio.http.get(f"/api/models/portable/exports/{q8['id']}")
    assert r.status_code == 200 and 'filename="portable-q8_0.gguf"' in r.headers["content-disposition"]

    # Unknown runs, and runs that are not exports, are not found.
    assert studio.http.get("/api/models/portable/exports/run-nope").json()["code"] == "export.not_found"
    assert studio.http.get(f"/api/models/portable/exports/{train['id']}").status_code == 404
    # The old download sends .pt only, and says where the other formats are made.
    r = studio.http.get("/api/models/portable/download", params={"format": "hf"})
    assert r.status_code == 400 and r.json()["code"] == "export.use_run"
    assert "POST /api/models/portable/exports" in r.json()["detail"]
    r = studio.http.get("/api/models/portable/download", params={"format": "onnx"})
    assert r.status_code == 400 and "must be one of pt, hf, gguf" in r.json()["detail"]
    # Wrong settings are refused before anything is queued.
    for body, text in (({"format": "onnx"}, "format"), ({"format": "gguf", "dtype": "q4_k"}, "q4_k"),
                       ({"format": "hf", "dtype": "q8_0"}, "f32, f16, bf16"),
                       ({"format": "gguf", "zip": True}, "Only the Hugging Face folder"),
                       ({"format": "hf", "checkpoint": "12345"}, "There is no checkpoint at step 12345;")):
        r = studio.http.post("/api/models/portable/exports", json=body)
        assert r.status_code == 400 and text in r.json()["detail"], (body, r.text)
    assert (studio.home / "exports" / "portable").is_dir()
    assert studio.http.delete("/api/models/portable").status_code == 204
    assert not (studio.home / "exports" / "portable").exists()  # its exports went with it


def test_a_download_note_is_an_ascii_header():
    from azr_trainer.routes.models import _header_safe
    assert _header_safe("'tiny' is still training: 100%") == "'tiny' is still training: 100%25"
    assert _header_safe("'модель' ok") == "'%D0%BC%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C' ok"


def test_pause_resume_cancel(studio, play):
    new_model(studio, "long")
    run = studio.http.post("/api/runs", json={"model": "long", "books": [play], "max_iterations": 20000,
                                              **FAST}).json()
    studio.wait_for_step(run["id"])
    r = studio.http.post(f"/api/runs/{run['id']}/pause")
    assert r.status_code == 200 and r.json()["stop_requested"] == "pause"
    paused = studio.wait(run["id"])
    assert paused["state"] == "paused", paused
    assert 0 < paused["step"] < 20000 and paused["last_checkpoint_step"] == paused["step"]
    assert "Paused at step" in paused["message"]
    # While it is paused the model is held: a new run would overwrite what resume needs.
    r = studio.http.post("/api/runs", json={"model": "long", "books": [play], **FAST})
    assert r.status_code == 409 and "paused or interrupted run" in r.json()["detail"]
    assert r.json()["code"] == "runs.has_stopped_run" and r.json()["params"]["state"] == "paused"

    resumed = studio.http.post(f"/api/runs/{run['id']}/resume").json()
    assert resumed["state"] in ("queued", "running")
    again = studio.http.post(f"/api/runs/{run['id']}/resume")
    assert again.status_code == 409 and again.json()["code"] == "runs.cannot_resume"
    studio.wait(run["id"], states=("running",))
    starts = studio.wait_for_resumed(run["id"])
    assert [e["state"] for e in starts] == ["started", "resumed"]
    assert starts[1]["step"] == paused["step"]  # continues where it stopped
    assert studio.http.get("/api/models/long").json()["training"] is True
    busy = studio.http.delete("/api/models/long")
    assert busy.status_code == 409 and busy.json()["code"] == "runs.model_busy"

    r = studio.http.post(f"/api/runs/{run['id']}/cancel")
    assert r.status_code == 200
    cancelled = studio.wait(run["id"])
    assert cancelled["state"] == "cancelled" and paused["step"] <= cancelled["step"] < 20000
    ended = studio.http.post(f"/api/runs/{run['id']}/cancel")
    assert ended.status_code == 409 and ended.json()["code"] == "runs.cannot_cancel"
    # The message is kept as a code: the API says it in the language the request asks for.
    assert cancelled["message_code"] == "run.cancelled" and cancelled["message"].startswith("Cancelled at step")
    ru = studio.http.get(f"/api/runs/{run['id']}", headers={"Accept-Language": "ru-RU,ru;q=0.9"}).json()
    assert ru["message"].startswith("Отменено на шаге") and ru["message_params"]["step"] == cancelled["step"]
    listed = studio.http.get("/api/runs", headers={"Accept-Language": "ru"}).json()
    assert next(r for r in listed if r["id"] == run["id"])["message"] == ru["message"]
    # Cancelled releases the model.
    again = studio.http.post("/api/runs", json={"model": "long", "books": [play], "max_iterations": 20000, **FAST})
    assert again.status_code == 201
    assert studio.http.post(f"/api/runs/{again.json()['id']}/cancel").status_code == 200
    assert studio.wait(again.json()["id"])["state"] == "cancelled"


def test_a_studio_run_shows_its_first_evaluation_within_30_s_whatever_its_steps(studio, play):
    # The page's ten minutes, and a step cadence that would bring no evaluation for hours (a large
    # model on a slow machine): the clock brings the first one, so a person sees within half a
    # minute whether the model learns.
    new_model(studio, "clock")
    run = studio.http.post("/api/runs", json={"model": "clock", "books": [play], "threads": 1,
                                              "eval_every": 10**6}).json()
    deadline, events, seen = time.time() + 90, [], 0
    while time.time() < deadline and not any(e["type"] == "eval" for e in events):
        page = studio.http.get(f"/api/runs/{run['id']}/events", params={"after": seen}).json()
        events, seen = events + page["events"], page["next"]
        time.sleep(0.5)
    evals = [e for e in events if e["type"] == "eval"]
    studio.http.post(f"/api/runs/{run['id']}/cancel")
    assert evals, "no evaluation within 90 s"
    started = next(e for e in events if e["type"] == "status" and e["state"] == "started")
    first_step = min(e["time"] for e in events if e["type"] == "step")
    assert evals[0]["step"] > 0 and evals[0]["val_bpb"] > 0
    assert evals[0]["time"] - started["time"] <= 30.0, (evals[0]["time"] - started["time"], first_step)
    assert evals[0]["time"] - first_step >= 10.0  # by the clock: the steps asked for none
    assert studio.wait(run["id"])["state"] == "cancelled"


@pytest.mark.skipif(os.name != "posix", reason="kills the worker with SIGKILL")
def test_a_killed_worker_becomes_failed_and_the_server_keeps_answering(studio, play):
    new_model(studio, "doomed")
    run = studio.http.post("/api/runs", json={"model": "doomed", "books": [play], "max_iterations": 20000,
                                              **FAST}).json()
    running = studio.wait_for_step(run["id"])
    os.kill(running["pid"], signal.SIGKILL)  # what the kernel does when memory runs out
    failed = studio.wait(run["id"])
    assert failed["state"] == "failed"
    assert "killed by SIGKILL" in failed["message"] and "memory" in failed["message"]
    assert studio.http.get("/api/health").status_code == 200
    # It can be resumed from its last checkpoint, or the model trained anew.
    assert studio.http.post("/api/runs", json={"model": "doomed", "books": [play], "max_iterations": 10,
                                               **FAST}).status_code == 201


@pytest.mark.skipif(os.name != "posix", reason="kills the server with SIGKILL")
def test_a_restarted_studio_marks_the_run_interrupted_and_resume_finishes_it(tmp_path):
    studio = Studio(tmp_path / "home")
    try:
        assert studio.upload("play", make_text(n_lines=600).encode("utf-8")).status_code == 201
        new_model(studio, "m")
        run = studio.http.post("/api/runs", json={"model": "m", "books": ["play"], "max_iterations": 1000,
                                                  **FAST}).json()
        studio.wait_for_step(run["id"])
        studio.kill()  # the worker notices its parent is gone, saves and stops
        studio.start()
        interrupted = studio.http.get(f"/api/runs/{run['id']}").json()
        assert interrupted["state"] in ("interrupted", "completed"), interrupted
        if interrupted["state"] == "completed":
            pytest.skip("the run finished before the server was killed")
        assert "Resume it" in interrupted["message"] or "Interrupted at step" in interrupted["message"]
        deadline = time.time() + 60
        while True:  # the old worker may still be saving: 409 until it lets go of the model
            r = studio.http.post(f"/api/runs/{run['id']}/resume")
            if r.status_code == 200 or time.time() > deadline:
                break
            assert r.status_code == 409 and "still held" in r.json()["detail"]
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        done = studio.wait(run["id"], states=("completed", "failed", "cancelled"))
        assert done["state"] == "completed" and done["step"] == 1000
        events = studio.http.get(f"/api/runs/{run['id']}/events").json()["events"]
        starts = [e for e in events if e["type"] == "status" and e["state"] in ("started", "resumed")]
        assert [e["state"] for e in starts] == ["started", "resumed"] and starts[1]["step"] > 0
        # Interrupted either by the new studio or, if it had already saved, by the worker itself.
        assert "interrupted" in [e["state"] for e in events if e["type"] == "status"]
    finally:
        studio.stop()


# ---------------------------------------------------------------------------- self-play

# Tiny rollouts: a self-play step of the TINY model takes a few hundredths of a second.
SELFPLAY = dict(kind="selfplay", group_size=4, prompts_per_step=2, eval_every=2, threads=1, seed=3)


@pytest.fixture(scope="module")
def player(studio, play):
    """A model trained briefly on the play: what self-play starts from."""
    new_model(studio, "player")
    run = studio.http.post("/api/runs", json={"model": "player", "books": [play], "max_iterations": 20, **FAST}).json()
    assert run["kind"] == "train" and run["params"]["kind"] == "train"
    assert studio.wait(run["id"])["state"] == "completed"
    return "player"


def test_selfplay_needs_a_trained_model_and_sane_settings(studio):
    new_model(studio, "untrained")
    r = studio.http.post("/api/runs", json={"model": "untrained", **SELFPLAY, "max_iterations": 2})
    assert r.status_code == 400 and "no trained checkpoint yet" in r.json()["detail"]
    bad = [({"reward": "/tmp/evil.py"}, 400, "reward must be one of default, original"),
           ({"batch_size": 8}, 400, "no setting batch_size"),
           ({"group_size": 1}, 400, "group_size must be at least 2"),
           ({"temperature": 0}, 400, "temperature must be above 0"),
           ({"books": ["play"]}, 400, "leave the list of books empty"),
           ({"group_size": 100_000}, 422, "group_size: Input should be less than or equal to"),
           ({"kind": "dream"}, 422, "kind: Input should be 'train', 'selfplay', 'reason', 'corpus' or 'export'"),
           ({"rewards": "default"}, 422, "rewards: Extra inputs are not permitted")]
    for change, status, message in bad:
        r = studio.http.post("/api/runs", json={"model": "untrained", **SELFPLAY, **change})
        assert r.status_code == status and message in r.json()["detail"], (change, r.text)
    r = studio.http.post("/api/runs", json={"model": "untrained", "books": ["play"], "group_size": 4})
    assert r.status_code == 400 and "no setting group_size" in r.json()["detail"]
    assert studio.http.get("/api/runs", params={"model": "untrained"}).json() == []


def test_selfplay_run_completes_with_rewards_and_a_checkpoint(studio, play, player):
    body = {"model": player, **SELFPLAY, "max_iterations": 3, "reward": "original", "kl_weight": 0.2,
            "lm_weight": 0.3, "temperature": 0.5, "learning_rate": 2e-4, "min_lr_ratio": 1.0, "checkpoint": "latest"}
    r = studio.http.post("/api/runs", json=body)
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["kind"] == "selfplay" and run["books"] == [play] and run["max_iterations"] == 3
    assert run["params"] == {k: v for k, v in body.items() if k != "model"}
    done = studio.wait(run["id"])
    assert done["state"] == "completed", done
    assert done["step"] == 3 and done["progress"] == 1.0 and done["best_val_bpb"] > 0
    assert done["last_step"]["reward_mean"] is not None and done["samples"]

    events = studio.http.get(f"/api/runs/{run['id']}/events").json()["events"]
    started = next(e for e in events if e["type"] == "status" and e["state"] == "started")
    assert started["kind"] == "selfplay" and started["start"]["step"] == 20
    settings = started["selfplay_config"]  # what the worker really ran with: every setting got through
    for key in ("reward", "kl_weight", "lm_weight", "temperature", "learning_rate", "min_lr_ratio", "group_size",
                "prompts_per_step", "eval_every", "seed", "max_iterations"):
        assert settings[key] == body[key], key
    assert set(started["reward_weights"]) == {"diversity", "length"}  # the "original" preset
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    for e in steps:
        assert {"reward_mean", "reward_std", "reward_diversity", "reward_length", "kl", "entropy"} <= set(e)
    assert any(e["type"] == "eval" and e["val_bpb"] > 0 and "sample_reward" in e for e in events)
    assert any(e["type"] == "sample" and "reward" in e for e in events)
    saved = [e for e in events if e["type"] == "checkpoint"]
    path = Path(saved[-1]["path"])
    assert path == studio.home / "models" / player / "checkpoints" / "selfplay" / run["id"] / "step_0000003.pt"
    assert path.is_file() and done["last_checkpoint_step"] == 3
    # Pretraining's checkpoints are untouched, the model's list offers the new one, and it generates.
    assert studio.http.get(f"/api/models/{player}").json()["trained_steps"] == 20
    listed = studio.http.get(f"/api/models/{player}/checkpoints").json()
    assert listed[-1] == {"kind": "selfplay", "checkpoint": "selfplay", "step": 3, "best": False,
                          "bytes": path.stat().st_size, "val_bpb": None, "run": run["id"]}
    assert {c["kind"] for c in listed[:-1]} <= {"best", "step"} and max(c["step"] for c in listed[:-1]) == 20
    out = studio.http.post("/api/generate", json={"model": player, "prompt": "The king", "max_length": 8, "seed": 1,
                                                 "checkpoint": listed[-1]["checkpoint"]})
    assert out.status_code == 200 and out.json()["tokens"] == 8
    kinds = {r["id"]: r["kind"] for r in studio.http.get("/api/runs", params={"model": player}).json()}
    assert sorted(kinds.values()) == ["selfplay", "train"] and kinds[run["id"]] == "selfplay"


def test_selfplay_pause_resume_cancel(studio, player):
    run = studio.http.post("/api/runs", json={"model": player, **SELFPLAY, "max_iterations": 100_000}).json()
    studio.wait_for_step(run["id"])
    assert studio.http.post(f"/api/runs/{run['id']}/pause").status_code == 200
    paused = studio.wait(run["id"])
    assert paused["state"] == "paused", paused
    assert 0 < paused["step"] < 100_000 and paused["last_checkpoint_step"] == paused["step"]
    r = studio.http.post("/api/runs", json={"model": player, **SELFPLAY})
    assert r.status_code == 409 and "paused or interrupted run" in r.json()["detail"]
    assert r.json()["code"] == "runs.has_stopped_run" and r.json()["params"]["state"] == "paused"

    resume_then_cancel(studio, run, paused, "selfplay")
    assert (studio.home / "models" / player / "checkpoints" / "selfplay" / run["id"]).is_dir()


# ---------------------------------------------------------------------------- reasoning

# The smallest shape whose window holds a reasoning prompt (max_program_tokens 200 + 64).
REASON_SHAPE = dict(d_model=32, num_layers=1, num_heads=2, d_ff=64, max_seq_len=320)
REASON = dict(kind="reason", batch_size=2, n_samples=2, eval_tasks=1, threads=1, seed=5)
IDENTITY = "def f(x):\n    return x"


@pytest.fixture(scope="module")
def reasoner(studio):
    """A from-zero reasoning model made through the API, pretrained briefly on its triplets book."""
    r = studio.http.post("/api/reason/models", json={"name": "reasoner", **REASON_SHAPE, "corpus_docs": 600})
    assert r.status_code == 202, r.text
    made = r.json()
    assert made["book"] == "reasoner-triplets" and "training run" in made["next"]
    assert made["model"]["config"]["tokenizer"] == "char" and made["model"]["config"]["max_seq_len"] == 320
    assert studio.wait(made["run"]["id"])["state"] == "completed"
    assert "reasoner-triplets" in [b["name"] for b in studio.http.get("/api/books").json()]
    run = studio.http.post("/api/runs", json={"model": "reasoner", "books": [made["book"]], "max_iterations": 20,
                                              **FAST}).json()
    assert studio.wait(run["id"])["state"] == "completed"
    return "reasoner"


@pytest.mark.sandbox
def test_a_from_zero_reasoning_model_is_refused_readably(studio, reasoner):
    cases = [({"name": reasoner}, 409, "already exists"),
             ({"name": "rz", **REASON_SHAPE, "max_seq_len": 128}, 400, "(max_seq_len) of at least 264"),
             ({"name": "rz", **REASON_SHAPE, "num_heads": 3}, 400, "num_heads"),
             ({"name": "rz", "corpus_docs": 5}, 422, "corpus_docs"),
             ({"name": "rz", "tokenizer": "bpe"}, 422, "tokenizer: Extra inputs are not permitted")]
    for body, status, message in cases:
        r = studio.http.post("/api/reason/models", json=body)
        assert r.status_code == status and message in r.json()["detail"], (body, r.text)
    names = [b["name"] for b in studio.http.get("/api/books").json()]
    assert "rz-triplets" not in names and "rz" not in [m["name"] for m in studio.http.get("/api/models").json()]
    # A book of that name is never overwritten.
    assert studio.upload("taken-triplets", b"Mine, not generated.\n" * 200).status_code == 201
    r = studio.http.post("/api/reason/models", json={"name": "taken", **REASON_SHAPE, "corpus_docs": 100})
    assert r.status_code == 409 and "book named “taken-triplets” already exists" in r.json()["detail"]
    assert studio.http.get("/api/books/taken-triplets").json()["preview"].startswith("Mine, not generated.")


@pytest.mark.sandbox
def test_a_from_zero_model_writes_its_book_in_a_run_that_keeps_its_name_taken(studio):
    r = studio.http.post("/api/reason/models", json={"name": "zbook", **REASON_SHAPE, "corpus_docs": 2500, "seed": 3})
    assert r.status_code == 202, r.text
    run = r.json()["run"]
    assert run["kind"] == "corpus" and run["model"] == "zbook" and run["books"] == []
    assert run["params"]["corpus_docs"] == 2500 and run["params"]["seed"] == 3
    # While (or after) its book is written, the name is taken and the model cannot train yet.
    again = studio.http.post("/api/reason/models", json={"name": "zbook", **REASON_SHAPE, "corpus_docs": 100})
    assert again.status_code == 409 and again.json()["code"] == "model.exists"
    done = studio.wait(run["id"])
    assert done["state"] == "completed" and done["step"] == 2500, done
    steps = [e["step"] for e in studio.http.get(f"/api/runs/{run['id']}/events").json()["events"]
             if e["type"] == "step"]
    assert steps[0] < 2500 and steps[-1] == 2500  # the documents written, reported as they are made
    book = studio.http.get("/api/books/zbook-triplets").json()
    assert "def f(" in book["preview"]
    model = studio.http.get("/api/models/zbook").json()
    assert model["config"]["tokenizer"] == "char"
    # The run kind refuses books, and never overwrites the book it would write.
    r = studio.http.post("/api/runs", json={"model": "zbook", "kind": "corpus", "books": ["zbook-triplets"]})
    assert r.status_code == 400 and r.json()["code"] == "reason_create.corpus_books"
    r = studio.http.post("/api/runs", json={"model": "zbook", "kind": "corpus"})
    assert r.status_code == 409 and r.json()["code"] == "reason_create.book_exists"


@pytest.mark.sandbox
def test_reason_needs_a_trained_model_with_a_long_window_and_sane_settings(studio, reasoner, player):
    new_model(studio, "rs_untrained", **REASON_SHAPE)
    r = studio.http.post("/api/runs", json={"model": "rs_untrained", **REASON, "max_iterations": 2})
    detail = r.json()["detail"]
    assert r.status_code == 400 and "no trained checkpoint yet" in detail and "on the Training page" in detail
    assert r.json()["code"] == "runs.reason_untrained" and r.json()["params"] == {"name": "rs_untrained"}
    r = studio.http.post("/api/runs", json={"model": player, **REASON, "max_iterations": 2})  # max_seq_len 32
    assert r.status_code == 400 and "reads at most 32 tokens" in r.json()["detail"]
    bad = [({"books": ["play"]}, 400, "leave the list of books empty"),
           ({"mode": "dream"}, 400, "mode must be one of azr, frozen_proposer, solver_only, pretrain"),
           ({"n_samples": 1}, 400, "n_samples must be at least 2"),
           ({"temperature": 0}, 400, "temperature must be above 0"),
           ({"checkpoint": "reason"}, 400, "has no reasoning checkpoint yet"),
           ({"checkpoint": 7}, 400, "There is no checkpoint at step 7;"),
           ({"group_size": 4}, 400, "A reason run has no setting group_size"),
           ({"n_samples": 100_000}, 422, "n_samples: Input should be less than or equal to")]
    for change, status, message in bad:
        r = studio.http.post("/api/runs", json={"model": reasoner, **REASON, **change})
        assert r.status_code == status and message in r.json()["detail"], (change, r.text)
    assert studio.http.get("/api/runs", params={"model": "rs_untrained"}).json() == []
    assert [r["kind"] for r in studio.http.get("/api/runs", params={"model": reasoner}).json()] == ["train", "corpus"]


@pytest.mark.sandbox
def test_reason_run_completes_with_per_type_metrics_and_buffers(studio, reasoner):
    body = {"model": reasoner, **REASON, "max_iterations": 3, "mode": "azr", "temperature": 0.9,
            "learning_rate": 2e-4, "kl_weight": 0.1, "eval_every": 2, "save_every": 2, "checkpoint": "latest"}
    r = studio.http.post("/api/runs", json=body)
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["kind"] == "reason" and run["books"] == [] and run["max_iterations"] == 3
    assert run["params"] == {k: v for k, v in body.items() if k != "model"}
    done = studio.wait(run["id"])
    assert done["state"] == "completed", done
    assert done["step"] == 3 and done["progress"] == 1.0 and done["last_checkpoint_step"] == 3

    events = studio.http.get(f"/api/runs/{run['id']}/events").json()["events"]
    started = next(e for e in events if e["type"] == "status" and e["state"] == "started")
    assert started["kind"] == "reason" and started["prompt_format"] == "compact" and started["start"]["step"] == 20
    settings = started["reason_config"]  # what the worker really ran with: every setting got through
    for key in ("mode", "max_iterations", "batch_size", "n_samples", "temperature", "learning_rate", "kl_weight",
                "eval_every", "eval_tasks", "save_every", "seed", "threads", "checkpoint"):
        assert settings[key] == body[key], key
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    for e in steps:
        for kind in ("deduction", "abduction", "induction"):
            assert 0 <= e[f"{kind}_valid_rate"] <= 1 and 0 <= e[f"{kind}_solve_acc"] <= 1
            assert isinstance(e[f"{kind}_rbar"], list) and f"{kind}_propose_reward" in e
        assert set(e["buffer_sizes"]) == {"deduction", "abduction", "induction"}
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 2, 3]
    assert all(0 <= e[f"{k}_acc"] <= 1 for e in evals for k in ("deduction", "abduction", "induction", "mean"))
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2, 3]

    r = studio.http.get(f"/api/runs/{run['id']}/buffers")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["step"] == 3 and set(got["buffers"]) == {"deduction", "abduction", "induction"}
    for kind, tasks in got["buffers"].items():
        assert len(tasks) == got["sizes"][kind] == steps[-1]["buffer_sizes"][kind] >= 1
        assert tasks[0]["code"] == IDENTITY and tasks[0]["kind"] == kind  # the paper's seed triplet first
    assert got["buffers"]["deduction"][0]["input"] == got["buffers"]["deduction"][0]["output"] == "[1, 2, 3]"
    assert ["[]", "[]"] in got["buffers"]["induction"][0]["pairs"]
    newest = studio.http.get(f"/api/runs/{run['id']}/buffers", params={"limit": 1}).json()
    assert {k: v for k, v in newest["buffers"].items()} == {k: v[-1:] for k, v in got["buffers"].items()}
    # Pretraining's checkpoints are untouched; the run's own are under checkpoints/reason/RUN.
    assert studio.http.get(f"/api/models/{reasoner}").json()["trained_steps"] == 20
    assert (studio.home / "models" / reasoner / "checkpoints" / "reason" / run["id"] / "step_0000003.pt").is_file()


@pytest.mark.sandbox
def test_buffers_of_other_runs_are_refused(studio, reasoner):
    runs = studio.http.get("/api/runs", params={"model": reasoner}).json()
    assert {"train", "corpus"} <= {r["kind"] for r in runs}  # the triplets book's run, then pretraining
    for other in (r for r in runs if r["kind"] in ("train", "corpus")):
        r = studio.http.get(f"/api/runs/{other['id']}/buffers")
        assert r.status_code == 400 and "only reasoning runs have task buffers" in r.json()["detail"]
    assert studio.http.get("/api/runs/run-nope/buffers").status_code == 404


@pytest.mark.sandbox
def test_reason_pause_resume_cancel(studio, reasoner):
    run = studio.http.post("/api/runs", json={"model": reasoner, **REASON, "max_iterations": 100_000,
                                              "save_every": 10**6, "eval_every": 10**6}).json()
    studio.wait_for_step(run["id"])
    r = studio.http.get(f"/api/runs/{run['id']}/buffers")  # nothing saved yet
    assert r.status_code == 404 and "has not saved a checkpoint yet" in r.json()["detail"]
    assert studio.http.post(f"/api/runs/{run['id']}/pause").status_code == 200
    paused = studio.wait(run["id"])
    assert paused["state"] == "paused", paused
    assert 0 < paused["step"] < 100_000 and paused["last_checkpoint_step"] == paused["step"]
    assert studio.http.get(f"/api/runs/{run['id']}/buffers").json()["step"] == paused["step"]

    resume_then_cancel(studio, run, paused, "reason")


# ---------------------------------------------------------------------------- token


def test_bound_beyond_loopback_it_makes_up_a_token_and_requires_it(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "azr_trainer.cli", "serve", "--home", str(tmp_path / "home"),
                             "--host", "0.0.0.0", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, encoding="utf-8")
    try:
        first = proc.stdout.readline()
        assert "?token=" in first, first
        token = first.strip().rsplit("?token=", 1)[1]
        url = f"http://127.0.0.1:{port}/api/health"
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.get(url)
                break
            except httpx.TransportError:
                assert time.time() < deadline
                time.sleep(0.1)
        assert r.status_code == 401
        assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_token_is_required_when_set(tmp_path):
    app = create_app(tmp_path / "home", token="s3cret")
    with TestClient(app) as client:
        r = client.get("/api/health")
        assert r.status_code == 401 and "token" in r.json()["detail"]
        assert client.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        page = client.get("/?token=s3cret")
        assert page.status_code == 200 and "azr_token=s3cret" in page.headers["set-cookie"]
        assert "HttpOnly" in page.headers["set-cookie"]
        # The page's later requests (and its EventSource) carry the cookie.
        assert client.get("/api/books").status_code == 200
        client.cookies.clear()
        assert client.get("/api/books").status_code == 401
        assert client.get("/api/books", params={"token": "s3cret"}).status_code == 200


def resume_then_cancel(studio, run, paused, kind):
    """Resume a paused run: it continues from its own checkpoint (not a new run); then cancel it."""
    assert studio.http.post(f"/api/runs/{run['id']}/resume").json()["state"] in ("queued", "running")
    starts = studio.wait_for_resumed(run["id"])
    assert [e["state"] for e in starts] == ["started", "resumed"]
    assert starts[1]["step"] == paused["step"] and starts[1]["kind"] == kind
    assert studio.http.post(f"/api/runs/{run['id']}/cancel").status_code == 200
    cancelled = studio.wait(run["id"])
    assert cancelled["state"] == "cancelled" and cancelled["step"] >= paused["step"]


def test_milestones_and_quality_are_kept_with_the_run(tmp_path):
    """What a worker wrote before the studio stopped is read when it starts again: milestones,
    the real-word share and xz's bpb beside the model's; every message in the asked language."""
    home = tmp_path / "home"
    store.create_model(home, "m", ModelConfig(**TINY))
    reg = Registry(home)
    with reg.session() as s:
        s.add(Run(id="r1", model="m", books=["play"], params={"max_iterations": 100}, state="running",
                  max_iterations=100, created_at="2026-01-01T00:00:00", step=0, events_offset=0, events_count=0))
        s.commit()
    reg.close()
    beats = {"bpb": 2.1, "xz": 2.4}
    events = [
        {"type": "step", "step": 40, "loss": 2.0, "max_iterations": 100},
        {"type": "eval", "step": 40, "val_loss": 1.5, "val_bpb": 2.1, "xz_bpb": 2.4},
        {"type": "quality", "step": 40, "real_words": 0.73},
        {"type": "milestone", "step": 20, "code": "milestone.beats_xz", "params": beats,
         "message": "It now compresses the held-out text better than xz does."},
        {"type": "milestone", "step": 50, "code": "milestone.real_words", "params": {"percent": 60},
         "message": "60% of the words it writes are real words from your books."},
        {"type": "status", "state": "resumed", "step": 30},  # from a checkpoint before that milestone
        {"type": "step", "step": 40, "loss": 2.0, "max_iterations": 100},
        {"type": "milestone", "step": 40, "code": "milestone.real_words", "params": {"percent": 73},
         "message": "73% of the words it writes are real words from your books."},
    ]
    folder = run_dir(home, "m", "r1")
    folder.mkdir(parents=True)
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    with TestClient(create_app(home), base_url="http://127.0.0.1:8000") as client:
        run = client.get("/api/runs/r1", headers={"Accept-Language": "ru"}).json()
        assert run["state"] == "interrupted" and run["message_code"] == "jobs.studio_stopped_running"
        assert run["message"].startswith("Студия остановилась") and run["message_params"] == {"step": 40}
        assert run["real_words"] == 0.73 and run["last_eval"]["xz_bpb"] == 2.4
        assert [(m["step"], m["code"], m["params"]) for m in run["milestones"]] == [
            (20, "milestone.beats_xz", beats), (40, "milestone.real_words", {"percent": 73})]
        assert run["milestones"][1]["message"] == "73% слов, которые она пишет, — настоящие слова из ваших книг."
        en = client.get("/api/runs", headers={"Accept-Language": "en-GB"}).json()[0]
        assert en["message"].startswith("The studio stopped while this run was training (at step 40)")
        assert en["milestones"][0]["message"].startswith("It now compresses the held-out text better than xz")
        kinds = [e["type"] for e in client.get("/api/runs/r1/events").json()["events"]]
        assert kinds == ["step", "eval", "quality", "milestone", "milestone", "status", "step", "milestone",
                         "status"]
