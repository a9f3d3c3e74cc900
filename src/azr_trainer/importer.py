"""Import: start from a model that already speaks.

A local path becomes a model in the data folder (``models/<name>/``) that generates,
fine-tunes on books with its own tokenizer, self-plays and exports like any other:

- a Hugging Face Llama-family folder (``config.json``, ``*.safetensors``, ``tokenizer.json``),
  or the .zip of one (what the studio's HF export downloads);
- a llama-architecture GGUF file (what llama.cpp and Ollama keep on disk), in any quantization
  the ``gguf`` package dequantizes; its q/k rows go back
  from llama.cpp's interleaved rotary layout to ours. Its tokenizer is the exact
  ``tokenizer.huggingface.json`` our exports embed, or else ``transformers`` rebuilds it from
  the vocabulary and merges in the file (as ``AutoTokenizer.from_pretrained(gguf_file=…)``);
- a .pt made by this project on another machine, loaded with ``weights_only`` (never
  unpickled beyond tensors and plain data) and checked tensor by tensor.

Nothing is downloaded. The model folder gets ``model.json`` (the shape, read from the
source; ``imported_from`` says where it came from), ``tokenizer.json`` (the source's own
tokenizer, kind ``hf``, whose end-of-sequence token plays the part of ``<|endoftext|>``;
for our own exports the original bpe/char tokenizer) and ``checkpoints/init.pt``, the
imported weights in fp32. Generation and export use ``init.pt`` until training writes
checkpoints of its own; every new training run starts from it (train.py), and data
preparation keeps the tokenizer because ``tokenizer.json`` already exists.

Supported: decoder-only Llama shapes — RMSNorm, SwiGLU, rotary ("default" rope, no
scaling), no biases, grouped-query attention, head_dim = hidden_size / heads. Anything else
is refused with a message that says what did not fit.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import layout, osdeps, store
from .checkpoint import FORMAT, FORMAT_VERSION, atomic_torch_save, build_model, init_checkpoint, safe_load
from .errors import Notice
from .home import TMP_PREFIX, Conflict, UserError, atomic_write_json, fsync_dir, owned_tmp_name, \
    check_new_name, validate_name
from .model import ModelConfig, Transformer, count_parameters
from .tokenizer import EOT, Tokenizer

DEFAULT_MAX_SEQ_LEN = 2048  # imported contexts are capped here unless asked otherwise (memory of the KV cache)
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old HF checkpoints carry


@dataclass
class Loaded:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    source: dict = field(default_factory=dict)  # imported_from: format, path, and what we kept of the source


# ---- what the path is ----------------------------------------------------------------------

def detect_format(path: Path) -> str:
    """'hf' (folder), 'hf-zip', 'gguf' or 'pt', from what the path holds rather than its name."""
    if path.is_dir():
        if (path / "config.json").exists():
            return "hf"
        raise UserError("import.not_hf_folder", path=str(path))
    if not path.exists():
        raise UserError("import.no_such_path", path=str(path))
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return "gguf"
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            raise UserError("import.zip_damaged", path=str(path)) from None
        if any(n.endswith("config.json") for n in names) and any(n.endswith(".safetensors") for n in names):
            return "hf-zip"
        return "pt"  # torch.save writes a zip too; safe_load checks it is ours
    if head[:1] == b"\x80":
        return "pt"  # an old-style pickle: safe_load refuses anything but tensors and plain data
    raise UserError("import.unknown_format", path=str(path))


# ---- Hugging Face config → ModelConfig -----------------------------------------------------

def config_from_hf(c: dict, tokenizer_kind: str = "hf", max_seq_len: int | None = None) -> tuple[ModelConfig, dict]:
    """Map a LlamaForCausalLM-style config.json onto our ModelConfig, refusing what the model cannot run."""
    try:
        return _config_from_hf(c, tokenizer_kind, max_seq_len)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError("codes.import_config", reason=f"{type(e).__name__}: {e}") from None


def _config_from_hf(c: dict, tokenizer_kind: str, max_seq_len: int | None) -> tuple[ModelConfig, dict]:
    arch = (c.get("architectures") or [""])[0]
    mtype = c.get("model_type")
    if mtype not in ("llama", "mistral") and arch not in ("LlamaForCausalLM", "MistralForCausalLM"):
        raise UserError("codes.import_arch", arch=mtype or arch or "?")
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise UserError("codes.import_bias")
    if c.get("hidden_act", "silu") != "silu":
        raise UserError("codes.import_activation", activation=str(c.get("hidden_act")))
    rope = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling")
    rope_type = rope.get("rope_type") or rope.get("type") or (scaling or {}).get("rope_type") or "default"
    if rope_type != "default" or (scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default")):
        raise UserError("codes.import_rope", rope_type=str(rope_type))
    d, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    if c.get("head_dim") not in (None, d // heads):
        raise UserError("codes.import_head_dim", head_dim=str(c["head_dim"]), expected=d // heads)
    kv = int(c.get("num_key_value_heads") or heads)
    context = int(c.get("max_position_embeddings") or DEFAULT_MAX_SEQ_LEN)
    seq = max_seq_len or min(context, DEFAULT_MAX_SEQ_LEN)
    sliding = c.get("sliding_window")
    if mtype == "mistral" and sliding and seq > int(sliding):
        seq = int(sliding)  # within the window, sliding-window attention is full attention
    cfg = ModelConfig(
        vocab_size=int(c["vocab_size"]), d_model=d, num_layers=int(c["num_hidden_layers"]), num_heads=heads,
        d_ff=int(c["intermediate_size"]), max_seq_len=seq,
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        rope_theta=float(rope.get("rope_theta") or c.get("rope_theta") or 10000.0),
        norm_eps=float(c.get("rms_norm_eps") or 1e-6), tokenizer=tokenizer_kind,
        num_kv_heads=kv if kv != heads else None,
    )
    facts = {"context_length": context}
    if seq < context:
        facts["note"] = Notice("codes.import_context_cut", max_seq_len=seq, context=context)
    return cfg, facts


def _state_for(cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict from HF-named tensors, in fp32, with a clear error for anything that does not fit."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_SUFFIXES)}
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
        tensors["lm_head.weight"] = tensors.get("model.embed_tokens.weight")
    with torch.device("meta"):
        expected = Transformer(cfg).state_dict()
    missing = [k for k in expected if tensors.get(k) is None]
    unexpected = [k for k in tensors if k not in expected]
    bad = [k for k in expected if tensors.get(k) is not None and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        raise UserError("import.weights_mismatch", missing=missing[:3] or "–", unexpected=unexpected[:3] or "–",
                        wrong=bad[:3] or "–")
    return {k: tensors[k].to(torch.float32).contiguous() for k in expected}


def _eos_from_ids(hf, *candidates) -> str | None:
    for c in candidates:
        if isinstance(c, list):
            c = c[0] if c else None
        if isinstance(c, int) and hf.id_to_token(c) is not None:
            return hf.id_to_token(c)
        if isinstance(c, str) and hf.token_to_id(c) is not None:
            return c
        if isinstance(c, dict) and hf.token_to_id(c.get("content", "")) is not None:  # AddedToken as saved by HF
            return c["content"]
    return None


def _first_line(e: BaseException, limit: int = 200) -> str:
    """What a library's exception says, for a message's ``reason``: its first line, kept short."""
    return (str(e).splitlines() or [type(e).__name__])[0][:limit]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError as e:
        raise UserError("import.bad_json", path=str(path), reason=str(e)) from None


# ---- readers -------------------------------------------------------------------------------

def read_hf_folder(folder: Path, max_seq_len: int | None = None) -> Loaded:
    """A Hugging Face folder: config.json, model.safetensors (or shards with an index), tokenizer.json."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer as HFTokenizer
    c = _read_json(folder / "config.json")
    ours = _read_json(folder / "azr_trainer.json")  # written by our own HF export
    kind = ours.get("tokenizer_kind") if ours.get("tokenizer_kind") in ("bpe", "char") else "hf"
    cfg, facts = config_from_hf(c, kind, max_seq_len)
    index = _read_json(folder / "model.safetensors.index.json")
    if index.get("weight_map"):  # sharded: exactly the files the index names
        names = sorted(set(map(str, index["weight_map"].values())))
        if any(Path(n).name != n or n in (".", "..") for n in names):  # only files beside the index
            raise UserError("codes.import_shards_outside", path=str(folder / "model.safetensors.index.json"))
        files = [folder / n for n in names]
    elif (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]  # not adapters or other extras that may sit beside it
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError("import.only_bin" if list(folder.glob("*.bin")) else "import.no_safetensors", folder=str(folder))
    try:
        size = sum(f.stat().st_size for f in files)
    except OSError:
        size = 0  # a missing shard: load_file says which
    limit = weights_limit(cfg, len(files))
    if size > limit:  # never read more than the config's shape can need
        raise UserError("import.weights_too_big", path=folder, size_mib=_mib(size), limit_mib=_mib(limit))
    _check_memory(cfg)
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except Exception as e:  # missing shard, truncated download, not safetensors at all
            raise UserError("import.weights_unreadable", file=f.name, reason=_first_line(e)) from None
    state = _state_for(cfg, tensors)
    if (folder / "tokenizer.json").exists():
        try:
            hf = HFTokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:
            raise UserError("import.tokenizer_unreadable", path=str(folder / "tokenizer.json"),
                            reason=_first_line(e)) from None
    else:
        hf = _tokenizer_via_transformers(folder)
    tc = _read_json(folder / "tokenizer_config.json")
    gc = _read_json(folder / "generation_config.json")
    eos = _eos_from_ids(hf, gc.get("eos_token_id"), c.get("eos_token_id"), tc.get("eos_token"))
    if eos is None:
        raise UserError("import.no_eos")
    tok = _make_tokenizer(hf, kind, eos, cfg)
    source = {"format": "hf", "path": str(folder), **facts}
    if tc.get("chat_template"):
        source["chat_template"] = tc["chat_template"]
    if ours:
        source["azr_trainer"] = {k: ours.get(k) for k in ("model", "step", "best_val_bpb", "books")}
    return Loaded(cfg, state, tok, source)


