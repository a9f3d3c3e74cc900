import pytest
import torch

from azr_trainer.home import UserError
from azr_trainer.model import ModelConfig, Transformer
from azr_trainer.sample import Batch, SamplingParams, generate, stream_generate
from azr_trainer.settings import GENERATE


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=300, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                                   max_seq_len=24).validate()).eval()


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(model):
    prompts = [[5, 6, 7], [9] * 11, [1]]
    together = generate(model, prompts, max_new_tokens=30, temperature=0)
    alone = [generate(model, [p], max_new_tokens=30, temperature=0)[0] for p in prompts]
    assert together == alone


def test_cache_and_no_cache_agree_past_the_window(model):
    # 40 new tokens on a 24-token window: the window slides several times
    a = generate(model, [[3, 4, 5]], max_new_tokens=40, temperature=0)
    b = generate(model, [[3, 4, 5]], max_new_tokens=40, temperature=0, use_cache=False)
    assert a == b and len(a[0]) == 40


def test_long_prompt_keeps_its_last_tokens(model):
    long = list(range(10, 60))
    assert generate(model, [long], max_new_tokens=5, temperature=0) == \
        generate(model, [long[-23:]], max_new_tokens=5, temperature=0)


def test_seed_makes_sampling_reproducible(model):
    kw = dict(max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9)
    assert generate(model, [[1, 2]], seed=7, **kw) == generate(model, [[1, 2]], seed=7, **kw)
    assert generate(model, [[1, 2]], seed=7, **kw) != generate(model, [[1, 2]], seed=8, **kw)


@pytest.mark.parametrize("top_k", [None, 5])
def test_a_model_gone_to_nan_still_gives_tokens_of_its_vocabulary(model, top_k):
    broken = Transformer(model.cfg).eval()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.lm_head.weight.fill_(float("nan"))  # as after a diverged update: every logit NaN
    out = generate(broken, [[1, 2], [3]], max_new_tokens=4, temperature=1.0, top_k=top_k, top_p=None, seed=1,
                   precision="fp32")
    assert [len(o) for o in out] == [4, 4]
    assert all(0 <= t < model.cfg.vocab_size for o in out for t in o)


def test_top_k_one_is_greedy(model):
    assert generate(model, [[1, 2]], max_new_tokens=15, temperature=1.3, top_k=1, seed=3) == \
        generate(model, [[1, 2]], max_new_tokens=15, temperature=0)


def test_greedy_rows_take_the_likeliest_token_beside_sampled_ones(model):
    prompts = [[5, 6, 7], [5, 6, 7], [9] * 11, [9] * 11]
    got = generate(model, prompts, max_new_tokens=20, temperature=1.5, seed=3, greedy_rows=[True, False, True, False])
    greedy = [generate(model, [p], max_new_tokens=20, temperature=0)[0] for p in prompts]
    assert got[0] == greedy[0] and got[2] == greedy[2]
    assert got[1] != greedy[1] and got[3] != greedy[3]  # the others are drawn at the temperature
    # rows marked greedy or not, the sampled rows draw the same numbers: marking costs nothing else
    assert got[1::2] == generate(model, prompts, max_new_tokens=20, temperature=1.5, seed=3)[1::2]


def test_repetition_penalty_reduces_repeats(model):
    greedy = generate(model, [[1, 2]], max_new_tokens=60, temperature=0)[0]
    penalised = generate(model, [[1, 2]], max_new_tokens=60, temperature=0, repetition_penalty=3.0)[0]
    assert len(set(penalised)) > len(set(greedy))


def test_stops_at_end_of_text(model):
    first = generate(model, [[1, 2]], max_new_tokens=1, temperature=0)[0][0]
    out = generate(model, [[1, 2]], max_new_tokens=10, temperature=0, eot_id=first)
    assert out == [[]]


