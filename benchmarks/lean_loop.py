"""The training loop against the bare model step: what the loop itself costs, at the P1 shape.

In one process on one thread, alternated ``--rounds`` times so that both see the same machine:

- **bare**: the model step alone — forward, backward, gradient clipping, AdamW — on one fixed
  batch, under the precision the run uses (no data, evaluations, logging, checks or saves);
- **loop**: ``train.train`` for ``--steps`` steps with no evaluations, samples or saves: the
  loop's own cost (data, the learning-rate schedule, the stop and finite checks, the step
  events, the memory trimmer);
- **budget** (``--seconds`` > 0, once at the end): ``train.train`` for a time budget with the
  product's evaluation cadence (the first evaluation within 30 s, then about every tenth of the
  budget, each with its samples): what a person's run gets, evaluations included.

tokens/s of the loops are counted between their first and last step events (the first step's
warm-up left out); the bare step's over its timed steps after three warm-up steps.

    python benchmarks/lean_loop.py --book ../shared/data/tinyshakespeare.txt --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from azr_trainer import autosize, books, settings, store
from azr_trainer.model import ModelConfig, Transformer
from azr_trainer.runloop import make_optimizer
from azr_trainer.train import TrainConfig, train

P1 = dict(vocab_size=1024, d_model=192, num_layers=4, num_heads=6, d_ff=512, max_seq_len=128, tokenizer="bpe")
SETTINGS = dict(batch_size=16, learning_rate=3e-3, warmup_iters=50, min_lr_ratio=0.05, weight_decay=0.1, beta2=0.99)


def bare_tokens_per_s(precision: str, steps: int) -> float:
    cfg = ModelConfig(**P1)
    model = Transformer(cfg)
    model.train()
    opt = make_optimizer(model, SETTINGS["learning_rate"], SETTINGS["weight_decay"], SETTINGS["beta2"],
                         torch.device("cpu"))
    x = torch.randint(0, cfg.vocab_size, (SETTINGS["batch_size"], cfg.max_seq_len))
    bf16 = precision == "bf16"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * x.numel() / (time.perf_counter() - t0)


def loop_tokens_per_s(home: Path, precision: str, threads: int, steps: int | None, seconds: float | None) -> dict:
    name = f"m{time.monotonic_ns()}"
    store.create_model(home, name, ModelConfig(**P1))
    marks: list[tuple[float, int]] = []
    evals = []

    def on_event(e: dict) -> None:
        if e["type"] == "step":
            marks.append((time.perf_counter(), e["tokens_seen"]))
        elif e["type"] == "eval":
            evals.append(e["step"])

    timed = settings.time_budget("train", {"minutes": seconds / 60}) if seconds else \
        dict(max_iterations=steps, eval_every=10**9)
    cfg = TrainConfig(books=["book"], threads=threads, precision=precision, save_every=10**9, log_every=1,
                      sample_prompts=[] if not seconds else None, **SETTINGS, **timed)
    summary = train(home, name, cfg, listeners=[on_event], log=lambda m: None)
    (t_first, tok_first), (t_last, tok_last) = marks[0], marks[-1]
    return {"tokens_per_s": (tok_last - tok_first) / (t_last - t_first), "steps": summary["step"],
            "evaluations": len(evals)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--book", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0, help="then one run of this time budget, evaluations included")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        books.add_book(home, args.book, name="book")
        precision = args.precision if args.precision != "auto" else \
            autosize.training_precision("auto", torch.device("cpu"), home, args.threads)
        bare, loop = [], []
        for _ in range(args.rounds):
            bare.append(bare_tokens_per_s(precision, args.steps))
            loop.append(loop_tokens_per_s(home, precision, args.threads, args.steps, None)["tokens_per_s"])
        budget = loop_tokens_per_s(home, precision, args.threads, None, args.seconds) if args.seconds else None
    b, lp = statistics.median(bare), statistics.median(loop)
    result = {"precision": precision, "threads": args.threads, "steps": args.steps, "rounds": args.rounds,
              "bare_tokens_per_s": [round(v) for v in bare], "loop_tokens_per_s": [round(v) for v in loop],
              "loop_vs_bare": round(lp / b, 3)}
    if budget:
        result["budget"] = {"seconds": args.seconds, **{k: round(v) for k, v in budget.items()},
                            "vs_bare": round(budget["tokens_per_s"] / b, 3)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{precision}: bare {b:.0f} tokens/s, loop {lp:.0f} ({lp / b:.0%} of bare)"
              + (f", a {args.seconds:g}-s run with its evaluations {budget['tokens_per_s']:.0f} "
                 f"({result['budget']['vs_bare']:.0%})" if budget else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
