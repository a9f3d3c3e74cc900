"""The best model for N minutes, through the public command line.

In a fresh temporary data folder: ``azr books add BOOK``, ``azr models create p1 --auto --books
book --minutes M``, ``azr train p1 --books book --json`` (the plan's own time: M, or less for a
book that M minutes would read more than ``autosize.USEFUL_EPOCHS`` times). Reports the final val bpb,
the steps, tokens/s and the wall time, counted from the start of the create command (the
speed probe, the first time on a machine, counts against the budget; adding the book does not).

    python benchmarks/auto_budget.py --book ../shared/data/tinyshakespeare.txt --minutes 3.17 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def azr(home: str, *args: str) -> str:
    env = {**os.environ, "AZR_HOME": home}
    done = subprocess.run([sys.executable, "-m", "azr_trainer.cli", *args], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"azr {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--book", required=True)
    ap.add_argument("--minutes", type=float, default=3.17)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    m, th = f"{args.minutes:g}", str(args.threads)
    with tempfile.TemporaryDirectory() as home:
        azr(home, "books", "add", args.book, "--name", "book")
        t0 = time.time()
        created = json.loads(azr(home, "models", "create", "p1", "--auto", "--books", "book", "--minutes", m,
                                 "--threads", th, "--json"))
        create_s = time.time() - t0
        # no --minutes: the plan's own time, which is less than asked where the book is small
        summary = json.loads(azr(home, "train", "p1", "--books", "book", "--threads", th, "--json"))
        wall = time.time() - t0
    plan = created["plan"]
    result = {"book": os.path.basename(args.book), "minutes": args.minutes, "threads": args.threads,
              "val_bpb": summary["val_bpb"], "best_val_bpb": summary["best_val_bpb"], "steps": summary["step"], "tokens_per_s": summary["tokens_per_s"],
              "tokens_seen": summary.get("tokens_seen"), "train_seconds": summary["wall_seconds"],
              "create_seconds": round(create_s, 1), "wall_seconds_total": round(wall, 1),
              "budget_seconds": round(60 * args.minutes, 1), "planned_seconds": round(plan["max_time"], 1),
              "plan": {"parameters": plan["parameters"], "layers": plan["model"]["num_layers"],
                       "d_model": plan["model"]["d_model"], "vocab_size": plan["model"]["vocab_size"],
                       "tokenizer": plan["model"]["tokenizer"], "seq_len": plan["seq_len"],
                       "batch_size": plan["batch_size"], "learning_rate": plan["learning_rate"],
                       "expected_tokens_per_s": plan["expected_tokens_per_s"], "epochs": plan["epochs"],
                       "precision": plan["precision"]}}
    print(json.dumps(result, indent=2) if args.json else
          f"{result['book']}: val bpb {result['val_bpb']:.4f} after {result['steps']} steps, "
          f"{result['tokens_per_s']:.0f} tokens/s (planned {plan['expected_tokens_per_s']:.0f}), "
          f"{result['wall_seconds_total']:.1f} s from create to the end ({result['budget_seconds']:.0f} s budget); "
          f"plan: {plan['parameters']:,} parameters, {plan['model']['num_layers']} layers × {plan['model']['d_model']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
