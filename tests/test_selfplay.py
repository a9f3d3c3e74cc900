"""Self-play: advantages, the KL term, and a tiny end-to-end run that checkpoints, stops,
resumes exactly and reports its events."""

import json
import math

import pytest
import torch

from azr_trainer import store
from azr_trainer.checkpoint import build_model, list_step_checkpoints, resolve_checkpoint, safe_load
from azr_trainer.events import iter_events
from azr_trainer.home import UserError
from azr_trainer.model import ModelConfig, Transformer
from azr_trainer.rewards import Coherence, pack_rows
from azr_trainer.sample import generate
from azr_trainer.sample_eval import evaluate_samples, read_prompt_file
from azr_trainer.selfplay import SelfPlayConfig, exact_kl, group_advantages, latest_selfplay_checkpoint, \
    prime_coherence, selfplay
from azr_trainer.train import StopRequested, TrainConfig, train

from test_train import StopAt  # stops at an exact step, as Ctrl-C would

SHAPE = dict(vocab_size=300, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=32)


# ---- pieces ---------------------------------------------------------------------------------

def test_group_advantages_normalise_within_each_group():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0, 0.0, 0.0, 4.0])
    a = group_advantages(r, 3)
    first = torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3)  # population std of 1,2,3
    assert torch.allclose(a[:3], first, atol=1e-5)
    assert a[3:6].tolist() == [0.0, 0.0, 0.0]  # zero-std group: no signal, no NaN
    assert a[6:].sum().abs() < 1e-6 and a[8] > 0 > a[6] == a[7]
    for g in range(3):
        assert abs(float(a[3 * g:3 * g + 3].mean())) < 1e-6
    # scale and shift of the rewards do not change the advantages
    assert torch.allclose(group_advantages(5 * r[:3] + 7, 3), a[:3], atol=1e-4)
    assert group_advantages(torch.tensor([0.1, 0.1, 0.1, 0.1]), 2).tolist() == [0.0] * 4


def test_exact_kl_is_zero_for_identical_models_and_matches_a_hand_computed_case():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**SHAPE))
    x = torch.randint(300, (2, 10))
    with torch.no_grad():
        logits, _ = m(x)
    assert exact_kl(logits, logits).abs().max() < 1e-6
    # p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 log 2 + 1/2 log(2/3)
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.25, 0.75]]))
    assert float(exact_kl(p, q)) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)
    assert float(exact_kl(q, p)) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)
    # differentiable in the policy's logits, zero gradient at equality
    pol = logits.clone().requires_grad_(True)
    exact_kl(pol, logits).sum().backward()
    assert pol.grad.abs().max() < 1e-5


