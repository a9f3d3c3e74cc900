"""Export: take a model anywhere, as a .pt file, a Hugging Face folder (or its zip), or GGUF.

- ``pt``: the project's own file (checkpoint.export_pt): config, weights, tokenizer, metadata.
- ``hf``: a folder ``LlamaForCausalLM`` loads as it is: ``model.safetensors``, ``config.json``,
  ``generation_config.json``, ``tokenizer.json`` + ``tokenizer_config.json`` for
  ``AutoTokenizer``. Our parameter names and rotary layout ("rotate half") are already
  Hugging Face's, so the weights are copied without renaming or permuting. The tokenizer is
  our Hugging Face ``tokenizers`` file itself, so it encodes every text to the same ids —
  the char tokenizer included (a BPE model without merges, with byte fallback).
- ``gguf``: one file for llama.cpp and Ollama (architecture ``llama``; f32, f16 or q8_0),
  with the tokenizer embedded, and an Ollama ``Modelfile`` beside it. llama.cpp expects the
  query/key rows of each head interleaved (Meta's layout) rather than split in halves, so
  those two weights are permuted on the way out (and back by any GGUF reader for HF).
  Byte-level BPE goes in as llama.cpp's ``gpt2`` tokenizer (tokens, merges, GPT-2
  pre-tokenizer); the char tokenizer as its ``llama`` (SentencePiece-style) tokenizer, which
  looks up single characters and falls back to ``<0xNN>`` byte tokens exactly as ours does —
  with the space token written as "▁", because that tokenizer writes spaces that way. The
  exact ``tokenizer.json`` is embedded too (``tokenizer.huggingface.json``), and our import
  reads that one.

A model that is still training exports its best checkpoint so far, and the result says so.
Export never needs ``transformers``; GGUF needs ``gguf``, one of the project's own
dependencies. ``export_model`` is what the CLI and the studio call.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
import torch

from . import layout, osdeps, store
from .checkpoint import build_model, export_pt, init_checkpoint, resolve_checkpoint, safe_load
from .errors import Notice
from .home import UserError, atomic_path, atomic_write_bytes, fsync_dir, read_json
from .model import ModelConfig
from .settings import GENERATE
from .tokenizer import Tokenizer

FORMATS = ("pt", "hf", "gguf")
HF_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
GGUF_DTYPES = ("f32", "f16", "q8_0")
DEFAULT_DTYPE = {"pt": "f32", "hf": "f32", "gguf": "f16"}
HF_MARKER = "azr_trainer.json"  # what we know about an exported folder; importing it back reads this
SPACE_SPM = "\u2581"  # "▁": how SentencePiece-style vocabularies write a space


# ---- which checkpoint ----------------------------------------------------------------------

def training_pid(model_dir: Path) -> int | None:
    """The process training this model right now (its lock file, runloop.TrainingLock), if any."""
    from .runloop import lock_holder
    pid = lock_holder(model_dir)
    return pid if pid != os.getpid() else None


def pick_checkpoint(home: Path, name: str, which: str = "best") -> tuple[dict, dict]:
    """Load the checkpoint to export: (checkpoint, facts about it for the result and the message)."""
    info = store.get_model(home, name)
    mdir = store.model_dir(home, name)
    for attempt in range(3):
        path = resolve_checkpoint(mdir, which)
        try:
            obj = safe_load(path)
            break
        except UserError:
            if path.exists() or attempt == 2:
                raise
            # a training run pruned this checkpoint between choosing it and reading it: choose again
    best = path == layout.best_checkpoint(mdir)
    kind = ("best" if best else "imported" if path == init_checkpoint(mdir)
            else f"self-play step {obj.get('step')}" if layout.run_checkpoints_root(mdir, "selfplay") in path.parents
            else f"step {obj.get('step')}")
    val_bpb = obj.get("best_val_bpb") if best else (obj.get("meta") or {}).get("val_bpb")
    source = read_json(layout.model_file(mdir)).get("imported_from")
    if source and not _imported_from(obj):
        # checkpoints written by training do not repeat where an imported model came from; the
        # tokenizer's pre-tokenizer name and chat template for GGUF/HF come from there
        obj["meta"] = {**(obj.get("meta") or {}), "imported_from": source}
    pid = training_pid(mdir)
    notes = []
    if which == "best" and not best and kind != "imported":
        notes.append(Notice("export.note_no_best", name=name, step=obj.get("step")))
    if pid is not None:
        if not best:
            notes.append(Notice("export.note_training_chosen", name=name, pid=str(pid), step=obj.get("step")))
        elif isinstance(val_bpb, (int, float)):
            notes.append(Notice("export.note_training_best_bpb", name=name, pid=str(pid), step=obj.get("step"),
                                bpb=round(val_bpb, 4)))
        else:
            notes.append(Notice("export.note_training_best", name=name, pid=str(pid), step=obj.get("step")))
    facts = {"model": info.name, "checkpoint": str(path), "checkpoint_kind": kind, "step": obj.get("step"),
             "val_bpb": val_bpb, "training": pid is not None, "note": " ".join(notes) or None,
             "notes": [n.to_dict() for n in notes]}
    return obj, facts


def default_output(home: Path, name: str, fmt: str, dtype: str, as_zip: bool = False) -> Path:
    """Where the studio keeps downloads: $AZR_HOME/exports/<model>/…"""
    base = layout.exports_dir(home, name)
    if fmt == "pt":
        return base / f"{name}.pt"
    if fmt == "hf":
        return base / (f"{name}-hf.zip" if as_zip else f"{name}-hf")
    return base / f"{name}-{dtype}.gguf"


def export_model(home: Path, name: str, fmt: str, output: Path | str | None = None, *, dtype: str | None = None,
                 checkpoint: str = "best", as_zip: bool = False, on_loaded=None) -> dict:
    """Export model ``name`` (its best checkpoint by default; 'latest' or a step number too).

    Returns what was written: ``path`` (a file, or the HF folder), ``files``, ``bytes``, the
    checkpoint used, and ``note`` — a sentence to show the user when the model is still
    training or has no best checkpoint yet (otherwise None); ``notes`` has the same as
    ``{message, code, params}`` for showing it in another language. ``on_loaded(facts)`` is
    called once the checkpoint is read, before anything is written (a studio run reports it,
    and may stop there)."""
    if fmt not in FORMATS:
        raise UserError("export.format", value=fmt, options=list(FORMATS))
    dtype = dtype or DEFAULT_DTYPE[fmt]
    allowed = {"pt": ("f32",), "hf": tuple(HF_DTYPES), "gguf": GGUF_DTYPES}[fmt]
    if dtype not in allowed:
        raise UserError("export.dtype", format=fmt, value=dtype, options=list(allowed))
    if as_zip and fmt != "hf":
        raise UserError("export.zip_only_hf")
    obj, facts = pick_checkpoint(home, name, checkpoint)
    if on_loaded is not None:
        on_loaded(facts)
    out = Path(output) if output is not None else default_output(home, name, fmt, dtype, as_zip)
    if fmt == "pt":
        export_pt(obj, out)
        files = [out]
    elif fmt == "hf":
        files = [export_hf_zip(obj, out, dtype, model_name=name)] if as_zip else export_hf(obj, out, dtype,
                                                                                            model_name=name)
    else:
        files = export_gguf(obj, out, dtype, model_name=name)
    size = sum(f.stat().st_size for f in files if f.is_file())
    return {**facts, "format": fmt, "dtype": dtype, "zip": as_zip, "path": str(out.resolve()),
            "files": [str(f.resolve()) for f in files], "bytes": size}


# ---- Hugging Face folder -------------------------------------------------------------------

def hf_config(cfg: ModelConfig, tok: Tokenizer, dtype: str = "f32") -> dict:
    """config.json for LlamaForCausalLM (read by transformers 4.x and 5.x alike)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": tok.eot_id,
        "eos_token_id": tok.eot_id,
        "pad_token_id": tok.eot_id,
        "use_cache": True,
        "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype],
    }


