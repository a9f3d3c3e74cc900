"""The data commands of `azr`: books, models (create, list, show, delete, export, import),
generate and serve."""

from __future__ import annotations

import sys
from pathlib import Path

from . import books as books_mod
from . import catalogue, store
from .cli_progress import language, make_log, print_json, say
from .checkpoint import build_model, resolve_checkpoint, safe_load
from .home import UserError
from .model import ModelConfig, count_parameters, estimate_training_memory
from .settings import MODEL


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _shape(cfg: ModelConfig) -> str:
    """A model's shape in words: layers × width, heads, feed-forward, window, vocabulary, tokenizer."""
    kv = say("shape_kv_heads", kv_heads=cfg.kv_heads) if cfg.kv_heads != cfg.num_heads else ""
    return say("shape", layers=cfg.num_layers, d_model=cfg.d_model, heads=cfg.num_heads, kv=kv, d_ff=cfg.d_ff,
               max_seq_len=cfg.max_seq_len, vocab=cfg.vocab_size, tokenizer=cfg.tokenizer)


# ---- books ---------------------------------------------------------------------------------

def cmd_books_add(args, home):
    info = books_mod.add_book(home, args.path, name=args.name, encoding=args.encoding, overwrite=args.overwrite)
    if args.json:
        return print_json(info.to_dict())
    how = say("encoding_detected" if info.detected else "encoding_given")
    print(say("book_added", name=info.name, encoding=info.encoding, how=how, size=_fmt_bytes(info.source_bytes),
              text_size=_fmt_bytes(info.text_bytes), chars=info.chars, lines=info.lines))
    print(say("preview", text=info.preview[:200].replace("\n", " ⏎ ")))


def cmd_books_list(args, home):
    items = books_mod.list_books(home)
    if args.json:
        return print_json([b.to_dict() for b in items])
    if not items:
        print(say("no_books", command="azr books add PATH"))
    for b in items:
        print(f"{b.name:30s} {b.encoding:12s} {b.chars:>12,} {say('chars')}  {b.created_at}")


def cmd_books_cat(args, home):
    path = books_mod.book_text_path(home, args.name)
    books_mod.get_book(home, args.name)
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            out.write(chunk)
    out.flush()


def cmd_books_delete(args, home):
    books_mod.delete_book(home, args.name)
    print(say("book_deleted", name=args.name))


# ---- models --------------------------------------------------------------------------------

def _model_summary(info: store.ModelInfo) -> dict:
    d = info.to_dict()
    d["training_memory_estimate_bytes"] = estimate_training_memory(info.config, batch_size=16)
    return d


def _create_auto(args, home, shape_given: list[str]):
    """--auto: the shape and the training recipe from the books, the minutes and this machine."""
    from . import recipe as recipe_mod
    if shape_given:  # the plan decides the whole shape; half of one would break its balance
        raise UserError("auto.shape_given", names=", ".join(shape_given))
    if args.minutes is None:
        raise UserError("auto.no_minutes")
    books = [b.strip() for item in (args.books or []) for b in item.split(",") if b.strip()]
    info, plan, rec = recipe_mod.create(home, args.name, books, args.minutes, args.threads)
    if args.json:
        return print_json({**_model_summary(info), "plan": plan.to_dict()})
    cfg, exp = info.config, rec["expected"]
    print(say("model_created_auto", name=info.name, minutes=f"{rec['minutes']:g}", books=", ".join(books),
              size=_fmt_bytes(rec["book_bytes"]), parameters=exp["parameters"], shape=_shape(cfg),
              seq_len=plan.seq_len))
    if rec["minutes"] < args.minutes:
        print(say("plan_shorter", minutes=f"{rec['minutes']:g}", asked=f"{args.minutes:g}", epochs=f"{exp['epochs']:.0f}"))
    print(say("plan_expected", tokens_s=round(exp["tokens_per_s"]), steps=exp["steps"], batch=plan.batch_size,
              tokens=exp["tokens"], epochs=f"{exp['epochs']:g}", lr=f"{plan.learning_rate:g}",
              warmup=plan.warmup_iters, precision=plan.precision))
    print(say("next", command=f"azr train {info.name} --books {','.join(books)} --minutes {rec['minutes']:g}"))


def cmd_models_create(args, home):
    from .device import available_memory_bytes, pick_device
    shape = {s.name: getattr(args, s.name) for s in MODEL if getattr(args, s.name, None) is not None}
    if args.auto:
        return _create_auto(args, home, sorted(shape) + (["tie_embeddings"] if args.untied else []))
    if args.books or args.minutes is not None or args.threads is not None:
        raise UserError("auto.needs_auto")
    shape = {**{s.name: s.default for s in MODEL}, **shape, "tie_embeddings": not args.untied}
    MODEL["tokenizer"].check(shape["tokenizer"])  # bpe or char: "hf" only comes with an imported model
    cfg = ModelConfig(**shape)
    info = store.create_model(home, args.name, cfg, max_memory=available_memory_bytes(pick_device("auto")))
    if args.json:
        return print_json(_model_summary(info))
    mem = estimate_training_memory(cfg, batch_size=16)
    print(say("model_created", name=info.name, parameters=count_parameters(cfg), shape=_shape(cfg)))
    print(say("memory_estimate", size=_fmt_bytes(mem)))


