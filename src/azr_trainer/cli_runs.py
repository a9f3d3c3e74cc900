"""The run commands of `azr`: train, selfplay and reason (and the torchrun re-launch), with
their summaries in the locale's language; the progress while they run is cli_progress.py's."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from . import settings as settings_mod
from .cli_progress import ProgressBar, ReasonProgress, RunEnd, SelfPlayProgress, kind_word, make_log, percent, \
    print_json, say, state_word
from . import osdeps, store
from .home import UserError
from .settings import FROM_ZERO, REASON, SELFPLAY, TRAIN


def stop_on_signals(control_file: Path | None = None, watch_parent: bool = False):
    """The stop flag a training or self-play loop checks: the studio's control file, the studio
    exiting, or the first Ctrl-C, Ctrl-Break (Windows) or SIGTERM (checkpoint and stop). A second Ctrl-C aborts at once."""
    from .train import StopRequested
    stop = StopRequested(control_file, watch_parent=watch_parent)

    def on_signal(signum, _frame):
        if stop.reason:
            raise KeyboardInterrupt
        stop.request(signal.Signals(signum).name)
    # SIGBREAK: Ctrl-Break in a Windows console, the key that stops a program there
    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
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
        raise UserError("cli.nnodes_endpoint")
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


def _say_why(end: RunEnd) -> None:
    """A run that did not simply complete: why it stopped, the sentence the page's run log shows."""
    why = end.sentence()
    if why:
        print(why)


def cmd_train(args, home):
    from .train import TrainConfig, train
    args.nproc = args.nproc or TRAIN.default("nproc")
    processes = max(args.nproc * args.nnodes, int(os.environ.get("WORLD_SIZE", "1")))
    from .recipe import apply
    given = apply(home, args.name, _given(TRAIN, args, skip=("nproc",)))  # an auto-sized model's recipe
    params = settings_mod.time_budget("train", given, processes=processes)
    if args.nproc > 1 or args.nnodes > 1:
        from .device import check_processes
        check_processes(args.nproc, params.get("batch_size", TRAIN.default("batch_size")), params.get("device", "auto"),
                        machines=args.nnodes)
        return _run_torchrun(args, home)
    cfg = TrainConfig(books=[b.strip() for b in args.books.split(",") if b.strip()], **params)
    stop = stop_on_signals()
    quiet = args.json or args.quiet
    log = make_log(quiet)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 reports
    end = RunEnd()
    summary = train(home, args.name, cfg, listeners=[ProgressBar(not quiet and rank == 0), end], stop=stop,
                    log=log if rank == 0 else (lambda m: None), run_id=args.run_id)
    if rank != 0:
        exit_torchrun_worker()
    if args.json:
        print_json(summary)
        return exit_torchrun_worker()
    bpb = f"{summary['val_bpb']:.4f}" if summary["val_bpb"] is not None else "-"
    total = "" if summary["max_iterations"] >= TRAIN["max_iterations"].upper else f"/{summary['max_iterations']}"
    loss = "-" if summary["train_loss"] is None else f"{round(summary['train_loss'], 4)}"
    print(say("train_done", state=state_word(summary["status"]), step=f"{summary['step']}{total}", loss=loss, bpb=bpb,
              tokens_s=f"{summary['tokens_per_s']:.0f}", seconds=f"{summary['wall_seconds']:.1f}"))
    _say_why(end)
    print(say("checkpoint", path=summary["checkpoints"][-1]))
    exit_torchrun_worker()


