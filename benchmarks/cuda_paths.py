"""The GPU paths on a CUDA machine, in one short run: decode speed per precision (compiled too)
against transformers' generate(), the training step's rate by shape, the public auto path
(`azr models create --auto`, `azr train`, with a compiled step too if asked) on the benchmark
books, generation, self-play and
reasoning through the command line, what `--nproc` beyond the GPUs there are says, the whole
training loop's rate against its bare step, and (with two GPUs or more) DDP over nccl.

Made for a lent GPU machine with little time on it: every part is timed, capped and
independent (one that fails is recorded and the rest go on), and the results are written
after each part, so a run cut short still reports what it did. Runs on a CPU too (slowly;
--quick shrinks everything), which is how it is checked before a GPU is at hand.

    python benchmarks/cuda_paths.py --books DIR --out results.json
    python benchmarks/cuda_paths.py --books DIR --out results.json --quick --parts decode,cli
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

from azr_trainer import autosize, decode, layout
from azr_trainer.model import Transformer, training_flops_per_token
from azr_trainer.runloop import make_optimizer
from azr_trainer.sample import generate

sys.path.insert(0, str(Path(__file__).parent))
from rollouts_ab import load  # noqa: E402

PARTS = ("decode", "cli", "nproc", "runs", "train_rates", "loop", "ddp")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict:
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "device": str(device), "cpus": os.cpu_count()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1), "cuda": torch.version.cuda,
                "bf16": torch.cuda.is_bf16_supported(), "gpus": torch.cuda.device_count()}
    return out


# ---- decode: tokens/s per precision and compiled step, against transformers

DECODE_CASES = {
    "default_b1": dict(shape="default", rows=1, prompt=16, new=200, temperature=0.8, top_k=40),
    "default_b8": dict(shape="default", rows=8, prompt=16, new=200, temperature=0.8, top_k=40),
    "p1_rollouts": dict(shape="p1", rows=32, prompt=32, new=96, temperature=0.3, top_k=0),
}


def part_decode(device: torch.device, quick: bool) -> dict:
    out = {}
    repeats = 1 if quick else 3
    for name, case in DECODE_CASES.items():
        model, hf = load(case["shape"])
        model, hf = model.to(device), hf.to(device)
        new = 8 if quick else case["new"]
        prompts = torch.randint(1, model.cfg.vocab_size, (case["rows"], case["prompt"]),
                                generator=torch.Generator().manual_seed(1))
        kw = dict(max_new_tokens=new, temperature=case["temperature"], top_k=case["top_k"] or None, top_p=None)
        # every plain precision, and one compiled step (each build takes a while): bf16's on a GPU
        choices = decode.candidates(model, compile=True)
        compiled = [c for c in choices if decode.split(c)[1]]
        keep = ["bf16" + decode.COMPILED] if "bf16" + decode.COMPILED in compiled else compiled[-1:]
        choices = [c for c in choices if not decode.split(c)[1] or c in keep]

        def ours(choice, seed):
            return generate(model, prompts.tolist(), seed=seed, precision=choice, **kw)

        def theirs(seed, dtype):
            ids = prompts.to(device)
            torch.manual_seed(seed)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                   do_sample=True, temperature=case["temperature"], top_k=case["top_k"], top_p=1.0)

        contenders = {c: (lambda s, c=c: ours(c, s)) for c in choices}
        contenders["transformers"] = lambda s: theirs(s, "fp32")
        if device.type == "cuda":
            contenders["transformers bf16 autocast"] = lambda s: theirs(s, "bf16")
        res = {"case": case | {"new": new}, "choices": choices, "warm_up_s": {}, "runs": {}}
        for c, run in contenders.items():  # warm-up: builds the compiled steps
            t = time.perf_counter()
            run(0)
            sync(device)
            res["warm_up_s"][c] = round(time.perf_counter() - t, 2)
        times = {c: [] for c in contenders}
        for r in range(repeats):
            for c, run in contenders.items():
                sync(device)
                t = time.perf_counter()
                run(r)
                sync(device)
                times[c].append(time.perf_counter() - t)
        unit_rollouts = name.endswith("rollouts")
        work = case["rows"] if unit_rollouts else case["rows"] * new
        for c, ts in times.items():
            res["runs"][c] = round(work / statistics.median(ts), 1)
        t = time.perf_counter()
        res["auto_choice"] = decode.choose(model, case["rows"], "auto", compile=True)
        res["auto_choice_reply"] = decode.choose(model, case["rows"], "auto", compile=False)
        res["probe_s"] = round(time.perf_counter() - t, 2)
        res["unit"] = "rollouts/s" if unit_rollouts else "tokens/s"
        res["compile_failed"] = decode._COMPILE_FAILED[:1]
        out[name] = res
        print(f"decode {name}: {res['runs']} auto={res['auto_choice']}", file=sys.stderr, flush=True)
    return out


# ---- the training step's rate by shape

def step_rate(cfg, batch: int, device: torch.device, seconds: float, compiled: bool) -> dict:
    model = Transformer(cfg).to(device)
    optimizer = make_optimizer(model, 1e-3, 0.1, 0.99, device)
    forward = torch.compile(model) if compiled else model
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.max_seq_len), device=device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward(x, x)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t = time.perf_counter()
    step()
    step()
    sync(device)
    first = time.perf_counter() - t
    t0, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
        if n % 10 == 0:
            sync(device)
    sync(device)
    dt = time.perf_counter() - t0
    tokens = n * batch * cfg.max_seq_len
    return {"layers": cfg.num_layers, "d_model": cfg.d_model, "seq": cfg.max_seq_len, "batch": batch,
            "compiled": compiled, "params": model.num_parameters(), "tokens_per_s": round(tokens / dt),
            "tflops": round(training_flops_per_token(cfg, cfg.max_seq_len) * tokens / dt / 1e12, 3),
            "first_two_steps_s": round(first, 2)}


def part_train_rates(device: torch.device, quick: bool) -> list:
    out = []
    layers = (2, 4) if quick else (2, 4, 6, 8, 12, 16)
    batches = (4,) if quick else (16, 64)
    for L in layers:
        seq = 128 if L <= 5 else 256 if L <= 9 else 512
        cfg = autosize.shape_for_layers(L, 4096, 64 if quick else seq, "bpe")
        for b in batches:
            out.append(step_rate(cfg, b, device, 0.3 if quick else 1.0, False))
            print(f"train rate {out[-1]}", file=sys.stderr, flush=True)
    return out


# ---- the command line, as a user runs it

class Azr:
    def __init__(self, home: Path, log: list):
        self.home, self.log = home, log

    def __call__(self, *args, timeout: float = 300) -> dict:
        cmd = [sys.executable, "-m", "azr_trainer.cli", "--home", str(self.home), *args]
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            rc, stdout, stderr = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, stdout, stderr = "timeout", str(e.stdout or ""), str(e.stderr or "")
        entry = {"args": list(args), "rc": rc, "wall_s": round(time.perf_counter() - t, 1)}
        try:
            entry["json"] = json.loads(stdout)
        except ValueError:
            entry["stdout"] = stdout[-1500:]
        if rc != 0:
            entry["stderr"] = stderr[-2500:]
        self.log.append(entry)
        print(f"azr {' '.join(args)} → rc {rc} in {entry['wall_s']} s", file=sys.stderr, flush=True)
        return entry


BOOKS = {"ts": "tinyshakespeare.txt", "pushkin": "ru_pushkin_belkin.txt", "kashtanka": "ru_chekhov_kashtanka_cp1251.txt"}


PROMPTS = {"ts": "ROMEO:", "pushkin": "Я", "kashtanka": "Каштанка"}


def part_cli(home: Path, books: Path, quick: bool, minutes: float, names: list[str], compile_too: bool) -> list:
    """The auto path on each book; with ``compile_too`` also the same plan trained with a compiled step."""
    log: list = []
    azr = Azr(home, log)
    for name in names:
        azr("books", "add", str(books / BOOKS[name]), "--name", name, "--json")
    quick_args = ["--max-iterations", "3"] if quick else []
    for name in names:
        for model, extra in [(name, [])] + ([(name + "-compiled", ["--compile", "on"])] if compile_too else []):
            azr("models", "create", model, "--auto", "--books", name, "--minutes", str(minutes), "--json")
            azr("train", model, "--books", name, "--json", *extra, *quick_args, timeout=120 + minutes * 60 * 2)
            azr("generate", model, PROMPTS[name], "--max-length", "200", "--seed", "1")
    return log


def part_runs(home: Path, quick: bool) -> list:
    log: list = []
    azr = Azr(home, log)
    azr("selfplay", "ts", "--max-iterations", "2" if quick else "6", "--json", timeout=300)
    azr("generate", "ts", "ROMEO:", "--checkpoint", "selfplay", "--max-length", "100", "--seed", "1")
    azr("reason", "rz", "--pretrain-time", "10" if quick else "20", "--max-iterations", "1" if quick else "2",
        "--json", timeout=300)
    return log


def part_nproc(home: Path) -> list:
    log: list = []
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    Azr(home, log)("train", "ts", "--books", "ts", "--nproc", str(gpus + 1), "--max-iterations", "2", "--json",
                   timeout=180)
    return log


LOOP_SHAPE = dict(layers=7, vocab=1024, window=256, batch=32)  # the GPU plan for Tiny Shakespeare in 1 minute


def part_loop(home: Path, books: Path, device: torch.device, quick: bool) -> dict:
    """The whole training loop (`azr train`: data, logging, evaluations, samples) against its bare
    step at one shape: the share of the step's rate a run reaches (a plan assumes 0.9)."""
    log: list = []
    azr = Azr(home, log)
    L, window, batch = LOOP_SHAPE["layers"], 64 if quick else LOOP_SHAPE["window"], 4 if quick else LOOP_SHAPE["batch"]
    cfg = autosize.shape_for_layers(L, LOOP_SHAPE["vocab"], window, "bpe")
    azr("books", "add", str(books / BOOKS["ts"]), "--name", "loop-book", "--json")
    azr("models", "create", "loop", "--vocab-size", str(cfg.vocab_size), "--d-model", str(cfg.d_model),
        "--num-layers", str(L), "--num-heads", str(cfg.num_heads), "--d-ff", str(cfg.d_ff),
        "--max-seq-len", str(window), "--json")
    precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    run = azr("train", "loop", "--books", "loop-book", "--batch-size", str(batch), "--compile", "off",
              "--precision", precision, "--minutes", "0.1" if quick else "0.5", "--json", timeout=300)
    bare = step_rate(cfg, batch, device, 0.3 if quick else 2.0, False)
    summary = run.get("json") or {}
    loop_rate = summary.get("tokens_per_s")
    out = {"runs": log, "bare_step": bare, "loop_tokens_per_s": loop_rate,
           "loop_share_of_bare": round(loop_rate / bare["tokens_per_s"], 3) if loop_rate else None}
    if summary.get("events"):
        out |= loop_parts(Path(summary["events"]), bare["tokens_per_s"])
    return out