def cmd_models_list(args, home):
    items = store.list_models(home)
    if args.json:
        return print_json([m.to_dict() for m in items])
    if not items:
        print(say("no_models", command="azr models create NAME"))
    for m in items:
        bpb = f"{m.best_val_bpb:.3f}" if m.best_val_bpb is not None else "-"
        print(say("model_row", name=f"{m.name:30s}", parameters=f"{m.parameters:>12,}",
                  steps=f"{m.trained_steps:<8}", bpb=bpb))


def cmd_models_show(args, home):
    info = store.get_model(home, args.name)
    d = _model_summary(info)
    d["checkpoints"] = store.checkpoint_steps(home, args.name)
    if args.json:
        return print_json(d)
    for k, v in d.items():
        print(f"{k}: {v}")


def cmd_models_delete(args, home):
    store.delete_model(home, args.name)
    print(say("model_deleted", name=args.name))


def cmd_models_export(args, home):
    from .export import DEFAULT_DTYPE, export_model
    info = store.get_model(home, args.name)
    dtype = args.dtype or DEFAULT_DTYPE[args.format]
    if args.output:
        out = Path(args.output)
    else:  # beside the user, like the .pt always was
        out = Path({"pt": f"{info.name}.pt", "hf": f"{info.name}-hf.zip" if args.zip else f"{info.name}-hf",
                    "gguf": f"{info.name}-{dtype}.gguf"}[args.format])
    result = export_model(home, info.name, args.format, out, dtype=dtype, checkpoint=args.checkpoint,
                          as_zip=args.zip)
    if args.json:
        return print_json(result)
    if result["note"]:
        notes = [catalogue.message(n["code"], language(), **n["params"]) for n in result.get("notes") or []]
        print(say("note", note=" ".join(notes) or result["note"]), file=sys.stderr)
    src = Path(result["checkpoint"]).name
    print(say("exported", name=info.name, checkpoint=src, path=str(out), size=_fmt_bytes(result["bytes"])))
    if args.format == "gguf":
        modelfile = Path(result["files"][-1]).name
        print(f"Ollama: cd {Path(result['path']).parent} && ollama create {info.name.lower().replace(' ', '-')} "
              f"-f {modelfile}")


def cmd_models_import(args, home):
    import shlex
    from .importer import import_model
    quiet = args.json
    result = import_model(home, args.path, args.name, max_seq_len=args.max_seq_len,
                          log=make_log(quiet=True) if not quiet else (lambda m: None))
    if args.json:
        return print_json(result)
    cfg = ModelConfig.from_dict(result["config"])
    src = result["imported_from"]
    print(say("imported", name=result["name"], format=src["format"], path=src["path"],
              parameters=result["parameters"], shape=_shape(cfg), eos=repr(result["eos_token"])))
    if result["note"]:
        print(say("note", note=result["note"]))
        if getattr(result["note"], "code", None) == "codes.import_context_cut":
            again = (f"azr models import {shlex.quote(str(args.path))} --name NAME "
                     f"--max-seq-len {result['note'].params['context']}")
            print(catalogue.message("codes.import_context_again", language(), command=again))
    q = shlex.quote(result["name"])
    print(say("try_it", generate=f"azr generate {q} \"Once upon a time\"", train=f"azr train {q} --books BOOK"))


# ---- generate ------------------------------------------------------------------------------

def cmd_generate(args, home):
    import torch

    from .device import pick_device, set_threads
    from .sample import SamplingParams, stream_generate
    if args.model_file:
        obj = safe_load(Path(args.model_file))
        prompt = args.name if args.prompt is None else args.prompt
        if args.prompt is not None and args.name is not None:
            raise UserError("cli.model_and_file")
    else:
        if args.name is None:
            raise UserError("cli.no_model")
        store.get_model(home, args.name)
        obj = safe_load(resolve_checkpoint(store.model_dir(home, args.name), args.checkpoint))
        prompt = args.prompt
    if prompt is None:
        raise UserError("cli.no_prompt")
    model, cfg, tok = build_model(obj)
    device = pick_device(args.device)
    if device.type == "cpu":
        set_threads(args.threads)
    model.to(device)
    params = SamplingParams(max_length=args.max_length, temperature=args.temperature,
                            top_k=args.top_k or None, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty, seed=args.seed).validate()
    ids = tok.encode(prompt)
    if len(ids) >= cfg.max_seq_len:
        print(say("note", note=say("prompt_cut", tokens=len(ids), kept=cfg.max_seq_len - 1,
                                   max_seq_len=cfg.max_seq_len)), file=sys.stderr)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    out_ids: list[int] = []
    printed = ""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    for step in stream_generate(model, [ids], params, eot_id=tok.eot_id):
        if step[0] is None:
            continue
        out_ids.append(step[0])
        text = tok.decode(out_ids)
        if text.endswith("\ufffd"):
            continue  # half of a multi-byte character: wait for the rest
        sys.stdout.write(text[len(printed):])
        sys.stdout.flush()
        printed = text
    text = tok.decode(out_ids)
    sys.stdout.write(text[len(printed):] + "\n")
    sys.stdout.flush()


# ---- serve ---------------------------------------------------------------------------------

def cmd_serve(args, home):
    from .server import serve
    token = args.token
    if args.open:
        from .opener import open_when_listening
        token = open_when_listening(args.host, args.port, token)
    serve(host=args.host, port=args.port, home=home, max_runs=args.max_runs, max_upload_mb=args.max_upload_mb,
          token=token)