def hf_tokenizer_files(tok: Tokenizer, max_seq_len: int, chat_template: str | None = None) -> dict[str, str]:
    """tokenizer.json (our tokenizers file itself) and a tokenizer_config.json that makes
    AutoTokenizer use it as it is: no BOS added, no clean-up of spaces on decode."""
    eos = tok.eos_token
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eos, "eos_token": eos, "pad_token": eos, "unk_token": None,
        "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_seq_len,
    }
    if chat_template:  # an imported chat model keeps its template
        config["chat_template"] = chat_template
    return {"tokenizer.json": tok.hf.to_str(),
            "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2) + "\n"}


def _imported_from(obj: dict) -> dict:
    return (obj.get("meta") or {}).get("imported_from") or {}


def _hf_state_dict(obj: dict, cfg: ModelConfig, dtype: str) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in obj["state_dict"].items()}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as the embeddings; HF ties it on load
    return {k: v.detach().to(HF_DTYPES[dtype]).contiguous() for k, v in state.items()}


def _write_hf_folder(obj: dict, folder: Path, dtype: str, model_name: str | None) -> list[Path]:
    from safetensors.torch import save_file
    _, cfg, tok = build_model(obj)  # validates every tensor against the config first
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_hf_state_dict(obj, cfg, dtype), str(folder / "model.safetensors"), metadata={"format": "pt"})
    texts = {
        "config.json": json.dumps(hf_config(cfg, tok, dtype), indent=2) + "\n",
        "generation_config.json": json.dumps({
            "bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id, "pad_token_id": tok.eot_id,
            "do_sample": True, "temperature": GENERATE.default("temperature"), "top_k": GENERATE.default("top_k"),
            "top_p": GENERATE.default("top_p"),
        }, indent=2) + "\n",
        **hf_tokenizer_files(tok, cfg.max_seq_len, _imported_from(obj).get("chat_template")),
        HF_MARKER: json.dumps({
            "format": "azr-trainer-hf", "model": model_name or (obj.get("meta") or {}).get("model"),
            "tokenizer_kind": tok.kind, "step": obj.get("step"), "best_val_bpb": obj.get("best_val_bpb"),
            "books": (obj.get("meta") or {}).get("books"), "dtype": dtype,
        }, ensure_ascii=False, indent=2) + "\n",
    }
    for fname, text in texts.items():
        (folder / fname).write_text(text, encoding="utf-8")
    return [folder / "model.safetensors", *(folder / f for f in texts)]


