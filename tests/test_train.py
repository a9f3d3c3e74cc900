"""Training through the library: events, checkpoints, evals, exact resume, clean stops."""

import contextlib
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

from azr_trainer import books, catalogue, eval_budget, layout, osdeps, store
from azr_trainer.checkpoint import build_model, list_step_checkpoints, safe_load
from azr_trainer.data import prepare_data
from azr_trainer.events import iter_events
from azr_trainer.home import Conflict, UserError
from azr_trainer.model import ModelConfig
from azr_trainer.train import StopRequested, TrainConfig, evaluate, lr_at, train
from conftest import make_text

SHAPE = dict(vocab_size=300, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=32)


def make_model(home, name="m", **kw):
    return store.create_model(home, name, ModelConfig(**{**SHAPE, **kw}))


def cfg(book, **kw):
    base = dict(books=[book], max_iterations=20, batch_size=4, learning_rate=3e-3, save_every=10, eval_every=10,
                threads=1, log_every=1, sample_length=8)
    base.update(kw)
    return TrainConfig(**base)


class StopAt(StopRequested):
    """Stops after a given number of steps, as Ctrl-C would (or as ``reason`` says: "pause" is
    the studio's pause), but at an exact step."""

    def __init__(self, steps, reason: str = "SIGINT"):
        super().__init__()
        self.left = steps
        self.why = reason

    def check(self):
        self.left -= 1
        if self.left <= 0:
            self.request(self.why)
        return self.reason

    def asked(self):  # from inside a step: not a step of its own
        return self.reason


def step_losses(events_path):
    return {e["step"]: e["loss"] for e in iter_events(events_path) if e["type"] == "step"}


def test_training_lowers_loss_and_reports_everything(home, book):
    make_model(home)
    summary = train(home, "m", cfg(book, max_iterations=40), log=lambda m: None)
    assert summary["status"] == "completed" and summary["step"] == 40
    events = list(iter_events(summary["events"]))
    kinds = {e["type"] for e in events}
    assert {"status", "step", "eval", "sample", "checkpoint"} <= kinds
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert losses[-1] < losses[0] - 0.5
    # warm-up (a twentieth of the steps: 2), then a cosine from 3e-3 down towards a tenth of it
    rates = [e["lr"] for e in events if e["type"] == "step"]
    assert rates[:3] == pytest.approx([1.5e-3, 3e-3, 3e-3])
    assert all(a > b for a, b in zip(rates[2:], rates[3:])) and 3e-4 < rates[-1] < 3.1e-4
    final_eval = [e for e in events if e["type"] == "eval"][-1]
    assert final_eval["full"] and math.isclose(final_eval["val_ppl"], math.exp(final_eval["val_loss"]), rel_tol=1e-6)
    assert summary["val_bpb"] == final_eval["val_bpb"] > 0
    assert all(e["run"] == summary["run"] for e in events)
    info = store.get_model(home, "m")
    assert info.trained_steps == 40 and info.best_val_bpb == summary["best_val_bpb"]
    best = safe_load(home / "models" / "m" / "checkpoints" / "best.pt")
    assert best["meta"]["kind"] == "best" and "optimizer" not in best  # for use, not for a resume
    samples = [e for e in events if e["type"] == "sample"]
    assert {e["step"] for e in samples} == {e["step"] for e in events if e["type"] == "eval"}
    assert all(e["text"] and e["prompt"] for e in samples)


def test_bf16_training_on_the_cpu_learns_and_evaluates_in_fp32(home, book):
    # what "auto" picks on a CPU whose probe measured bf16 faster (some have native bf16 units)
    make_model(home)
    summary = train(home, "m", cfg(book, max_iterations=40, precision="bf16", eval_every=40), log=lambda m: None)
    events = list(iter_events(summary["events"]))
    assert next(e for e in events if e["type"] == "status" and e.get("precision"))["precision"] == "bf16"
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert losses[-1] < losses[0] - 0.5
    # warm-up (a twentieth of the steps: 2), then a cosine from 3e-3 down towards a tenth of it
    rates = [e["lr"] for e in events if e["type"] == "step"]
    assert rates[:3] == pytest.approx([1.5e-3, 3e-3, 3e-3])
    assert all(a > b for a, b in zip(rates[2:], rates[3:])) and 3e-4 < rates[-1] < 3.1e-4
    # the evaluation is the fp32 yardstick: the saved model evaluated again in fp32 gives the same figure
    final = [e for e in events if e["type"] == "eval"][-1]
    model, mcfg, _ = build_model(safe_load(list_step_checkpoints(layout.model_dir(home, "m"))[-1][1]))
    data = prepare_data(home, layout.model_dir(home, "m"), [book], mcfg.tokenizer, mcfg.vocab_size, log=lambda m: None)
    again = evaluate(model, data.val, data.val_bytes, mcfg.max_seq_len, torch.device("cpu"), contextlib.nullcontext,
                     None)
    assert again["val_bpb"] == pytest.approx(final["val_bpb"], rel=1e-5)


