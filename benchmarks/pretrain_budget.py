"""P1: the best val bpb a fixed wall-clock budget buys on a CPU.

Runs the project's recipe through the same library calls as `azr books add`,
`azr models create` and `azr train` (books.add_book, store.create_model, train.train) in a
fresh temporary data folder. The budget counts from process start: imports, tokenizer
training, tokenization, training and periodic evaluations. The final evaluation over the
whole validation split (last 10% of the book) runs after the budget, as the issue allows.

    python benchmarks/pretrain_budget.py --book ../shared/data/tinyshakespeare.txt \
        --seconds 190 --threads 1 --json
"""

from __future__ import annotations

import time

T0 = time.time()  # before the heavy imports: they count against the budget

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from azr_trainer import books, store  # noqa: E402
from azr_trainer.model import ModelConfig  # noqa: E402
from azr_trainer.train import TrainConfig, train  # noqa: E402

# The recipe, chosen by the sweeps recorded in BENCHMARKS.md: a small, wide-ish model on
# byte-level BPE (each token carries ~2.5 bytes, so the model sees more text per FLOP than
# a char model), short sequences, a high learning rate decayed over the time budget.
RECIPE = dict(vocab_size=1024, d_model=192, num_layers=4, num_heads=6, d_ff=512, max_seq_len=128, tokenizer="bpe")
TRAIN = dict(batch_size=16, learning_rate=3e-3, warmup_iters=50, min_lr_ratio=0.05, weight_decay=0.1, beta2=0.99)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--book", required=True)
    ap.add_argument("--seconds", type=float, default=190)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=150, help="steps between whole-split evals")
    ap.add_argument("--target", type=float, default=2.72, help="report when val bpb first reaches this")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe or training setting, e.g. --set d_model=256 --set learning_rate=2e-3")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    recipe, tcfg = dict(RECIPE), dict(TRAIN)
    for item in args.set:
        key, value = item.split("=", 1)
        target = recipe if key in recipe else tcfg
        if key in target:
            target[key] = type(target[key])(value)
        else:
            try:
                target[key] = float(value)
            except ValueError:
                target[key] = value  # a word: precision=bf16

    evals: list[dict] = []

    def on_event(e: dict) -> None:
        if e["type"] == "eval":
            evals.append({"wall_s": round(time.time() - T0, 1), "step": e["step"], "val_bpb": e["val_bpb"],
                          "full": e["full"]})

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "books").mkdir()
        (home / "models").mkdir()
        books.add_book(home, args.book, name="book")
        store.create_model(home, "p1", ModelConfig(**recipe))
        budget = args.seconds - (time.time() - T0)
        cfg = TrainConfig(books=["book"], max_iterations=10**9, save_every=10**9, eval_every=args.eval_every,
                          eval_windows=None, max_time=budget, schedule="time", threads=args.threads,
                          sample_prompts=[], log_every=50, **tcfg)
        summary = train(home, "p1", cfg, listeners=[on_event], log=lambda m: print(m, file=sys.stderr))
    reached = next((e for e in evals if e["val_bpb"] <= args.target), None)
    result = {
        "val_bpb": summary["val_bpb"], "val_loss": summary["val_loss"], "steps": summary["step"],
        "train_seconds": summary["wall_seconds"], "wall_seconds_total": round(time.time() - T0, 1),
        "budget_seconds": args.seconds, "threads": args.threads, "tokens_per_s": summary["tokens_per_s"],
        "tokens_seen": summary["tokens_seen"], f"seconds_to_{args.target}": reached["wall_s"] if reached else None,
        "recipe": recipe, "train": tcfg, "evals": evals,
    }
    print(json.dumps(result, indent=2) if args.json else
          f"val_bpb {result['val_bpb']:.4f} after {result['steps']} steps; reached {args.target} at "
          f"{result[f'seconds_to_{args.target}']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
