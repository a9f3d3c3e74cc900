"""S1: does text self-play make a pretrained book model write better, without hurting its bpb?

Starts from a model pretrained on Tiny Shakespeare with the P1 recipe (benchmarks/pretrain_budget.py),
trained once and cached in ``--cache``. Then, for each configuration and seed, copies that
model into a fresh data folder, runs ``selfplay.selfplay`` (the library call behind
``azr selfplay``) for ``--steps`` steps, and measures the starting model and the result on a
fixed evaluation:

- 64 prompts from the validation split (evenly spaced, 32 tokens, each starting at a line),
  one 200-token continuation each at temperature 0.8 (no top-k), sampling seed fixed;
- the default reward on those samples (coherence scored by the starting model; its length
  target set for 200 tokens), the repeated-4-gram rate and distinct-2 (words, see rewards.py);
- the unknown-word rate: the share of sample words that never occur in the training split
  (a reward-independent measure of gibberish);
- the same prompts decoded greedily (temperature 0): repeated-4-gram rate and distinct-2,
  where a small model's loops show;
- val bpb over the whole validation split.

Each run also reports its wall time (``selfplay_seconds``) and seconds per step.

Configurations: ``default`` (the shipped defaults), ``norealwords`` (the default before its
real-word term: ``real_words_weight`` 0), ``nokl`` (same, KL weight 0 and no book
loss), ``original`` (the originally described reward: diversity + length, default KL and book
loss), ``original_nokl`` (that reward with KL 0 and no book loss: the loop as first described).

    python benchmarks/selfplay_text.py --steps 150 --seeds 1,2,3 --threads 1 --json > bench_out/s1.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from azr_trainer import books, store
from azr_trainer.checkpoint import build_model, export_pt, safe_load
from azr_trainer.data import prepare_data
from azr_trainer.milestones import book_vocabulary, split_text
from azr_trainer.model import ModelConfig
from azr_trainer.rewards import Coherence, build_reward, preset_weights, repeated_ngram_rate, words
from azr_trainer.sample_eval import default_length_target, evaluate_samples, validation_prompts
from azr_trainer.selfplay import SelfPlayConfig, selfplay
from azr_trainer.train import TrainConfig, evaluate, train

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from pretrain_budget import RECIPE, TRAIN  # noqa: E402

BOOK = "tinyshakespeare"
CONFIGS = {
    "default": {},
    "norealwords": {"real_words_weight": 0.0},  # the default before its real-word term
    "nokl": {"kl_weight": 0.0, "lm_weight": 0.0},
    "lm05": {"lm_weight": 0.5},  # the book loss's weight, named whatever the default is
    "lm10": {"lm_weight": 1.0},
    "lm20": {"lm_weight": 2.0},
    "constant": {"min_lr_ratio": 1.0},  # the rate held after warm-up, or decayed over the run's steps
    "decay": {"min_lr_ratio": 0.1},
    "original": {"reward": "original"},
    "original_nokl": {"reward": "original", "kl_weight": 0.0, "lm_weight": 0.0},
}
EVAL = dict(prompts=64, prompt_tokens=32, length=200, temperature=0.8, seed=1234)


def pretrain(cache: Path, book: Path, seconds: float, threads: int) -> dict:
    """The P1 recipe for ``seconds`` on ``threads`` threads, once; later calls reuse it."""
    done = cache / "pretrain.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    if cache.exists():
        shutil.rmtree(cache)
    home = cache / "home"
    (home / "books").mkdir(parents=True)
    (home / "models").mkdir()
    books.add_book(home, book, name=BOOK)
    store.create_model(home, "base", ModelConfig(**RECIPE))
    cfg = TrainConfig(books=[BOOK], max_iterations=10**9, save_every=10**9, eval_every=10**9, max_time=seconds,
                      schedule="time", threads=threads, sample_prompts=[], log_every=50, **TRAIN)
    s = train(home, "base", cfg, log=lambda m: print(m, file=sys.stderr))
    info = {"val_bpb": s["val_bpb"], "steps": s["step"], "seconds": s["wall_seconds"], "recipe": RECIPE,
            "train": TRAIN, "threads": threads}
    done.write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


class FixedEval:
    """The evaluation every model in this benchmark gets (see the module docstring)."""

    def __init__(self, home: Path):
        mdir = home / "models" / "base"
        self.ref, mcfg, self.tok = build_model(safe_load(mdir / "checkpoints" / "best.pt"))
        self.data = prepare_data(home, mdir, [BOOK], mcfg.tokenizer, mcfg.vocab_size, log=lambda m: None)
        self.prompts = validation_prompts(self.data, self.tok, EVAL["prompts"], EVAL["prompt_tokens"])
        target = default_length_target(self.data, self.tok, EVAL["length"])
        # coherence is reported whether or not the default reward uses it (capped as in self-play)
        self.coherence = Coherence(self.ref, self.tok, cap=SelfPlayConfig().coherence_cap)
        self.weights = preset_weights("default")
        train_text = self.tok.decode(np.asarray(self.data.train, dtype=np.int64).tolist())
        self.vocab = set(words(train_text))
        self.reward = build_reward(self.weights, length_target=target, coherence=self.coherence,
                                   vocabulary=book_vocabulary(split_text(self.tok, self.data.train)))

    def __call__(self, model) -> dict:
        model.eval()
        s = evaluate_samples(model, self.tok, self.prompts, length=EVAL["length"], temperature=EVAL["temperature"],
                             seed=EVAL["seed"], reward=self.reward)
        g = evaluate_samples(model, self.tok, self.prompts, length=EVAL["length"], temperature=0.0, seed=0)
        ws = [w for t in s["texts"] for w in words(t) if any(c.isalpha() for c in w)]
        v = evaluate(model, self.data.val, self.data.val_bytes, model.cfg.max_seq_len, torch.device("cpu"),
                     lambda: torch.autocast("cpu", enabled=False), None)
        comps = {k[len("sample_reward_"):]: x for k, x in s.items() if k.startswith("sample_reward_")}
        comps.setdefault("coherence", float(np.mean(self.coherence(s["texts"], s["prompts"]))))
        reward = sum(w * comps[k] for k, w in self.weights.items())
        return {"reward": reward, "rep4": s["sample_rep4"], "distinct2": s["sample_distinct2"],
                "distinct2_corpus": s["sample_distinct2_corpus"], "words": s["sample_words"],
                "coherence": comps["coherence"],
                "unknown_words": sum(w not in self.vocab for w in ws) / max(1, len(ws)),
                "greedy_rep4": g["sample_rep4"], "greedy_distinct2": g["sample_distinct2"],
                "char_rep20": s["sample_char_rep20"], "greedy_char_rep20": g["sample_char_rep20"],
                "val_bpb": v["val_bpb"], "texts": s["texts"][:4], "greedy_texts": g["texts"][:2],
                "prompts": s["prompts"][:4], "components": comps,
                "rep4_max": max(repeated_ngram_rate(t) for t in s["texts"])}


def run_one(cache: Path, name: str, config: dict, seed: int, steps: int, threads: int, fixed: FixedEval) -> dict:
    base_home = cache / "home"
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        shutil.copytree(base_home, home, dirs_exist_ok=True)
        cfg = SelfPlayConfig(**{**dict(max_iterations=steps, threads=threads, seed=seed, eval_every=10**6,
                                       save_every=10**6, sample_every=10**6), **config})
        t0 = time.time()
        steps_log: list[dict] = []
        summary = selfplay(home, "base", cfg,
                           listeners=[lambda e: steps_log.append(e) if e["type"] == "step" else None],
                           log=lambda m: print(m, file=sys.stderr))
        wall = time.time() - t0
        obj = safe_load(Path(summary["checkpoint"]))
        res = fixed(build_model(obj)[0])
        keep = cache / "runs" / f"{name}-seed{seed}.pt"  # the result, for a later look (no optimizer)
        export_pt(obj, keep)
    res.update({"seed": seed, "steps": summary["step"], "selfplay_seconds": wall,
                "train_reward_first": float(np.mean([e["reward_mean"] for e in steps_log[:10]])),
                "train_reward_last": float(np.mean([e["reward_mean"] for e in steps_log[-10:]])),
                "kl_last": steps_log[-1]["kl"], "entropy_last": steps_log[-1]["entropy"],
                "rollouts_per_s": float(np.mean([e["rollouts_per_s"] for e in steps_log])),
                "tokens_per_s": float(np.mean([e["tokens_per_s"] for e in steps_log])),
                "step_seconds": float(np.mean([e["step_seconds"] for e in steps_log])),
                "config": asdict(cfg)})
    return res


def report(paths: list[str]) -> str:
    """Markdown tables (means ± sd over seeds) from one or more --json outputs of this script."""
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    start = runs[0]["start"]
    results = {k: v for r in runs for k, v in r["results"].items()}
    weights = preset_weights("default")
    for r in [start] + [r for rs in results.values() for r in rs]:
        if "components" in r:  # the reward as the default defines it now, whatever it was when measured
            r["reward"] = sum(w * r["components"].get(k, float("nan")) for k, w in weights.items())
    cols = [("reward", "reward", ".3f"), ("rep4", "rep-4 (T 0.8)", ".4f"), ("distinct2", "distinct-2", ".3f"),
            ("distinct2_corpus", "distinct-2 all", ".3f"), ("unknown_words", "unknown words", ".3f"),
            ("greedy_rep4", "rep-4 greedy", ".3f"), ("greedy_char_rep20", "char-rep-20 greedy", ".3f"),
            ("greedy_distinct2", "distinct-2 greedy", ".3f"),
            ("val_bpb", "val bpb", ".4f")]
    lines = ["| model | " + " | ".join(c[1] for c in cols) + " | Δ bpb | KL at end | s per run |",
             "|---|" + "---|" * (len(cols) + 3)]
    nan = float("nan")
    lines.append("| start | " + " | ".join(format(start.get(k, nan), f) for k, _, f in cols) + " | | | |")
    for name, rs in results.items():
        cells = []
        for k, _, f in cols:
            v = np.array([r.get(k, nan) for r in rs])
            cells.append(f"{v.mean():{f}} ± {v.std():{f}}" if len(v) > 1 else format(v.mean(), f))
        d = np.array([r["val_bpb"] / start["val_bpb"] - 1 for r in rs]) * 100
        kl = np.mean([r["kl_last"] for r in rs])
        secs = np.mean([r["selfplay_seconds"] for r in rs])
        lines.append(f"| {name} ({len(rs)} seeds) | " + " | ".join(cells)
                     + f" | {d.mean():+.2f}% | {kl:.3f} | {secs:.0f} |")
    lines += ["", "Per seed (rep-4 at T 0.8, rep-4 greedy, val bpb, reward):", ""]
    for name, rs in results.items():
        lines.append(f"- {name}: " + "; ".join(f"seed {r['seed']}: {r['rep4']:.4f}, {r['greedy_rep4']:.3f}, "
                                               f"{r['val_bpb']:.4f}, {r['reward']:.3f}" for r in rs))
    lines += ["", "| model | prompt | sample at T 0.8 (first 200 characters) | greedy (first 200 characters) |",
              "|---|---|---|---|"]

    def cell(t: str) -> str:
        return t[:200].replace("|", "\\|").replace("\n", " ⏎ ")
    lines.append(f"| start | {cell(start['prompts'][0])} | {cell(start['texts'][0])} "
                 f"| {cell(start['greedy_texts'][0])} |")
    for name, rs in results.items():
        r = rs[0]
        lines.append(f"| {name}, seed {r['seed']} | ″ | {cell(r['texts'][0])} | {cell(r['greedy_texts'][0])} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--book", default=str(HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt"))
    ap.add_argument("--cache", default=str(HERE.parent / "bench_out" / "selfplay_base"),
                    help="folder for the pretrained starting model (made once)")
    ap.add_argument("--pretrain-seconds", type=float, default=190)
    ap.add_argument("--steps", type=int, default=150, help="self-play steps per run")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--configs", default="default,nokl,original")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a SelfPlayConfig field in every configuration, e.g. --set kl_weight=0.2")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--report", nargs="+", metavar="JSON", help="print markdown tables from earlier --json outputs")
    args = ap.parse_args()
    if args.report:
        print(report(args.report))
        return 0
    torch.set_num_threads(args.threads)

    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        getattr(SelfPlayConfig(), key)  # unknown keys fail here
        for kind in (int, float, str):
            try:
                overrides[key] = kind(value)
                break
            except ValueError:
                continue
    cache = Path(args.cache)
    pre = pretrain(cache, Path(args.book), args.pretrain_seconds, args.threads)
    base_home = cache / "home"
    fixed = FixedEval(base_home)
    start = fixed(build_model(safe_load(base_home / "models" / "base" / "checkpoints" / "best.pt"))[0])
    print(f"start: {json.dumps({k: v for k, v in start.items() if 'texts' not in k and k != 'prompts'})}",
          file=sys.stderr)
    results: dict[str, list[dict]] = {}
    for name in args.configs.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            r = run_one(cache, name, {**CONFIGS[name], **overrides}, seed, args.steps, args.threads, fixed)
            results.setdefault(name, []).append(r)
            print(f"{name} seed {seed}: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                        for k, v in r.items() if k not in ("texts", "greedy_texts",
                                                                                           "prompts", "config")}),
                  file=sys.stderr)
    out = {"date": time.strftime("%Y-%m-%d"), "pretrain": pre, "eval": EVAL, "steps": args.steps,
           "overrides": overrides, "start": start, "results": results}
    if args.json:
        print(json.dumps(out, indent=1, ensure_ascii=False))
    else:
        keys = ("reward", "rep4", "distinct2", "unknown_words", "greedy_rep4", "val_bpb")
        print("config   " + " ".join(f"{k:>13s}" for k in keys))
        print("start    " + " ".join(f"{start[k]:13.4f}" for k in keys))
        for name, rs in results.items():
            print(f"{name:8s} " + " ".join(f"{np.mean([r[k] for r in rs]):13.4f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