def export_hf(obj: dict, folder: Path, dtype: str = "f32", *, model_name: str | None = None) -> list[Path]:
    """Write a Hugging Face folder. Built beside the target and renamed into place, so a
    failure never leaves half a folder; an earlier export there is replaced, anything else refused."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError("export.target_is_file", path=str(folder))
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "config.json").exists():
        raise UserError("export.target_not_export", path=str(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write_hf_folder(obj, tmp, dtype, model_name)
        try:
            if folder.exists():
                trash = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
                osdeps.rename(folder, trash)  # held open (Windows): nothing has changed yet
                try:
                    osdeps.rename(tmp, folder)
                except BaseException:
                    osdeps.rename(trash, folder)  # the earlier export back in its place
                    raise
                osdeps.remove_tree(trash)
            else:
                osdeps.rename(tmp, folder)
        except PermissionError:
            raise osdeps.in_use(folder) from None
        fsync_dir(folder.parent)
    finally:
        osdeps.remove_tree(tmp)
    return sorted(folder.iterdir())


def export_hf_zip(obj: dict, zip_path: Path, dtype: str = "f32", *, model_name: str | None = None) -> Path:
    """The Hugging Face folder as one .zip for download (files at the top level); returns its path."""
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=zip_path.parent, prefix=".hfzip-", ignore_cleanup_errors=True) as tmp:
        files = _write_hf_folder(obj, Path(tmp) / "hf", dtype, model_name)
        part = Path(tmp) / "out.zip"
        with zipfile.ZipFile(part, "w") as zf:
            for f in files:
                # weights hardly compress; the JSON files do
                zf.write(f, f.name, compress_type=zipfile.ZIP_STORED if f.suffix == ".safetensors"
                         else zipfile.ZIP_DEFLATED)
        with atomic_path(zip_path) as final:
            osdeps.replace(part, final)
    return zip_path


# ---- GGUF ----------------------------------------------------------------------------------

def require_gguf():
    try:
        import gguf
    except ImportError:
        raise UserError("export.gguf_missing") from None
    return gguf


def to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q/k rows from the "rotate half" layout (per head: first halves, then second halves) to
    Meta's interleaved pairs (row 2i ← row i, row 2i+1 ← row i + head_dim/2), which llama.cpp uses."""
    out, inp = w.shape
    return w.reshape(n_heads, 2, out // n_heads // 2, inp).transpose(1, 2).reshape(out, inp)


def from_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of to_interleaved."""
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def gguf_tensor_names(cfg: ModelConfig) -> dict[str, str]:
    """Our (= Hugging Face) parameter names → llama.cpp's."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "output.weight"
    per_layer = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
                 "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
                 "self_attn.o_proj.weight": "attn_output.weight",
                 "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
                 "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    for i in range(cfg.num_layers):
        for ours, theirs in per_layer.items():
            names[f"model.layers.{i}.{ours}"] = f"blk.{i}.{theirs}"
    return names


def gguf_tokenizer(tok: Tokenizer, vocab_size: int, meta: dict | None = None) -> dict:
    """The tokenizer as llama.cpp reads it: model, one token and type per embedding row, and
    merges (byte-level BPE) or scores (byte-fallback vocabularies such as our char tokenizer)."""
    gguf = require_gguf()
    T = gguf.TokenType
    spec = json.loads(tok.hf.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError("export.gguf_tokenizer_type", type=str(model.get("type")))
    vocab: dict[str, int] = dict(model["vocab"])
    added = spec.get("added_tokens") or []
    vocab.update({a["content"]: a["id"] for a in added})
    special = {a["id"] for a in added if a.get("special")}
    n = max(vocab_size, max(vocab.values()) + 1)
    tokens: list[str] = [f"[PAD{i}]" for i in range(n)]  # rows no text maps to (vocab_size > the vocabulary)
    types: list[int] = [int(T.UNUSED)] * n
    for t, i in vocab.items():
        tokens[i] = t
        types[i] = int(T.CONTROL if i in special else T.NORMAL)
    out = {"tokens": tokens, "types": types, "eos": tok.eot_id}
    if "ByteLevel" in json.dumps(spec.get("pre_tokenizer")):
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
        out.update(model="gpt2", pre=(meta or {}).get("tokenizer_pre") or "gpt-2", merges=merges)
    elif model.get("byte_fallback"):
        # SentencePiece-style: pieces by score, "<0xNN>" byte tokens for anything not in the vocabulary.
        byte_tokens = {f"<0x{b:02X}>" for b in range(256)}
        out["types"] = [int(T.BYTE) if t in byte_tokens else ty for t, ty in zip(tokens, types)]
        if tok.kind == "char":
            if SPACE_SPM in vocab:
                raise UserError("export.gguf_spm_space")
            out["tokens"] = [SPACE_SPM if t == " " else t for t in tokens]
        out.update(model="llama", scores=[-float(i) for i in range(n)])
    else:
        raise UserError("export.gguf_tokenizer_kind")
    return out


def _gguf_array(t: torch.Tensor, dtype: str, gguf) -> tuple[np.ndarray, object]:
    a = t.detach().to(torch.float32).contiguous().numpy()
    Q = gguf.GGMLQuantizationType
    if a.ndim == 1 or dtype == "f32":
        return a, Q.F32  # norms stay f32, as llama.cpp's converter keeps them
    if dtype == "q8_0" and a.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return gguf.quants.quantize(a, Q.Q8_0), Q.Q8_0
    return a.astype(np.float16), Q.F16  # q8_0 needs rows that are a multiple of 32; f16 otherwise


def export_gguf(obj: dict, path: Path, dtype: str = "f16", *, model_name: str | None = None,
                embed_tokenizer_json: bool = True) -> list[Path]:
    """Write a llama-architecture GGUF file and an Ollama Modelfile beside it (<stem>.Modelfile).

    ``embed_tokenizer_json=False`` leaves out the exact tokenizer.json, as foreign files do
    (tests use it to exercise the import path that rebuilds a tokenizer from the vocabulary)."""
    gguf = require_gguf()
    if dtype not in GGUF_DTYPES:
        raise UserError("export.gguf_dtype", value=dtype, options=list(GGUF_DTYPES))
    path = Path(path)
    _, cfg, tok = build_model(obj)
    meta = obj.get("meta") or {}
    tk = gguf_tokenizer(tok, cfg.vocab_size, _imported_from(obj))
    name = model_name or meta.get("model") or path.stem
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(name)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
        if dtype == "q8_0":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.d_model)
        w.add_block_count(cfg.num_layers)
        w.add_feed_forward_length(cfg.d_ff)
        w.add_head_count(cfg.num_heads)
        w.add_head_count_kv(cfg.kv_heads)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_tokenizer_model(tk["model"])
        if "pre" in tk:
            w.add_tokenizer_pre(tk["pre"])
        w.add_token_list(tk["tokens"])
        w.add_token_types(tk["types"])
        if "merges" in tk:
            w.add_token_merges(tk["merges"])
        if "scores" in tk:
            w.add_token_scores(tk["scores"])
            w.add_add_space_prefix(False)
        w.add_bos_token_id(tk["eos"])
        w.add_eos_token_id(tk["eos"])
        w.add_pad_token_id(tk["eos"])
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
        if embed_tokenizer_json:
            w.add_string("tokenizer.huggingface.json", tok.hf.to_str())
            w.add_string("azr.tokenizer_kind", tok.kind)
        if _imported_from(obj).get("chat_template"):
            w.add_chat_template(_imported_from(obj)["chat_template"])
        state = obj["state_dict"]
        for ours, theirs in gguf_tensor_names(cfg).items():
            t = state[ours]
            if ours.endswith("q_proj.weight"):
                t = to_interleaved(t, cfg.num_heads)
            elif ours.endswith("k_proj.weight"):
                t = to_interleaved(t, cfg.kv_heads)
            data, qtype = _gguf_array(t, dtype, gguf)
            w.add_tensor(theirs, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    modelfile = path.with_suffix(".Modelfile")
    atomic_write_bytes(modelfile, ollama_modelfile(path.name, tok, cfg).encode("utf-8"))
    return [path, modelfile]


def ollama_modelfile(gguf_name: str, tok: Tokenizer, cfg: ModelConfig) -> str:
    """A Modelfile for `ollama create NAME -f <this file>`: plain text continuation, no chat template."""
    eos = tok.eos_token.replace('"', '\\"')
    return (f"# Ollama: ollama create my-model -f {Path(gguf_name).with_suffix('.Modelfile').name}\n"
            f"# then: ollama run my-model \"Once upon a time\"\n"
            f"FROM ./{gguf_name}\n"
            'TEMPLATE """{{ .Prompt }}"""\n'
            f'PARAMETER stop "{eos}"\n'
            f"PARAMETER num_ctx {cfg.max_seq_len}\n"
            f"PARAMETER temperature {GENERATE.default('temperature')}\n"
            f"PARAMETER top_k {GENERATE.default('top_k')}\n"
            f"PARAMETER top_p {GENERATE.default('top_p')}\n")

