"""Decoding from lower-precision weights (decode.py): close to fp32, remade when the weights
change, chosen by measuring, reported, and fp32 when asked."""

import json

import pytest
import torch

from azr_trainer import decode
from azr_trainer.model import ModelConfig, Transformer
from azr_trainer.sample import Batch, generate

# max |logit − fp32 logit| as a share of the fp32 logits' largest |value|
TOLERANCE = {"fp32": 0.0, "bf16": 0.02, "int8": 0.03, "int8dyn": 0.06}
FAST = [p for p in decode.PRECISIONS if p != "fp32"]


def _random_model(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=300, d_model=64, num_layers=2, num_heads=4, d_ff=128, max_seq_len=48)
    return Transformer(ModelConfig(**{**cfg, **kw}).validate()).eval()


@pytest.fixture(scope="module")
def trained():
    """A tiny model that has learned a 40-token cycle by heart: confident, like a trained one."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=260, d_model=64, num_layers=2, num_heads=4, d_ff=128,
                                    max_seq_len=64, tokenizer="char").validate())
    cycle = torch.randint(0, 260, (40,), generator=torch.Generator().manual_seed(1))
    data = cycle.repeat(4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        starts = torch.randint(0, 40, (4,))
        x = torch.stack([data[s:s + 32] for s in starts])
        y = torch.stack([data[s + 1:s + 33] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data


def _first_logits(model, prompts, precision):
    return Batch(model, prompts, precision=precision).logits


@pytest.mark.parametrize("precision", FAST)
def test_lower_precision_logits_are_close_to_fp32(precision):
    model = _random_model()
    if precision not in decode.available(model):
        pytest.skip(f"{precision} is not available with this PyTorch")
    prompts = [[5, 6, 7, 8], [9] * 11, [1]]  # left-padded rows too
    ref = _first_logits(model, prompts, "fp32")
    got = _first_logits(model, prompts, precision)
    assert got.dtype == torch.float32
    assert 0 < (got - ref).abs().max() <= TOLERANCE[precision] * ref.abs().max()


@pytest.mark.parametrize("precision", FAST)
def test_greedy_text_of_a_trained_model_is_the_same_as_fp32(trained, precision):
    model, data = trained
    if precision not in decode.available(model):
        pytest.skip(f"{precision} is not available with this PyTorch")
    prompts = [data[:10].tolist(), data[5:20].tolist()]
    ref = generate(model, prompts, max_new_tokens=60, temperature=0, precision="fp32")  # past the window too
    assert generate(model, prompts, max_new_tokens=60, temperature=0, precision=precision) == ref
    logits, fp32 = _first_logits(model, prompts, precision), _first_logits(model, prompts, "fp32")
    assert (logits - fp32).abs().max() <= TOLERANCE[precision] * fp32.abs().max()


@pytest.mark.parametrize("prompts", [[[5, 6, 7, 8], [9] * 11, [1]], [[5, 6, 7, 8]]], ids=["padded batch", "one row"])
@pytest.mark.parametrize("kv_heads", [None, 2])
@pytest.mark.parametrize("precision", decode.PRECISIONS)
def test_the_one_token_step_gives_the_models_own_cached_logits(precision, kv_heads, prompts):
    """The hand-arranged one-token step (scale and rotation folded into per-step tables, keys
    and values written together, grouped heads attended without copies; one row reads its
    queries through a view made once, several rows through a copy) against the model's own
    forward on the same cache and decode weights, step after step."""
    model = _random_model(num_kv_heads=kv_heads)
    if precision not in decode.available(model):
        pytest.skip(f"{precision} is not available with this PyTorch")
    with torch.no_grad():
        batch = Batch(model, prompts, precision=precision)
        assert isinstance(batch.step, decode.OneTokenStep)
        for _ in range(20):
            nxt = batch.logits.argmax(-1)
            length, mask = batch.cache.length, batch.keys[:, None, None, :batch.length + 1].clone()
            mask[..., -1] = True  # the new token sees itself
            ref, _ = model(nxt[:, None], cache=batch.cache, positions=batch.next_pos, attn_mask=mask)
            batch.cache.length = length
            batch.push(nxt)
            assert batch.cache.length == length + 1
            assert (batch.logits - ref[:, -1]).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.parametrize("kv_heads", [None, 2])
@pytest.mark.parametrize("precision", decode.PRECISIONS)
def test_rows_that_share_a_prompt_read_it_once_and_decode_as_if_they_did_not(precision, kv_heads):
    """Self-play decodes groups of rows from one prompt: consecutive equal prompts share their
    keys and values. Against the same rows interleaved (no run to share), fed the same distinct
    token per row, the logits agree step after step, through the window's slide, which ends the
    sharing; prompts of different lengths are left-padded."""
    model = _random_model(num_kv_heads=kv_heads)
    if precision not in decode.available(model):
        pytest.skip(f"{precision} is not available with this PyTorch")
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, 300, (n,), generator=g).tolist() for n in (16, 21, 30)]
    grouped = [p for p in prompts for _ in range(3)]
    interleaved = [p for _ in range(3) for p in prompts]
    order = torch.tensor([3 * (i % 3) + i // 3 for i in range(9)])  # interleaved row i is grouped row order[i]
    # the same weights on both sides: only the order of a sum differs (bf16 inputs round it)
    tolerance = 1e-5 if precision == "fp32" else 5e-3
    with torch.no_grad():
        shared, plain = Batch(model, grouped, precision=precision), Batch(model, interleaved, precision=precision)
        assert shared.cache.prefix is not None and plain.cache.prefix is None
        for step in range(30):  # 30 + 18 slots: the window of 48 slides
            ref = plain.logits
            assert (shared.logits[order] - ref).abs().max() <= tolerance * ref.abs().max(), step
            nxt = torch.randint(1, 300, (9,), generator=g)
            shared.push(nxt)
            plain.push(nxt[order])
        assert shared.cache.prefix is None  # rebuilt whole when the window slid


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("precision", decode.PRECISIONS)
def test_a_model_held_in_half_precision_decodes_in_every_precision(dtype, precision):
    """Products whose type differs from a half-precision model's (bf16 from an fp16 model, fp32
    from int8dyn) must not reach attention over the model-typed cache unconverted."""
    model = _random_model().to(dtype)
    if precision not in decode.available(model):
        pytest.skip(f"{precision} is not available with this PyTorch")
    prompts = [[5, 6, 7, 8], [9] * 11]
    with torch.no_grad():
        batch = Batch(model, prompts, precision=precision)
        nxt = batch.logits.argmax(-1)
        batch.push(nxt)
        full = Batch(model, prompts, use_cache=False)
        full.push(nxt)
    assert batch.logits.dtype == torch.float32
    assert (batch.logits - full.logits.float()).abs().max() <= 0.05 * full.logits.float().abs().max()


def test_decode_weights_are_remade_when_the_model_changes():
    """Self-play updates the weights between rollout batches: the next batch must see them."""
    model = _random_model()
    precision = "int8" if "int8" in decode.available(model) else "bf16"
    prompts = [[3, 4, 5]]
    before = _first_logits(model, prompts, precision)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # in place, as an optimizer step
    ref = _first_logits(model, prompts, "fp32")
    got = _first_logits(model, prompts, precision)
    assert (got - before).abs().max() > 0.1 * ref.abs().max()
    assert (got - ref).abs().max() < 0.25 * (before - ref).abs().max()  # the changed model's, not the stale ones
    # every weight three times as large makes sharper softmaxes that amplify rounding: twice the tolerance
    assert (got - ref).abs().max() <= 2 * TOLERANCE[precision] * ref.abs().max()


def test_fp32_is_forced_by_the_argument_and_by_the_environment(monkeypatch):
    model = _random_model()
    monkeypatch.setenv(decode.ENV, "int8dyn")
    assert Batch(model, [[1, 2]], precision="fp32").precision == "fp32"
    monkeypatch.setenv(decode.ENV, "fp32")
    batch = Batch(model, [[1, 2]])
    assert batch.precision == "fp32" and batch.cache.k[0].dtype == torch.float32
    full, _ = model(torch.tensor([[1, 2]]))
    assert torch.equal(batch.logits, full[:, -1])  # exact
    monkeypatch.setenv(decode.ENV, "fp8")
    with pytest.raises(ValueError, match="fp8"):
        Batch(model, [[1, 2]])


def test_auto_measures_once_keeps_the_fastest_and_reports_it(monkeypatch, tmp_path):
    monkeypatch.setenv(decode.ENV, "auto")
    monkeypatch.setattr(decode, "probe_path", tmp_path / "decode-speed.json")
    monkeypatch.setattr(decode, "_CHOICES", {})
    model = _random_model()
    times = decode.measure(model, 3)
    assert set(times) == set(decode.available(model)) and all(t > 0 for t in times.values())
    shared = decode.measure(model, 8, group=4)  # groups of rows that share a prompt: timed as Batch decodes them
    assert set(shared) == set(times) and all(t > 0 for t in shared.values())

    calls = []

    def measured(m, rows, seconds=0.6, compile=False, group=1):
        calls.append(rows)
        return {p: (0.001 if p == "bf16" else 0.002) for p in decode.available(m)}
    monkeypatch.setattr(decode, "measure", measured)
    batch = Batch(model, [[1, 2, 3]] * 3)
    assert batch.precision == "bf16" and batch.cache.weights.precision == "bf16" and calls == [3]
    assert list(json.loads((tmp_path / "decode-speed.json").read_text()).values()) == ["bf16"]
    assert Batch(model, [[1]] * 4).precision == "bf16" and calls == [3]  # same batch size class: not measured again
    monkeypatch.setattr(decode, "_CHOICES", {})  # a new process reads the file
    assert decode.choose(model, 4) == "bf16" and calls == [3]
    assert Batch(model, [[1]] * 5).precision == "bf16" and calls == [3, 5]  # more rows: measured


def test_auto_prefers_the_more_exact_precision_unless_a_less_exact_one_is_clearly_faster(monkeypatch):
    monkeypatch.setattr(decode, "_CHOICES", {})
    monkeypatch.setattr(decode, "probe_path", None)
    model = _random_model()
    times = {"fp32": 1.0, "bf16": 0.95, "int8": 0.5, "int8dyn": 0.47}
    monkeypatch.setattr(decode, "measure", lambda m, rows, seconds=0.6, compile=False, group=1: {p: times[p] for p in decode.available(m)})
    assert decode.choose(model, 1, "auto") == ("int8" if "int8" in decode.available(model) else "int8dyn")
    times.update(int8dyn=0.3)
    if "int8dyn" in decode.available(model):
        assert decode.choose(model, 300, "auto") == "int8dyn"


def test_bf16_decodes_alike_with_and_without_prepacked_weights(monkeypatch):
    """On a CPU bf16 products read weights prepacked for oneDNN where this PyTorch has its
    (private) operators, else F.linear's: the same numbers either way."""
    if not decode._packed_bf16_ok():
        pytest.skip("this PyTorch has no prepacked bf16 products")
    model = _random_model()
    prompts = [[5, 6, 7, 8], [9] * 11, [1]]
    packed = _first_logits(model, prompts, "bf16")
    decode.release(model)
    monkeypatch.setattr(decode, "_packed_bf16_ok", lambda: False)
    plain = _first_logits(model, prompts, "bf16")
    assert (packed - plain).abs().max() <= 1e-2 * plain.abs().max()


