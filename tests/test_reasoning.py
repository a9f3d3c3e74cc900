"""AZR reasoning self-play: the program generator, parsing and grading through the sandbox, the
paper's rewards and TRR++ advantages, and tiny end-to-end runs through the CLI."""
import json
import math
import time
from pathlib import Path

import pytest
import torch

from azr_trainer import executor, programs
from azr_trainer.cli import main
from azr_trainer.events import read_events
from azr_trainer.formats import FORMATS
from azr_trainer.reasoning import Task, grade_answers, heldout_tasks, learnability, trr_advantages

LIMITS = executor.Limits()
COMPACT, PAPER = FORMATS["compact"], FORMATS["paper"]
TINY = ["--d-model", "32", "--num-layers", "1", "--num-heads", "2", "--d-ff", "64", "--max-seq-len", "320"]


@pytest.mark.sandbox
def test_generator_twins_match_the_sandboxed_source():
    """What the generator believes a program returns is what its source returns when run."""
    jobs, expected = [], []
    for split, seed in (("train", 1), ("test", 2)):
        gen = programs.Generator(split, seed)
        for _ in range(40):
            prog, x = gen.program(), gen.input()
            jobs.append((prog.source, programs.arg_text(x)))
            expected.append(repr(prog(x)))
    results = executor.run_many(jobs, LIMITS)
    assert [r.ok for r in results] == [True] * len(jobs), [r.error for r in results if not r.ok][:3]
    assert [r.output for r in results] == expected


def test_test_split_is_shifted_from_training():
    held = programs.held_out_pairs()
    train = [programs.Generator("train", 3).program() for _ in range(300)]
    test = [programs.Generator("test", 4).program() for _ in range(300)]
    assert not any(p in held for prog in train for p in prog.pairs())
    assert all(any(p in held for p in prog.pairs()) for prog in test)
    assert max(p.depth for p in train) <= 3 and min(p.depth for p in test) >= 3


def test_parse_proposals_compact():
    good = "def f(x):\n    x = sorted(x)\n    return x\n>>> f([3, 1])\n\nrest"
    assert COMPACT.parse_proposal(good) == ("def f(x):\n    x = sorted(x)\n    return x", "[3, 1]")
    assert COMPACT.parse_proposal("def f(x):\n    return x\n>>> f([3, 1])") is None        # not finished
    # written like a reference (an output guess, then "##"): the program and input still count
    assert COMPACT.parse_proposal("def f(x):\n    return x\n>>> f([3, 1]) = [9]\n##\nde") == \
        ("def f(x):\n    return x", "[3, 1]")
    assert COMPACT.parse_proposal("def f(x):\n    return open(x)\n>>> f(1)\n\n") is None   # forbidden name
    assert COMPACT.parse_proposal("def f(x):\n    return x\n>>> f([3, 1\n\n") is None      # not a literal
    text = "# sort\n>>> f([1])\n>>> f([2, 1])\n>>> f([1])\n>>> f([])\n\n"
    assert COMPACT.parse_induction_proposal(text, 3) == ("sort", ["[1]", "[2, 1]", "[]"])
    assert COMPACT.parse_induction_proposal(text, 4) is None                      # too few distinct inputs
    assert COMPACT.parse_induction_proposal("# sort\n>>> g([1])\n\n", 1) is None


