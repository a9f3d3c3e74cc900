"""Readable in ten minutes: the share of real words a fresh auto-sized model writes at 1, 3 and 10
minutes of one run.

Through the library calls the studio makes (books.add_book, recipe.create for the "best model for N
minutes" plan, recipe.apply + settings.time_budget for the run's settings, train.train) in a fresh
temporary data folder. The run's own evaluations come at most 30 s after the first step and then
every tenth of the budget; each writes samples at the studio's generation settings (temperature
0.8, top-k 40, top-p 0.9). This
script gives each evaluation more samples than the studio does (--prompts openings of lines of the
held-out text, --length tokens each) so that the share is a steady figure, and reports the share of
written words that occur in the book's training text (milestones.real_word_share, the same measure
as the run's "N% of the words it writes are real words" line) at the evaluation nearest each mark.
Then the run's best model (best.pt: what generation and export use) and its last one (the final
step checkpoint, "latest" on the Generation page) are sampled again, --best-prompts openings ×
--seeds each, for a steady figure, with the share of their text copied verbatim from the book.

    python benchmarks/readable.py --book ../shared/data/ru_chekhov_kashtanka_cp1251.txt --minutes 10 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from azr_trainer import books, recipe, settings, store
from azr_trainer.books import read_book_text, split_train_val
from azr_trainer.checkpoint import build_model, resolve_checkpoint, safe_load
from azr_trainer.memorisation import BookIndex, find_copies
from azr_trainer.milestones import book_vocabulary, real_word_share
from azr_trainer.sample import generate
from azr_trainer.train import TrainConfig, train


def prompts_from(text: str, n: int) -> list[str]:
    """The first two words of ``n`` lines spread through ``text`` (lines with at least three words)."""
    lines = [ln.strip() for ln in text.splitlines() if len(ln.split()) >= 3]
    if not lines:
        return ["\n"] * n
    pick = [lines[i * len(lines) // n] for i in range(n)]
    return [" ".join(ln.split()[:2]) + " " for ln in pick]


def model_figures(home: Path, which: str, prompts: list[str], length: int, seeds: list[int], train_text: str,
                  vocabulary) -> dict:
    """What the person gets: the run's checkpoint ``which`` ("best": best.pt, what generation and
    export use by default; "latest": the run's last model) sampled at the studio's generation
    settings, each prompt once per seed; the share of real words (mean and sd over the seeds) and
    the share of the written text copied verbatim from the book (20+ characters, the studio's
    memorisation meter), so that more real words from learning the book by heart show as such."""
    obj = safe_load(resolve_checkpoint(store.model_dir(home, "m"), which))
    model, _, tokenizer = build_model(obj)
    model.eval()
    index = BookIndex.build({"book": train_text})
    shares, copied = [], []
    for seed in seeds:
        outs = generate(model, [tokenizer.encode(p) for p in prompts], max_new_tokens=length, seed=seed,
                        eot_id=tokenizer.eot_id)
        texts = [tokenizer.decode(o) for o in outs]
        shares.append(real_word_share("\n".join(texts), vocabulary))
        copied.append(statistics.mean(find_copies(t, index)["copied_fraction"] for t in texts))
    return {"step": obj.get("step"), "val_bpb": (obj.get("meta") or {}).get("val_bpb"),
            "real_words": round(statistics.mean(shares), 4),
            "real_words_sd": round(statistics.stdev(shares), 4) if len(shares) > 1 else 0.0,
            "copied": round(statistics.mean(copied), 4), "seeds": seeds, "prompts": len(prompts)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--book", required=True)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--threads", type=int, default=None, help="default: the studio's (device.default_threads)")
    ap.add_argument("--marks", default="1,3,10", help="minutes at which to report the share")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--length", type=int, default=64, help="new tokens per sample")
    ap.add_argument("--best-prompts", type=int, default=48, help="prompts for the best model's figure (each seed)")
    ap.add_argument("--seeds", default="1,2,3", help="sampling seeds for the best model's figure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    evals: list[dict] = []
    samples: dict[int, list[str]] = {}
    t0 = time.time()

    def on_event(e: dict) -> None:
        if e["type"] == "eval":
            evals.append({"wall_s": round(time.time() - t0, 1), "step": e["step"], "val_bpb": e.get("val_bpb")})
        elif e["type"] == "sample":
            samples.setdefault(e["step"], []).append(e["text"])

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        info = books.add_book(home, args.book, name="book")
        train_text, val_text = split_train_val(read_book_text(home, "book"))
        vocabulary = book_vocabulary(train_text)
        t0 = time.time()
        _, plan, made = recipe.create(home, "m", ["book"], args.minutes, args.threads)
        # the plan's own time (shorter than asked for a small book), as the studio's Training tab fills it in
        params = settings.time_budget("train", recipe.apply(home, "m", {}))
        params.pop("threads", None)
        cfg = TrainConfig(books=["book"], threads=args.threads, sample_prompts=prompts_from(val_text, args.prompts),
                          sample_length=args.length, save_every=10**9, **params)
        summary = train(home, "m", cfg, listeners=[on_event], log=lambda m: print(m, file=sys.stderr))
        again = {which: model_figures(home, which, prompts_from(val_text, args.best_prompts), args.length,
                                      [int(x) for x in args.seeds.split(",")], train_text, vocabulary)
                 for which in ("best", "latest")}
    best = again["best"]
    by_step = []
    for e in evals:
        texts = samples.get(e["step"], [])
        share = real_word_share("\n".join(texts), vocabulary) if texts else None
        by_step.append({**e, "real_words": None if share is None else round(share, 4)})
    marks = []
    for m in (float(x) for x in args.marks.split(",")):
        near = min(by_step, key=lambda e: abs(e["wall_s"] - 60 * m)) if by_step else None
        marks.append({"minutes": m, **(near or {})})
    final = by_step[-1]["real_words"] if by_step else None
    result = {"book": os.path.basename(args.book), "book_chars": info.chars,
              "minutes": args.minutes, "planned_minutes": made["minutes"],
              "threads": args.threads or "studio default", "marks": marks,
              "final_real_words": final,
              "best_model": best, "last_model": again["latest"],
              "final_val_bpb": summary["val_bpb"], "steps": summary["step"],
              "plan": {"parameters": plan.parameters, "layers": plan.model.num_layers, "d_model": plan.model.d_model,
                       "vocab_size": plan.model.vocab_size, "tokenizer": plan.model.tokenizer,
                       "epochs": plan.epochs, "dropout": plan.dropout},
              "evals": by_step, "last_samples": (samples.get(by_step[-1]["step"]) if by_step else [])[:3]}
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else
          "  ".join(f"{m['minutes']:g} min: {100 * m['real_words']:.0f}% real words"
                    for m in marks if m.get("real_words") is not None)
          + "".join(f"  {which} model: {100 * f['real_words']:.1f}% real words, {100 * f['copied']:.1f}% copied"
                    for which, f in again.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