def test_evaluation_samples_decode_exactly_whatever_precision_a_decode_would_pick(monkeypatch):
    """Two evaluations of one model must agree: the evaluation decodes with the model's fp32
    weights even where the environment (or a speed probe) picks int8 for other decodes."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=512, d_model=64, num_layers=2, num_heads=4, d_ff=128,
                                max_seq_len=128)).eval()
    with torch.no_grad():  # sharper logits than a fresh model's, so that rounding changes greedy text
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(4)
    prompts = [torch.randint(512, (8,)).tolist() for _ in range(16)]

    class Ids:  # a tokenizer that shows the ids themselves
        eot_id = None

        @staticmethod
        def decode(ids):
            return " ".join(map(str, ids))

    exact = [Ids.decode(o) for o in generate(m, prompts, max_new_tokens=100, temperature=0.0, precision="fp32")]
    int8 = [Ids.decode(o) for o in generate(m, prompts, max_new_tokens=100, temperature=0.0, precision="int8")]
    assert int8 != exact  # int8 weights do change this model's greedy text
    monkeypatch.setenv("AZR_DECODE_PRECISION", "int8")
    got = evaluate_samples(m, Ids, prompts, length=100, temperature=0.0, seed=0)
    assert got["texts"] == exact


def test_prompt_file(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("KING:\\nWhat news?\n\n  \nTo be, or not\n", encoding="utf-8")
    assert read_prompt_file(f) == ["KING:\nWhat news?", "To be, or not"]
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="no prompts"):
        read_prompt_file(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.txt")


def test_settings_are_checked():
    with pytest.raises(UserError, match="group_size must be at least 2"):
        SelfPlayConfig(group_size=1).validate()
    with pytest.raises(UserError, match="prompt_source"):
        SelfPlayConfig(prompt_source="web").validate()
    with pytest.raises(UserError, match="kl_weight"):
        SelfPlayConfig(kl_weight=-1).validate()
    with pytest.raises(UserError, match="temperature"):
        SelfPlayConfig(temperature=0).validate()


# ---- end to end -----------------------------------------------------------------------------

@pytest.fixture
def trained(home, book):
    """A tiny model pretrained for a few steps (the starting point of every self-play run)."""
    store.create_model(home, "m", ModelConfig(**SHAPE))
    train(home, "m", TrainConfig(books=[book], max_iterations=30, batch_size=8, learning_rate=3e-3, eval_every=30,
                                 save_every=30, threads=1, sample_prompts=[]), log=lambda m: None)
    return "m"


def sp(**kw):
    base = dict(max_iterations=6, prompts_per_step=2, group_size=4, rollout_tokens=8, prompt_tokens=8,
                learning_rate=1e-3, warmup_iters=2, lm_batch_size=2, eval_every=3, eval_windows=4, eval_prompts=2,
                eval_length=8, save_every=100, threads=1, seed=7, reward_weights={"coherence": 0.25})
    base.update(kw)
    return SelfPlayConfig(**base)


STEP_KEYS = ("loss", "policy_loss", "kl", "entropy", "lm_loss", "reward_mean", "reward_std", "reward_repetition",
             "reward_coherence")


def step_numbers(events_path):
    return {e["step"]: tuple(e[k] for k in STEP_KEYS) for e in iter_events(events_path) if e["type"] == "step"}


def test_coherence_from_the_rollout_logits_equals_scoring_the_text(home, trained):
    model, _, tok = build_model(safe_load(home / "models" / "m" / "checkpoints" / "best.pt"))
    prompts = [tok.encode("KING:\n"), tok.encode("The queen"), [tok.eot_id]] * 2
    outs = generate(model, prompts, max_new_tokens=10, temperature=1.5, top_k=None,
                    generator=torch.Generator().manual_seed(3), eot_id=tok.eot_id)
    outs[0] = tok.encode(" the king said")  # ended early: <|endoftext|> is appended for training
    outs[1] = tok.encode(" and the queen wept for the old town")[:10]
    conts = [o + [tok.eot_id] if len(o) < 10 else o for o in outs]
    x, y, mask = pack_rows(list(zip(prompts, conts)), 32)
    with torch.no_grad():
        logits, _ = model(x)
    texts, prompt_texts = [tok.decode(o) for o in outs], [tok.decode(p) for p in prompts]
    for cap in (None, -1.4):
        coh = Coherence(model, tok, cap=cap)
        direct = coh(texts, prompt_texts)
        given = prime_coherence(coh, prompts, outs, texts, prompt_texts, logits, y, mask)
        assert given >= 2 and coh._known  # sampled rows of garbage bytes may not re-tokenize the same
        assert coh(texts, prompt_texts) == pytest.approx(direct, abs=1e-5)
        assert not coh._known  # used once, then forgotten


def test_selfplay_runs_checkpoints_and_reports_everything(home, trained):
    mdir = home / "models" / "m"
    pretrain_ckpts = sorted(p.name for p in (mdir / "checkpoints").glob("*.pt"))
    s = selfplay(home, "m", sp(), log=lambda m: None, run_id="sp-a")
    assert s["status"] == "completed" and s["step"] == 6 and s["kind"] == "selfplay"
    events = list(iter_events(s["events"]))
    kinds = {e["type"] for e in events}
    assert {"status", "step", "eval", "sample", "checkpoint"} <= kinds
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    for k in ("reward_mean", "reward_std", "reward_repetition", "reward_diversity", "reward_coherence",
              "reward_length", "reward_real_words", "kl", "entropy", "policy_loss", "lm_loss", "rollouts_per_s", "tokens_per_s"):
        assert all(math.isfinite(e[k]) for e in steps), k
    assert steps[0]["kl"] < 1e-6 and steps[-1]["kl"] > 0  # starts at the reference, then moves
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 3, 6] and evals[-1]["full"]
    for k in ("val_bpb", "sample_rep4", "sample_distinct2", "sample_reward", "sample_real_words"):
        assert math.isfinite(evals[-1][k]), k
    # the default reward scores real words against the books; the run reports their share as training does
    assert 0 <= steps[0]["reward_real_words"] <= 1 and s["sample_real_words"] == evals[-1]["sample_real_words"]
    quality = [e for e in events if e["type"] == "quality"]
    assert [e["step"] for e in quality] == [0, 3, 6] and quality[-1]["real_words"] == round(s["sample_real_words"], 4)
    samples = [e for e in events if e["type"] == "sample"]
    assert {e["rank"] for e in samples} == {"best", "worst"} and all("prompt" in e and "text" in e for e in samples)
    assert all(e["run"] == "sp-a" for e in events)
    # self-play checkpoints live in their own folder; pretraining's are untouched
    assert sorted(p.name for p in (mdir / "checkpoints").glob("*.pt")) == pretrain_ckpts
    run_folder = mdir / "checkpoints" / "selfplay" / "sp-a"
    assert (run_folder / "reference.pt").exists() and (run_folder / "step_0000006.pt").exists()
    obj = torch.load(run_folder / "step_0000006.pt", weights_only=True)
    assert obj["meta"]["kind"] == "selfplay" and obj["step"] == 6 and "optimizer" in obj
    assert [s for s, _ in list_step_checkpoints(mdir)] == [30]
    # the same format: generation and export load it like any checkpoint
    assert resolve_checkpoint(mdir, "selfplay") == run_folder / "step_0000006.pt"
    model, _, _ = build_model(safe_load(run_folder / "step_0000006.pt"))
    ref, _, _ = build_model(safe_load(run_folder / "reference.pt"))
    start, _, _ = build_model(safe_load(mdir / "checkpoints" / "best.pt"))
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), start.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values()))


def test_stopped_and_resumed_selfplay_matches_a_straight_run(home, trained):
    a = selfplay(home, "m", sp(), log=lambda m: None, run_id="straight")
    first = selfplay(home, "m", sp(), stop=StopAt(3), log=lambda m: None, run_id="resumed")
    assert first["status"] == "interrupted" and first["step"] == 3
    # resume takes the run's own settings; only run control (max_iterations …) comes from the call
    b = selfplay(home, "m", sp(resume=True, kl_weight=5.0), log=lambda m: None, run_id="resumed")
    assert b["step"] == 6 and b["run"] == "resumed"
    na, nb = step_numbers(a["events"]), step_numbers(b["events"])
    assert sorted(na) == sorted(nb) == [1, 2, 3, 4, 5, 6]
    for s in na:
        assert na[s] == pytest.approx(nb[s], abs=1e-5), s
    assert a["val_bpb"] == pytest.approx(b["val_bpb"], abs=1e-5)
    wa = safe_load(home / "models" / "m" / "checkpoints" / "selfplay" / "straight" / "step_0000006.pt")["state_dict"]
    wb = safe_load(home / "models" / "m" / "checkpoints" / "selfplay" / "resumed" / "step_0000006.pt")["state_dict"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_the_learning_rate_decays_over_the_steps_or_stays_constant(home, trained):
    rates = {}
    for ratio in (0.1, 1.0):
        s = selfplay(home, "m", sp(min_lr_ratio=ratio), log=lambda m: None, run_id=f"lr-{ratio}")
        rates[ratio] = [e["lr"] for e in iter_events(s["events"]) if e["type"] == "step"]
    # warm-up over two steps, then a cosine from 1e-3 towards 1e-4 over the four steps left
    cosine = [1e-4 + 0.5 * (1 + math.cos(math.pi * i / 4)) * 9e-4 for i in range(4)]
    assert rates[0.1] == pytest.approx([5e-4, 1e-3] + cosine, rel=1e-6)
    assert rates[1.0] == pytest.approx([5e-4] + [1e-3] * 5)
    # without an end there is nothing to decay over; with minutes alone the rate decays over them
    s = selfplay(home, "m", sp(max_iterations=None, min_lr_ratio=0.1), stop=StopAt(5), log=lambda m: None,
                 run_id="lr-open")
    assert [e["lr"] for e in iter_events(s["events"]) if e["type"] == "step"] == pytest.approx([5e-4] + [1e-3] * 4)
    s = selfplay(home, "m", sp(max_iterations=None, max_time=4.0, eval_every=10**6, min_lr_ratio=0.1),
                 log=lambda m: None, run_id="lr-time")
    timed = [e["lr"] for e in iter_events(s["events"]) if e["type"] == "step"]
    assert len(timed) > 4 and all(a >= b for a, b in zip(timed[1:], timed[2:])) and timed[-1] < 5e-4


def test_a_run_saved_before_the_rate_decayed_resumes_at_its_constant_rate(home, trained):
    first = selfplay(home, "m", sp(), stop=StopAt(3), log=lambda m: None, run_id="older")
    assert first["step"] == 3
    path = home / "models" / "m" / "checkpoints" / "selfplay" / "older" / "step_0000003.pt"
    obj = torch.load(path, weights_only=True)
    del obj["selfplay_config"]["min_lr_ratio"]  # what a file written before the setting holds
    torch.save(obj, path)
    resumed = selfplay(home, "m", sp(resume=True), log=lambda m: None, run_id="older")
    assert resumed["step"] == 6
    rates = [e["lr"] for e in iter_events(resumed["events"]) if e["type"] == "step"]
    assert rates[-3:] == pytest.approx([1e-3] * 3)


def test_self_prompts_reward_file_control_file_and_refusals(home, trained, tmp_path):
    f = tmp_path / "reward.py"
    f.write_text("def compute_reward(texts, prompts):\n    return [len(set(t)) for t in texts]\n", encoding="utf-8")
    control = tmp_path / "control"

    def pause_after_the_first_step(event):  # as the studio's pause button would
        if event["type"] == "step":
            control.write_text("pause", encoding="utf-8")

    s = selfplay(home, "m", sp(prompt_source="self", reward="file", reward_file=str(f), kl_weight=0.0,
                               lm_weight=0.0, reward_weights=None), listeners=[pause_after_the_first_step],
                 stop=StopRequested(control), log=lambda m: None)
    # seen inside step 2: that step is given up, the run pauses at step 1
    assert s["status"] == "paused" and s["step"] == 1
    first = next(e for e in iter_events(s["events"]) if e["type"] == "status")
    assert first["reward_weights"] == {"custom": 1.0}
    assert next(e for e in iter_events(s["events"]) if e["type"] == "sample")["prompt"] == ""  # from <|endoftext|>
    assert latest_selfplay_checkpoint(home / "models" / "m") is not None
    # the self-prompt pool travels with the checkpoint
    pool = safe_load(latest_selfplay_checkpoint(home / "models" / "m"))["self_pool"]
    assert len(pool) == 2 and all(isinstance(t, int) for t in pool[0])

    bad = tmp_path / "bad.py"
    bad.write_text("def compute_reward(texts, prompts):\n    return [1.0]\n", encoding="utf-8")
    with pytest.raises(UserError, match="returned 1 values"):
        selfplay(home, "m", sp(reward_file=str(bad)), log=lambda m: None)
    with pytest.raises(UserError, match="Nothing to resume"):
        selfplay(home, "m", sp(resume=True), log=lambda m: None, run_id="never")
    with pytest.raises(UserError, match="rollout_tokens"):
        selfplay(home, "m", sp(rollout_tokens=40), log=lambda m: None)
    store.create_model(home, "untrained", ModelConfig(**SHAPE))
    with pytest.raises(UserError, match="no checkpoint yet"):
        selfplay(home, "untrained", sp(), log=lambda m: None)


def test_each_group_holds_the_greedy_continuation_and_the_rest_are_sampled(home, trained, tmp_path, monkeypatch):
    monkeypatch.setenv("AZR_DECODE_PRECISION", "fp32")  # the test's own greedy decode must match the run's
    seen = tmp_path / "rollouts.jsonl"
    f = tmp_path / "reward.py"  # a reward that also writes down every batch of rollouts it scores
    f.write_text("import json\n"
                 "def compute_reward(texts, prompts):\n"
                 f"    with open({str(seen)!r}, 'a', encoding='utf-8') as out:\n"
                 "        out.write(json.dumps([texts, prompts]) + '\\n')\n"
                 "    return [float(len(set(t))) for t in texts]\n", encoding="utf-8")
    p = tmp_path / "prompts.txt"
    p.write_text("KING:\n\nThe queen\n", encoding="utf-8")
    model, _, tok = build_model(safe_load(resolve_checkpoint(home / "models" / "m", "best")))
    model.eval()

    def first_of_each_group(greedy_rollouts):
        seen.unlink(missing_ok=True)
        selfplay(home, "m", sp(max_iterations=1, prompt_source=f"file:{p}", reward="file", reward_file=str(f),
                               reward_weights=None, kl_weight=0.0, lm_weight=0.0, temperature=1.0,
                               greedy_rollouts=greedy_rollouts, eval_every=10**6), log=lambda m: None)
        scored = [json.loads(line) for line in seen.read_text(encoding="utf-8").splitlines()]
        texts, prompts = next(b for b in scored if len(b[0]) == 2 * 4)  # the step's rollouts (not an eval's)
        assert all(len(set(prompts[g * 4:g * 4 + 4])) == 1 for g in range(2))
        firsts = [(prompts[g * 4], texts[g * 4]) for g in range(2)]
        greedy = [tok.decode(generate(model, [tok.encode(prompt)], max_new_tokens=8, temperature=0.0,
                                      eot_id=tok.eot_id)[0]) for prompt, _ in firsts]
        return [text for _, text in firsts], greedy, texts

    firsts, greedy, texts = first_of_each_group(1)
    assert firsts == greedy  # what greedy decoding writes is in every group, where the reward sees it
    assert all(t not in greedy for g in range(2) for t in texts[g * 4 + 1:g * 4 + 4])  # the others are samples
    firsts, greedy, _ = first_of_each_group(0)
    assert firsts != greedy  # without it, a group at temperature 1 holds only samples
    with pytest.raises(UserError, match="greedy_rollouts"):
        SelfPlayConfig(group_size=4, greedy_rollouts=4).validate()


def test_file_prompts_and_max_time(home, trained, tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("KING:\\n\nThe queen\n", encoding="utf-8")
    s = selfplay(home, "m", sp(prompt_source=f"file:{p}", max_iterations=None, max_time=1.0, eval_every=10**6),
                 log=lambda m: None)
    assert s["status"] == "stopped" and s["step"] >= 1
    prompts = {e["prompt"] for e in iter_events(s["events"]) if e["type"] == "sample"}
    assert prompts <= {"KING:\n", "The queen"}


def test_cli_selfplay_runs_and_resumes(home, trained, capsys, tmp_path):
    import json

    from azr_trainer.cli import main
    args = ["selfplay", "m", "--max-iterations", "2", "--group-size", "2", "--prompts-per-step", "2",
            "--rollout-tokens", "6", "--prompt-tokens", "6", "--kl", "0.05", "--lm-weight", "0", "--threads", "1",
            "--reward-weights", "coherence=0", "--eval-every", "100", "--eval-length", "8", "--json"]
    assert main(args + ["--run-id", "cli"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "completed" and out["step"] == 2 and out["run"] == "cli"
    assert main(["selfplay", "m", "--max-iterations", "3", "--resume", "--run-id", "cli", "--threads", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 3 and out["run"] == "cli"
    cfg = safe_load(latest_selfplay_checkpoint(home / "models" / "m", "cli"))["selfplay_config"]
    assert cfg["kl_weight"] == 0.05 and cfg["rollout_tokens"] == 6 and cfg["reward_weights"] == "coherence=0"
    assert main(["generate", "m", "The king", "--checkpoint", "selfplay", "--max-length", "4", "--seed", "1",
                 "--threads", "1"]) == 0
    assert capsys.readouterr().out.startswith("The king")
    bad = tmp_path / "bad.py"
    bad.write_text("def compute_reward(texts, prompts):\n    raise RuntimeError('boom')\n", encoding="utf-8")
    assert main(["selfplay", "m", "--reward", str(bad), "--max-iterations", "1", "--threads", "1"]) == 2
    assert "raised RuntimeError: boom" in capsys.readouterr().err
    assert main(["selfplay", "m", "--reward", "nice", "--max-iterations", "1", "--threads", "1"]) == 2
    assert "Unknown reward “nice”" in capsys.readouterr().err


class StopInsideStep(StopRequested):
    """Asks for a cancel from inside step ``at``, at its ``piece``-th check (the loop's own check
    comes once a step, after it)."""

    def __init__(self, at: int, piece: int):
        super().__init__()
        self.whole_steps, self.at, self.piece, self.inside = 0, at, piece, 0

    def check(self):
        self.whole_steps += 1
        return self.reason

    def asked(self):
        if self.whole_steps + 1 == self.at:
            self.inside += 1
            if self.inside == self.piece:
                self.request("cancel")
        return self.reason


@pytest.mark.parametrize("piece", [1, 2], ids=["after the rollouts", "between the two backward passes"])
def test_a_cancel_inside_a_step_gives_the_step_up_and_the_resumed_run_matches_a_straight_one(home, trained, piece):
    a = selfplay(home, "m", sp(), log=lambda m: None, run_id="whole")
    stop = StopInsideStep(at=3, piece=piece)
    first = selfplay(home, "m", sp(), stop=stop, log=lambda m: None, run_id="cut")
    # cancelled within step 3, before its update: the run is saved at step 2, with an evaluation
    assert first["status"] == "cancelled" and first["step"] == 2 and stop.inside == piece
    events = list(iter_events(first["events"]))
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2]
    assert [e for e in events if e["type"] == "eval"][-1]["step"] == 2
    b = selfplay(home, "m", sp(resume=True), log=lambda m: None, run_id="cut")
    assert b["step"] == 6
    na, nb = step_numbers(a["events"]), step_numbers(b["events"])
    for s in na:
        assert na[s] == pytest.approx(nb[s], abs=1e-5), s
    assert a["val_bpb"] == pytest.approx(b["val_bpb"], abs=1e-5)
