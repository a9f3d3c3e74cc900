"""P2 + P3: training tokens/s, model FLOPs utilisation and peak memory of the original default model.

The model is the original description's default (d_model 256, 6 layers, 8 heads, d_ff 1024,
max_seq_len 256, vocab 8000, batch 16), trained through ``train.train`` on a real book.
MFU = achieved model FLOP/s (6·N per token plus attention, as nanoGPT/PaLM count it) ÷
the fp32 matmul GFLOP/s measured here, on the same thread count, right before.

    python benchmarks/train_throughput.py --book ../shared/data/tinyshakespeare.txt --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from azr_trainer import books, store
from azr_trainer.model import ModelConfig, training_flops_per_token
from azr_trainer.train import TrainConfig, train

DEFAULT = dict(vocab_size=8000, d_model=256, num_layers=6, num_heads=8, d_ff=1024, max_seq_len=256)


def matmul_gflops(threads: int, n: int = 1024, reps: int = 30) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(5):
        a @ b
    rates = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        rates.append(2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--book", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    peak = matmul_gflops(args.threads)
    rates: list[float] = []

    def on_event(e: dict) -> None:
        if e["type"] == "step" and e["step"] > 5:  # skip warm-up steps (allocator, first-touch)
            rates.append(e["tokens_per_s"])

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "books").mkdir()
        (home / "models").mkdir()
        books.add_book(home, args.book, name="book")
        cfg = ModelConfig(**DEFAULT)
        store.create_model(home, "p2", cfg)
        tc = TrainConfig(books=["book"], max_iterations=args.steps, batch_size=args.batch_size, save_every=10**9,
                         eval_every=10**9, threads=args.threads, sample_prompts=[], log_every=1)
        train(home, "p2", tc, listeners=[on_event], log=lambda m: print(m, file=sys.stderr))
    tps = statistics.median(rates)
    flops = training_flops_per_token(cfg, cfg.max_seq_len) * tps
    # ru_maxrss is KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    result = {"threads": args.threads, "batch_size": args.batch_size, "tokens_per_s": round(tps),
              "model_gflops": round(flops / 1e9, 1), "matmul_peak_gflops": round(peak, 1),
              "mfu": round(flops / 1e9 / peak, 3), "peak_rss_mib": round(rss / 2**20),
              "flops_per_token": training_flops_per_token(cfg, cfg.max_seq_len), "model": DEFAULT}
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
