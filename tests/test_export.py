"""Export: Hugging Face folder (and zip), GGUF (f32/f16/q8_0) with an Ollama Modelfile, and .pt.

The models are tiny and trained for a few steps by the tests themselves. transformers (and
gguf) read what we wrote, offline: same token ids, same logits, same greedy continuation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from azr_trainer import books, catalogue, cli, store
from azr_trainer.checkpoint import build_model, resolve_checkpoint, safe_load
from azr_trainer.export import export_model, gguf_tensor_names, to_interleaved
from azr_trainer.home import UserError
from azr_trainer.model import ModelConfig
from azr_trainer.sample import generate
from azr_trainer.train import TrainConfig, train

from conftest import WORDS_RU, make_text

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

TEXTS = ["The king said that his horse was lost.", "Король сказал, что конь пропал ночью.",
         "emoji 🙂🎉 and ñ, 中文, a\ttab  two spaces\nnew line"]
PROMPT = "The king said that"


def make_trained(root: Path, kind: str, *, tie: bool = True, steps: int = 30) -> tuple[Path, str]:
    """A data folder with one tiny model trained on a small English + Russian book."""
    home = root / f"home-{kind}"
    (home / "books").mkdir(parents=True)
    (home / "models").mkdir()
    src = root / f"book-{kind}.txt"
    src.write_text(make_text(n_lines=300) + make_text(WORDS_RU, 120, seed=1), encoding="utf-8")
    books.add_book(home, src, name="book")
    store.create_model(home, "m", ModelConfig(vocab_size=300, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                                              max_seq_len=64, tokenizer=kind, tie_embeddings=tie))
    train(home, "m", TrainConfig(books=["book"], max_iterations=steps, batch_size=8, learning_rate=3e-3,
                                 save_every=10, eval_every=10, threads=1, log_every=10, sample_prompts=[]),
          log=lambda m: None)
    return home, "m"


@pytest.fixture(scope="module", params=["bpe", "char"])
def trained(request, tmp_path_factory):
    # bpe with tied embeddings, char untied: both shapes of the output layer get exported
    return make_trained(tmp_path_factory.mktemp(request.param), request.param, tie=request.param == "bpe")


def ours(home, name):
    model, cfg, tok = build_model(safe_load(resolve_checkpoint(store.model_dir(home, name), "best")))
    return model.eval(), cfg, tok


# ---- Hugging Face -------------------------------------------------------------------------

def test_hf_folder_loads_in_transformers_with_same_ids_logits_and_greedy(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    home, name = trained
    result = export_model(home, name, "hf", tmp_path / "hf")
    folder = Path(result["path"])
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / f).is_file(), f
    model, cfg, tok = ours(home, name)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] == cfg.tie_embeddings
    assert config["eos_token_id"] == config["bos_token_id"] == tok.eot_id == 0
    assert config["num_key_value_heads"] == cfg.num_heads and config["head_dim"] == cfg.head_dim
    sampling = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    assert {k: sampling[k] for k in ("temperature", "top_k", "top_p")} == {"temperature": 0.8, "top_k": 40, "top_p": 0.9}

    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        ids = tok.encode(text)
        assert hf_tok.encode(text, add_special_tokens=False) == ids
        assert hf_tok(text)["input_ids"] == ids  # no BOS/EOS added by default either
        assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token_id == tok.eot_id

    x = torch.tensor([tok.encode(TEXTS[0] + " " + TEXTS[1])[:cfg.max_seq_len]])
    with torch.no_grad():
        diff = (model(x)[0] - hf_model(x).logits).abs().max().item()
    assert diff < 1e-4

    prompt = tok.encode(PROMPT)
    mine = generate(model, [prompt], max_new_tokens=24, temperature=0, eot_id=tok.eot_id)[0]
    with torch.no_grad():
        theirs = hf_model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                                   pad_token_id=tok.eot_id)[0, len(prompt):].tolist()
    if theirs and theirs[-1] == tok.eot_id:
        theirs = theirs[:-1]  # transformers keeps the end-of-text token it stopped at; we do not
    assert mine == theirs and len(mine) > 0


def test_hf_zip_holds_the_folder(trained, tmp_path):
    home, name = trained
    result = export_model(home, name, "hf", tmp_path / "m.zip", as_zip=True, dtype="f16")
    assert result["path"].endswith("m.zip") and result["bytes"] == os.path.getsize(result["path"])
    with zipfile.ZipFile(result["path"]) as zf:
        names = set(zf.namelist())
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not list(tmp_path.glob(".*"))  # no temp folder left behind


def test_hf_export_refuses_to_overwrite_a_foreign_folder(trained, tmp_path):
    home, name = trained
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(UserError, match="not an earlier export"):
        export_model(home, name, "hf", target)
    assert (target / "notes.txt").read_text(encoding="utf-8") == "keep me"
    export_model(home, name, "hf", tmp_path / "again")
    export_model(home, name, "hf", tmp_path / "again")  # an earlier export is replaced
    assert (tmp_path / "again" / "config.json").exists()



def test_an_earlier_export_held_open_stays_whole(trained, tmp_path, monkeypatch):
    # Windows: a folder cannot be renamed while a program (an explorer window's preview, a
    # loader) has a file in it open; here os.rename is made to fail that way
    import time
    home, name = trained
    target = tmp_path / "held"
    export_model(home, name, "hf", target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real, held = os.rename, []

    def rename_unless_held(a, b):
        if any(os.path.basename(a).startswith(h) for h in held):
            raise PermissionError(13, "The process cannot access the file", str(a))
        real(a, b)

    monkeypatch.setattr(os, "rename", rename_unless_held)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    for held[:] in (["held"], [".held.tmp-"]):  # the earlier export, then the new one, held
        with pytest.raises(UserError) as e:
            export_model(home, name, "hf", target, dtype="f16")
        assert e.value.code == "platform.in_use"
        assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # not half replaced
        assert sorted(p.name for p in tmp_path.iterdir()) == ["held"]  # nothing hidden left behind


# ---- GGUF ---------------------------------------------------------------------------------

def _field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_gguf_reads_back_with_tensors_and_metadata(trained, tmp_path, dtype):
    home, name = trained
    result = export_model(home, name, "gguf", tmp_path / f"m-{dtype}.gguf", dtype=dtype)
    model, cfg, tok = ours(home, name)
    reader = gguf.GGUFReader(result["path"])
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.file_type") == {"f32": 0, "f16": 1, "q8_0": 7}[dtype]
    assert _field(reader, "llama.block_count") == cfg.num_layers
    assert _field(reader, "llama.embedding_length") == cfg.d_model
    assert _field(reader, "llama.feed_forward_length") == cfg.d_ff
    assert _field(reader, "llama.attention.head_count") == cfg.num_heads
    assert _field(reader, "llama.attention.head_count_kv") == cfg.num_heads
    assert _field(reader, "llama.context_length") == cfg.max_seq_len
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(cfg.rope_theta)
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.norm_eps)
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.eot_id == 0
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False

    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == cfg.vocab_size
    assert types[0] == gguf.TokenType.CONTROL and tokens[0] == "<|endoftext|>"
    if tok.kind == "bpe":
        assert _field(reader, "tokenizer.ggml.model") == "gpt2"
        assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
        assert all(tokens[i] == tok.hf.id_to_token(i) for i in range(tok.vocab_size))
        spec = json.loads(tok.hf.to_str())["model"]
        assert _field(reader, "tokenizer.ggml.merges") == [" ".join(m) for m in spec["merges"]]
    else:
        assert _field(reader, "tokenizer.ggml.model") == "llama"
        assert tokens[tok.hf.token_to_id(" ")] == "\u2581"  # llama.cpp's tokenizer writes spaces as "▁"
        byte_a = tok.hf.token_to_id("<0x41>")
        assert tokens[byte_a] == "<0x41>" and types[byte_a] == gguf.TokenType.BYTE
        assert _field(reader, "tokenizer.ggml.add_space_prefix") is False

    state = model.state_dict()
    tensors = {t.name: t for t in reader.tensors}
    names = gguf_tensor_names(cfg)
    assert set(tensors) == set(names.values())
    assert ("output.weight" in tensors) == (not cfg.tie_embeddings)
    for our_name, their_name in names.items():
        t = tensors[their_name]
        expected = state[our_name]
        if our_name.endswith(("q_proj.weight", "k_proj.weight")):
            expected = to_interleaved(expected, cfg.num_heads)
        expected = expected.numpy()
        assert list(reversed([int(n) for n in t.shape])) == list(expected.shape), their_name
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(expected.shape)
        if dtype == "f32" or expected.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(got, expected)
        elif dtype == "f16":
            np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-3)
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            assert np.abs(got - expected).max() <= np.abs(expected).max() / 127 + 1e-6, their_name

    modelfile = Path(result["files"][1])
    assert modelfile.name == f"m-{dtype}.Modelfile"
    text = modelfile.read_text(encoding="utf-8")
    assert f"FROM ./m-{dtype}.gguf" in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "PARAMETER top_k 40\n" in text and "PARAMETER top_p 0.9\n" in text  # the studio's sampling


def test_gguf_loads_in_transformers_with_the_same_logits(trained, tmp_path):
    """An independent check of the q/k permutation: transformers undoes llama.cpp's layout itself."""
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM
    home, name = trained
    export_model(home, name, "gguf", tmp_path / "m.gguf", dtype="f32")
    model, cfg, tok = ours(home, name)
    hf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf", dtype=torch.float32).eval()
    x = torch.tensor([tok.encode(TEXTS[0])])
    with torch.no_grad():
        assert (model(x)[0] - hf_model(x).logits).abs().max().item() < 1e-4