def test_patience_ends_a_run_that_only_gets_worse_and_keeps_its_best_model(home, book, monkeypatch):
    # The held-out figures a small book gives once it is being learned by heart: better, then
    # worse and worse (scripted here on top of the real evaluation, so the test does not depend
    # on how fast a tiny model overfits).
    import azr_trainer.train as train_mod
    real, script = train_mod.evaluate, iter([3.0, 2.5, 2.0, 2.05, 2.3, 2.4, 2.5, 2.6] + [2.7] * 100)

    def scripted(*args, **kwargs):
        res = real(*args, **kwargs)
        return {**res, "val_bpb": next(script)} if res else res

    monkeypatch.setattr(train_mod, "evaluate", scripted)
    make_model(home, "p")
    c = dict(max_iterations=400, eval_every=20, save_every=10**6)
    patient = train(home, "p", cfg(book, patience=3, **c), log=lambda m: None)
    events = list(iter_events(patient["events"]))
    end = [e for e in events if e["type"] == "status"][-1]
    evals = [e for e in events if e["type"] == "eval"]
    # 3.0, 2.5, 2.0 (the best), then 2.05, 2.3, 2.4: three in a row clearly worse (> 1%) than the
    # best; the run stops at the step after the third
    periodic = evals[:-1]  # the last is the final evaluation after the stop
    best = min(periodic, key=lambda e: e["val_bpb"])
    after = [e for e in periodic if e["step"] > best["step"]]
    assert patient["status"] == "stopped" and end["code"] == "run.learned_enough", end
    assert best["val_bpb"] == 2.0 and [e["val_bpb"] for e in after] == [2.05, 2.3, 2.4]
    assert patient["step"] == after[-1]["step"] + 1 < 400
    assert end["params"]["best_step"] == best["step"] and end["params"]["best_bpb"] == 2.0
    assert evals[-1]["full"]  # the whole split is evaluated at the end, as for any finished run
    assert safe_load(layout.best_checkpoint(layout.model_dir(home, "p")))["step"] == best["step"]
    # without patience the same figures do not stop the run
    script = iter([3.0, 2.5, 2.0, 2.05, 2.3, 2.4, 2.5, 2.6] + [2.7] * 100)
    make_model(home, "q")
    straight = train(home, "q", cfg(book, **c), log=lambda m: None)
    assert straight["status"] == "completed" and straight["step"] == 400


def test_patience_counts_on_across_an_interruption(home, book, monkeypatch):
    import azr_trainer.train as train_mod
    real, script = train_mod.evaluate, iter([3.0, 2.5, 2.0, 2.05, 2.3, 2.4] + [2.7] * 100)

    def scripted(*args, **kwargs):
        res = real(*args, **kwargs)
        return {**res, "val_bpb": next(script)} if res else res

    monkeypatch.setattr(train_mod, "evaluate", scripted)
    make_model(home, "p")
    c = dict(max_iterations=400, eval_every=20, save_every=10**6, patience=3)
    first = train(home, "p", cfg(book, **c), stop=StopAt(90), log=lambda m: None)  # after 2.0 (best), 2.05
    assert first["status"] == "interrupted" and first["step"] == 90
    resumed = train(home, "p", cfg(book, resume=True, **c), log=lambda m: None)
    end = [e for e in iter_events(resumed["events"]) if e["type"] == "status"][-1]
    # two more worse evaluations after the resume make three: the best step is the one before it
    assert resumed["status"] == "stopped" and end["code"] == "run.learned_enough", end
    assert end["params"]["best_step"] == 60 and resumed["step"] == 121


def test_val_bpb_is_total_bits_over_validation_bytes(home, book):
    make_model(home)
    train(home, "m", cfg(book, max_iterations=5, sample_prompts=[]), log=lambda m: None)
    from azr_trainer.checkpoint import build_model
    from azr_trainer.data import prepare_data
    model, mcfg, tok = build_model(safe_load(home / "models" / "m" / "checkpoints" / "step_0000005.pt"))
    data = prepare_data(home, home / "models" / "m", [book], "bpe", 300)
    res = evaluate(model, data.val, data.val_bytes, 32, torch.device("cpu"),
                   lambda: torch.autocast("cpu", enabled=False), limit=None)
    # recompute independently: every val token after the leading <|endoftext|>, one long pass in windows
    ids = torch.tensor(data.val.astype("int64"))
    nll = 0.0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, 32):
            x, y = ids[s:s + 32], ids[s + 1:s + 33]
            x = x[:len(y)]
            logits, _ = model(x[None])
            nll += torch.nn.functional.cross_entropy(logits[0], y, reduction="sum").item()
    val_text_bytes = data.val_bytes
    assert res["full"] and res["val_tokens"] == len(ids) - 1
    assert math.isclose(res["val_bpb"], nll / math.log(2) / val_text_bytes, rel_tol=1e-4)


def test_stopped_and_resumed_run_matches_a_straight_run(home, book):
    make_model(home, "straight")
    make_model(home, "resumed")
    c = dict(max_iterations=24, save_every=100, eval_every=8)
    a = train(home, "straight", cfg(book, **c), log=lambda m: None)
    first = train(home, "resumed", cfg(book, **c), stop=StopAt(12), log=lambda m: None)
    assert first["status"] == "interrupted" and first["step"] == 12
    b = train(home, "resumed", cfg(book, resume=True, **c), log=lambda m: None)
    assert b["step"] == 24 and b["run"] == first["run"]
    la, lb = step_losses(a["events"]), step_losses(b["events"])
    assert sorted(la) == sorted(lb) == list(range(1, 25))
    for s in la:
        assert la[s] == pytest.approx(lb[s], abs=1e-5), s
    assert a["val_bpb"] == pytest.approx(b["val_bpb"], abs=1e-5)