def loop_parts(events: Path, bare_rate: float) -> dict:
    """Where a run's wall time went: the step events' rates between evaluations (the loop's own
    cost over the bare step) and the seconds of each evaluation with its samples."""
    rows = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines() if line.strip()]
    steps = [e for e in rows if e["type"] == "step"]
    busy, last_time = [], None
    for e in rows:  # an evaluation runs from the step event before it to the last sample after it
        if e["type"] == "eval" and last_time is not None:
            busy.append([last_time, e["time"]])
        elif e["type"] in ("sample", "quality", "milestone") and busy:
            busy[-1][1] = e["time"]
        if e["type"] == "step":
            last_time = e["time"]
    quiet = [e["tokens_per_s"] for e, before in zip(steps[1:], steps) if not any(
        before["time"] <= b[0] < e["time"] for b in busy)]
    median = statistics.median(quiet) if quiet else None
    return {"evals": len(busy), "eval_and_sample_s": round(sum(b - a for a, b in busy), 2),
            "steps_between_evals_tokens_per_s": median and round(median),
            "steps_share_of_bare": median and round(median / bare_rate, 3)}


def part_ddp(home: Path, books: Path, quick: bool) -> list:
    """With two GPUs or more: the same steps in one process and in two (DDP over nccl); their
    losses should match (tests/test_distributed.py checks this on CPU processes over gloo)."""
    log: list = []
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return [{"skipped": f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} GPU(s)"}]
    azr = Azr(home, log)
    azr("books", "add", str(books / BOOKS["ts"]), "--name", "ddp-book", "--json")
    for name, extra in (("ddp-one", []), ("ddp-two", ["--nproc", "2"])):
        azr("models", "create", name, "--vocab-size", "1024", "--d-model", "192", "--num-layers", "4",
            "--num-heads", "6", "--d-ff", "512", "--max-seq-len", "128", "--json")
        azr("train", name, "--books", "ddp-book", "--batch-size", "32", "--max-iterations", "5" if quick else "200",
            "--log-every", "1", "--compile", "off", "--json", *extra, timeout=300)
    return log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--books", required=True, help="folder with the benchmark books")
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--minutes", type=float, default=1.0, help="the auto path's time per book")
    ap.add_argument("--cli-books", default="ts,pushkin", help=f"books for the auto path, of {', '.join(BOOKS)}")
    ap.add_argument("--compile-too", action="store_true", help="also train each plan with a compiled step")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict = {"machine": machine(device), "errors": {}}
    out = Path(args.out)

    def save():
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")

    home = Path(tempfile.mkdtemp(prefix="azr-cuda-"))
    for part in args.parts.split(","):
        t = time.perf_counter()
        try:
            if part == "decode":
                result[part] = part_decode(device, args.quick)
            elif part == "train_rates":
                result[part] = part_train_rates(device, args.quick)
            elif part == "cli":
                result[part] = part_cli(home, Path(args.books), args.quick, args.minutes, args.cli_books.split(","),
                                        args.compile_too)
            elif part == "runs":
                result[part] = part_runs(home, args.quick)
            elif part == "nproc":
                result[part] = part_nproc(home)
            elif part == "loop":
                result[part] = part_loop(home, Path(args.books), device, args.quick)
            elif part == "ddp":
                result[part] = part_ddp(home, Path(args.books), args.quick)
            else:
                raise ValueError(f"no part {part!r}: {', '.join(PARTS)}")
        except Exception:  # noqa: BLE001 - record it and go on: the other parts still tell something
            result["errors"][part] = traceback.format_exc()[-3000:]
            print(result["errors"][part], file=sys.stderr, flush=True)
        result.setdefault("part_seconds", {})[part] = round(time.perf_counter() - t, 1)
        if layout.speed_file(home).exists():  # what the plans' probe measured (per machine and device)
            result["speed_probe"] = json.loads(layout.speed_file(home).read_text(encoding="utf-8"))
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