def test_int8_is_not_offered_for_widths_its_kernel_cannot_take():
    model = _random_model(d_model=40, num_heads=4, d_ff=72)
    assert "int8" not in decode.available(model)
    assert generate(model, [[1, 2]], max_new_tokens=3, temperature=0, precision="int8") == \
        generate(model, [[1, 2]], max_new_tokens=3, temperature=0, precision="fp32")


# ---- a compiled decode step (where this machine can build one)

COMPILED = [c for c in ("fp32 compiled", "int8 compiled") if c in decode.CHOICES]


@pytest.mark.parametrize("choice", COMPILED)
def test_a_compiled_step_writes_the_same_greedy_text(trained, choice):
    """A run's rollouts may decode with the model's own forward compiled: the same text, left-padded
    rows and a sliding window included."""
    model, data = trained
    precision = decode.split(choice)[0]
    if precision not in decode.available(model):
        pytest.skip(f"{precision} is not available with this PyTorch")
    prompts = [data[:10].tolist(), data[5:20].tolist(), data[3:4].tolist()]
    ref = generate(model, prompts, max_new_tokens=70, temperature=0, precision=precision)
    batch = Batch(model, prompts, precision=choice)
    assert batch.precision == precision
    assert generate(model, prompts, max_new_tokens=70, temperature=0, precision=choice) == ref
    assert not decode._COMPILE_FAILED, decode._COMPILE_FAILED  # this machine has a C++ compiler: it was compiled
    assert batch.step is not model


