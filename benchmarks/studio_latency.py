"""Studio responsiveness while a training run keeps the cores busy.

Starts a real `azr serve` on a free loopback port with a fresh data folder, starts a run
(2 CPU threads, the original default model shape at batch 16) through the REST API, then:
- from a second process, a load of concurrent GETs on the status and list endpoints
  (/api/runs, /api/runs/{id}, /api/models, /api/books) for --seconds: p50/p95/max latency;
- the SSE stream of the run: for every step event, the delay between the worker writing it
  (its `time` field) and this client receiving it.

    python benchmarks/studio_latency.py --book ../shared/data/tinyshakespeare.txt --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(home: str, timeout: float = 60):
    """A real `azr serve` on a free loopback port over data folder ``home``, answering its health
    check: yields an httpx client on it (and its base URL); stopped on the way out."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "azr_trainer.cli", "--home", home, "serve", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c = httpx.Client(base_url=base, timeout=timeout)
        for _ in range(150):
            try:
                if c.get("/api/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield c, base
    finally:
        server.terminate()
        server.wait(timeout=30)


def load(base: str, run_id: str, seconds: float, concurrency: int, out: "mp.Queue") -> None:
    """Runs in its own process: `concurrency` threads firing GETs back to back."""
    paths = ["/api/runs", f"/api/runs/{run_id}", "/api/models", "/api/books"]
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.time() + seconds

    def worker(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            k = i
            while time.time() < stop:
                t = time.perf_counter()
                r = c.get(paths[k % len(paths)])
                r.raise_for_status()
                with lock:
                    lat.append((time.perf_counter() - t) * 1000)
                k += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(lat)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--book", required=True)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp, serving(tmp) as (c, base):
        with open(args.book, "rb") as f:
            c.post("/api/books", files={"file": ("book.txt", f, "text/plain")}, data={"name": "book"}).raise_for_status()
        c.post("/api/models", json=dict(name="m", vocab_size=8000, d_model=256, num_layers=6, num_heads=8,
                                        d_ff=1024, max_seq_len=256)).raise_for_status()
        run = c.post("/api/runs", json=dict(model="m", books=["book"], max_iterations=100000, batch_size=16,
                                            learning_rate=3e-4, save_every=100000, eval_every=100000,
                                            threads=2)).json()
        run_id = run["id"]
        # wait until the worker is really training (tokenizer done, first step written)
        while c.get(f"/api/runs/{run_id}").json().get("step", 0) < 1:
            time.sleep(0.5)

        delays: list[float] = []

        def watch() -> None:
            with httpx.Client(base_url=base, timeout=None) as sc:
                with sc.stream("GET", f"/api/runs/{run_id}/stream") as r:
                    started = time.time()
                    for line in r.iter_lines():
                        if line.startswith("data:"):
                            e = json.loads(line[5:])
                            if e.get("type") == "step" and e["time"] > started:  # live ones, not the replay
                                delays.append((time.time() - e["time"]) * 1000)
                        if time.time() - started > args.seconds + 5:
                            return

        sse = threading.Thread(target=watch, daemon=True)
        sse.start()
        q: mp.Queue = mp.get_context("spawn").Queue()
        p = mp.get_context("spawn").Process(target=load, args=(base, run_id, args.seconds, args.concurrency, q))
        p.start()
        lat = q.get()
        p.join()
        sse.join(timeout=args.seconds + 10)
        c.post(f"/api/runs/{run_id}/cancel")
    lat.sort()
    result = {
        "requests": len(lat), "concurrency": args.concurrency, "seconds": args.seconds,
        "p50_ms": round(statistics.median(lat), 1), "p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 1),
        "max_ms": round(lat[-1], 1), "training_threads": 2, "cpu_count": os.cpu_count(),
        "sse_step_events": len(delays),
        "sse_delay_median_ms": round(statistics.median(delays), 1) if delays else None,
        "sse_delay_max_ms": round(max(delays), 1) if delays else None,
    }
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