@pytest.mark.sandbox
def test_paper_format_round_trips():
    """What the paper format asks for, written as asked, parses back to the same task."""
    code = "def f(a, b):\n    return [v + b for v in a]"
    answer = "I add b to each.</think> <answer>" + PAPER.proposal(code, "[1, 2], 3") + "</answer>"
    assert PAPER.parse_proposal(answer) == (code, "[1, 2], 3")
    assert PAPER.parse_proposal("<answer>```python\nimport os\ndef f(a):\n    return a\n```\n```input\n1\n```"
                                "</answer>") is None
    ind = "<answer>" + PAPER.induction_proposal("adds b", ["[1], 2", "[], 0", "[1], 2"]) + "</answer>"
    assert PAPER.parse_induction_proposal(ind, 2) == ("adds b", ["[1], 2", "[], 0"])
    assert "<answer>" in PAPER.deduction(code, "[1], 2") and PAPER.stop == "</answer>"
    task = Task("induction", code, message="adds b", pairs=[("[1], 2", "[3]"), ("[], 0", "[]"), ("[5], 1", "[6]")])
    graded = grade_answers([task, task], ["<answer>```python\n" + code + "\n```</answer>",
                                          "<answer>```python\ndef f(a, b):\n    return a\n```"], LIMITS, PAPER)
    assert [(g.correct, g.well_formed) for g in graded] == [(True, True), (False, False)]  # 2nd: unfinished


@pytest.mark.sandbox
def test_grading_deduction_abduction_induction():
    code = "def f(x):\n    x = [v * v for v in x]\n    return x"
    ded = Task("deduction", code, "[2, -3]", "[4, 9]")
    abd = Task("abduction", code, "[2, -3]", "[4, 9]")
    ind = Task("induction", code, message="square",
               pairs=[("[1]", "[1]"), ("[2]", "[4]"), ("[3, 4]", "[9, 16]"), ("[-5]", "[25]")])
    tasks = [ded, ded, ded, abd, abd, abd, ind, ind, ind]
    texts = ["[4,  9]\n\n", "[4, 8]\n\n", "[4, 9\n\n",            # right by value, wrong, malformed
             "[-2, 3]\n\n", "[2, 2]\n\n", "[2,\n\n",              # another input that works, wrong, malformed
             "    return [v ** 2 for v in x]\n\n",                 # a different correct program
             "    return x\n\n",                                    # passes the shown pairs only partly
             "    import os\n    return os.listdir(x)\n\n"]         # forbidden: malformed
    graded = grade_answers(tasks, texts, LIMITS)
    assert [g.correct for g in graded] == [True, False, False, True, False, False, True, False, False]
    assert [g.reward for g in graded] == [1, -0.5, -1, 1, -0.5, -1, 1, -0.5, -1]


def test_learnability_and_trr_advantages():
    assert learnability(0.0) == 0 and learnability(1.0) == 0
    assert learnability(0.25) == pytest.approx(0.75)
    groups = [("deduction", "solve")] * 2 + [("deduction", "propose")] * 2 + [("induction", "solve")] * 2
    adv = trr_advantages([1.0, -0.5, 0.5, 0.5, 0.0, 1.0], groups)
    # Each group is normalised on its own: ±1 for a two-row group with different rewards, 0 when equal.
    assert torch.allclose(adv, torch.tensor([1.0, -1.0, 0.0, 0.0, -1.0, 1.0]), atol=1e-5)


@pytest.mark.sandbox
def test_heldout_tasks_are_consistent():
    tasks = heldout_tasks(3, seed=7)
    assert [t.kind for t in tasks] == ["deduction"] * 3 + ["abduction"] * 3 + ["induction"] * 3
    # The gold answers grade as correct through the same path the solver's answers take.
    answers = [t.output for t in tasks[:3]] + [t.input for t in tasks[3:6]] + \
              [COMPACT.induction_answer(t.code) for t in tasks[6:]]
    assert all(g.correct for g in grade_answers(tasks, [a + COMPACT.stop for a in answers], LIMITS))


def _run(home, *args):
    return main(["--home", str(home), "reason", *args])


