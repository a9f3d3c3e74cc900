"""R1: does AZR self-play make a from-zero model reason better on held-out programs?

1. Pretrains a tiny model from zero on random-generator triplets (``azr reason base
   --pretrain-only``), cached in ``--base``.
2. For each arm and seed, copies that data folder and runs the arm for ``--arm-time`` seconds of
   wall clock (equal compute: same machine, same threads, same time) with ``azr reason``:
   (2) ``pretrain``: continued pretraining on generator triplets,
   (3) ``solver_only``: solver RL on generator tasks,
   (4) ``frozen_proposer``: AZR, the proposer not trained,
   (5) ``azr``: full AZR.
   Arm (1) is the starting checkpoint itself. ``azr_decayed`` is (5) with the rate decayed over
   the arm's time to a tenth, as training and self-play do.
3. Evaluates every result with ``azr reason NAME --eval-only``: the held-out test set (shifted
   distribution: 3–5 steps, primitive pairs never seen back to back in pretraining), greedy
   exact-match accuracy per task type and pass@k at temperature 1; the in-distribution (train
   split) greedy accuracy too.
4. Prints per-arm means with 95% confidence intervals (t distribution over seeds) and, for the
   proposing arms, what the runs logged: valid-proposal rate, r̄ distribution, program size.

    python benchmarks/azr_reasoning.py --pretrain-time 480 --arm-time 150 --seeds 1,2,3 --parallel 2 \\
        --json bench_out/r1.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ARMS = ("start", "pretrain", "solver_only", "frozen_proposer", "azr")
# Arms that are another arm with other settings: name -> (mode, extra options of `azr reason`).
VARIANTS = {"azr_decayed": ("azr", ("--min-lr-ratio", "0.1"))}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
KINDS = ("deduction", "abduction", "induction")


def azr(home: Path, *args: str, threads: int) -> dict:
    cmd = [sys.executable, "-m", "azr_trainer.cli", "--home", str(home), "reason", *args,
           "--threads", str(threads), "--json", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout) if out.stdout.strip() else {}


def ci95(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(T975.get(len(v) - 1, 1.96) * v.std(ddof=1) / np.sqrt(len(v)))


def run_arm(args, arm: str, seed: int) -> dict:
    home = Path(args.work) / f"{arm}-{seed}"
    if home.exists():
        shutil.rmtree(home)
    shutil.copytree(args.base, home)
    res: dict = {"arm": arm, "seed": seed}
    checkpoint = "best"
    if arm != "start":
        t0 = time.time()
        mode, extra = VARIANTS.get(arm, (arm, ()))
        summary = azr(home, "base", "--mode", mode, *extra, "--max-time", str(args.arm_time), "--seed", str(seed),
                      "--eval-tasks", "1", "--eval-every", "1000000", threads=args.threads)
        res.update(wall=time.time() - t0, steps=summary["step"], programs_checked=summary["programs_checked"],
                   run=summary["run"])
        res["log"] = logged(home / "models" / "base" / "runs" / summary["run"] / "events.jsonl")
        checkpoint = "reason"
    for split in ("test", "train"):
        ev = azr(home, "base", "--eval-only", "--checkpoint", checkpoint, "--eval-split", split,
                 "--eval-tasks", str(args.eval_tasks), "--pass-k", str(args.pass_k if split == "test" else 1),
                 "--seed", str(seed), threads=args.threads)
        res[split] = {k: v for k, v in ev.items() if k.endswith(("acc", "_tasks")) or "pass@" in k}
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps({k: v for k, v in res.items() if k != "log"}), file=sys.stderr, flush=True)
    return res


def logged(path: Path) -> dict:
    """What a run logged: valid-proposal rate, r̄ and program size, first vs last third of steps."""
    steps = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [e for e in steps if e.get("type") == "step"]
    out = {}
    if not steps:
        return out
    third = max(1, len(steps) // 3)
    for label, part in (("first", steps[:third]), ("last", steps[-third:])):
        d = {}
        for kind in KINDS:
            for key in ("valid_rate", "solve_acc", "complexity", "propose_reward"):
                vals = [e[f"{kind}_{key}"] for e in part if e.get(f"{kind}_{key}") is not None]
                if vals:
                    d[f"{kind}_{key}"] = float(np.mean(vals))
            rb = [r for e in part for r in e.get(f"{kind}_rbar", [])]
            if rb:
                rb = np.asarray(rb)
                d[f"{kind}_rbar_hist"] = {"0": float((rb == 0).mean()), "mid": float(((rb > 0) & (rb < 1)).mean()),
                                          "1": float((rb == 1).mean()), "n": int(len(rb))}
        out[label] = d
    return out


def report(path: str) -> str:
    """Markdown tables from a saved --json result."""
    rep = json.loads(Path(path).read_text())
    table, lines = rep["table"], []
    cols = [("test:deduction_acc", "ded"), ("test:abduction_acc", "abd"), ("test:induction_acc", "ind"),
            ("test:mean_acc", "mean"), ("test:nontrivial_mean_acc", "mean, non-trivial tasks"),
            ("test:mean_pass@5", "mean pass@5"), ("train:mean_acc", "in-dist. mean")]
    lines.append("| arm | steps | " + " | ".join(c for _, c in cols) + " |")
    lines.append("|---" * (len(cols) + 2) + "|")
    for arm, row in table.items():
        steps = f"{row['steps'][0]:.0f}" if "steps" in row else "–"
        cells = [f"{row[k][0]:.3f} ± {row[k][1]:.3f}" if k in row else "–" for k, _ in cols]
        lines.append(f"| {arm} | {steps} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| arm | seed | first third → last third of steps: valid-proposal rate ded/abd/ind | "
                 "solver accuracy ded/abd/ind | r̄ share 0 / (0,1) / 1 (ded) |")
    lines.append("|---|---|---|---|---|")
    for r in rep["runs"]:
        log = r.get("log") or {}
        if not log or "deduction_valid_rate" not in log.get("first", {}):
            continue
        f, last = log["first"], log["last"]

        def trio(key, d):
            return "/".join(f"{d.get(f'{k}_{key}', float('nan')):.2f}" for k in KINDS)
        h = last.get("deduction_rbar_hist", {})
        lines.append(f"| {r['arm']} | {r['seed']} | {trio('valid_rate', f)} → {trio('valid_rate', last)} | "
                     f"{trio('solve_acc', f)} → {trio('solve_acc', last)} | "
                     f"{h.get('0', 0):.2f} / {h.get('mid', 0):.2f} / {h.get('1', 0):.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="bench_out/azr-base", help="data folder of the cached start model")
    ap.add_argument("--work", default="bench_out/azr-runs")
    ap.add_argument("--pretrain-time", type=float, default=480)
    ap.add_argument("--arm-time", type=float, default=150)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join(ARMS + tuple(VARIANTS))}")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--eval-tasks", type=int, default=64)
    ap.add_argument("--pass-k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=1, help="arms run at once (each with --threads)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--report", help="print markdown tables from a saved --json file and exit")
    args = ap.parse_args()
    if args.report:
        print(report(args.report))
        return
    base = Path(args.base)
    if not (base / "models" / "base").exists():
        t0 = time.time()
        azr(base, "base", "--pretrain-only", "--pretrain-time", str(args.pretrain_time), "--seed", "0",
            threads=args.threads)
        print(f"pretrained the start model in {time.time() - t0:.0f} s", file=sys.stderr)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    jobs = [(arm, int(s)) for s in args.seeds.split(",") for arm in args.arms.split(",")]
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda j: run_arm(args, *j), jobs))
    table = {}
    for arm in args.arms.split(","):
        rs = [r for r in results if r["arm"] == arm]
        row = {}
        for split in ("test", "train"):
            for key in rs[0][split]:
                row[f"{split}:{key}"] = ci95([r[split][key] for r in rs])
        if arm != "start":
            row["steps"] = ci95([r["steps"] for r in rs])
            row["programs_checked"] = ci95([r["programs_checked"] for r in rs])
        table[arm] = row
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "args": vars(args), "table": table, "runs": results}
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
