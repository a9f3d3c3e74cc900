"""P4: generation tokens/s at batch 1 (and batch 8), with and without the KV cache.

Speed does not depend on what the weights learned, so the model is the original default
shape (d_model 256, 6 layers, 8 heads, d_ff 1024, max_seq_len 256, vocab 8000) with random
weights; end-of-text is disabled so every run generates exactly --new tokens.

    python benchmarks/generate_speed.py --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from azr_trainer.model import ModelConfig, Transformer
from azr_trainer.sample import generate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new", type=int, default=200, help="new tokens per run")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=8000, d_model=256, num_layers=6, num_heads=8, d_ff=1024,
                                    max_seq_len=256).validate()).eval()
    result = {"threads": args.threads, "new_tokens": args.new, "prompt_tokens": args.prompt}
    for batch in (1, 8):
        prompts = [list(range(100 + i, 100 + i + args.prompt)) for i in range(batch)]
        for use_cache in (True, False):
            rates = []
            for r in range(args.repeats):
                t = time.perf_counter()
                out = generate(model, prompts, max_new_tokens=args.new, temperature=0.8, top_k=40, top_p=None, seed=r,
                               use_cache=use_cache)
                rates.append(sum(map(len, out)) / (time.perf_counter() - t))
            result[f"batch{batch}_{'kv_cache' if use_cache else 'no_cache'}_tokens_per_s"] = round(
                statistics.median(rates), 1)
    result["kv_cache_speedup_batch1"] = round(result["batch1_kv_cache_tokens_per_s"] /
                                              result["batch1_no_cache_tokens_per_s"], 2)
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