def test_streaming_yields_token_by_token(model):
    steps = list(stream_generate(model, [[1, 2]], SamplingParams(max_length=7, temperature=0)))
    assert len(steps) == 7 and all(len(s) == 1 for s in steps)


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_p=0), dict(max_length=0), dict(top_k=-2),
                                dict(repetition_penalty=0)])
def test_bad_sampling_settings_are_refused(kw):
    with pytest.raises(UserError):
        SamplingParams(**kw).validate()


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_cached_steps_match_the_full_forward_step_by_step_past_the_window(kv_heads):
    torch.manual_seed(2)
    m = Transformer(ModelConfig(vocab_size=300, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=24,
                                num_kv_heads=kv_heads).validate()).eval()
    prompts = [[5, 6, 7], [9] * 11, [1], list(range(30, 50))]  # left-padded to 20
    lengths = []
    with torch.no_grad():
        cached, full = Batch(m, prompts), Batch(m, prompts, use_cache=False)
        for _ in range(60):  # the 24-token window slides several times
            assert (cached.logits - full.logits).abs().max().item() < 1e-5
            nxt = cached.logits.argmax(-1)
            assert torch.equal(nxt, full.logits.argmax(-1))
            cached.push(nxt)
            full.push(nxt)
            lengths.append(cached.length)
    assert max(lengths) == 24 and lengths.count(18) >= 3


def test_padded_batch_with_and_without_the_cache_agree_past_the_window(model):
    prompts = [[5, 6, 7], [9] * 11, [1], list(range(40, 62))]
    assert generate(model, prompts, max_new_tokens=50, temperature=0) == \
        generate(model, prompts, max_new_tokens=50, temperature=0, use_cache=False)


@pytest.mark.parametrize("kw", [dict(top_k=3, top_p=None), dict(top_k=None, top_p=0.6), dict(top_k=None, top_p=None),
                                dict(top_k=6, top_p=0.6), dict()])  # dict(): the defaults (top-k 40, top-p 0.9)
def test_sampling_follows_the_filtered_distribution(model, kw):
    prompt, n, temperature = [1, 2], 6000, 0.2
    kw = {"top_k": GENERATE.default("top_k"), "top_p": GENERATE.default("top_p"), **kw}
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0][0, -1]
    probs = torch.softmax(logits / temperature, -1)
    if kw.get("top_k"):
        probs = torch.where(probs >= probs.topk(kw["top_k"]).values[-1], probs, 0)
        probs = probs / probs.sum()  # top-p measures the mass of what top-k kept
    if kw.get("top_p"):
        ordered = probs.sort(descending=True)
        drop = ordered.values.cumsum(0) - ordered.values >= kw["top_p"]
        probs = probs.scatter(0, ordered.indices, ordered.values.masked_fill(drop, 0))
    probs = probs / probs.sum()
    out = generate(model, [prompt] * n, max_new_tokens=1, temperature=temperature, seed=5, **kw)
    counts = torch.bincount(torch.tensor([o[0] for o in out]), minlength=probs.numel()) / n
    assert (counts[probs == 0] == 0).all()
    assert (counts - probs).abs().max().item() < 0.035 and probs.max() < 0.9  # (a spread distribution)


@pytest.mark.parametrize("kw", [dict(temperature=1.0, top_k=None, top_p=None), dict(temperature=0.7, top_k=None, top_p=0.8),
                                dict(temperature=1.2, top_k=5, repetition_penalty=1.3)])
def test_every_sampling_path_is_reproducible_with_a_seed(model, kw):
    prompts = [[1, 2], [3, 4, 5, 6, 7]]
    first = generate(model, prompts, max_new_tokens=40, seed=11, **kw)
    assert first == generate(model, prompts, max_new_tokens=40, seed=11, **kw)
    assert first == generate(model, prompts, max_new_tokens=40, generator=torch.Generator().manual_seed(11), **kw)
    assert first != generate(model, prompts, max_new_tokens=40, seed=12, **kw)