NO_COMPILER = """
import json, sys, torch
from azr_trainer import decode
from azr_trainer.model import ModelConfig, Transformer
from azr_trainer.sample import generate
torch.manual_seed(0)
model = Transformer(ModelConfig(vocab_size=300, d_model=64, num_layers=2, num_heads=4, d_ff=128,
                                max_seq_len=48).validate()).eval()
prompts = [[5, 6, 7, 8], [9] * 11]
plain = generate(model, prompts, max_new_tokens=20, temperature=0, precision="fp32")
asked = generate(model, prompts, max_new_tokens=20, temperature=0, precision="fp32 compiled")
auto = decode.choose(model, 2, "auto", compile=True)
print(json.dumps({"same": plain == asked, "failed": bool(decode._COMPILE_FAILED), "auto": auto}))
"""


def test_without_a_c_compiler_decoding_goes_on_uncompiled(tmp_path):
    """Most Windows laptops have no C++ compiler: the compiled step cannot be built, generation
    still writes the same text, says why once, and the speed probe then offers no compiled step."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    src = Path(__file__).resolve().parent.parent / "src"
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind"),
           "PYTHONPATH": os.pathsep.join([str(src), *sys.path]), "OMP_NUM_THREADS": "1",
           "AZR_DECODE_PRECISION": ""}
    p = subprocess.run([sys.executable, "-c", NO_COMPILER], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got == {"same": True, "failed": True, "auto": got["auto"]}
    assert not got["auto"].endswith("compiled")
    assert p.stderr.count("decoding without a compiled step") == 1


def test_auto_may_choose_a_compiled_step_only_for_long_decodes(monkeypatch):
    monkeypatch.setenv(decode.ENV, "auto")
    monkeypatch.setattr(decode, "_CHOICES", {})
    monkeypatch.setattr(decode, "probe_path", None)
    monkeypatch.setattr(decode, "_COMPILE_FAILED", [])
    model = _random_model()
    asked = []

    def measured(m, rows, seconds=0.5, compile=False, group=1):
        asked.append(compile)
        return {c: (0.5 if c.endswith("compiled") else 1.0) for c in decode.candidates(m, compile) if c != "int8 compiled"}
    monkeypatch.setattr(decode, "measure", measured)
    assert decode.choose(model, 8, compile=False) == "fp32"  # a reply: never compiled
    assert decode.choose(model, 8, compile=True) == "fp32 compiled"  # most exact of the fastest
    assert asked == [False, True]
    monkeypatch.setenv(decode.COMPILE_ENV, "0")
    assert "fp32 compiled" not in decode.candidates(model, compile=True)