@pytest.mark.llamacpp
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llama_cpp_greedy_matches_ours(trained, tmp_path):
    import llama_cpp
    home, name = trained
    export_model(home, name, "gguf", tmp_path / "m.gguf", dtype="f32")
    model, cfg, tok = ours(home, name)
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=cfg.max_seq_len, n_threads=1, verbose=False)
    for text in TEXTS[:2]:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == tok.encode(text)
    prompt = tok.encode(PROMPT)
    mine = generate(model, [prompt], max_new_tokens=20, temperature=0, eot_id=tok.eot_id)[0]
    theirs = []
    for t in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        if t == tok.eot_id or len(theirs) == 20:
            break
        theirs.append(t)
    assert theirs == mine


# ---- which checkpoint, and the CLI ---------------------------------------------------------

def test_export_of_a_model_still_training_uses_best_and_says_so(trained, tmp_path):
    home, name = trained
    mdir = store.model_dir(home, name)
    lock = mdir / ".train.lock"
    lock.write_text(str(os.getppid()), encoding="utf-8")  # a live process other than us: "training"
    try:
        result = export_model(home, name, "pt", tmp_path / "m.pt")
        assert result["training"] is True and result["checkpoint_kind"] == "best"
        assert result["checkpoint"].endswith("best.pt")
        assert "still training" in result["note"] and "best checkpoint so far" in result["note"]
        latest = export_model(home, name, "gguf", tmp_path / "m.gguf", checkpoint="latest")
        assert latest["checkpoint_kind"] == "step 30" and "still training" in latest["note"]
        # the same notes by code, for the page to show in its language
        assert [n["code"] for n in latest["notes"]] == ["export.note_training_chosen"]
        assert latest["notes"][0]["params"]["step"] == 30 and "обучается" in catalogue.message(
            latest["notes"][0]["code"], "ru", **latest["notes"][0]["params"])
        step = export_model(home, name, "hf", tmp_path / "m10", checkpoint="10")
        assert step["step"] == 10
    finally:
        lock.unlink()
    assert export_model(home, name, "pt", tmp_path / "m2.pt")["note"] is None


def test_cli_exports_every_format(trained, tmp_path, capsys):
    home, name = trained
    out = tmp_path / "cli.gguf"
    assert cli.main(["--home", str(home), "models", "export", name, "--format", "gguf", "--dtype", "q8_0",
                     "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "gguf" and result["dtype"] == "q8_0" and out.exists()
    assert out.with_suffix(".Modelfile").exists()
    assert cli.main(["--home", str(home), "models", "export", name, "--format", "hf", "--zip",
                     "-o", str(tmp_path / "cli.zip")]) == 0
    assert "Exported" in capsys.readouterr().out and (tmp_path / "cli.zip").exists()
    assert cli.main(["--home", str(home), "models", "export", name, "--format", "gguf", "--dtype", "bf16",
                     "-o", str(tmp_path / "x.gguf")]) == 2
    assert "The number format for gguf must be one of" in capsys.readouterr().err