@pytest.mark.sandbox
def test_from_zero_run_checkpoints_resumes_and_logs(tmp_path, capsys):
    home = tmp_path / "home"
    common = ["--batch-size", "2", "--n-samples", "2", "--eval-tasks", "2", "--threads", "1", "--quiet"]
    assert _run(home, "tiny", *TINY, "--pretrain-time", "3", "--corpus-docs", "600",
                "--max-iterations", "2", *common) == 0
    ckpts = list((home / "models" / "tiny" / "checkpoints" / "reason").glob("*/step_*.pt"))
    assert [p.name for p in ckpts] == ["step_0000002.pt"]
    assert "held-out greedy accuracy" in capsys.readouterr().out
    assert _run(home, "tiny", "--resume", "--max-iterations", "3", *common, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 3 and summary["status"] == "completed"
    events, _ = read_events(home / "models" / "tiny" / "runs" / summary["run"] / "events.jsonl")
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    for kind in ("deduction", "abduction", "induction"):
        assert 0 <= steps[-1][f"{kind}_valid_rate"] <= 1
        assert 0 <= steps[-1][f"{kind}_solve_acc"] <= 1
    evals = [e for e in events if e["type"] == "eval"]
    assert evals and all("induction_acc" in e for e in evals)
    assert [e["state"] for e in events if e["type"] == "status"] == ["started", "completed", "resumed", "completed"]

    assert _run(home, "tiny", "--show-buffers") == 0
    buffers = json.loads(capsys.readouterr().out)
    assert set(buffers) == {"deduction", "abduction", "induction"}
    assert buffers["deduction"][0]["code"] == programs.IDENTITY  # the seed triplet

    assert _run(home, "tiny", "--eval-only", "--checkpoint", "reason", "--eval-tasks", "2", "--pass-k", "2") == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"deduction_acc", "induction_pass@2", "mean_acc"}


@pytest.mark.sandbox
@pytest.mark.parametrize("mode", ["solver_only", "frozen_proposer", "pretrain"])
def test_ablation_modes_run(tmp_path, mode, capsys):
    home = tmp_path / "home"
    assert _run(home, "m", *TINY, "--pretrain-time", "2", "--corpus-docs", "300", "--pretrain-only", "--quiet") == 0
    capsys.readouterr()
    before = {k: v.clone() for k, v in _weights(home).items()}
    assert _run(home, "m", "--mode", mode, "--max-iterations", "1", "--batch-size", "2", "--n-samples", "2",
                "--eval-tasks", "1", "--threads", "1", "--json", "--quiet") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == mode and summary["step"] == 1
    events, _ = read_events(home / "models" / "m" / "runs" / summary["run"] / "events.jsonl")
    step = next(e for e in events if e["type"] == "step")
    if mode == "pretrain":  # next-token loss always has a gradient
        after = _weights(home, summary["checkpoint"])
        assert any(not torch.equal(before[k], after[k]) for k in before)
    else:
        # Proposals are made (and their validity logged) only when the model proposes.
        assert ("deduction_valid_rate" in step) == (mode == "frozen_proposer")
        assert 0 <= step["induction_solve_acc"] <= 1


@pytest.mark.sandbox
def test_the_learning_rate_decays_over_the_steps_when_asked(tmp_path, capsys):
    home = tmp_path / "home"
    assert _run(home, "m", *TINY, "--pretrain-time", "2", "--corpus-docs", "300", "--pretrain-only", "--quiet") == 0
    capsys.readouterr()
    assert _run(home, "m", "--mode", "pretrain", "--max-iterations", "9", "--learning-rate", "1e-3",
                "--min-lr-ratio", "0.1", "--eval-tasks", "1", "--eval-every", "100", "--threads", "1", "--json",
                "--quiet") == 0
    summary = json.loads(capsys.readouterr().out)
    events, _ = read_events(home / "models" / "m" / "runs" / summary["run"] / "events.jsonl")
    rates = [e["lr"] for e in events if e["type"] == "step"]
    # five steps of warm-up, then a cosine from 1e-3 towards 1e-4 over the four left
    cosine = [1e-4 + 0.5 * (1 + math.cos(math.pi * i / 4)) * 9e-4 for i in range(4)]
    assert rates == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3] + cosine, rel=1e-6)


