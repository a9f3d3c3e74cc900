"""The `azr` command: a thin layer over the library (books, store, train, sample, checkpoint)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from . import books as books_mod
from . import catalogue, store
from . import settings as settings_mod
from .checkpoint import build_model, resolve_checkpoint, safe_load
from .home import UserError, home_dir
from .model import ModelConfig, count_parameters, estimate_training_memory
from .settings import FROM_ZERO, GENERATE, MODEL, REASON, SELFPLAY, TRAIN


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_json(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


# ---- books ---------------------------------------------------------------------------------

def cmd_books_add(args, home):
    info = books_mod.add_book(home, args.path, name=args.name, encoding=args.encoding, overwrite=args.overwrite)
    if args.json:
        return _print_json(info.to_dict())
    how = "detected" if info.detected else "given"
    print(f"Added book '{info.name}': encoding {info.encoding} ({how}), {_fmt_bytes(info.source_bytes)} on disk, "
          f"{info.chars:,} characters, {info.lines:,} lines.")
    print("Preview: " + info.preview[:200].replace("\n", " ⏎ "))


def cmd_books_list(args, home):
    items = books_mod.list_books(home)
    if args.json:
        return _print_json([b.to_dict() for b in items])
    if not items:
        print("No books yet. Add one with: azr books add PATH")
    for b in items:
        print(f"{b.name:30s} {b.encoding:12s} {b.chars:>12,} chars  {b.created_at}")


def cmd_books_cat(args, home):
    path = books_mod.book_text_path(home, args.name)
    books_mod.get_book(home, args.name)
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            out.write(chunk)
    out.flush()


def cmd_books_delete(args, home):
    books_mod.delete_book(home, args.name)
    print(f"Deleted book '{args.name}'.")


# ---- models --------------------------------------------------------------------------------

def _model_summary(info: store.ModelInfo) -> dict:
    d = info.to_dict()
    d["training_memory_estimate_bytes"] = estimate_training_memory(info.config, batch_size=16)
    return d


def _create_auto(args, home, shape_given: list[str]):
    """--auto: the shape and the training recipe from the books, the minutes and this machine."""
    from . import recipe as recipe_mod
    if shape_given:  # the plan decides the whole shape; half of one would break its balance
        raise UserError("auto.shape_given", names=", ".join(shape_given))
    if args.minutes is None:
        raise UserError("auto.no_minutes")
    books = [b.strip() for item in (args.books or []) for b in item.split(",") if b.strip()]
    info, plan, rec = recipe_mod.create(home, args.name, books, args.minutes, args.threads)
    if args.json:
        return _print_json({**_model_summary(info), "plan": plan.to_dict()})
    cfg, exp = info.config, rec["expected"]
    print(f"Created model '{info.name}' for {args.minutes:g} minutes on {', '.join(books)} "
          f"({_fmt_bytes(rec['book_bytes'])} of text): {exp['parameters']:,} parameters ({cfg.num_layers} layers × "
          f"d_model {cfg.d_model}, {cfg.num_heads} heads, d_ff {cfg.d_ff}, {cfg.tokenizer} tokenizer, vocab "
          f"{cfg.vocab_size}, windows of {plan.seq_len} tokens).")
    print(f"Expected: about {exp['tokens_per_s']:,.0f} tokens/s, {exp['steps']:,} steps of batch {plan.batch_size}, "
          f"{exp['tokens']:,} tokens, {exp['epochs']:g} passes over the books; learning rate {plan.learning_rate:g}, "
          f"warm-up {plan.warmup_iters} steps, precision {plan.precision}.")
    print(f"Next: azr train {info.name} --books {','.join(books)} --minutes {args.minutes:g}")


def cmd_models_create(args, home):
    from .device import available_memory_bytes, pick_device
    shape = {s.name: getattr(args, s.name) for s in MODEL if getattr(args, s.name, None) is not None}
    if args.auto:
        return _create_auto(args, home, sorted(shape) + (["tie_embeddings"] if args.untied else []))
    if args.books or args.minutes is not None or args.threads is not None:
        raise UserError("auto.needs_auto")
    shape = {**{s.name: s.default for s in MODEL}, **shape, "tie_embeddings": not args.untied}
    MODEL["tokenizer"].check(shape["tokenizer"])  # bpe or char: "hf" only comes with an imported model
    cfg = ModelConfig(**shape)
    info = store.create_model(home, args.name, cfg, max_memory=available_memory_bytes(pick_device("auto")))
    if args.json:
        return _print_json(_model_summary(info))
    mem = estimate_training_memory(cfg, batch_size=16)
    print(f"Created model '{info.name}': {count_parameters(cfg):,} parameters "
          f"({cfg.num_layers} layers × d_model {cfg.d_model}, {cfg.num_heads} heads, d_ff {cfg.d_ff}, "
          f"max_seq_len {cfg.max_seq_len}, vocab {cfg.vocab_size}, {cfg.tokenizer} tokenizer).")
    print(f"Training memory estimate at batch_size 16: about {_fmt_bytes(mem)} (fp32).")


def cmd_models_list(args, home):
    items = store.list_models(home)
    if args.json:
        return _print_json([m.to_dict() for m in items])
    if not items:
        print("No models yet. Create one with: azr models create NAME")
    for m in items:
        bpb = f"{m.best_val_bpb:.3f}" if m.best_val_bpb is not None else "-"
        print(f"{m.name:30s} {m.parameters:>12,} params  steps {m.trained_steps:<8} best val bpb {bpb}")


def cmd_models_show(args, home):
    info = store.get_model(home, args.name)
    d = _model_summary(info)
    d["checkpoints"] = store.checkpoint_steps(home, args.name)
    if args.json:
        return _print_json(d)
    for k, v in d.items():
        print(f"{k}: {v}")


def cmd_models_delete(args, home):
    store.delete_model(home, args.name)
    print(f"Deleted model '{args.name}'.")


def cmd_models_export(args, home):
    from .export import DEFAULT_DTYPE, export_model
    info = store.get_model(home, args.name)
    dtype = args.dtype or DEFAULT_DTYPE[args.format]
    if args.output:
        out = Path(args.output)
    else:  # beside the user, like the .pt always was
        out = Path({"pt": f"{info.name}.pt", "hf": f"{info.name}-hf.zip" if args.zip else f"{info.name}-hf",
                    "gguf": f"{info.name}-{dtype}.gguf"}[args.format])
    result = export_model(home, info.name, args.format, out, dtype=dtype, checkpoint=args.checkpoint,
                          as_zip=args.zip)
    if args.json:
        return _print_json(result)
    if result["note"]:
        print(f"Note: {result['note']}", file=sys.stderr)
    src = Path(result["checkpoint"]).name
    print(f"Exported '{info.name}' ({src}) to {out} ({_fmt_bytes(result['bytes'])}).")
    if args.format == "gguf":
        modelfile = Path(result["files"][-1]).name
        print(f"Ollama: cd {Path(result['path']).parent} && ollama create {info.name.lower().replace(' ', '-')} "
              f"-f {modelfile}")


def cmd_models_import(args, home):
    import shlex
    from .importer import import_model
    quiet = args.json
    result = import_model(home, args.path, args.name, max_seq_len=args.max_seq_len,
                          log=(lambda m: print(m, file=sys.stderr)) if not quiet else (lambda m: None))
    if args.json:
        return _print_json(result)
    cfg = ModelConfig.from_dict(result["config"])
    src = result["imported_from"]
    print(f"Imported '{result['name']}' from {src['format']} ({src['path']}): {result['parameters']:,} parameters "
          f"({cfg.num_layers} layers × d_model {cfg.d_model}, {cfg.num_heads} heads"
          f"{f' / {cfg.kv_heads} kv heads' if cfg.kv_heads != cfg.num_heads else ''}, d_ff {cfg.d_ff}, "
          f"max_seq_len {cfg.max_seq_len}, vocab {cfg.vocab_size}, {cfg.tokenizer} tokenizer, "
          f"end of text {result['eos_token']!r}).")
    if result["note"]:
        print(f"Note: {result['note']}")
    q = shlex.quote(result["name"])
    print(f"Try it: azr generate {q} \"Once upon a time\"   ·   fine-tune: azr train {q} --books BOOK")


# ---- train ---------------------------------------------------------------------------------

class _ProgressBar:
    """Renders training events as a tqdm bar: step/total, loss, tokens/s, elapsed<remaining."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __call__(self, e: dict) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm
        if e["type"] == "status" and e["state"] in ("started", "resumed"):
            total = e["max_iterations"]
            if total is not None and total >= TRAIN["max_iterations"].upper:
                total = None  # a time budget ends the run, not a number of steps
            self.bar = tqdm(total=total, initial=e["step"], unit="step", dynamic_ncols=True, file=sys.stderr)
        elif e["type"] == "step" and self.bar is not None:
            self.bar.update(e["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{e['loss']:.3f}", tok_s=f"{e['tokens_per_s']:.0f}", refresh=False)
        elif e["type"] == "eval" and self.bar is not None:
            self.bar.write(f"step {e['step']}: val loss {e['val_loss']:.4f}, ppl {e['val_ppl']:.1f}, "
                           f"val bpb {e['val_bpb']:.4f}")
        elif e["type"] == "sample" and self.bar is not None:
            self.bar.write(f"sample @ {e['step']}: {(e['prompt'] + e['text'])[:120]!r}")
        elif e["type"] == "status" and self.bar is not None:
            self.bar.close()


def stop_on_signals(control_file: Path | None = None, watch_parent: bool = False):
    """The stop flag a training or self-play loop checks: the studio's control file, the studio
    exiting, or the first Ctrl-C / SIGTERM (checkpoint and stop). A second Ctrl-C aborts at once."""
    from .train import StopRequested
    stop = StopRequested(control_file, watch_parent=watch_parent)

    def on_signal(signum, _frame):
        if stop.reason:
            raise KeyboardInterrupt
        stop.request(signal.Signals(signum).name)
    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, on_signal)
    return stop