def _tokenizer_via_transformers(folder: Path):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError("import.needs_transformers", folder=str(folder)) from None
    try:
        t = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return t.backend_tokenizer
    except Exception as e:
        raise UserError("import.tokenizer_failed", folder=str(folder), reason=_first_line(e)) from None


def _make_tokenizer(hf, kind: str, eos: str, cfg: ModelConfig) -> Tokenizer:
    tok = Tokenizer(hf, kind, EOT if kind in ("bpe", "char") else eos)
    if tok.vocab_size > cfg.vocab_size:
        raise UserError("import.tokenizer_too_big", tokens=tok.vocab_size, embeddings=cfg.vocab_size)
    return tok


def _f32(x) -> float:
    """GGUF keeps these as float32: 1e-5 comes back as 9.99999974e-06. Take the shortest decimal
    that is the same float32, which is what the exporter (or the original config) wrote."""
    return float(str(np.float32(x)))


def _gguf_reader(gguf, path: Path):
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:
        raise UserError("import.gguf_unreadable", path=str(path), reason=_first_line(e)) from None


def read_gguf(path: Path, max_seq_len: int | None = None) -> Loaded:  # noqa: C901 - one check per GGUF key the llama layout needs, in reading order
    """A llama-architecture GGUF in any quantization the ``gguf`` package can dequantize.

    Weights: each tensor dequantized to fp32, renamed to Hugging Face names, and the q/k rows
    turned back from llama.cpp's interleaved rotary layout into ours. Tokenizer: the exact
    ``tokenizer.huggingface.json`` when the file carries one (our exports do); otherwise
    transformers rebuilds it from the vocabulary and merges in the file."""
    try:
        import gguf
    except ImportError:
        raise UserError("import.gguf_missing") from None
    from tokenizers import Tokenizer as HFTokenizer

    from .export import from_interleaved, gguf_tensor_names
    reader = _gguf_reader(gguf, path)

    def value(key, default=None, fields=reader.fields):  # bound now: the reader is deleted below
        f = fields.get(key)
        return default if f is None else f.contents()

    arch = value("general.architecture")
    if arch != "llama":
        raise UserError("import.gguf_arch", arch=str(arch))
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise UserError("import.gguf_no_embeddings", file=path.name)
    d, heads = int(value("llama.embedding_length")), int(value("llama.attention.head_count"))
    kv = int(value("llama.attention.head_count_kv", heads))
    if value("llama.rope.scaling.type") not in (None, "none") or value("llama.rope.dimension_count", d // heads) != d // heads:
        raise UserError("import.gguf_rope", file=path.name)
    if any(n.startswith("blk.0.") and n.endswith(".bias") for n in tensors) or "rope_freqs.weight" in tensors:
        raise UserError("import.gguf_bias", file=path.name)
    config = {  # the same keys as a Hugging Face config.json, so one mapping serves both
        "model_type": "llama", "hidden_size": d, "num_attention_heads": heads, "num_key_value_heads": kv,
        "num_hidden_layers": int(value("llama.block_count")), "intermediate_size": int(value("llama.feed_forward_length")),
        "vocab_size": int(value("llama.vocab_size", tensors["token_embd.weight"].shape[-1])),
        "max_position_embeddings": int(value("llama.context_length", DEFAULT_MAX_SEQ_LEN)),
        "rope_theta": _f32(value("llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": _f32(value("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "tie_word_embeddings": "output.weight" not in tensors,
    }
    hf_json, azr_kind = value("tokenizer.huggingface.json"), value("azr.tokenizer_kind")
    kind = azr_kind if hf_json and azr_kind in ("bpe", "char") else "hf"
    cfg, facts = config_from_hf(config, kind, max_seq_len)
    names = {theirs: ours for ours, theirs in gguf_tensor_names(cfg).items()}
    state: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name not in names:
            raise UserError("import.gguf_tensor", file=path.name, tensor=name)
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists dimensions innermost first
        w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape))
        ours = names[name]
        if ours.endswith("q_proj.weight"):
            w = from_interleaved(w, cfg.num_heads)
        elif ours.endswith("k_proj.weight"):
            w = from_interleaved(w, cfg.kv_heads)
        state[ours] = w
    state = _state_for(cfg, state)
    eos_id = value("tokenizer.ggml.eos_token_id")
    pre, chat_template = value("tokenizer.ggml.pre"), value("tokenizer.chat_template")
    file_type = value("general.file_type")
    try:
        file_type = gguf.LlamaFileType(int(file_type)).name if file_type is not None else None
    except ValueError:
        pass
    del reader, tensors
    if hf_json:  # ours: the exact tokenizer it was exported with
        hf = HFTokenizer.from_str(hf_json)
    else:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UserError("import.gguf_needs_transformers") from None
        try:
            hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                               local_files_only=True).backend_tokenizer
        except Exception as e:
            raise UserError("import.gguf_tokenizer_failed", file=path.name, reason=_first_line(e, 300)) from None
    eos = _eos_from_ids(hf, int(eos_id) if eos_id is not None else None)
    if eos is None:
        raise UserError("import.gguf_no_eos", file=path.name)
    tok = _make_tokenizer(hf, kind, eos, cfg)
    source = {"format": "gguf", "path": str(path), "file_type": file_type, **facts}
    if pre:
        source["tokenizer_pre"] = pre
    if chat_template:
        source["chat_template"] = chat_template
    return Loaded(cfg, state, tok, source)


def read_pt(path: Path | io.BytesIO, max_seq_len: int | None = None) -> Loaded:
    """A .pt (or checkpoint) made by this project: loaded without unpickling code, shapes checked."""
    obj = safe_load(path)
    model, cfg, tok = build_model(obj)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if max_seq_len:
        cfg.max_seq_len = max_seq_len
    meta = obj.get("meta") or {}
    source = {"format": "pt", "path": str(path),
              "azr_trainer": {"model": meta.get("model"), "step": obj.get("step"),
                              "best_val_bpb": obj.get("best_val_bpb"), "books": meta.get("books")}}
    if meta.get("imported_from"):
        source["originally"] = meta["imported_from"]
    return Loaded(cfg, state, tok, source)


MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KiB
MAX_OTHER_BYTES = 256 << 20  # each file beside the weights (tokenizer.json of a 256k vocabulary is ~35 MB)
_HEADER_SLACK = 16 << 20  # a safetensors file's own header, per file
# Weights in formats this importer does not read: never unpacked.
_UNREAD_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".pkl")


def weights_limit(cfg: ModelConfig, files: int) -> int:
    """The most bytes the safetensors files of a model of shape ``cfg`` can need: every weight
    in fp32 (an untied copy of the embeddings too: some exports keep it), plus each file's header."""
    return 4 * (count_parameters(cfg) + cfg.vocab_size * cfg.d_model) + _HEADER_SLACK * max(1, files)


def _check_memory(cfg: ModelConfig) -> None:
    """The import holds every weight in fp32: it must fit in the memory there is."""
    from .device import available_memory_bytes
    need = 4 * count_parameters(cfg)
    free = available_memory_bytes(torch.device("cpu"))
    if free is not None and need > free:
        raise UserError("import.no_memory", need_gib=round(need / 2**30, 1), free_gib=round(free / 2**30, 1))


def _mib(n: int) -> int:
    return -(-n // (1 << 20))


def _zip_plan(path: Path, zf: zipfile.ZipFile, max_seq_len: int | None) -> list[zipfile.ZipInfo]:
    """The entries to unpack, after checking their declared sizes against the config (read
    first, from the zip itself): weights no bigger than its shape can need, other files small."""
    entries = []
    for info in zf.infolist():
        name = Path(info.filename)
        if info.is_dir() or name.is_absolute() or ".." in name.parts or len(name.parts) > 2:
            continue  # only plain files, never outside the temp folder
        if name.name.lower().endswith(_UNREAD_SUFFIXES):
            continue
        entries.append(info)
    configs = [i for i in entries if Path(i.filename).name == "config.json"]
    if not configs:
        raise UserError("import.zip_no_config", path=path)
    config = min(configs, key=lambda i: len(Path(i.filename).parts))  # the top level's, else the folder's
    folder = Path(config.filename).parent
    entries = [i for i in entries if Path(i.filename).parent == folder]
    if config.file_size > MAX_CONFIG_BYTES:
        raise UserError("import.config_too_big", path=path, size_kib=-(-config.file_size // 1024))
    try:
        c = json.loads(_read_entry(zf, config, MAX_CONFIG_BYTES).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError("codes.import_zip_config", path=str(path), reason=str(e)) from None
    ours = next((i for i in entries if Path(i.filename).name == "azr_trainer.json"), None)
    kind = "hf"
    if ours is not None and ours.file_size <= MAX_CONFIG_BYTES:
        try:
            kind = json.loads(_read_entry(zf, ours, MAX_CONFIG_BYTES)).get("tokenizer_kind")
        except (ValueError, AttributeError):
            kind = "hf"
        kind = kind if kind in ("bpe", "char") else "hf"
    cfg, _ = config_from_hf(c if isinstance(c, dict) else {}, kind, max_seq_len)
    cfg.validate()
    weights = [i for i in entries if i.filename.endswith(".safetensors")]
    limit = weights_limit(cfg, len(weights))
    total = sum(i.file_size for i in weights)
    if total > limit:
        big = max(weights, key=lambda i: i.file_size)
        raise UserError("import.zip_entry_too_big", entry=big.filename, size_mib=_mib(total), limit_mib=_mib(limit))
    for i in entries:
        if i not in weights and i.file_size > MAX_OTHER_BYTES:
            raise UserError("import.zip_entry_too_big", entry=i.filename, size_mib=_mib(i.file_size),
                            limit_mib=_mib(MAX_OTHER_BYTES))
    _check_memory(cfg)
    return entries


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    with zf.open(info) as src:
        data = src.read(limit + 1)
    if len(data) > info.file_size or len(data) > limit:
        raise UserError("import.zip_entry_lies", entry=info.filename)
    return data


def _unpack(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Copy one entry, stopping as soon as it gives more bytes than it declared."""
    written = 0
    with zf.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > info.file_size:
                raise UserError("import.zip_entry_lies", entry=info.filename)
            dst.write(chunk)


def read_hf_zip(path: Path, max_seq_len: int | None = None, *, work_dir: Path | None = None) -> Loaded:
    """The studio's HF download: a zip of the folder (files at the top level or in one folder).
    Its config is read first and every entry's declared size checked against it and the free
    disk space before anything is unpacked (into ``work_dir``, the system's temp folder by default)."""
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise UserError("import.zip_damaged", path=path) from None
    with zf, tempfile.TemporaryDirectory(prefix=f"import-{os.getpid()}-", dir=work_dir,
                                            ignore_cleanup_errors=True) as tmp:  # held: see clean_leftovers
        entries = _zip_plan(path, zf, max_seq_len)
        need = sum(i.file_size for i in entries)
        free = shutil.disk_usage(tmp).free
        if need + (64 << 20) > free:  # and something left for the system
            raise UserError("import.no_space", need_mib=_mib(need), free_mib=free >> 20)
        try:
            for info in entries:
                _unpack(zf, info, Path(tmp, Path(info.filename).name))
        except (zipfile.BadZipFile, zlib.error, EOFError):  # a damaged entry (CRC, truncated stream)
            raise UserError("import.zip_damaged", path=path) from None
        loaded = read_hf_folder(Path(tmp), max_seq_len)
    loaded.source.update(format="hf-zip", path=str(path))
    return loaded


READERS = {"hf": read_hf_folder, "hf-zip": read_hf_zip, "gguf": read_gguf, "pt": read_pt}


def read_any(path: Path | str, max_seq_len: int | None = None, fmt: str | None = None, *,
             work_dir: Path | None = None) -> Loaded:
    """``work_dir``: where a zip is unpacked (import_model: the data folder's .tmp)."""
    path = Path(path).expanduser()
    fmt = fmt or detect_format(path)
    if max_seq_len is not None and (not isinstance(max_seq_len, int) or max_seq_len < 2):
        raise UserError("import.max_seq_len", value=max_seq_len)
    if fmt == "hf-zip":
        return read_hf_zip(path.resolve(), max_seq_len, work_dir=work_dir)
    return READERS[fmt](path.resolve(), max_seq_len)


# ---- into the data folder ------------------------------------------------------------------

def _default_name(path: Path) -> str:
    stem = path.name if path.is_dir() else path.stem
    cleaned = "".join(ch if ch.isalnum() or ch in "._- " else "-" for ch in stem).strip(" .-")[:64]
    return cleaned or "imported"


def import_model(home: Path, path: Path | str, name: str | None = None, *, max_seq_len: int | None = None,
                 log=lambda m: None) -> dict:
    """Make ``path`` a model called ``name`` in the data folder; returns its summary.

    The folder is built under a temporary name and renamed into place, so a failed import
    leaves nothing behind, and an existing model is never touched."""
    path = Path(path).expanduser()
    fmt = detect_format(path)
    name = validate_name(name or _default_name(path), "model name")
    if store.model_dir(home, name).exists():
        raise Conflict("model.exists", name=name)
    check_new_name(layout.models_dir(home), name)
    log(Notice("import.reading", path=str(path)))
    loaded = read_any(path, max_seq_len, fmt, work_dir=layout.tmp_dir(home))  # on the data's disk, cleaned at start
    cfg = loaded.config.validate()
    note = loaded.source.get("note")  # a Notice: the checkpoint and model.json keep its English text
    source = {**loaded.source, "imported_at": store.now_iso(), **({"note": str(note)} if note else {})}
    obj = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
           "state_dict": loaded.state_dict, "tokenizer": loaded.tokenizer.to_json(), "step": 0,
           "best_val_bpb": None, "meta": {"model": name, "kind": "imported", "saved_at": source["imported_at"],
                                          "imported_from": source}}
    # _state_for checked every tensor's name and shape against this config; the tokenizer must load back too
    Tokenizer.from_json(obj["tokenizer"])
    info = store.ModelInfo(name=name, config=cfg, created_at=source["imported_at"], parameters=count_parameters(cfg))
    models = layout.models_dir(home)
    tmp = models / owned_tmp_name(TMP_PREFIX)
    tmp.mkdir(parents=True)
    try:
        loaded.tokenizer.save(layout.tokenizer_file(tmp))
        atomic_torch_save(obj, init_checkpoint(tmp))
        atomic_write_json(layout.model_file(tmp), {**info.to_dict(), "imported_from": source})
        target = store.model_dir(home, name)
        if target.exists():
            raise Conflict("import.appeared", name=name)
        try:
            osdeps.rename(tmp, target)
        except PermissionError:  # a virus scanner still reading the new checkpoint
            raise osdeps.in_use(target) from None
        fsync_dir(models)
    except BaseException:
        osdeps.remove_tree(tmp)
        raise
    return {**info.to_dict(), "imported_from": source, "checkpoint": str(init_checkpoint(target)),
            "tokenizer_vocab": loaded.tokenizer.vocab_size, "eos_token": loaded.tokenizer.eos_token,
            "note": note, "notes": [note.to_dict()] if isinstance(note, Notice) else []}
