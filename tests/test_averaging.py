"""The average of a run's recent weights: the rule itself, and that a run evaluates, samples and
saves the average while it trains (and resumes) from its own weights."""

import math

import pytest
import torch

from azr_trainer import layout, store
from azr_trainer.averaging import POWER, WeightAverage
from azr_trainer.checkpoint import build_model, list_step_checkpoints, safe_load
from azr_trainer.data import prepare_data
from azr_trainer.events import iter_events
from azr_trainer.model import ModelConfig
from azr_trainer.train import StopRequested, TrainConfig, evaluate, train

SHAPE = dict(vocab_size=300, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=32)


def test_the_average_weighs_each_step_by_the_power_rule():
    """After t steps, step s's weights count (1 − (1 − 1/s)^(p+1)) · (s/t)^(p+1): the first step's
    whole at first (the random start forgotten), later ones by about s^p — so the average sits
    about 1/(p+2) of the run behind its end, however long the run."""
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model)
    t = 400
    for s in range(1, t + 1):
        with torch.no_grad():
            model.weight.fill_(float(s))
            model.bias.fill_(-float(s))
        average.update(s)
        if s == 1:
            assert torch.equal(average.module.weight, model.weight)  # nothing of the initial weights left
    p = POWER
    weights = [(1 - (1 - 1 / s) ** (p + 1)) * (s / t) ** (p + 1) for s in range(1, t + 1)]
    assert math.isclose(sum(weights), 1.0, rel_tol=1e-9)
    expected = sum(w * s for w, s in zip(weights, range(1, t + 1)))
    assert torch.allclose(average.module.weight, torch.full((2, 3), expected), rtol=1e-5)
    assert torch.allclose(average.module.bias, torch.full((2,), -expected), rtol=1e-5)
    assert expected == pytest.approx(t * (p + 1) / (p + 2), rel=0.01)
    assert model.weight[0, 0].item() == t  # the model's own weights untouched
    assert not any(q.requires_grad for q in average.module.parameters())


def test_tied_weights_stay_tied_in_the_average():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    average = WeightAverage(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update(2)
    assert average.module[1].weight is average.module[0].weight
    state = average.module.state_dict()
    assert torch.equal(state["0.weight"], state["1.weight"])


def _run(home, book, name, averaging, **kw):
    store.create_model(home, name, ModelConfig(**SHAPE))
    c = dict(books=[book], max_iterations=12, batch_size=4, learning_rate=3e-3, save_every=12, eval_every=12,
             threads=1, log_every=1, sample_length=8, weight_averaging=averaging)
    c.update(kw)
    return train(home, name, TrainConfig(**c), log=lambda m: None)


def test_a_run_evaluates_and_saves_the_average_and_trains_on_its_own_weights(home, book):
    summary = _run(home, book, "m", "on")
    mdir = store.model_dir(home, "m")
    step = safe_load(list_step_checkpoints(mdir)[-1][1])
    assert set(step["trained_state_dict"]) == set(step["state_dict"])
    moved = [k for k in step["state_dict"] if not torch.equal(step["state_dict"][k], step["trained_state_dict"][k])]
    assert moved, "the saved model should be the average, not the last step's weights"
    best = safe_load(layout.best_checkpoint(mdir))
    assert "trained_state_dict" not in best and "optimizer" not in best  # best.pt is for use, not to resume
    # The final evaluation measured exactly the weights that were saved as the model.
    model, _, _ = build_model(best)
    data = prepare_data(home, mdir, [book], "bpe", 300)
    res = evaluate(model, data.val, data.val_bytes, 32, torch.device("cpu"),
                   lambda: torch.autocast("cpu", enabled=False), limit=None)
    final = [e for e in iter_events(summary["events"]) if e["type"] == "eval"][-1]
    assert final["step"] == 12 and final["full"]
    assert res["val_bpb"] == pytest.approx(final["val_bpb"], rel=1e-5)
    assert best["meta"]["val_bpb"] == pytest.approx(final["val_bpb"], rel=1e-5)


def test_without_averaging_the_model_is_the_last_steps_weights(home, book):
    _run(home, book, "plain", "off")
    step = safe_load(list_step_checkpoints(store.model_dir(home, "plain"))[-1][1])
    assert "trained_state_dict" not in step


def test_the_same_seed_trains_the_same_whether_or_not_it_averages(home, book):
    """Averaging only watches: the training losses step by step are the same either way."""
    a, b = _run(home, book, "a", "on"), _run(home, book, "b", "off")
    la = {e["step"]: e["loss"] for e in iter_events(a["events"]) if e["type"] == "step"}
    lb = {e["step"]: e["loss"] for e in iter_events(b["events"]) if e["type"] == "step"}
    assert la == pytest.approx(lb, abs=1e-6)
    assert a["val_bpb"] != b["val_bpb"]


class _StopAfter(StopRequested):
    """Stops after ``steps`` steps, as Ctrl-C would."""

    def __init__(self, steps):
        super().__init__()
        self.left = steps

    def check(self):
        self.left -= 1
        if self.left <= 0:
            self.request("SIGINT")
        return self.reason


@pytest.mark.parametrize("first, then", [("on", "off"), ("off", "on")])
def test_a_resume_trains_on_from_the_trained_weights_whatever_the_setting(home, book, first, then):
    """Switching averaging between a stop and its resume changes nothing of the training: the
    resumed run's losses are a straight run's, step by step."""
    straight = _run(home, book, "straight", "off", max_iterations=24, save_every=100, eval_every=8)
    store.create_model(home, "m", ModelConfig(**SHAPE))
    c = dict(books=[book], max_iterations=24, batch_size=4, learning_rate=3e-3, save_every=100, eval_every=8,
             threads=1, log_every=1, sample_length=8)
    train(home, "m", TrainConfig(**c, weight_averaging=first), stop=_StopAfter(12), log=lambda m: None)
    resumed = train(home, "m", TrainConfig(**c, weight_averaging=then, resume=True), log=lambda m: None)
    la = {e["step"]: e["loss"] for e in iter_events(straight["events"]) if e["type"] == "step"}
    lb = {e["step"]: e["loss"] for e in iter_events(resumed["events"]) if e["type"] == "step"}
    assert sorted(la) == sorted(lb) == list(range(1, 25))
    assert la == pytest.approx(lb, abs=1e-5)
    last = safe_load(list_step_checkpoints(store.model_dir(home, "m"))[-1][1])
    assert ("trained_state_dict" in last) == (then == "on")
