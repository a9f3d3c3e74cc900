"""How long a training, self-play or reasoning run takes to end after the studio's cancel, for one or more versions of the code.

The studio cancels a run by writing "cancel" into the run's control file; the worker checks it
once a step (and, where a kind supports it, between the pieces of a step), then evaluates the quick
subset, saves and writes its last status event. This benchmark copies a trained model's data
folder (``--home``, model ``--model``) once per trial, starts a run of ``--kind`` on it (training
on the model's books: ten minutes; self-play: 150 steps or 12 minutes; reasoning: 150 steps or 8
minutes) in a worker process with the studio's settings (``--threads``), writes the control
file ``--delays`` seconds after the first step event, and measures the time from that write to
the run's last status event, and to the worker's exit. Versions (``--src``, a ``src`` folder
each, e.g. ``git worktree add /tmp/base COMMIT``) alternate trial by trial, so that a machine's
load hits them alike.

    python benchmarks/cancel_latency.py --home H --model big --src /tmp/base/src --src src --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The studio's defaults of the kind, turned into a config as the studio's worker does.
WORKER = r"""
import sys
from pathlib import Path
from azr_trainer.runloop import StopRequested
from azr_trainer.settings import RUN_GROUPS, time_budget
home, model, control, threads, kind = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
params = time_budget(kind, {**RUN_GROUPS[kind].studio_defaults(), "threads": threads})
stop = StopRequested(control)
if kind == "train":
    from azr_trainer import books as shelf, store
    from azr_trainer.train import TrainConfig, train
    books = store.get_model(home, model).books or [b.name for b in shelf.list_books(home)]
    s = train(home, model, TrainConfig(books=books, **params), stop=stop, log=lambda m: None)
elif kind == "selfplay":
    from azr_trainer.selfplay import SelfPlayConfig, selfplay
    s = selfplay(home, model, SelfPlayConfig(**params), stop=stop, log=lambda m: None)
else:
    from azr_trainer.reasoning import ReasonConfig, reason
    s = reason(home, model, ReasonConfig(**params), stop=stop, log=lambda m: None)
print(s["status"], s["step"], flush=True)
"""
KINDS = ("train", "selfplay", "reason")


def copy_home(src: Path, dst: Path, model: str) -> None:
    """The books, the model's folder without its earlier runs, and the machine's cached probes."""
    if (src / "books").exists():  # a from-zero reasoning model has none
        shutil.copytree(src / "books", dst / "books")
    shutil.copytree(src / "models" / model, dst / "models" / model,
                    ignore=shutil.ignore_patterns("runs", "selfplay", "reason"))
    for f in src.glob("*.json"):
        shutil.copy(f, dst / f.name)


def events_of(home: Path, model: str) -> Path | None:
    found = sorted((home / "models" / model / "runs").glob("*/events.jsonl"))
    return found[0] if found else None


def trial(src: str, home: Path, model: str, threads: int, delay: float, kind: str = "selfplay") -> dict:
    with tempfile.TemporaryDirectory(prefix="cancel-") as tmp:
        h = Path(tmp) / "home"
        copy_home(home, h, model)
        control = Path(tmp) / "control"
        env = {"PYTHONPATH": src, "OMP_NUM_THREADS": str(threads), "AZR_HOME": str(h), "PATH": "/usr/bin:/bin"}
        p = subprocess.Popen([sys.executable, "-c", WORKER, str(h), model, str(control), str(threads), kind], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while True:  # the first step event
            path = events_of(h, model)
            if path is not None and any('"type": "step"' in line for line in path.open(encoding="utf-8")):
                break
            if p.poll() is not None:
                raise RuntimeError(p.stdout.read())
            time.sleep(0.1)
        time.sleep(delay)
        t_cancel = time.time()
        control.write_text("cancel", encoding="utf-8")
        out = p.communicate()[0]
        t_exit = time.time()
        events = [json.loads(line) for line in path.open(encoding="utf-8")]
        steps = [e for e in events if e["type"] == "step"]
        last = [e for e in events if e["type"] == "status"][-1]
        return {"src": src, "delay": delay, "state": last["state"], "step": last["step"],
                "to_last_event": round(last["time"] - t_cancel, 2), "to_exit": round(t_exit - t_cancel, 2),
                "step_seconds": round((steps[-1]["time"] - steps[0]["time"]) / max(1, len(steps) - 1), 2),
                "worker": out.strip()[-120:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, type=Path, help="a data folder holding a trained model")
    ap.add_argument("--model", required=True)
    ap.add_argument("--src", action="append", required=True, help="a src folder; give several to compare")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kind", choices=KINDS, default="selfplay")
    ap.add_argument("--delays", default="2,4.5,7,9.5", help="seconds after the first step event, one trial each")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    for delay in [float(d) for d in args.delays.split(",")]:
        for src in args.src:
            r = trial(str(Path(src).resolve()), args.home, args.model, args.threads, delay, args.kind)
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    summary = {src: {"median_to_last_event": statistics.median(r["to_last_event"] for r in results if r["src"] == src),
                     "max_to_last_event": max(r["to_last_event"] for r in results if r["src"] == src),
                     "median_to_exit": statistics.median(r["to_exit"] for r in results if r["src"] == src)}
               for src in {r["src"] for r in results}}
    print(json.dumps({"trials": results, "summary": summary}, indent=2) if args.json else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
