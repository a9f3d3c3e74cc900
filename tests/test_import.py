"""Import: a Hugging Face folder or zip, a GGUF file, or a .pt from another machine becomes a
model that generates, fine-tunes on books with its own tokenizer, and exports again.

The sources are tiny models the tests make: our own exports read back, a Llama with grouped
-query attention and a foreign tokenizer written by transformers itself, and a GGUF whose
tokenizer must be rebuilt from its vocabulary.
"""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch

from azr_trainer import books, cli, store
from azr_trainer.checkpoint import build_model, init_checkpoint, resolve_checkpoint, safe_load
from azr_trainer.export import export_gguf, export_model
from azr_trainer.home import UserError
from azr_trainer.importer import config_from_hf, import_model
from azr_trainer.model import KVCache, ModelConfig, Transformer, count_parameters
from azr_trainer.sample import generate
from azr_trainer.tokenizer import train_bpe
from azr_trainer.train import TrainConfig, train

from conftest import make_text

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

TRAIN = dict(batch_size=8, learning_rate=3e-3, save_every=10, eval_every=10, threads=1, log_every=10,
             sample_prompts=[])
PROMPT = "The king said that"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A data folder with a trained tiny bpe model 'm' and a book, and exports of it in every format."""
    root = tmp_path_factory.mktemp("src")
    home = root / "home"
    (home / "books").mkdir(parents=True)
    (home / "models").mkdir()
    (root / "book.txt").write_text(make_text(n_lines=300), encoding="utf-8")
    books.add_book(home, root / "book.txt", name="book")
    store.create_model(home, "m", ModelConfig(vocab_size=300, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                                              max_seq_len=64))
    summary = train(home, "m", TrainConfig(books=["book"], max_iterations=30, **TRAIN), log=lambda m: None)
    files = {
        "hf": export_model(home, "m", "hf", root / "m-hf")["path"],
        "hf-zip": export_model(home, "m", "hf", root / "m-hf.zip", as_zip=True)["path"],
        "gguf-f32": export_model(home, "m", "gguf", root / "m-f32.gguf", dtype="f32")["path"],
        "gguf-q8_0": export_model(home, "m", "gguf", root / "m-q8_0.gguf", dtype="q8_0")["path"],
        "pt": export_model(home, "m", "pt", root / "m.pt")["path"],
    }
    return home, files, summary


def fresh_home(tmp_path):
    h = tmp_path / "dest"
    (h / "books").mkdir(parents=True, exist_ok=True)
    (h / "models").mkdir(exist_ok=True)
    return h


def load(home, name, which="best"):
    model, cfg, tok = build_model(safe_load(resolve_checkpoint(store.model_dir(home, name), which)))
    return model.eval(), cfg, tok


@pytest.mark.parametrize("fmt", ["hf", "hf-zip", "gguf-f32", "gguf-q8_0", "pt"])
def test_round_trip_through_every_format(source, tmp_path, fmt):
    home, files, _ = source
    dest = fresh_home(tmp_path)
    result = import_model(dest, files[fmt], "back")
    assert result["name"] == "back" and result["trained_steps"] == 0
    assert result["imported_from"]["format"] == ("hf-zip" if fmt == "hf-zip" else fmt.split("-")[0])
    mdir = store.model_dir(dest, "back")
    assert (mdir / "model.json").exists() and (mdir / "tokenizer.json").exists() and init_checkpoint(mdir).exists()
    assert store.get_model(dest, "back").config == store.get_model(home, "m").config

    original, cfg, tok = load(home, "m")
    back, cfg2, tok2 = load(dest, "back")
    assert tok2.kind == "bpe" and tok2.to_json() == tok.to_json()  # the exact tokenizer comes back
    x = torch.tensor([tok.encode(make_text(n_lines=8, seed=5))[:cfg.max_seq_len]])
    with torch.no_grad():
        diff = (original(x)[0] - back(x)[0]).abs().max().item()
    assert diff < (0.02 if fmt == "gguf-q8_0" else 1e-5)
    prompt = tok.encode(PROMPT)
    if fmt != "gguf-q8_0":
        assert (generate(back, [prompt], max_new_tokens=16, temperature=0, eot_id=tok.eot_id)
                == generate(original, [prompt], max_new_tokens=16, temperature=0, eot_id=tok.eot_id))


def test_imported_model_generates_and_exports_through_the_cli(source, tmp_path, capsys):
    _, files, _ = source
    dest = fresh_home(tmp_path)
    assert cli.main(["--home", str(dest), "models", "import", files["gguf-f32"], "--name", "g"]) == 0
    assert "Imported “g”" in capsys.readouterr().out
    assert cli.main(["--home", str(dest), "generate", "g", PROMPT, "--temperature", "0", "--max-length", "8"]) == 0
    assert capsys.readouterr().out.startswith(PROMPT)
    assert cli.main(["--home", str(dest), "models", "export", "g", "--format", "hf", "-o", str(tmp_path / "g-hf"),
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint_kind"] == "imported" and (tmp_path / "g-hf" / "model.safetensors").exists()
    # the name is taken now: a second import is refused before anything is read or written
    assert cli.main(["--home", str(dest), "models", "import", files["pt"], "--name", "g"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_shortened_context_is_noted_with_the_command_to_import_again(source, tmp_path, capsys, monkeypatch):
    _, files, _ = source
    dest = fresh_home(tmp_path)
    monkeypatch.setenv("AZR_LANG", "en")
    assert cli.main(["--home", str(dest), "models", "import", files["hf"], "--name", "short", "--max-seq-len",
                     "32"]) == 0
    out = capsys.readouterr().out
    assert "The context length (max_seq_len) is set to 32; the model was trained with a context of 64." in out
    assert f"import it again under another name: azr models import {files['hf']} --name NAME --max-seq-len 64" in out
    monkeypatch.setenv("AZR_LANG", "ru")
    assert cli.main(["--home", str(dest), "models", "import", files["hf"], "--name", "short2", "--max-seq-len",
                     "32"]) == 0
    assert "Длина контекста (max_seq_len) — 32, а модель обучалась с контекстом 64." in capsys.readouterr().out
    result = import_model(dest, files["hf"], "short3", max_seq_len=32)
    assert [(n["code"], n["params"]) for n in result["notes"]] == [
        ("codes.import_context_cut", {"max_seq_len": 32, "context": 64})]
    saved = json.loads((store.model_dir(dest, "short3") / "model.json").read_text(encoding="utf-8"))
    assert saved["imported_from"]["note"] == result["note"]  # model.json keeps the English text
    assert load(dest, "short3")[1].max_seq_len == 32  # the checkpoint keeps the note as plain text: it loads


def test_the_studio_offers_an_imported_models_weights_for_generation(source, tmp_path):
    """Before it has trained here, an imported model's one checkpoint is the weights it came
    with: listed as what "latest" gives, and generating from the listed choice works."""
    from fastapi.testclient import TestClient

    from azr_trainer.server import create_app
    _, files, _ = source
    dest = fresh_home(tmp_path)
    import_model(dest, files["pt"], "came")
    with TestClient(create_app(dest), base_url="http://127.0.0.1") as client:
        (listed,) = client.get("/api/models/came/checkpoints").json()
        assert (listed["kind"], listed["checkpoint"], listed["step"]) == ("init", "latest", 0)
        r = client.post("/api/generate", json={"model": "came", "prompt": PROMPT, "max_length": 4, "seed": 1,
                                               "checkpoint": listed["checkpoint"]})
        assert r.status_code == 200 and r.json()["tokens"] == 4, r.text


def test_fine_tuning_an_import_starts_from_its_weights_and_keeps_its_tokenizer(source, tmp_path):
    home, files, summary = source
    dest = fresh_home(tmp_path)
    (tmp_path / "book.txt").write_text(make_text(n_lines=300), encoding="utf-8")
    books.add_book(dest, tmp_path / "book.txt", name="book")  # the same text, so the same validation split
    import_model(dest, files["hf"], "ft")
    tok_before = (store.model_dir(dest, "ft") / "tokenizer.json").read_bytes()
    # a learning rate too small to move the weights: the fine-tuned val bpb is the imported model's
    s1 = train(dest, "ft", TrainConfig(books=["book"], max_iterations=2, **{**TRAIN, "learning_rate": 1e-9}),
               log=lambda m: None)
    assert s1["val_bpb"] == pytest.approx(summary["val_bpb"], abs=1e-3)
    assert (store.model_dir(dest, "ft") / "tokenizer.json").read_bytes() == tok_before
    # real fine-tuning, then resume as with any model
    s2 = train(dest, "ft", TrainConfig(books=["book"], max_iterations=12, **TRAIN), log=lambda m: None)
    assert s2["step"] == 12 and math.isfinite(s2["val_bpb"])
    s3 = train(dest, "ft", TrainConfig(books=["book"], max_iterations=14, resume=True, **TRAIN), log=lambda m: None)
    assert s3["step"] == 14
    assert init_checkpoint(store.model_dir(dest, "ft")).exists()  # kept: a new run starts from it again


# ---- grouped-query attention and a foreign tokenizer ---------------------------------------

def _foreign_tokenizer():
    """A tokenizer that is not ours: byte-level BPE whose end-of-text token is '</s>', not id 0."""
    from tokenizers import AddedToken
    tok = train_bpe([make_text(n_lines=200)], 290)
    tok.hf.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    return tok.hf


def test_foreign_hf_llama_with_gqa_imports_and_matches_transformers(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    hf_tok = _foreign_tokenizer()
    eos = hf_tok.token_to_id("</s>")
    config = LlamaConfig(vocab_size=320, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=4096,
                         rms_norm_eps=1e-6, rope_theta=500000.0, tie_word_embeddings=False,
                         bos_token_id=hf_tok.token_to_id("<s>"), eos_token_id=eos)
    ref = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # make the weights less uniform than the default init, so differences would show
        for p in ref.parameters():
            p.normal_(0, 0.2)
    folder = tmp_path / "foreign"
    ref.save_pretrained(folder)
    hf_tok.save(str(folder / "tokenizer.json"))

    dest = fresh_home(tmp_path)
    result = import_model(dest, folder, "gqa", max_seq_len=128)
    cfg = ModelConfig.from_dict(result["config"])
    assert cfg.num_kv_heads == 2 and cfg.num_heads == 6 and cfg.rope_theta == 500000.0 and not cfg.tie_embeddings
    assert cfg.tokenizer == "hf" and cfg.max_seq_len == 128 and result["eos_token"] == "</s>"
    assert result["parameters"] == count_parameters(cfg) == sum(p.numel() for p in ref.parameters())

    model, cfg, tok = load(dest, "gqa")
    assert tok.eot_id == eos
    ids = tok.encode(make_text(n_lines=6, seed=3))[:100]
    assert ids == hf_tok.encode(make_text(n_lines=6, seed=3), add_special_tokens=False).ids[:100]
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (model(x)[0] - ref(x).logits).abs().max().item() < 1e-4
        # the KV cache (which holds only the kv heads) gives the same last logits as the full pass
        cache = KVCache(cfg, 1, torch.device("cpu"), torch.float32)
        model(x[:, :60], cache=cache)
        step, _ = model(x[:, 60:61], cache=cache)
        assert cache.k[0].shape[1] == 2
        assert (step[0, -1] - model(x[:, :61])[0][0, -1]).abs().max().item() < 1e-4
    mine = generate(model, [ids[:20]], max_new_tokens=12, temperature=0)[0]
    with torch.no_grad():
        theirs = ref.generate(torch.tensor([ids[:20]]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                              pad_token_id=eos)[0, 20:].tolist()
    assert mine == theirs

    # the GQA model goes to GGUF (k permuted with its 2 kv heads) and comes back identical
    obj = safe_load(init_checkpoint(store.model_dir(dest, "gqa")))
    export_gguf(obj, tmp_path / "gqa.gguf", "f32")
    back = import_model(dest, tmp_path / "gqa.gguf", "gqa-back")
    assert back["config"] == result["config"]
    model2, _, tok2 = load(dest, "gqa-back")
    assert tok2.eos_token == "</s>" and tok2.to_json() == tok.to_json()
    with torch.no_grad():
        assert (model2(x)[0] - model(x)[0]).abs().max().item() < 1e-5


def test_gguf_without_our_tokenizer_json_rebuilds_it_with_transformers(source, tmp_path):
    home, _, _ = source
    obj = safe_load(resolve_checkpoint(store.model_dir(home, "m"), "best"))
    export_gguf(obj, tmp_path / "plain.gguf", "f16", embed_tokenizer_json=False)
    dest = fresh_home(tmp_path)
    result = import_model(dest, tmp_path / "plain.gguf")
    assert result["name"] == "plain" and result["config"]["tokenizer"] == "hf"
    _, _, tok = load(home, "m")
    _, _, rebuilt = load(dest, "plain")
    assert rebuilt.eos_token == "<|endoftext|>" and rebuilt.eot_id == 0
    for text in (make_text(n_lines=10, seed=9), "Король сказал 🙂"):
        assert rebuilt.encode(text) == tok.encode(text)
        assert rebuilt.decode(tok.encode(text)) == text


# ---- refusing what does not fit -------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pt_from_elsewhere_is_validated_never_unpickled(source, tmp_path):
    dest = fresh_home(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "azr-trainer", "format_version": 1, "payload": _Evil()}, evil)
    with pytest.raises(UserError, match="not a model file this program can load safely"):
        import_model(dest, evil, "evil")
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(UserError):
        import_model(dest, raw, "raw")
    home, files, _ = source
    obj = safe_load(files["pt"])
    obj["state_dict"]["model.norm.weight"] = torch.ones(7)
    bad = tmp_path / "bad.pt"
    torch.save(obj, bad)
    with pytest.raises(UserError, match="does not match its own config"):
        import_model(dest, bad, "bad")
    assert [p.name for p in (dest / "models").iterdir()] == []  # nothing half-made left behind


def test_unsupported_configs_are_refused_with_reasons(tmp_path):
    base = dict(model_type="llama", hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                intermediate_size=128, vocab_size=300, max_position_embeddings=8192)
    cfg, facts = config_from_hf(base)
    assert cfg.max_seq_len == 2048 and facts["note"].code == "codes.import_context_cut"
    assert facts["note"].params == {"max_seq_len": 2048, "context": 8192} and "8,192" in facts["note"]
    for change, message in [
        (dict(model_type="gpt2", architectures=["GPT2LMHeadModel"]), "Only Llama"),
        (dict(attention_bias=True), "biases"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "rotary scaling"),
        (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "rotary scaling"),
        (dict(head_dim=32), "head_dim"),
        (dict(hidden_act="gelu"), "SiLU"),
    ]:
        with pytest.raises(UserError, match=message):
            config_from_hf({**base, **change})
    (tmp_path / "notes").mkdir()
    with pytest.raises(UserError, match="without config.json"):
        import_model(fresh_home(tmp_path), tmp_path / "notes", "x")
    (tmp_path / "x.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(UserError, match="not a GGUF file"):
        import_model(fresh_home(tmp_path), tmp_path / "x.txt", "x")


def test_gqa_config_counts_and_validates():
    cfg = ModelConfig(vocab_size=300, d_model=48, num_layers=2, num_heads=6, d_ff=96, num_kv_heads=2).validate()
    assert count_parameters(cfg) == Transformer(cfg).num_parameters()
    assert "num_kv_heads" not in ModelConfig().to_dict()  # models made here keep their keys
    with pytest.raises(UserError, match="divisible by the number of key/value heads"):
        ModelConfig(num_heads=8, num_kv_heads=3).validate()


def test_an_import_waits_out_a_scanner_holding_its_new_folder_and_says_so_when_it_lasts(source, tmp_path,
                                                                                         monkeypatch):
    # Windows: a rename fails while a virus scanner reads a file in the folder (here made to)
    import os
    import time

    from azr_trainer import layout
    from azr_trainer.errors import Conflict
    home, files, _ = source
    dest = fresh_home(tmp_path)
    real, held, pauses = os.rename, [2], []

    def rename_while_scanned(a, b):
        if held[0] and os.path.basename(a).startswith(layout.TMP_PREFIX):
            held[0] -= 1
            raise PermissionError(13, "The process cannot access the file", str(a))
        real(a, b)

    monkeypatch.setattr(os, "rename", rename_while_scanned)
    monkeypatch.setattr(time, "sleep", pauses.append)
    assert import_model(dest, files["pt"], "back")["name"] == "back" and len(pauses) == 2
    held[0] = 10**6
    with pytest.raises(Conflict) as e:
        import_model(dest, files["pt"], "again")
    assert e.value.code == "platform.in_use" and "try again" in e.value.render("en")
    assert sorted(p.name for p in layout.models_dir(dest).iterdir()) == ["back"]  # nothing half-made left


def test_an_unpacked_file_still_held_after_a_zip_import_does_not_fail_it(source, tmp_path, monkeypatch):
    # Windows: a file a scanner still reads cannot be deleted; the import is done all the same,
    # and the temp folder (named for this process) goes at a later start
    import os

    from azr_trainer import layout
    home, files, _ = source
    dest = fresh_home(tmp_path)
    real = os.unlink

    def unlink_unless_scanned(path, *args, **kwargs):
        if os.path.basename(path) == "model.safetensors":
            raise PermissionError(13, "The process cannot access the file", str(path))
        real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink_unless_scanned)
    assert import_model(dest, files["hf-zip"], "back")["name"] == "back"
    (left,) = layout.tmp_dir(dest).iterdir()
    assert left.name.startswith(f"import-{os.getpid()}-")