def _weights(home, path=None):
    from azr_trainer.checkpoint import resolve_checkpoint, safe_load
    return safe_load(path or resolve_checkpoint(home / "models" / "m", "best"))["state_dict"]


@pytest.mark.sandbox
def test_bad_settings_are_refused(tmp_path, capsys):
    home = tmp_path / "home"
    assert _run(home, "m", "--mode", "dream") == 2
    assert "mode must be one of" in capsys.readouterr().err
    assert _run(home, "m", "--n-samples", "1") == 2
    assert "n_samples must be at least 2" in capsys.readouterr().err


@pytest.mark.sandbox
def test_a_pretrained_hf_llama_runs_azr_with_the_paper_format(tmp_path):
    """A causal LM in Hugging Face format (here a tiny random Llama made on the spot: nothing is
    downloaded) is imported and runs AZR steps with the paper's prompt format."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from azr_trainer.importer import import_model
    from azr_trainer.reasoning import ReasonConfig, reason
    from azr_trainer.tokenizer import train_bpe
    torch.manual_seed(0)
    tok = train_bpe([COMPACT.deduction("def f(x):\n    return sorted(x)", "[3, 1]") * 50], 300)
    folder = tmp_path / "hf"
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=2048)).save_pretrained(folder)
    tok.hf.save(str(folder / "tokenizer.json"))
    home = tmp_path / "home"
    import_model(home, folder, "hfm", max_seq_len=2048)
    summary = reason(home, "hfm", ReasonConfig(max_iterations=1, batch_size=1, n_samples=2, eval_tasks=1,
                                               max_program_tokens=48, max_answer_tokens=16, threads=1),
                     log=lambda m: None)
    assert summary["status"] == "completed" and summary["step"] == 1
    events, _ = read_events(home / "models" / "hfm" / "runs" / summary["run"] / "events.jsonl")
    assert events[0]["reason_config"]["prompt_format"] == "auto" and events[0]["prompt_format"] == "paper"
    prompts = [e for e in events if e["type"] == "step"]
    assert prompts and prompts[0]["deduction_format_rate"] == 0  # a random model writes no <answer> yet


@pytest.mark.sandbox
def test_constant_answers_are_flagged_as_trivial():
    sort = "def f(x):\n    x = sorted(x)\n    return x"
    evens = "def f(x):\n    x = [v for v in x if v % 2 == 0]\n    n = len(x)\n    return n"
    tasks = [Task("deduction", sort, "[2, 1]", "[1, 2]"), Task("deduction", evens, "[1, 3]", "0"),
             Task("abduction", sort, "[4]", "[4]"), Task("abduction", sort, "[]", "[]"),
             Task("induction", evens, message="count", pairs=[("[1]", "0"), ("[2]", "1"), ("[3]", "0"),
                                                              ("[5]", "0")]),
             Task("induction", sort, message="sort", pairs=[("[1]", "[1]"), ("[2]", "[2]"), ("[3]", "[3]"),
                                                           ("[4]", "[4]")])]
    from azr_trainer.reasoning import constant_solvable
    assert constant_solvable(tasks, LIMITS) == [False, True, False, True, True, False]


@pytest.mark.sandbox
def test_a_cancel_in_the_middle_of_a_long_step_ends_the_run_within_seconds(home, monkeypatch):
    """A studio run whose step is minutes long (many rollouts of a slowish model) answers a cancel
    between rollout chunks: it ends cancelled at the last whole step, with its checkpoint saved,
    long before the step would have ended (the old loop checked the stop only after a step)."""
    from azr_trainer.from_zero import create_from_zero
    from azr_trainer.jobs import JobRunner
    from azr_trainer.registry import Registry
    from azr_trainer.train import TrainConfig, run_dir, train
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the worker's step is long on a CPU only
    create_from_zero(home, "z", shape=dict(d_model=192, num_layers=3, num_heads=4, d_ff=768, max_seq_len=272),
                     n_docs=600, log=lambda m: None)
    train(home, "z", TrainConfig(books=["z-triplets"], max_iterations=1, batch_size=2, eval_every=1000,
                                 save_every=1000, threads=1), log=lambda m: None)
    runner = JobRunner(home, Registry(home))  # polled by hand: no monitor thread
    # 3 × 256 rollouts of up to 48 or 200 tokens, then their update: minutes on one thread.
    run = runner.create_run("z", [], dict(mode="solver_only", max_iterations=100, batch_size=16, n_samples=16,
                                          eval_tasks=1, threads=1, seed=3), kind="reason")
    path = run_dir(home, "z", run["id"]) / "events.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:  # the start eval is done: the first step has begun
        runner.poll()
        if path.exists() and any(e["type"] == "eval" for e in read_events(path)[0]):
            break
        time.sleep(0.1)
    time.sleep(1.0)
    runner.cancel(run["id"])
    deadline = time.time() + 30  # generous: the answer comes within a few tokens of the rollouts
    while time.time() < deadline and runner.get_run(run["id"])["state"] == "running":
        runner.poll()
        time.sleep(0.1)
    run = runner.get_run(run["id"])
    assert run["state"] == "cancelled", run
    events, _ = read_events(path)
    assert not any(e["type"] == "step" for e in events)  # the step was given up, not finished
    last = events[-1]
    assert last["type"] == "status" and last["state"] == "cancelled" and last["code"] == "run.cancelled"
    saved = [e for e in events if e["type"] == "checkpoint"]
    assert saved and saved[-1]["kind"] == "final" and Path(saved[-1]["path"]).exists()
    assert last["summary"]["checkpoint"] == saved[-1]["path"] and last["summary"]["step"] == 0


def test_rollouts_stop_each_row_at_its_first_stop_string():
    """sample_until_end follows the rows with tensors and decodes only rows that may have just
    finished a stop: the same cuts as decoding every row's tail at every step."""
    from azr_trainer.model import ModelConfig, Transformer
    from azr_trainer.reasoning import sample_until_end
    from azr_trainer.sample import SamplingParams, stream_generate
    from azr_trainer.tokenizer import train_bpe
    torch.manual_seed(0)
    tok = train_bpe([COMPACT.deduction("def f(x):\n    return sorted(x)", "[3, 1]") * 50 + "é ü\n\n"], 300)
    model = Transformer(ModelConfig(vocab_size=300, d_model=32, num_layers=1, num_heads=2, d_ff=64,
                                    max_seq_len=64).validate()).eval()
    prompts = ["def f(x):", "return", "[3, 1]", "", "sorted", "x"] * 2
    stops = ("]", "x)")
    got = sample_until_end(model, tok, prompts, max_new_tokens=20, temperature=1.5,
                           generator=torch.Generator().manual_seed(7), stop=stops)
    ids = [tok.encode(p)[-44:] for p in prompts]
    want, done = [[] for _ in prompts], [False] * len(prompts)
    for step in stream_generate(model, ids, SamplingParams(20, 1.5, None, None, 1.0, None), eot_id=tok.eot_id,
                                generator=torch.Generator().manual_seed(7)):
        for i, t in enumerate(step):
            if t is None or done[i]:
                done[i] = True
                continue
            want[i].append(t)
            done[i] = any(s in tok.decode(want[i][-4:]) for s in stops)
    assert [g[1] for g in got] == want and [g[0] for g in got] == ids
    assert [g[2] for g in got] == [tok.decode(w) for w in want]
    assert 0 < sum(any(s in g[2] for s in stops) for g in got) < len(prompts)  # some rows stopped, some did not

    calls = []
    decode = tok.decode
    tok.decode = lambda ids: calls.append(1) or decode(ids)
    again = sample_until_end(model, tok, prompts, max_new_tokens=20, temperature=1.5,
                             generator=torch.Generator().manual_seed(7), stop=stops)
    assert again == got and len(calls) < sum(map(len, want)) // 2  # not a decode per row per step
