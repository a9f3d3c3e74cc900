"""The bare model step: tokens/s, MFU, peak memory and where the time goes (torch.profiler).

One training step of the model alone — forward, backward, AdamW — on random tokens, with no
data loading, evaluation, logging or checkpoints: the ceiling the training loop is compared
with. MFU = model FLOP/s (6·N per token plus attention, as nanoGPT/PaLM count it) ÷ the fp32
1024² matmul rate measured in the same process right before, on the same thread count.

    python benchmarks/profile_step.py --threads 1 --json                      # the original default model
    python benchmarks/profile_step.py --threads 1 --shape p1 --batch-size 16  # the P1 shape
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import torch

from azr_trainer.model import ModelConfig, Transformer, training_flops_per_token
from azr_trainer.train import TrainConfig, make_optimizer
from train_throughput import matmul_gflops  # the same peak as P2 (benchmarks/ is the script's folder)

SHAPES = {
    "default": dict(vocab_size=8000, d_model=256, num_layers=6, num_heads=8, d_ff=1024, max_seq_len=256),
    "p1": dict(vocab_size=1024, d_model=192, num_layers=4, num_heads=6, d_ff=512, max_seq_len=128),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="default")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--profile-steps", type=int, default=3, help="steps under torch.profiler (0: none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(**SHAPES[args.shape])
    T, B = cfg.max_seq_len, args.batch_size
    model = Transformer(cfg)
    tc = TrainConfig(books=["-"])  # the trainer's own optimizer settings
    opt = make_optimizer(model, tc.learning_rate, tc.weight_decay, tc.beta2, torch.device("cpu"))
    x = torch.randint(0, cfg.vocab_size, (B, T))
    y = torch.randint(0, cfg.vocab_size, (B, T))

    def step() -> None:
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    peak = matmul_gflops(args.threads)
    for _ in range(3):  # warm-up: allocator, first touch, kernel choice
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    tokens_per_s = B * T / statistics.median(times)
    flops = training_flops_per_token(cfg, T)

    shares = []
    if args.profile_steps:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile_steps):
                step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) or 1
        shares = sorted(((e.key, e.self_cpu_time_total / total) for e in events), key=lambda kv: -kv[1])[:8]

    result = {
        "shape": args.shape, "threads": args.threads, "batch_size": B, "seq_len": T,
        "tokens_per_s": round(tokens_per_s, 1), "step_ms_median": round(1000 * statistics.median(times), 1),
        "model_gflops": round(tokens_per_s * flops / 1e9, 2), "matmul_peak_gflops": round(peak, 2),
        "mfu": round(tokens_per_s * flops / 1e9 / peak, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "self_cpu_share": [{"op": k, "share": round(v, 3)} for k, v in shares],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['tokens_per_s']:.0f} tokens/s, MFU {result['mfu']:.0%} of {peak:.0f} GFLOP/s, "
              f"peak RSS {result['peak_rss_mib']:.0f} MiB")
        for s in result["self_cpu_share"]:
            print(f"  {s['share']:6.1%}  {s['op']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
