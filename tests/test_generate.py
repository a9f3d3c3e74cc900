import pytest
import torch

from azr_trainer.home import UserError
from azr_trainer.model import ModelConfig, Transformer
from azr_trainer.sample import SamplingParams, generate, stream_generate


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


def test_top_k_one_is_greedy(model):
    assert generate(model, [[1, 2]], max_new_tokens=15, temperature=1.3, top_k=1, seed=3) == \
        generate(model, [[1, 2]], max_new_tokens=15, temperature=0)


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


def test_fused_decode_step_gives_the_same_logits_as_the_model():
    from azr_trainer.model import KVCache
    from azr_trainer.sample import _FusedDecoder
    torch.manual_seed(1)
    for kv_heads in (None, 2):
        m = Transformer(ModelConfig(vocab_size=300, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=24,
                                    num_kv_heads=kv_heads).validate()).eval()
        ids = torch.randint(0, 300, (3, 9))
        with torch.no_grad():
            ref_cache, fused_cache = KVCache(m.cfg, 3, "cpu", torch.float32), KVCache(m.cfg, 3, "cpu", torch.float32)
            m(ids[:, :8], cache=ref_cache), m(ids[:, :8], cache=fused_cache)
            ref = m(ids[:, 8:], cache=ref_cache)[0][:, -1]
            fused = _FusedDecoder(m)(ids[:, 8], torch.full((3,), 8), fused_cache)
        assert torch.allclose(ref, fused, atol=1e-5)
