import pytest
import torch

from azr_trainer.home import UserError
from azr_trainer.model import KVCache, ModelConfig, Transformer, count_parameters, estimate_training_memory


def tiny(**kw):
    base = dict(vocab_size=300, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base).validate()


def test_parameter_count_matches_the_module():
    for tie in (True, False):
        cfg = tiny(tie_embeddings=tie)
        assert count_parameters(cfg) == Transformer(cfg).num_parameters()


def test_parameter_names_follow_llama_for_causal_lm():
    names = set(Transformer(tiny(tie_embeddings=False)).state_dict())
    for expected in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                     "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.o_proj.weight",
                     "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
                     "model.layers.0.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
                     "model.layers.0.post_attention_layernorm.weight"):
        assert expected in names
    assert not any("bias" in n for n in names)


@pytest.mark.parametrize("kw, fragment", [
    (dict(d_model=250, num_heads=8), "must be divisible by the number of attention heads"),
    (dict(d_model=36, num_heads=4), r"must be even \(the way positions are encoded"),
    (dict(num_layers=0), "num_layers must be greater than 0"),
    (dict(vocab_size=-5), "vocab_size must be greater than 0"),
    (dict(d_ff=2.5), "d_ff must be a whole number"),
    (dict(vocab_size=100, tokenizer="char"), "at least 260"),
])
def test_bad_shapes_get_actionable_messages(kw, fragment):
    with pytest.raises(UserError, match=fragment):
        tiny(**kw)


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_kv_cache_logits_match_the_uncached_forward_pass(kv_heads):
    torch.manual_seed(0)
    cfg = tiny(num_kv_heads=kv_heads, max_seq_len=64)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 60))
    with torch.no_grad():
        full, _ = model(ids)
        cache = KVCache(cfg, 2, "cpu", torch.float32)
        parts = [model(ids[:, :7], cache=cache)[0], model(ids[:, 7:12], cache=cache)[0]]
        for t in range(12, 60):
            parts.append(model(ids[:, t:t + 1], cache=cache)[0])
    assert (torch.cat(parts, 1) - full).abs().max().item() < 1e-5


def test_rotary_matches_the_rotate_half_formula():
    from azr_trainer.model import apply_rotary, rotary_tables
    torch.manual_seed(0)
    cos, sin = rotary_tables(8, 5, 10000.0)
    angles = torch.arange(5.0)[:, None] / 10000.0 ** (torch.arange(0, 8, 2) / 8)
    angles = torch.cat((angles, angles), -1)
    x = torch.randn(2, 3, 5, 8)
    expected = x * angles.cos() + torch.cat((-x[..., 4:], x[..., :4]), -1) * angles.sin()
    assert (apply_rotary(x, cos, sin) - expected).abs().max().item() < 1e-6


def test_loss_ignores_minus_one_targets_and_starts_near_uniform():
    torch.manual_seed(0)
    cfg = tiny()
    model = Transformer(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    y = torch.randint(0, cfg.vocab_size, (2, 16))
    _, loss = model(x, y)
    assert abs(loss.item() - torch.log(torch.tensor(300.0)).item()) < 0.3
    _, full = model(x, y, reduction="none")
    y[:, 8:] = -1
    _, half = model(x, y, reduction="sum")
    assert half.item() == pytest.approx(full.view(2, 16)[:, :8].sum().item(), rel=1e-5)


def test_memory_estimate_grows_with_batch_and_sequence():
    cfg = tiny()
    assert estimate_training_memory(cfg, 16) > estimate_training_memory(cfg, 1)
    assert estimate_training_memory(tiny(max_seq_len=64), 16, 64) > estimate_training_memory(cfg, 16, 32)


def test_memory_saving_rotary_and_swiglu_have_exact_gradients():
    from azr_trainer.model import _Rotary, _SwiGLU, rotary_tables
    torch.manual_seed(0)
    cos, sin = rotary_tables(8, 5, 10000.0)
    x = torch.randn(2, 3, 5, 8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _Rotary.apply(t, cos.double(), sin.double()), (x,))
    g, u = (torch.randn(4, 6, dtype=torch.double, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(_SwiGLU.apply, (g, u))


def test_dropout_acts_in_training_only_and_never_in_generation():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=2, d_ff=64, max_seq_len=16))
    x = torch.randint(0, 64, (2, 8))
    model.train()
    plain = model(x)[0]
    model.dropout = 0.3
    a, b = model(x)[0], model(x)[0]
    assert not torch.equal(a, b) and not torch.equal(a, plain)  # random, and it changes the output
    model.eval()
    assert torch.allclose(model(x)[0], plain, atol=1e-6)  # evaluation and generation see the whole model
