"""Reasoning from zero in one sitting, through the studio's REST API as the page drives it.

Starts a real `azr serve` on a free loopback port with a fresh data folder and makes the page's
three requests with the page's defaults, each after the one before has ended:
1. POST /api/reason/models: the from-zero model and the run that writes its triplets book;
2. POST /api/runs: the from-zero pretraining on that book (the page's minutes, batch and rate:
   settings' from_zero group);
3. POST /api/runs with kind "reason": the reasoning run at the studio's defaults.
Reports each part's wall time (request to the run's end), the sitting's total, the pretraining's
held-out bits per character and the reasoning run's held-out evaluation before and after.

    python benchmarks/reason_sitting.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from azr_trainer.jobs import ACTIVE
from azr_trainer.settings import FROM_ZERO, RUN_GROUPS

sys.path.insert(0, str(Path(__file__).parent))
from studio_latency import serving  # noqa: E402


def wait_for(c: httpx.Client, run_id: str, every: float = 1.0) -> dict:
    while True:
        run = c.get(f"/api/runs/{run_id}").json()
        if run["state"] not in ACTIVE:
            return run
        time.sleep(every)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="reasoner")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    parts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, serving(tmp, timeout=120) as (c, _):
        t0 = time.time()
        made = c.post("/api/reason/models", json={"name": args.name})
        made.raise_for_status()
        made = made.json()
        corpus = wait_for(c, made["run"]["id"], 0.5)
        t1 = time.time()
        parts["corpus"] = {"seconds": round(t1 - t0, 1), "state": corpus["state"]}
        pre = c.post("/api/runs", json={"model": args.name, "books": [made["book"]],
                                        "minutes": FROM_ZERO.default("pretrain_minutes"),
                                        "batch_size": FROM_ZERO.default("batch_size"),
                                        "learning_rate": FROM_ZERO.default("learning_rate")})
        pre.raise_for_status()
        pre = wait_for(c, pre.json()["id"])
        t2 = time.time()
        parts["pretraining"] = {"seconds": round(t2 - t1, 1), "state": pre["state"], "step": pre.get("step"),
                                "best_val_bpb": pre.get("best_val_bpb"), "last_eval": pre.get("last_eval")}
        body = {"model": args.name, "kind": "reason", **RUN_GROUPS["reason"].studio_defaults()}
        rs = c.post("/api/runs", json=body)
        rs.raise_for_status()
        rs = wait_for(c, rs.json()["id"])
        t3 = time.time()
        evals = [e for e in c.get(f"/api/runs/{rs['id']}/events").json()["events"] if e.get("type") == "eval"]
        parts["reasoning"] = {"seconds": round(t3 - t2, 1), "state": rs["state"], "step": rs.get("step"),
                              "settings": body, "first_eval": evals[0] if evals else None,
                              "last_eval": evals[-1] if evals else None}
    result = {"total_seconds": round(sum(p["seconds"] for p in parts.values()), 1), "cpu_count": os.cpu_count(),
              "parts": parts}
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else
          f"total {result['total_seconds'] / 60:.1f} min: "
          + ", ".join(f"{k} {v['seconds'] / 60:.1f} min ({v['state']})" for k, v in parts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