def test_a_loss_that_is_no_number_fails_the_run_with_advice(home, book):
    """The loss is read when a step event is written, not after every step: a loss that became
    NaN still ends the run, at that step, with the message that says what to lower."""
    make_model(home)
    first = train(home, "m", cfg(book, max_iterations=4, save_every=4, sample_prompts=[]), log=lambda m: None)
    path = list_step_checkpoints(home / "models" / "m")[-1][1]
    obj = torch.load(path, weights_only=True)
    for tensor in obj["trained_state_dict"].values():  # the last step's weights, which a resume trains on
        tensor.fill_(float("nan"))
    torch.save(obj, path)
    with pytest.raises(UserError) as err:
        train(home, "m", cfg(book, max_iterations=8, log_every=2, resume=True, sample_prompts=[]),
              log=lambda m: None)
    assert err.value.code == "run.loss_not_finite" and err.value.params["step"] in (5, 6), err.value.params
    end = [e for e in iter_events(first["events"]) if e["type"] == "status"][-1]
    assert end["state"] == "failed" and end["code"] == "run.loss_not_finite" and "learning_rate" in end["message"]


def test_checkpoints_are_pruned_and_loadable_without_pickle(home, book):
    make_model(home)
    train(home, "m", cfg(book, max_iterations=50, save_every=5, keep_last=3, sample_prompts=[]), log=lambda m: None)
    steps = [s for s, _ in list_step_checkpoints(home / "models" / "m")]
    assert steps == [40, 45, 50]
    obj = torch.load(home / "models" / "m" / "checkpoints" / "step_0000050.pt", weights_only=True)
    assert obj["step"] == 50 and "optimizer" in obj and isinstance(obj["tokenizer"], str)
    assert not list((home / "models" / "m" / "checkpoints").glob("*.tmp"))


def test_max_time_stops_cleanly_with_a_checkpoint(home, book):
    make_model(home)
    s = train(home, "m", cfg(book, max_iterations=10**6, max_time=1.5, sample_prompts=[]), log=lambda m: None)
    assert s["status"] == "stopped" and 0 < s["step"] < 10**6
    assert list_step_checkpoints(home / "models" / "m")[-1][0] == s["step"]


def test_control_file_pauses_the_run(home, book, tmp_path):
    make_model(home)
    control = tmp_path / "control"
    control.write_text("pause", encoding="utf-8")
    s = train(home, "m", cfg(book, max_iterations=100), stop=StopRequested(control), log=lambda m: None)
    assert s["status"] == "paused" and s["step"] == 1


def test_resume_without_checkpoint_or_with_other_books_is_refused(home, book, tmp_path):
    make_model(home)
    with pytest.raises(UserError, match="Nothing to resume"):
        train(home, "m", cfg(book, resume=True), log=lambda m: None)
    train(home, "m", cfg(book, max_iterations=3), log=lambda m: None)
    src = tmp_path / "other.txt"
    src.write_text("another book\n" * 200, encoding="utf-8")
    books.add_book(home, src, name="other")
    with pytest.raises(UserError, match="same books"):
        train(home, "m", cfg("other", resume=True), log=lambda m: None)


def test_unknown_book_and_absurd_settings_are_refused(home, book):
    make_model(home)
    with pytest.raises(UserError, match="There is no book named “nope”"):
        train(home, "m", cfg("nope"), log=lambda m: None)
    with pytest.raises(UserError, match="learning_rate"):
        train(home, "m", cfg(book, learning_rate=5.0), log=lambda m: None)
    with pytest.raises(UserError, match="batch_size"):
        train(home, "m", cfg(book, batch_size=0), log=lambda m: None)
    with pytest.raises(UserError, match="GiB"):
        train(home, "m", cfg(book, batch_size=10**7), log=lambda m: None)
    assert list_step_checkpoints(home / "models" / "m") == []


def test_events_file_is_json_lines(home, book):
    make_model(home)
    s = train(home, "m", cfg(book, max_iterations=3), log=lambda m: None)
    for line in open(s["events"], encoding="utf-8"):
        assert isinstance(json.loads(line)["type"], str)


