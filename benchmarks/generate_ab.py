"""Generation tokens/s of two versions of the code side by side (e.g. before/after a change).

Each --src is a ``src`` folder (a checkout of another commit: ``git worktree add /tmp/base
COMMIT``). One worker process per version builds the same model (the default shape with the
same random weights, as benchmarks/generate_speed.py) and the runs alternate between them,
so that load from other processes on a shared machine hits both alike. Reported: the median
of --repeats runs per version, by wall time and by the worker's CPU time (with one thread
that is the computation's own time, steadier on a busy machine). Where a step is bound by
memory, one process can run 10–15% faster or slower than another of the same code for the
whole of its life (where its memory landed); ``--processes N`` gives each version N workers,
all alternating, and reports the median over them and each worker's own median.

    OMP_NUM_THREADS=1 python benchmarks/generate_ab.py --src /tmp/base/src --src src --batch 1 8
    OMP_NUM_THREADS=1 python benchmarks/generate_ab.py --src /tmp/base/src --src src --batch 32 \\
        --new 64 --top-k 0 --temperature 1.0     # batched rollouts
    OMP_NUM_THREADS=1 python benchmarks/generate_ab.py --src /tmp/base/src --src src --shape p1 \\
        --batch 32 --group 8 --prompt 32 --new 96 --top-k 0 --temperature 0.3 --processes 3   # as self-play makes them

``--shape p1`` is the P1 shape (d_model 192, 4 layers, 6 heads, d_ff 512, vocab 1024,
max_seq_len 128); ``--group N`` gives each prompt to N consecutive rows, as self-play's groups.

Precisions of one version side by side (and transformers): benchmarks/rollouts_ab.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

WORKER = r"""
import json, sys, time, torch
from azr_trainer.model import ModelConfig, Transformer
from azr_trainer.sample import generate
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
model = Transformer(ModelConfig(**json.loads(sys.argv[2])).validate()).eval()
group = int(sys.argv[3])
print("ready", flush=True)
for line in sys.stdin:
    batch, new, prompt, seed, top_k, temperature = line.split()
    prompts = [list(range(100 + i // group, 100 + i // group + int(prompt))) for i in range(int(batch))]
    t, c = time.perf_counter(), time.process_time()
    out = generate(model, prompts, max_new_tokens=int(new), temperature=float(temperature), top_k=int(top_k) or None, top_p=None,
                   seed=int(seed))
    n = sum(map(len, out))
    print(json.dumps([n / (time.perf_counter() - t), n / (time.process_time() - c)]), flush=True)
"""


# generate_vs_transformers.SHAPES, repeated: this process imports no version of the package
# (each worker imports its own --src)
SHAPES = {"default": dict(vocab_size=8000, d_model=256, num_layers=6, num_heads=8, d_ff=1024, max_seq_len=256),
          "p1": dict(vocab_size=1024, d_model=192, num_layers=4, num_heads=6, d_ff=512, max_seq_len=128)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", action="append", required=True, help="a src folder; give two (or more)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new", type=int, default=200, help="new tokens per run")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--top-k", type=int, default=40, help="0: off (as self-play's rollouts)")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--shape", choices=SHAPES, default="default")
    ap.add_argument("--group", type=int, default=1, help="consecutive rows per prompt (self-play: 8)")
    ap.add_argument("--processes", type=int, default=1, help="worker processes per version")
    ap.add_argument("--precision", help="decode precision for the versions that have a choice (fp32, bf16, int8, "
                                        "int8dyn; default: each measures its own): fp32 compares code at equal precision; "
                                        "a comma-separated list gives each --src its own (e.g. fp32,auto)")
    args = ap.parse_args()
    workers, owners = [], []  # a worker process, and the index of its version
    precisions = (args.precision or "auto").split(",")
    precisions += precisions[-1:] * (len(args.src) - len(precisions))
    for _ in range(args.processes):
        for v, (src, precision) in enumerate(zip(args.src, precisions)):
            env = {"PYTHONPATH": src, "OMP_NUM_THREADS": str(args.threads), "PATH": "/usr/bin:/bin",
                   **({"AZR_DECODE_PRECISION": precision} if precision != "auto" else {})}
            p = subprocess.Popen([sys.executable, "-c", WORKER, str(args.threads), json.dumps(SHAPES[args.shape]),
                                  str(args.group)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env)
            assert p.stdout.readline().strip() == "ready"
            workers.append(p)
            owners.append(v)
    result = {"shape": args.shape, "group": args.group, "threads": args.threads, "new_tokens": args.new,
              "prompt_tokens": args.prompt, "top_k": args.top_k, "temperature": args.temperature,
              "processes": args.processes, "runs": {}}
    for batch in args.batch:
        for w in workers:  # warm-up
            w.stdin.write(f"{batch} 20 {args.prompt} 0 {args.top_k} {args.temperature}\n")
            w.stdin.flush()
            w.stdout.readline()
        rates = [([], []) for _ in workers]
        for r in range(args.repeats):
            order = range(len(workers)) if r % 2 == 0 else reversed(range(len(workers)))
            for i in order:
                workers[i].stdin.write(f"{batch} {args.new} {args.prompt} {r} {args.top_k} {args.temperature}\n")
                workers[i].stdin.flush()
                wall, cpu = json.loads(workers[i].stdout.readline())
                rates[i][0].append(wall)
                rates[i][1].append(cpu)
        for v, (src, precision) in enumerate(zip(args.src, precisions)):
            mine = [rates[i] for i in range(len(workers)) if owners[i] == v]
            result["runs"].setdefault(src, {"precision": precision})[f"batch{batch}"] = {
                "wall_tokens_per_s": round(statistics.median([x for w, _ in mine for x in w]), 1),
                "cpu_tokens_per_s": round(statistics.median([x for _, c in mine for x in c]), 1),
                **({"cpu_tokens_per_s_per_process": [round(statistics.median(c), 1) for _, c in mine]}
                   if args.processes > 1 else {})}
    for w in workers:
        w.stdin.close()
        w.wait()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