def _given(group, args, skip=()) -> dict:
    """The settings of ``group`` given on the command line; the config has the others' defaults."""
    return {s.name: getattr(args, s.name) for s in group
            if s.name not in skip and getattr(args, s.name, None) is not None}


def _run_torchrun(args, home) -> None:
    """Re-run this same `azr train` command under torchrun (PyTorch's own launcher), N processes."""
    import subprocess
    argv = [a for a in sys.argv[1:]]
    skip = {"--nproc", "--nnodes", "--rdzv-endpoint"}
    cleaned, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a.split("=", 1)[0] in skip:
            i += 1 if "=" in a else 2
            continue
        if a == "--home":
            i += 2
            continue
        cleaned.append(a)
        i += 1
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise UserError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT (the same on every machine).")
    from .worker import torchrun_command, torchrun_env
    cmd = torchrun_command(args.nproc, ["-m", "azr_trainer.cli", "--home", str(home)] + cleaned,
                           nnodes=args.nnodes, endpoint=args.rdzv_endpoint)
    env = torchrun_env(args.nproc, args.threads)
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise SystemExit(rc)


def exit_torchrun_worker() -> None:
    """Under torchrun, leave right after the work is saved and reported: under heavy CPU load a
    rank sometimes aborted in the C++ teardown of the (already destroyed) process group at
    interpreter exit ("terminate called without an active exception"), and torchrun then calls
    the whole finished run failed. Outside torchrun: nothing happens."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def cmd_train(args, home):
    from .train import TrainConfig, train
    args.nproc = args.nproc or TRAIN.default("nproc")
    processes = max(args.nproc * args.nnodes, int(os.environ.get("WORLD_SIZE", "1")))
    from .recipe import apply
    given = apply(home, args.name, _given(TRAIN, args, skip=("nproc",)))  # an auto-sized model's recipe
    params = settings_mod.time_budget("train", given, processes=processes)
    if args.nproc > 1 or args.nnodes > 1:
        return _run_torchrun(args, home)
    cfg = TrainConfig(books=[b.strip() for b in args.books.split(",") if b.strip()], **params)
    stop = stop_on_signals()
    quiet = args.json or args.quiet
    log = (lambda m: print(m, file=sys.stderr)) if quiet else print
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 reports
    summary = train(home, args.name, cfg, listeners=[_ProgressBar(not quiet and rank == 0)], stop=stop,
                    log=log if rank == 0 else (lambda m: None), run_id=args.run_id)
    if rank != 0:
        exit_torchrun_worker()
    if args.json:
        _print_json(summary)
        return exit_torchrun_worker()
    bpb = f"{summary['val_bpb']:.4f}" if summary["val_bpb"] is not None else "-"
    total = "" if summary["max_iterations"] >= TRAIN["max_iterations"].upper else f"/{summary['max_iterations']}"
    print(f"{summary['status']}: step {summary['step']}{total}, train loss "
          f"{summary['train_loss'] if summary['train_loss'] is None else round(summary['train_loss'], 4)}, "
          f"val bpb {bpb}, {summary['tokens_per_s']:.0f} tokens/s, {summary['wall_seconds']:.1f} s.")
    print(f"Checkpoint: {summary['checkpoints'][-1]}")
    exit_torchrun_worker()


# ---- selfplay ------------------------------------------------------------------------------

class _SelfPlayProgress(_ProgressBar):
    """The training bar, with the reward, KL and rollouts/s instead of the loss."""

    def __call__(self, e: dict) -> None:
        if not self.enabled or self.bar is None or e["type"] not in ("step", "eval", "sample"):
            return super().__call__(e)
        if e["type"] == "step":
            self.bar.update(e["step"] - self.bar.n)
            self.bar.set_postfix(reward=f"{e['reward_mean']:.3f}", kl=f"{e['kl']:.4f}",
                                 rollouts_s=f"{e['rollouts_per_s']:.0f}", refresh=False)
        elif e["type"] == "eval":
            bpb = f"val bpb {e['val_bpb']:.4f}, " if "val_bpb" in e else ""
            self.bar.write(f"step {e['step']}: {bpb}samples: reward {e['sample_reward']:.3f}, repeated 4-grams "
                           f"{e['sample_rep4']:.2%}, distinct-2 {e['sample_distinct2']:.3f}; greedy: repeated "
                           f"4-grams {e['greedy_rep4']:.2%}")
        elif e.get("rank") == "best" and e["step"] % 25 == 0:
            self.bar.write(f"best sample @ {e['step']} (reward {e['reward']:.3f}): {(e['prompt'] + e['text'])[:160]!r}")


def cmd_selfplay(args, home):
    from .selfplay import SelfPlayConfig, selfplay
    given = {**_given(SELFPLAY, args), "reward_weights": args.reward_weights}
    given.setdefault("reward_file", None)
    if args.reward and args.reward.endswith(".py"):
        if args.reward_file:
            raise UserError("Give the reward file once: --reward FILE.py or --reward-file FILE.py.")
        given["reward_file"], args.reward = args.reward, None
    given["reward"] = args.reward or ("file" if given["reward_file"] else SELFPLAY.default("reward"))
    cfg = SelfPlayConfig(**settings_mod.time_budget("selfplay", {k: v for k, v in given.items() if v is not None}))
    stop = stop_on_signals()
    quiet = args.json or args.quiet
    log = (lambda m: print(m, file=sys.stderr)) if quiet else print
    summary = selfplay(home, args.name, cfg, listeners=[_SelfPlayProgress(not quiet)], stop=stop, log=log,
                       run_id=args.run_id)
    if args.json:
        return _print_json(summary)
    start = summary["start_eval"] or {}

    def fmt(v, f):
        return "-" if v is None else format(v, f)
    print(f"{summary['status']}: self-play step {summary['step']}, run {summary['run']}, "
          f"{summary['wall_seconds']:.1f} s.")
    print(f"samples: reward {fmt(start.get('sample_reward'), '.3f')} → {fmt(summary['sample_reward'], '.3f')}, "
          f"repeated 4-grams {fmt(start.get('sample_rep4'), '.2%')} → {fmt(summary['sample_rep4'], '.2%')}, "
          f"distinct-2 {fmt(start.get('sample_distinct2'), '.3f')} → {fmt(summary['sample_distinct2'], '.3f')}; "
          f"greedy repeated 4-grams {fmt(start.get('greedy_rep4'), '.2%')} → {fmt(summary['greedy_rep4'], '.2%')}; "
          f"val bpb {fmt(start.get('val_bpb'), '.4f')} → {fmt(summary['val_bpb'], '.4f')}.")
    print(f"Checkpoint: {summary['checkpoint']}  (azr generate {args.name} \"…\" --checkpoint selfplay)")


# ---- reason --------------------------------------------------------------------------------

class _ReasonProgress(_ProgressBar):
    """The training bar, with valid-proposal rates and solver accuracy per task type."""

    def __call__(self, e: dict) -> None:
        if not self.enabled or self.bar is None or e["type"] not in ("step", "eval", "sample"):
            return super().__call__(e)
        if e["type"] == "step":
            self.bar.update(e["step"] - self.bar.n)
            post = {k[:3]: f"{e[k + '_solve_acc']:.2f}" for k in ("deduction", "abduction", "induction")
                    if e.get(k + "_solve_acc") is not None}
            self.bar.set_postfix(loss=f"{e['loss']:.3f}", **post, refresh=False)
        elif e["type"] == "eval":
            accs = ", ".join(f"{k.split('_')[0]} {v:.1%}" for k, v in e.items() if k.endswith("_acc"))
            self.bar.write(f"step {e['step']}: held-out greedy accuracy: {accs}")


def _reason_config(args):
    from .reasoning import ReasonConfig
    return ReasonConfig(**settings_mod.time_budget("reason", _given(REASON, args)))


def cmd_reason(args, home):
    from . import reasoning
    from .train import TrainConfig, train
    quiet = args.json or args.quiet
    log = (lambda m: print(m, file=sys.stderr)) if quiet else print
    mdir = store.model_dir(home, args.name)
    if args.show_buffers:
        return _print_json(reasoning.read_buffers(mdir, args.run_id))
    cfg = _reason_config(args).validate()
    stop = stop_on_signals()
    if not mdir.exists():
        shape = {k: getattr(args, k) for k in ("d_model", "num_layers", "num_heads", "d_ff", "max_seq_len")
                 if getattr(args, k) is not None}
        from .device import available_memory_bytes, pick_device
        book = reasoning.create_from_zero(home, args.name, shape=shape, n_docs=args.corpus_docs, seed=args.seed or 0,
                                          max_memory=available_memory_bytes(pick_device(args.device or "auto")),
                                          log=log)
        log(f"Pretraining '{args.name}' from zero on generator triplets for {args.pretrain_time:g} s …")
        pre = train(home, args.name, TrainConfig(books=[book], max_iterations=10**7, schedule="time",
                                                 max_time=args.pretrain_time, batch_size=FROM_ZERO.default("batch_size"),
                                                 learning_rate=FROM_ZERO.default("learning_rate"),
                                                 eval_every=FROM_ZERO.default("eval_every"), save_every=10**7,
                                                 threads=args.threads, device=args.device or TRAIN.default("device")),
                    listeners=[_ProgressBar(not quiet)], stop=stop, log=log)
        log(f"Pretrained: {pre['step']} steps, val bpb {pre['val_bpb']}.")
        if stop.reason:
            return
    if args.pretrain_only:
        return
    if args.eval_only:
        return _print_json(_reason_eval(home, args, cfg))
    summary = reasoning.reason(home, args.name, cfg, listeners=[_ReasonProgress(not quiet)], stop=stop, log=log,
                               run_id=args.run_id)
    if args.json:
        return _print_json(summary)
    before, after = summary["start_eval"] or {}, summary["eval"] or {}
    print(f"{summary['status']}: {summary['mode']} step {summary['step']}, run {summary['run']}, "
          f"{summary['wall_seconds']:.1f} s, {summary['programs_checked']:,} programs checked in the sandbox.")
    for kind in reasoning.TASK_TYPES:
        b, a = before.get(kind + "_acc"), after.get(kind + "_acc")
        print(f"  {kind:10s} held-out greedy accuracy {'-' if b is None else f'{b:.1%}'} → "
              f"{'-' if a is None else f'{a:.1%}'}")
    print(f"Checkpoint: {summary['checkpoint']}  (azr reason {args.name} --eval-only --checkpoint reason)")


def _reason_eval(home, args, cfg):
    from .reasoning import evaluate_checkpoint
    return evaluate_checkpoint(home, args.name, cfg, split=args.eval_split, pass_k=args.pass_k)


# ---- generate ------------------------------------------------------------------------------

def cmd_generate(args, home):
    import torch

    from .device import pick_device, set_threads
    from .sample import SamplingParams, stream_generate
    if args.model_file:
        obj = safe_load(Path(args.model_file))
        prompt = args.name if args.prompt is None else args.prompt
        if args.prompt is not None and args.name is not None:
            raise UserError("Give either a model NAME or --model FILE.pt, not both.")
    else:
        if args.name is None:
            raise UserError("Name a model (azr generate NAME \"prompt\") or pass --model FILE.pt.")
        store.get_model(home, args.name)
        obj = safe_load(resolve_checkpoint(store.model_dir(home, args.name), args.checkpoint))
        prompt = args.prompt
    if prompt is None:
        raise UserError("Give a prompt: the start of the text to continue.")
    model, cfg, tok = build_model(obj)
    device = pick_device(args.device)
    if device.type == "cpu":
        set_threads(args.threads)
    model.to(device)
    params = SamplingParams(max_length=args.max_length, temperature=args.temperature,
                            top_k=args.top_k or None, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty, seed=args.seed).validate()
    ids = tok.encode(prompt)
    if len(ids) >= cfg.max_seq_len:
        print(f"Note: the prompt is {len(ids)} tokens; only its last {cfg.max_seq_len - 1} fit the model's "
              f"max_seq_len ({cfg.max_seq_len}) and are used.", file=sys.stderr)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    out_ids: list[int] = []
    printed = ""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    for step in stream_generate(model, [ids], params, eot_id=tok.eot_id):
        if step[0] is None:
            continue
        out_ids.append(step[0])
        text = tok.decode(out_ids)
        if text.endswith("\ufffd"):
            continue  # half of a multi-byte character: wait for the rest
        sys.stdout.write(text[len(printed):])
        sys.stdout.flush()
        printed = text
    text = tok.decode(out_ids)
    sys.stdout.write(text[len(printed):] + "\n")
    sys.stdout.flush()


# ---- serve ---------------------------------------------------------------------------------

def cmd_serve(args, home):
    from .server import serve
    token = args.token
    if args.open:
        from .opener import open_when_listening
        token = open_when_listening(args.host, args.port, token)
    serve(host=args.host, port=args.port, home=home, max_runs=args.max_runs, max_upload_mb=args.max_upload_mb,
          token=token)


# ---- parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="azr", description="AZR Trainer: grow a language model from your own books.")
    p.add_argument("--home", help="data folder (default: $AZR_HOME, else ~/azr-home)")
    sub = p.add_subparsers(dest="command", required=True)

    books = sub.add_parser("books", help="add, list, show and delete books").add_subparsers(dest="sub", required=True)
    a = books.add_parser("add", help="detect the encoding, decode, normalise and store a .txt book")
    a.add_argument("path")
    a.add_argument("--name")
    a.add_argument("--encoding", help="override detection, e.g. cp1251, utf-8, koi8-r")
    a.add_argument("--overwrite", action="store_true", help="replace a book of the same name")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_books_add)
    a = books.add_parser("list")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_books_list)
    a = books.add_parser("cat", help="print the stored text (UTF-8)")
    a.add_argument("name")
    a.set_defaults(func=cmd_books_cat)
    a = books.add_parser("delete")
    a.add_argument("name")
    a.set_defaults(func=cmd_books_delete)

    models = sub.add_parser("models", help="create, list, show, delete and export models").add_subparsers(
        dest="sub", required=True)
    a = models.add_parser("create", help="create a transformer of the shape you choose, or --auto: the best "
                                         "for --books in --minutes on this machine")
    a.add_argument("name")
    settings_mod.add_arguments(a, MODEL, skip=("tie_embeddings",), defaults=False)
    a.add_argument("--untied", action="store_true", help="separate input and output embeddings")
    a.add_argument("--auto", action="store_true",
                   help="choose the shape and the training recipe from the books, the minutes and this machine's "
                        "measured speed (then give no shape options)")
    a.add_argument("--books", nargs="+", help="with --auto: the books the model will learn")
    a.add_argument("--minutes", type=float, help="with --auto: the training time to plan for")
    a.add_argument("--threads", type=int, help="with --auto: the CPU threads training will use (default: all)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_models_create)
    a = models.add_parser("list")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_models_list)
    a = models.add_parser("show")
    a.add_argument("name")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_models_show)
    a = models.add_parser("delete")
    a.add_argument("name")
    a.set_defaults(func=cmd_models_delete)
    a = models.add_parser("export", help="write the model as a .pt file, a Hugging Face folder (or zip) or GGUF")
    a.add_argument("name")
    a.add_argument("--format", default="pt", choices=["pt", "hf", "gguf"])
    a.add_argument("--dtype", choices=["f32", "f16", "bf16", "q8_0"],
                   help="weights: hf f32 (default), f16 or bf16; gguf f16 (default), f32 or q8_0")
    a.add_argument("--zip", action="store_true", help="with --format hf: one .zip instead of a folder")
    a.add_argument("-o", "--output", help="file (pt, gguf, zip) or folder (hf); default: in the current folder")
    a.add_argument("--checkpoint", default="best",
                   help="best, latest, selfplay (the newest self-play checkpoint) or a step number")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_models_export)
    a = models.add_parser("import", help="make a model from a Hugging Face Llama folder/zip, a GGUF file or a .pt")
    a.add_argument("path", help="a local folder or file; nothing is downloaded")
    a.add_argument("--name", help="model name (default: from the file name)")
    a.add_argument("--max-seq-len", type=int, help="longest sequence to use (default: the model's, at most 2048)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_models_import)

    t = sub.add_parser("train", help="train a model on books")
    t.add_argument("name")
    t.add_argument("--books", required=True, help="book names, comma-separated")
    settings_mod.add_arguments(t, TRAIN, defaults=False)
    t.add_argument("--nnodes", type=int, default=1, help="machines taking part (run the same command on each)")
    t.add_argument("--rdzv-endpoint", help="HOST:PORT that all machines can reach, for --nnodes > 1")
    _add_output(t)
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="continue a prompt")
    g.add_argument("name", nargs="?")
    g.add_argument("prompt", nargs="?")
    g.add_argument("--model", dest="model_file", help="a .pt file instead of a model name")
    settings_mod.add_arguments(g, GENERATE)
    g.add_argument("--checkpoint", default="best",
                   help="best, latest, selfplay (the newest self-play checkpoint) or a step number")
    g.add_argument("--device", default="auto")
    g.add_argument("--threads", type=int)
    g.set_defaults(func=cmd_generate)

    sp = sub.add_parser(
        "selfplay", help="let a trained model improve its own writing against a reward",
        description="Self-play: from a trained checkpoint, each step samples GROUP_SIZE continuations of "
                    "PROMPTS_PER_STEP prompts, scores them, and updates the model with a group-relative policy "
                    "gradient, a KL penalty to the starting model and (optionally) the book's next-token loss. "
                    "Runs until stopped (Ctrl-C saves a checkpoint), --max-iterations or --max-time. Checkpoints "
                    "go to models/NAME/checkpoints/selfplay/RUN/; generate from them with --checkpoint selfplay.")
    sp.add_argument("name")
    settings_mod.add_arguments(sp, SELFPLAY, defaults=False)
    sp.add_argument("--reward-weights", help=catalogue.text("settings.help.reward_weights",
                                                            catalogue.language_from_environment()))
    _add_output(sp)
    sp.set_defaults(func=cmd_selfplay)

    rp = sub.add_parser(
        "reason", help="Absolute Zero reasoning: the model proposes and solves programs; a sandbox judges",
        description="AZR self-play. A model that does not exist yet is first created from zero (char tokenizer) "
                    "and pretrained on triplets from the random program generator for --pretrain-time seconds. "
                    "Then each step the model proposes deduction, abduction and induction tasks, a sandboxed "
                    "executor keeps the valid ones, the model solves them, and both roles learn from verified "
                    "rewards. Runs until stopped, --max-iterations or --max-time; checkpoints go to "
                    "models/NAME/checkpoints/reason/RUN/.")
    rp.add_argument("name")
    settings_mod.add_arguments(rp, REASON, defaults=False)
    settings_mod.add_arguments(rp, FROM_ZERO, only=("pretrain_time", "corpus_docs"))
    for dim in ("d_model", "num_layers", "num_heads", "d_ff", "max_seq_len"):
        rp.add_argument("--" + dim.replace("_", "-"), dest=dim, type=int,
                        help=f"from-zero shape (default {reasoning_shape_default(dim)})")
    rp.add_argument("--pretrain-only", action="store_true", help="create and pretrain, no self-play")
    rp.add_argument("--eval-only", action="store_true",
                    help="print the held-out accuracy of --checkpoint as JSON (with --pass-k: pass@k at T=1)")
    rp.add_argument("--eval-split", default="test", choices=("test", "train"),
                    help="test: the shifted held-out distribution; train: the pretraining one")
    rp.add_argument("--pass-k", type=int, default=1)
    rp.add_argument("--show-buffers", action="store_true", help="print the newest run's task buffers as JSON")
    _add_output(rp)
    rp.set_defaults(func=cmd_reason)

    s = sub.add_parser("serve", help="start the web studio (http://127.0.0.1:8000)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on; any but loopback requires a token")
    s.add_argument("--port", type=int, default=8000)
    # Also accepted after "serve"; SUPPRESS keeps an absent one from hiding `azr --home X serve`.
    s.add_argument("--home", default=argparse.SUPPRESS, help="data folder (default: $AZR_HOME, else ~/azr-home)")
    s.add_argument("--max-runs", type=int, default=1, help="training runs at once; the others wait in a queue")
    s.add_argument("--max-upload-mb", type=float, default=200, help="largest upload accepted, in MiB")
    s.add_argument("--token", help="access token to require (default: made up when --host is not loopback)")
    s.add_argument("--open", action="store_true", help="open the studio in the web browser once it is up")
    s.set_defaults(func=cmd_serve)
    return p


def _add_output(p) -> None:
    """What a run subcommand shares besides its settings: which run, and how it reports."""
    p.add_argument("--run-id", help="the run's folder name: start it under this name, or resume this run")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")


def reasoning_shape_default(dim: str) -> int:
    from .reasoning import FROM_ZERO_SHAPE
    return FROM_ZERO_SHAPE[dim]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        home = home_dir(args.home)
        from . import decode
        decode.remember_in(home)
        args.func(args, home)
        return 0
    except UserError as e:
        lang = catalogue.language_from_environment()
        print(f"{catalogue.text('cli.error', lang)}: {e.render(lang)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