def test_out_of_memory_keeps_the_last_checkpoint_and_says_what_to_lower(home, book):
    make_model(home)

    def explode(e):
        if e["type"] == "step" and e["step"] == 7:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(UserError, match=r"Lower batch_size \(e.g. 4 → 2\).*max_seq_len.*last checkpoint is kept"):
        train(home, "m", cfg(book, max_iterations=20, save_every=5), listeners=[explode], log=lambda m: None)
    ckpts = list_step_checkpoints(home / "models" / "m")
    assert [s for s, _ in ckpts] == [5]
    assert safe_load(ckpts[-1][1])["step"] == 5
    failed = [e for e in iter_events(next((home / "models" / "m" / "runs").glob("*/events.jsonl")))
              if e["type"] == "status" and e["state"] == "failed"]
    assert failed and "batch_size" in failed[0]["message"]


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/stat"), reason="process start times come from /proc")
def test_a_lock_whose_pid_now_belongs_to_a_newer_process_is_stale(home, book):
    make_model(home)
    lock = home / "models" / "m" / ".train.lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        # A trainer died an hour ago; its pid now belongs to a process that started since.
        lock.write_text(str(other.pid), encoding="utf-8")
        os.utime(lock, (time.time() - 3600, time.time() - 3600))
        if osdeps.portable():  # as off Linux: start times unknown, the live pid alone holds the model
            with pytest.raises(Conflict, match=f"already being trained \\(process {other.pid}\\)"):
                train(home, "m", cfg(book, max_iterations=2), log=lambda m: None)
            return
        held = []
        s = train(home, "m", cfg(book, max_iterations=2), log=lambda m: None,
                  listeners=[lambda e: held.append(lock.read_text(encoding="utf-8"))])
        assert s["status"] == "completed"
        assert set(held) == {str(os.getpid())}  # the lock still holds just the pid, as every reader expects
        assert not lock.exists()
        # The same live pid, written after that process started: a real owner, so the model is busy.
        lock.write_text(str(other.pid), encoding="utf-8")
        with pytest.raises(Conflict, match=f"already being trained \\(process {other.pid}\\)"):
            train(home, "m", cfg(book, max_iterations=2), log=lambda m: None)
    finally:
        other.kill()
        other.wait()