def cmd_selfplay(args, home):
    from .selfplay import SelfPlayConfig, selfplay
    given = {**_given(SELFPLAY, args), "reward_weights": args.reward_weights}
    given.setdefault("reward_file", None)
    if args.reward and args.reward.endswith(".py"):
        if args.reward_file:
            raise UserError("cli.reward_file_twice")
        given["reward_file"], args.reward = args.reward, None
    given["reward"] = args.reward or ("file" if given["reward_file"] else SELFPLAY.default("reward"))
    cfg = SelfPlayConfig(**settings_mod.time_budget("selfplay", {k: v for k, v in given.items() if v is not None}))
    stop = stop_on_signals()
    quiet = args.json or args.quiet
    log = make_log(quiet)
    end = RunEnd()
    summary = selfplay(home, args.name, cfg, listeners=[SelfPlayProgress(not quiet), end], stop=stop, log=log,
                       run_id=args.run_id)
    if args.json:
        return print_json(summary)
    start = summary["start_eval"] or {}

    def fmt(v, f):
        return "-" if v is None else format(v, f)

    def change(key, f):
        return f"{fmt(start.get(key), f)} → {fmt(summary[key], f)}"
    print(say("selfplay_done", state=state_word(summary["status"]), step=str(summary["step"]), run=summary["run"],
              seconds=f"{summary['wall_seconds']:.1f}"))
    _say_why(end)
    print(say("selfplay_change", reward=change("sample_reward", ".3f"), rep4=change("sample_rep4", ".2%"),
              distinct2=change("sample_distinct2", ".3f"), greedy_rep4=change("greedy_rep4", ".2%"),
              bpb=change("val_bpb", ".4f")))
    print(say("checkpoint_try", path=summary["checkpoint"],
              command=f"azr generate {args.name} \"…\" --checkpoint selfplay"))


def _reason_config(args):
    from .reasoning import ReasonConfig
    return ReasonConfig(**settings_mod.time_budget("reason", _given(REASON, args)))


def cmd_reason(args, home):
    from . import from_zero, reasoning
    from .train import TrainConfig, train
    quiet = args.json or args.quiet
    log = make_log(quiet)
    mdir = store.model_dir(home, args.name)
    if args.show_buffers:
        return print_json(reasoning.read_buffers(mdir, args.run_id))
    osdeps.require_reasoning()  # off Linux: refused before a model is made or trained
    cfg = _reason_config(args).validate()
    stop = stop_on_signals()
    if not mdir.exists():
        shape = {k: getattr(args, k) for k in ("d_model", "num_layers", "num_heads", "d_ff", "max_seq_len")
                 if getattr(args, k) is not None}
        from .device import available_memory_bytes, pick_device
        book = from_zero.create_from_zero(home, args.name, shape=shape, n_docs=args.corpus_docs, seed=args.seed or 0,
                                          max_memory=available_memory_bytes(pick_device(args.device or "auto")),
                                          log=log)
        log(say("pretraining", name=args.name, seconds=f"{args.pretrain_time:g}"))
        # the time ends the pretraining; the largest step count is "no limit" (the bar then counts without one)
        pre = train(home, args.name, TrainConfig(books=[book], max_iterations=TRAIN["max_iterations"].upper, schedule="time",
                                                 max_time=args.pretrain_time, batch_size=FROM_ZERO.default("batch_size"),
                                                 learning_rate=FROM_ZERO.default("learning_rate"),
                                                 eval_every=FROM_ZERO.default("eval_every"), save_every=10**7,
                                                 threads=args.threads, device=args.device or TRAIN.default("device")),
                    listeners=[ProgressBar(not quiet)], stop=stop, log=log)
        log(say("pretrained", steps=str(pre["step"]), bpb="-" if pre["val_bpb"] is None else f"{pre['val_bpb']:.4f}"))
        if stop.reason:
            return
    if args.pretrain_only:
        return
    if args.eval_only:
        return print_json(_reason_eval(home, args, cfg))
    end = RunEnd()
    summary = reasoning.reason(home, args.name, cfg, listeners=[ReasonProgress(not quiet), end], stop=stop, log=log,
                               run_id=args.run_id)
    if args.json:
        return print_json(summary)
    before, after = summary["start_eval"] or {}, summary["eval"] or {}
    print(say("reason_done", state=state_word(summary["status"]), mode=summary["mode"], step=str(summary["step"]),
              run=summary["run"], seconds=f"{summary['wall_seconds']:.1f}", programs=summary["programs_checked"]))
    _say_why(end)
    width = max(len(kind_word(k)) for k in reasoning.TASK_TYPES)
    for kind in reasoning.TASK_TYPES:
        print(say("reason_kind", kind=kind_word(kind).ljust(width), before=percent(before.get(kind + "_acc")),
                  after=percent(after.get(kind + "_acc"))))
    print(say("checkpoint_try", path=summary["checkpoint"],
              command=f"azr reason {args.name} --eval-only --checkpoint reason"))


def _reason_eval(home, args, cfg):
    from .reasoning import evaluate_checkpoint
    return evaluate_checkpoint(home, args.name, cfg, split=args.eval_split, pass_k=args.pass_k)
