"""Decode precisions side by side: our generation from fp32, bf16, int8 and int8dyn weights
(decode.py), each also with a compiled decode step where this machine can build one, what
``auto`` picks (compiled steps allowed, as for a run's rollouts), and transformers' generate()
on the same weights.

One process, one model per shape (random weights: speed does not depend on what was learned;
end-of-text is off, every row makes every token), --threads threads (default 1). The cases:

- ``default_b1``, ``default_b8``: the original default shape (d_model 256, 6 layers, 8 heads,
  d_ff 1024, vocab 8000, max_seq_len 256), 16-token prompts, 200 new tokens, temperature 0.8,
  top-k 40: tokens/s.
- ``p1_rollouts``: the P1 shape (d_model 192, 4 layers, vocab 1024, max_seq_len 128) as
  self-play makes rollouts: 4 prompts × group of 8 = 32 rows (each prompt on 8 consecutive
  rows, so the uncompiled step reads each prompt's keys once), 32-token prompts, 96 new tokens,
  temperature 0.3, no top-k: rollouts/s.

The contenders run interleaved (a different one first each repeat) so that load from other
processes hits all alike; reported are the medians of --repeats runs by wall time and by this
process's CPU time (with one thread, the computation's own time: steadier on a busy machine),
and ratios to fp32 and to transformers. Building the compiled steps happens in the warm-up,
not in the timed runs (``build_seconds`` reports it: a run pays it once). Also: each precision's largest logit difference from
fp32 on the prompts, as a share of the largest |logit|.

    OMP_NUM_THREADS=1 python benchmarks/rollouts_ab.py --repeats 5 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from azr_trainer import decode
from azr_trainer.checkpoint import build_model
from azr_trainer.export import export_hf
from azr_trainer.sample import Batch, generate

sys.path.insert(0, str(Path(__file__).parent))
from generate_vs_transformers import cpu_name, default_model  # noqa: E402

CASES = {
    "default_b1": dict(shape="default", rows=1, prompt=16, new=200, temperature=0.8, top_k=40),
    "default_b8": dict(shape="default", rows=8, prompt=16, new=200, temperature=0.8, top_k=40),
    "p1_rollouts": dict(shape="p1", rows=32, prompt=32, new=96, temperature=0.3, top_k=0, group=8),
}


def load(shape: str):
    obj = default_model(shape)
    model, cfg, _ = build_model(obj)
    model.eval()
    from transformers import AutoModelForCausalLM
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(obj, Path(tmp) / "hf", "f32")
        hf = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # both sides make exactly the asked tokens
    hf.generation_config.pad_token_id = 0
    return model, hf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--no-compiled", action="store_true", help="leave out compiled decode steps")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models: dict[str, tuple] = {}
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": cpu_name(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
              "threads": args.threads, "repeats": args.repeats, "cases": {}}
    for name in args.cases.split(","):
        case = CASES[name]
        if case["shape"] not in models:
            models[case["shape"]] = load(case["shape"])
        model, hf = models[case["shape"]]
        rows, new = case["rows"], case["new"]
        group = case.get("group", 1)  # rows that continue one prompt
        prompts = torch.randint(1, model.cfg.vocab_size, (rows // group, case["prompt"]),
                                generator=torch.Generator().manual_seed(1)).repeat_interleave(group, 0)
        choices = decode.candidates(model, compile=not args.no_compiled)
        precisions = decode.available(model)

        def ours(precision, seed):
            return lambda: generate(model, prompts.tolist(), max_new_tokens=new, temperature=case["temperature"],
                                    top_k=case["top_k"] or None, top_p=None, seed=seed, precision=precision)

        def theirs(seed):
            def run():
                torch.manual_seed(seed)
                with torch.no_grad():
                    return hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                                       min_new_tokens=new, do_sample=True, temperature=case["temperature"],
                                       top_k=case["top_k"], top_p=1.0)
            return run

        contenders = {p: (lambda s, p=p: ours(p, s)) for p in choices}
        if not args.no_transformers:
            contenders["transformers"] = theirs
        with torch.no_grad():
            ref = Batch(model, prompts.tolist(), precision="fp32").logits
            diffs = {p: round(float((Batch(model, prompts.tolist(), precision=p).logits - ref).abs().max()
                                    / ref.abs().max()), 4) for p in precisions}
        t = time.perf_counter()
        auto = decode.choose(model, rows, "auto", compile=not args.no_compiled, group=group)
        probe_s = time.perf_counter() - t
        names = list(contenders)
        build = {}
        for n in names:  # warm-up (builds the compiled steps, if the probe has not)
            t = time.perf_counter()
            contenders[n](0)()
            build[n] = round(time.perf_counter() - t, 2)
        wall = {n: [] for n in names}
        cpu = {n: [] for n in names}
        for r in range(args.repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                run = contenders[n](r)
                t, c = time.perf_counter(), time.process_time()
                run()
                wall[n].append(time.perf_counter() - t)
                cpu[n].append(time.process_time() - c)
        unit = "rollouts_per_s" if name.endswith("rollouts") else "tokens_per_s"
        work = rows if unit == "rollouts_per_s" else rows * new
        med = {n: (work / statistics.median(wall[n]), work / statistics.median(cpu[n])) for n in names}
        res = {"case": case, "unit": unit, "auto_choice": auto, "probe_seconds": round(probe_s, 2),
               "warm_up_seconds": build, "compile_failed": decode._COMPILE_FAILED[:1],
               "max_rel_logit_diff_vs_fp32": diffs, "runs": {}}
        for n in names:
            res["runs"][n] = {
                "wall": round(med[n][0], 2), "cpu": round(med[n][1], 2),
                "vs_fp32_wall": round(med[n][0] / med["fp32"][0], 2), "vs_fp32_cpu": round(med[n][1] / med["fp32"][1], 2),
                **({"vs_transformers_wall": round(med[n][0] / med["transformers"][0], 2),
                    "vs_transformers_cpu": round(med[n][1] / med["transformers"][1], 2)}
                   if "transformers" in med else {}),
                "wall_all": [round(work / w, 1) for w in wall[n]]}
        result["cases"][name] = res
        print(f"{name} ({unit}, median wall / CPU-time; auto chose {auto}):", file=sys.stderr)
        for n, v in res["runs"].items():
            print(f"  {n:16s} {v['wall']:9.1f} / {v['cpu']:9.1f}   ×{v['vs_fp32_cpu']} fp32"
                  + (f"   ×{v['vs_transformers_cpu']} transformers" if "vs_transformers_cpu" in v else ""),
                  file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