KILLED_AT_SAVE = """
import os, signal, sys
from pathlib import Path
import torch
from azr_trainer.train import TrainConfig, train

real_save = torch.save

def save_then_die(obj, f, *args, **kwargs):
    # the first checkpoint: write part of it, then die as kill -9 would, mid-save
    if isinstance(obj, dict) and obj.get("step") == 3:
        f.write(b"the first bytes of a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save_then_die
train(Path(sys.argv[1]), "m", TrainConfig(books=[sys.argv[2]], max_iterations=6, batch_size=4, save_every=3,
                                          eval_every=100, threads=1, sample_prompts=[]), log=lambda m: None)
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="needs kill -9")
def test_a_run_killed_while_saving_leaves_nothing_behind_for_the_next(home, book):
    make_model(home)
    mdir = home / "models" / "m"
    p = subprocess.run([sys.executable, "-c", KILLED_AT_SAVE, str(home), book], capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == -9, p.stderr.decode(errors="replace")
    leftovers = list((mdir / "checkpoints").glob(".step_0000003.pt.*.tmp"))
    assert len(leftovers) == 1 and (mdir / ".train.lock").exists()  # what kill -9 at save time leaves
    # and what it would leave when killed while tokenizing, or during a self-play save
    others = [mdir / ".tokenizer.json.k1f9.tmp", mdir / "data" / ".train.bin.x0q2.tmp",
              mdir / "checkpoints" / "selfplay" / "sp-1" / ".step_0000050.pt.a8c1.tmp",
              mdir / "checkpoints" / "reason" / "r-1" / ".buffers.json.zz01.tmp"]
    for f in others:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"partial")
    keep = [mdir / "checkpoints" / "selfplay" / "sp-1" / "step_0000040.pt", mdir / "notes.tmp"]
    for f in keep:
        f.write_bytes(b"not a leftover")
    s = train(home, "m", cfg(book, max_iterations=4, save_every=100, sample_prompts=[]), log=lambda m: None)
    assert s["status"] == "completed"
    assert not [p for p in mdir.rglob("*.tmp") if p.name.startswith(".")]
    assert all(f.exists() for f in keep)


def test_a_run_with_a_time_budget_shows_its_quality_early_and_often(home, book):
    make_model(home)
    s = train(home, "m", cfg(book, max_iterations=10**6, eval_every=10**6, save_every=10**6, max_time=3.0),
              log=lambda m: None)
    assert s["status"] == "stopped"
    events = list(iter_events(s["events"]))
    evals = [e for e in events if e["type"] == "eval"]
    periodic = [e for e in evals if e["step"] < s["step"]]
    # no step count would have asked for one: these come from the clock (a tenth of the budget)
    assert periodic and evals[-1]["full"] and evals[-1]["step"] == s["step"]
    assert all(e["val_tokens"] == periodic[0]["val_tokens"] for e in periodic)  # the same fixed subset each time
    sampled = {e["step"] for e in events if e["type"] == "sample"}
    assert {e["step"] for e in evals} <= sampled  # a sample with every eval


def test_with_a_budget_a_step_count_eval_never_lands_seconds_after_a_clock_one():
    from azr_trainer.runloop import EvalClock
    clock = EvalClock(eval_every=200, max_time=300.0)  # a clock eval every 30 s
    assert not clock.due(1, now=0.0)
    assert clock.due(100, now=30.0)           # the first: at most 30 s after the first step
    clock.done(30.0, 1.0)
    assert not clock.due(200, now=40.0)       # 200 steps, but only 10 s after the last eval
    assert not clock.due(300, now=50.0)
    assert clock.due(400, now=46.0)           # 16 s after: a step count's eval is worth its cost again
    clock.done(46.0, 1.0)
    assert not clock.due(401, now=70.0) and clock.due(402, now=76.0)  # the clock's, a period after the last
    # without a budget the step count alone decides
    steps_only = EvalClock(eval_every=200, max_time=None)
    steps_only.due(1, now=0.0)
    steps_only.done(0.5, 1.0)
    assert steps_only.due(200, now=0.6) and not steps_only.due(201, now=10**6)


def test_the_first_eval_comes_soon_after_the_first_step_without_a_budget(home, book, monkeypatch):
    from azr_trainer import runloop
    monkeypatch.setattr(runloop, "FIRST_EVAL_SECONDS", 0.0)  # "at most N seconds after the first step"
    make_model(home)
    s = train(home, "m", cfg(book, max_iterations=5, eval_every=1000, save_every=1000), log=lambda m: None)
    evals = [e for e in iter_events(s["events"]) if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [1, 5]


@pytest.mark.parametrize("what", ["cancel", "pause"])
def test_cancel_and_pause_end_with_an_eval_a_sample_and_a_checkpoint(home, book, tmp_path, what):
    make_model(home)
    control = tmp_path / "control"
    control.write_text(what, encoding="utf-8")
    s = train(home, "m", cfg(book, max_iterations=100), stop=StopRequested(control), log=lambda m: None)
    state = {"cancel": "cancelled", "pause": "paused"}[what]
    assert s["status"] == state and s["step"] == 1 and s["val_bpb"] is not None
    events = list(iter_events(s["events"]))
    assert [(e["type"], e["step"]) for e in events if e["type"] in ("eval", "checkpoint")] == \
        [("eval", 1), ("checkpoint", 1)]
    assert any(e["type"] == "sample" and e["step"] == 1 for e in events)
    end = events[-1]
    assert end["type"] == "status" and end["state"] == state and end["message"] == f"stopped by {what}"
    assert end["code"] == f"run.{state}" and end["params"] == {"step": 1}


@pytest.mark.parametrize("memory_short", [False, True])
def test_cpu_training_trims_the_heap_only_when_it_pays(home, book, monkeypatch, memory_short):
    from azr_trainer import device, osdeps
    if osdeps.malloc_trim() is None or device.resident_bytes() is None:  # portable mode: test_osdeps
        pytest.skip("glibc's malloc_trim and /proc/self/statm are Linux-only")
    trims = []
    monkeypatch.setattr(osdeps, "malloc_trim", lambda: lambda pad: trims.append(pad))
    if memory_short:  # less memory available than the trainer holds: trim after every step
        monkeypatch.setattr(device, "available_memory_bytes", lambda dev: 1)
    make_model(home)
    s = train(home, "m", cfg(book, max_iterations=30, save_every=100, eval_every=100, sample_prompts=[]),
              log=lambda m: None)
    assert s["status"] == "completed"
    assert len(trims) >= 29 if memory_short else len(trims) <= 3


def test_evals_carry_the_xz_line_and_samples_the_real_word_share(home, tmp_path):
    # a book of a few words repeated: a small model learns to write them, and passes the
    # real-word milestones, which are reported once each, in the catalogue's words
    from azr_trainer import books
    text = "\n".join(["the cat sat on the mat and the dog sat on the log"] * 600)
    path = tmp_path / "words.txt"
    path.write_text(text, encoding="utf-8")
    books.add_book(home, path, name="words")
    make_model(home, tokenizer="char", vocab_size=300)
    summary = train(home, "m", cfg("words", max_iterations=300, eval_every=100, learning_rate=1e-2, sample_length=24), log=lambda m: None)
    events = list(iter_events(summary["events"]))
    evals = [e for e in events if e["type"] == "eval"]
    assert evals and all(0 < e["xz_bpb"] < 1 for e in evals)  # xz squeezes a repeated line hard
    quality = [e["real_words"] for e in events if e["type"] == "quality"]
    assert quality and all(0 <= q <= 1 for q in quality) and quality[-1] > 0.5
    milestones = [e for e in events if e["type"] == "milestone"]
    codes = [(e["code"], e["params"].get("percent")) for e in milestones]
    assert ("milestone.real_words", 50) in codes and len(codes) == len(set(codes))
    assert all(e["message"] and "{" not in e["message"] for e in milestones)


def test_the_best_model_is_kept_when_an_evaluation_finds_it_not_only_at_a_save(home, tmp_path):
    """A small book overfits long before a time-budget run's next save: the model an evaluation
    found best is what best.pt holds (and what generation and export then use by default)."""
    from azr_trainer import books
    path = tmp_path / "tiny.txt"
    path.write_text(make_text(n_lines=40, seed=3), encoding="utf-8")
    books.add_book(home, path, name="tiny")
    make_model(home, d_model=64, d_ff=128)
    summary = train(home, "m", cfg("tiny", max_iterations=240, batch_size=8, learning_rate=1e-2, eval_every=20,
                                   save_every=1000, sample_prompts=[]), log=lambda m: None)
    evals = [e for e in iter_events(summary["events"]) if e["type"] == "eval" and e["step"] > 0]
    best = min(evals, key=lambda e: e["val_bpb"])
    assert best["step"] < summary["step"] and summary["val_bpb"] > best["val_bpb"]  # it did overfit
    kept = safe_load(home / "models" / "m" / "checkpoints" / "best.pt")
    assert kept["step"] == best["step"] and kept["meta"]["val_bpb"] == best["val_bpb"]
    assert summary["best_val_bpb"] == best["val_bpb"] == store.get_model(home, "m").best_val_bpb


def test_training_a_trained_model_again_loses_nothing(home, book, tmp_path):
    """A new run of a model trained before starts over, but its best model stays best.pt until
    the new run beats it (then a copy goes aside), and its step checkpoints go aside at the new
    run's first save (not pruned as 'older' than the new run's, not picked by a resume)."""
    from azr_trainer import books
    make_model(home)
    mdir = store.model_dir(home, "m")
    aside = lambda pattern: sorted((mdir / "checkpoints" / "earlier").glob(pattern))  # noqa: E731
    first = train(home, "m", cfg(book, max_iterations=40), log=lambda m: None)
    best_before = safe_load(layout.best_checkpoint(mdir))
    earlier_steps = [s for s, _ in list_step_checkpoints(mdir)]
    assert earlier_steps[-1] == 40

    # a refused start changes nothing
    with pytest.raises(UserError):
        train(home, "m", cfg("no-such-book", max_iterations=10), log=lambda m: None)
    assert [s for s, _ in list_step_checkpoints(mdir)] == earlier_steps and not aside("*")

    # a worse run, stopped before its end (it saves there) and resumed: the first best stays
    notices = []
    stopped = train(home, "m", cfg(book, max_iterations=20, learning_rate=1e-6), log=notices.append, stop=StopAt(12))
    assert stopped["status"] == "interrupted" and stopped["step"] == 12
    assert [n.code for n in notices if getattr(n, "code", "").startswith("run.train.earlier")] == ["run.train.earlier_kept"]
    assert [s for s, _ in list_step_checkpoints(mdir)] == [10, 12]  # only the new run's steps
    assert [int(p.stem.split("_")[1]) for p in aside("*/step_*.pt")] == earlier_steps
    weak = train(home, "m", cfg(book, max_iterations=20, learning_rate=1e-6, resume=True), log=lambda m: None)
    assert weak["step"] == 20
    kept = safe_load(layout.best_checkpoint(mdir))
    assert (kept["step"], kept["meta"]["val_bpb"]) == (best_before["step"], best_before["meta"]["val_bpb"])
    assert weak["best_val_bpb"] == first["best_val_bpb"] == store.get_model(home, "m").best_val_bpb
    assert not aside("*/best.pt")  # not replaced: nothing to copy

    # a better run replaces it, after copying it aside
    better = train(home, "m", cfg(book, max_iterations=80), log=lambda m: None)
    assert better["best_val_bpb"] < first["best_val_bpb"]
    assert safe_load(layout.best_checkpoint(mdir))["meta"]["val_bpb"] == better["best_val_bpb"]
    copies = [safe_load(p) for p in aside("*/best.pt")]
    assert [(c["step"], c["meta"]["val_bpb"]) for c in copies] == [(best_before["step"], best_before["meta"]["val_bpb"])]

    # on other books the held-out text differs: the new run's best replaces it (a copy aside)
    other = tmp_path / "other.txt"
    other.write_text("Другая книга. " * 400, encoding="utf-8")
    books.add_book(home, other, name="other")
    notices = []
    train(home, "m", cfg("other", max_iterations=10), log=notices.append)
    assert "run.train.earlier_replaced" in [getattr(n, "code", None) for n in notices]
    assert safe_load(layout.best_checkpoint(mdir))["train_config"]["books"] == ["other"]
    assert len(aside("*/best.pt")) == 2
    # what the Training page checks before the next start: the best's books, their versions, window and share
    measured = store.get_model(home, "m").best_measured_on
    assert measured["books"] == ["other"] and measured["val_fraction"] == 0.1 and measured["seq_len"] is None
    assert measured["versions"] == {"other": books.version(books.get_book(home, "other"))}

    # a book replaced under the same name is other held-out text too, even for a run that learns nothing
    other.write_text("Совсем иной текст, про другое. " * 300, encoding="utf-8")
    books.add_book(home, other, name="other", overwrite=True)
    notices, before_last = [], aside("*")
    assert len(before_last) == 3
    train(home, "m", cfg("other", max_iterations=10, learning_rate=1e-6), log=notices.append)
    assert "run.train.earlier_replaced" in [getattr(n, "code", None) for n in notices]
    assert len(aside("*/best.pt")) == 3
    assert store.get_model(home, "m").best_measured_on["versions"] != measured["versions"]  # the new upload
    # four runs set aside by now: only the newest three stay (the first run's steps are gone)
    assert len(aside("*")) == 3 and len(set(before_last) - set(aside("*"))) == 1
    assert not any(p.parent == before_last[0] for p in aside("*/*.pt"))
    # ... and a paused run whose book was replaced since cannot go on where it stopped
    mine = mdir / "checkpoints" / "earlier" / "mine"  # a folder of the person's own there is not the trainer's to prune
    mine.mkdir()
    train(home, "m", cfg("other", max_iterations=20), log=lambda m: None, stop=StopAt(12))
    assert mine.is_dir() and len(aside("2*")) == 3
    other.write_text("Третий текст, снова другой. " * 300, encoding="utf-8")
    books.add_book(home, other, name="other", overwrite=True)
    with pytest.raises(UserError, match="changed since it was saved"):
        train(home, "m", cfg("other", max_iterations=20, resume=True), log=lambda m: None)


def test_runs_set_aside_within_one_second_are_pruned_oldest_first(home, book, monkeypatch):
    """Runs set aside within one second (the clock stands still here) are named in the order they
    came, so the pruning keeps the newest three, never the folder a run has just made."""
    from azr_trainer import earlier
    monkeypatch.setattr(earlier, "_stamp", lambda: "20261206-120000")
    make_model(home)
    root = layout.earlier_checkpoints_root(store.model_dir(home, "m"))
    for _ in range(6):  # the first has nothing to set aside; each of the other five sets one run aside
        train(home, "m", cfg(book, max_iterations=10), log=lambda m: None)
    assert sorted(f.name for f in root.iterdir()) == [f"20261206-120000-{n}" for n in (3, 4, 5)]
    assert all(list(f.glob("step_*.pt")) for f in root.iterdir())  # each holds its run's checkpoints


def test_a_run_far_from_the_machines_probe_has_the_probe_measured_again(home, book, monkeypatch):
    """A probe taken while something else ran makes every plan and time estimate wrong by as
    much: a time-budgeted run that trains far faster or slower than it predicted has it measured
    again before the next plan, and says so; within twice either way the probe stays."""
    from azr_trainer import autosize
    from azr_trainer.model import training_flops_per_token
    monkeypatch.setattr(autosize, "RUN_CHECKED_AFTER_S", 0.0)  # these runs take a second
    make_model(home, d_model=96, num_heads=3, d_ff=256)
    speed_file = home / autosize.SPEED_FILE

    def probe_says(gflops: float) -> autosize.MachineSpeed:
        monkeypatch.setattr(autosize, "measure_speed", lambda threads, seconds=1.0, device=None: autosize.MachineSpeed(
            threads=threads, fp32_gflops=gflops, bf16_gflops=0.0, fp32_by_width=[gflops, gflops]))
        return autosize.machine_speed(home, 1)  # measured and cached, as a plan would

    def run() -> list:
        notices = []
        summary = train(home, "m", cfg(book, max_iterations=10**6, max_time=1.0, batch_size=8, eval_every=20,
                                       save_every=40), log=notices.append)
        said = [n.code for n in notices if getattr(n, "code", "").startswith("run.train.speed")]
        # the run's own log on the page says it too, in the page's language
        logged = [e for e in iter_events(summary["events"]) if e["type"] == "log" and e["code"] in said]
        assert [e["code"] for e in logged] == said and all(e["params"]["times"] for e in logged)
        return said

    probe_says(1e6)  # a machine a great many times faster than it is
    assert run() == ["run.train.speed_slower"] and json.loads(speed_file.read_text()) == {}
    probe_says(1e-3)  # ... and a great many times slower
    assert run() == ["run.train.speed_faster"] and json.loads(speed_file.read_text()) == {}
    # the threshold, on the prediction itself: 1.5× off stays, 2.5× off is measured again
    model_cfg = store.get_model(home, "m").config
    expected = probe_says(50.0).gflops_at(96) * 1e9 * autosize.STEP_EFFICIENCY / training_flops_per_token(model_cfg, 32)
    for off in (1.5, 1 / 1.5):
        assert autosize.check_against_run(home, 1, model_cfg, 32, 8, "fp32", expected * off, 60.0) is None
    assert len(json.loads(speed_file.read_text())) == 1
    assert autosize.check_against_run(home, 1, model_cfg, 32, 8, "fp32", expected / 2.5, 60.0) == pytest.approx(0.4)
    assert json.loads(speed_file.read_text()) == {}


def test_a_budgets_warm_up_ends_early_enough_that_a_slow_machines_few_steps_reach_the_peak_and_decay():
    budget = dict(books=["b"], max_iterations=10**9, schedule="time", max_time=300.0, learning_rate=1e-3,
                  min_lr_ratio=0.1)
    cfg = TrainConfig(**budget)
    slow = [lr_at(s, cfg, (s + 1) / 190) for s in range(190)]  # 190 steps in the whole budget
    peak = max(slow)
    assert peak == pytest.approx(1e-3, rel=0.01) and slow.index(peak) <= 10  # by the budget's first twentieth
    assert slow[-1] == pytest.approx(1e-4, rel=0.01)  # then decayed over the rest
    # a fast machine: its 200 steps end the warm-up first
    assert lr_at(99, cfg, 0.001) == pytest.approx(0.5e-3) and lr_at(199, cfg, 0.002) == pytest.approx(1e-3, rel=1e-3)
    # a warm-up the person (or the plan) set stays in steps while it takes at most a tenth of the time
    given = TrainConfig(**budget, warmup_iters=100)
    assert lr_at(49, given, 0.04) == pytest.approx(0.5e-3)
    # a plan's 50 warm-up steps on a machine eight times slower than planned (44 steps in all):
    # the rate peaks by the budget's first tenth and decays over the rest, not warming up to the end
    slower = [lr_at(s, TrainConfig(**budget, warmup_iters=50), (s + 1) / 44) for s in range(44)]
    assert slower.index(max(slower)) <= 5 and max(slower) == pytest.approx(1e-3, rel=0.05)
    assert slower[-1] == pytest.approx(1e-4, rel=0.01)


def test_under_a_budget_each_periodic_evaluation_with_its_samples_is_planned_to_at_most_five_percent_of_it():
    plan = eval_budget.EvalBudget(max_time=60.0, seq_len=64, split_tokens=64 * 1000, windows=32)
    plan.timed(seconds=1.0, tokens=32 * 64, sample_seconds=1.0)  # 2 s of the 3 s allowed: as it was
    assert plan.windows == 32
    plan.timed(seconds=4.0, tokens=32 * 64, sample_seconds=1.0)  # 1/8 s a window: 16 fit in the 2 s left
    assert plan.windows == 16
    # the final evaluation: 2% of the budget reads fewer windows than a periodic one, so it reads those
    assert plan.final_windows == 16 and plan.reserve == pytest.approx(16 * 0.125 + 1.0)
    assert plan.final(seconds_left=10.0) == 16 and plan.final(seconds_left=1000 * 0.125) is None
    plan.timed(seconds=0.1, tokens=16 * 64, sample_seconds=0.1)  # faster again: the subset never grows back
    assert plan.windows == 16
    plan.timed(seconds=2.0, tokens=16 * 64, sample_seconds=5.0)  # the samples alone take more than the share
    assert plan.windows == eval_budget.MIN_EVAL_WINDOWS


def test_a_budget_run_reads_fewer_windows_once_a_timed_evaluation_shows_the_subset_costs_too_much(
        home, tmp_path, monkeypatch):
    src = tmp_path / "long.txt"
    src.write_text("".join(make_text(n_lines=400, seed=s) for s in range(150)), encoding="utf-8")
    name = books.add_book(home, src, name="long").name
    make_model(home)
    # evaluations by the clock, every tenth of the budget
    settings = dict(max_iterations=10**6, eval_every=10**6, save_every=10**6, max_time=5.0, sample_prompts=[])
    s = train(home, "m", cfg(name, **settings), log=lambda m: None)
    periodic = [e["val_tokens"] for e in iter_events(s["events"]) if e["type"] == "eval" and e["step"] < s["step"]]
    assert len(periodic) >= 3 and len(set(periodic)) == 1
    subset = periodic[0]  # 32 windows, evenly spaced (the split's last, shorter one among them)
    # the same run where five percent of the budget is too short for the subset: from the second
    # evaluation on it reads the fewest windows, the same ones each time
    monkeypatch.setattr(eval_budget, "EVAL_COST_SHARE", 1e-9)
    make_model(home, "short")
    s = train(home, "short", cfg(name, **settings), log=lambda m: None)
    periodic = [e["val_tokens"] for e in iter_events(s["events"]) if e["type"] == "eval" and e["step"] < s["step"]]
    assert len(periodic) >= 3 and periodic[0] == subset
    assert len(set(periodic[1:])) == 1 and (eval_budget.MIN_EVAL_WINDOWS - 1) * 32 < periodic[1] <= \
        eval_budget.MIN_EVAL_WINDOWS * 32


def test_a_time_budget_ends_within_five_percent_of_its_length_even_where_the_whole_held_out_split_is_large(
        home, tmp_path):
    # A book whose held-out tenth takes the tiny model much more than its share of the budget to
    # read: the final evaluation fits inside the budget (as many evenly spaced windows as its share
    # allows, more than a periodic one reads), not on after it.
    src = tmp_path / "long.txt"
    src.write_text("".join(make_text(n_lines=400, seed=s) for s in range(150)), encoding="utf-8")
    name = books.add_book(home, src, name="long").name
    make_model(home)
    budget = 10.0
    s = train(home, "m", cfg(name, max_iterations=10**6, eval_every=10**6, save_every=10**6, max_time=budget,
                             sample_prompts=[]), log=lambda m: None)
    assert s["status"] == "stopped"
    assert abs(s["wall_seconds"] - budget) <= 0.05 * budget, s["wall_seconds"]
    final = [e for e in iter_events(s["events"]) if e["type"] == "eval"][-1]
    periodic = [e for e in iter_events(s["events"]) if e["type"] == "eval" and e["step"] < s["step"]]
    assert final["step"] == s["step"] and final["full"] is False and final["val_tokens"] > periodic[-1]["val_tokens"]
    # a run that ends by its steps, well before the same budget, reads the whole split
    make_model(home, "early")
    s = train(home, "early", cfg(name, max_iterations=60, eval_every=20, save_every=10**6, max_time=budget,
                                 sample_prompts=[]), log=lambda m: None)
    assert s["status"] == "completed" and s["wall_seconds"] < budget / 2
    evals = [e for e in iter_events(s["events"]) if e["type"] == "eval"]
    assert evals[0]["full"] is False and evals[-1]["step"] == 60 and evals[-1]["full"] is True


def test_a_runs_warnings_reach_the_page_with_their_code_so_they_are_said_in_its_language(home, book):
    # a char vocabulary far larger than the book's characters: "the books only filled N tokens"
    make_model(home, tokenizer="char", vocab_size=700)
    s = train(home, "m", cfg(book, max_iterations=1), log=lambda m: None)
    started = next(e for e in iter_events(s["events"]) if e["type"] == "status" and e.get("warnings"))
    (warning,) = [w for w in started["warnings"] if w["code"] == "data.vocab_unused"]
    assert warning["params"]["vocab_size"] == 700
    russian = catalogue.message(warning["code"], "ru", **warning["params"])
    assert "Книги заполнили словарь" in russian and "700" in russian
