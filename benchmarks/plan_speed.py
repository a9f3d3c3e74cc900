"""How well the plan predicts a shape's training speed: the probe's prediction against the bare
step of each shape the plan picks from, at the precision training uses here.

The probe (``autosize.measure_speed``, what every plan on this machine uses) is measured afresh;
then for each shape of the depth dial (2 to 6 layers, the vocabularies the plan gives small to
large books) the whole step (forward, backward, AdamW) at batch 16 × 128 is timed for
``--seconds``, and compared with what the plan expects of that shape: now (the width probes,
``MachineSpeed.gflops_at``) and before them (the small probe's one rate for every width). Both
include ``STEP_EFFICIENCY``, the share of a bare step a whole run is planned to reach.

    OMP_NUM_THREADS=1 python benchmarks/plan_speed.py --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime, timezone

import torch

from azr_trainer import autosize
from azr_trainer.model import training_flops_per_token

SHAPES = ((2, 300, "char"), (3, 332, "char"), (4, 512, "bpe"), (4, 1024, "bpe"), (5, 1024, "bpe"), (6, 1024, "bpe"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=4.0, help="timing per shape")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    speed = autosize.measure_speed(args.threads)
    precision = speed.precision if args.precision == "auto" else args.precision
    planned = autosize.as_trained(speed, precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    rows = []
    for layers, vocab, tokenizer in SHAPES:
        cfg = autosize.shape_for_layers(layers, vocab, 128, tokenizer)
        per_token = training_flops_per_token(cfg, 128)
        measured = autosize._probe_rate(dtype, args.seconds, cfg, batch=16) * 1e9 / per_token
        now = planned.gflops_at(cfg.d_model) * 1e9 * autosize.STEP_EFFICIENCY / per_token
        before = planned.gflops * 1e9 * autosize.STEP_EFFICIENCY / per_token
        rows.append({"shape": f"{layers} × {cfg.d_model}, {tokenizer} {vocab}", "measured_tokens_per_s": round(measured),
                     "planned_now": round(now), "ratio_now": round(measured / now, 2),
                     "planned_before": round(before), "ratio_before": round(measured / before, 2)})
        print(f"{rows[-1]['shape']:22s} measured {measured:8.0f}   planned {now:8.0f} ({measured / now:.2f})"
              f"   before {before:8.0f} ({measured / before:.2f})", file=sys.stderr)
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": args.threads,
           "precision": precision, "probe": asdict(speed), "step_efficiency": autosize.STEP_EFFICIENCY, "shapes": rows}
    print(json.dumps(out, indent=2) if args.json else out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
