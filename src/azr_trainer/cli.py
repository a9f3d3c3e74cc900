"""The `azr` command: its arguments and its entry point. The commands are thin layers over the
library: cli_commands.py (books, models, generate, serve), cli_runs.py (train, selfplay, reason);
what a run prints while it goes is cli_progress.py's."""

from __future__ import annotations

import argparse
import sys

from . import catalogue
from . import settings as settings_mod
from .cli_commands import cmd_books_add, cmd_books_cat, cmd_books_delete, cmd_books_list, cmd_generate, \
    cmd_models_create, cmd_models_delete, cmd_models_export, cmd_models_import, cmd_models_list, cmd_models_show, \
    cmd_serve
from .cli_progress import say
from .cli_runs import cmd_reason, cmd_selfplay, cmd_train
from .home import UserError, home_dir
from .settings import FROM_ZERO, GENERATE, MODEL, REASON, SELFPLAY, TRAIN


# ---- parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    lang = catalogue.language_from_environment()

    def say_help(key: str, **params) -> str:
        return _help(f"cli.help.{key}", lang, **params)

    def describe(key: str) -> str:
        """A parser's description: argparse leaves its % alone (but for %(prog)), so unescaped."""
        return catalogue.text(f"cli.help.{key}", lang)

    json_help = say_help("json")
    p = argparse.ArgumentParser(prog="azr", description=describe("description"))
    p.add_argument("--home", help=say_help("home"))
    sub = p.add_subparsers(dest="command", required=True)

    books = sub.add_parser("books", help=say_help("books.command")).add_subparsers(dest="sub", required=True)
    a = books.add_parser("add", help=say_help("books.add"))
    a.add_argument("path")
    a.add_argument("--name", help=say_help("books.name"))
    a.add_argument("--encoding", help=say_help("books.encoding"))
    a.add_argument("--overwrite", action="store_true", help=say_help("books.overwrite"))
    a.add_argument("--json", action="store_true", help=json_help)
    a.set_defaults(func=cmd_books_add)
    a = books.add_parser("list", help=say_help("books.list"))
    a.add_argument("--json", action="store_true", help=json_help)
    a.set_defaults(func=cmd_books_list)
    a = books.add_parser("cat", help=say_help("books.cat"))
    a.add_argument("name")
    a.set_defaults(func=cmd_books_cat)
    a = books.add_parser("delete", help=say_help("books.delete"))
    a.add_argument("name")
    a.set_defaults(func=cmd_books_delete)

    models = sub.add_parser("models", help=say_help("models.command")).add_subparsers(dest="sub", required=True)
    a = models.add_parser("create", help=say_help("models.create"))
    a.add_argument("name")
    settings_mod.add_arguments(a, MODEL, skip=("tie_embeddings",), defaults=False, lang=lang)
    a.add_argument("--untied", action="store_true", help=say_help("models.untied"))
    a.add_argument("--auto", action="store_true", help=say_help("models.auto"))
    a.add_argument("--books", nargs="+", help=say_help("models.books"))
    a.add_argument("--minutes", type=float, help=say_help("models.minutes"))
    a.add_argument("--threads", type=int, help=say_help("models.threads"))
    a.add_argument("--json", action="store_true", help=json_help)
    a.set_defaults(func=cmd_models_create)
    a = models.add_parser("list", help=say_help("models.list"))
    a.add_argument("--json", action="store_true", help=json_help)
    a.set_defaults(func=cmd_models_list)
    a = models.add_parser("show", help=say_help("models.show"))
    a.add_argument("name")
    a.add_argument("--json", action="store_true", help=json_help)
    a.set_defaults(func=cmd_models_show)
    a = models.add_parser("delete", help=say_help("models.delete"))
    a.add_argument("name")
    a.set_defaults(func=cmd_models_delete)
    a = models.add_parser("export", help=say_help("models.export"))
    a.add_argument("name")
    a.add_argument("--format", default="pt", choices=["pt", "hf", "gguf"], help=say_help("models.format"))
    a.add_argument("--dtype", choices=["f32", "f16", "bf16", "q8_0"], help=say_help("models.dtype"))
    a.add_argument("--zip", action="store_true", help=say_help("models.zip"))
    a.add_argument("-o", "--output", help=say_help("models.output"))
    a.add_argument("--checkpoint", default="best", help=say_help("checkpoint"))
    a.add_argument("--json", action="store_true", help=json_help)
    a.set_defaults(func=cmd_models_export)
    a = models.add_parser("import", help=say_help("models.import"))
    a.add_argument("path", help=say_help("models.path"))
    a.add_argument("--name", help=say_help("models.name"))
    a.add_argument("--max-seq-len", type=int, help=say_help("models.max_seq_len"))
    a.add_argument("--json", action="store_true", help=json_help)
    a.set_defaults(func=cmd_models_import)

    t = sub.add_parser("train", help=say_help("train.command"))
    t.add_argument("name")
    t.add_argument("--books", required=True, help=say_help("train.books"))
    settings_mod.add_arguments(t, TRAIN, defaults=False, lang=lang)
    t.add_argument("--nnodes", type=int, default=1, help=say_help("train.nnodes"))
    t.add_argument("--rdzv-endpoint", help=say_help("train.rdzv_endpoint"))
    _add_output(t, lang)
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help=say_help("generate.command"))
    g.add_argument("name", nargs="?")
    g.add_argument("prompt", nargs="?")
    g.add_argument("--model", dest="model_file", help=say_help("generate.model_file"))
    settings_mod.add_arguments(g, GENERATE, lang=lang)
    g.add_argument("--checkpoint", default="best", help=say_help("checkpoint"))
    g.add_argument("--device", default="auto", help=_help("settings.help.device", lang))
    g.add_argument("--threads", type=int, help=_help("settings.help.threads", lang))
    g.set_defaults(func=cmd_generate)

    sp = sub.add_parser("selfplay", help=say_help("selfplay.command"), description=describe("selfplay.description"))
    sp.add_argument("name")
    settings_mod.add_arguments(sp, SELFPLAY, defaults=False, lang=lang)
    sp.add_argument("--reward-weights", help=_help("settings.help.reward_weights", lang))
    _add_output(sp, lang)
    sp.set_defaults(func=cmd_selfplay)

    rp = sub.add_parser("reason", help=say_help("reason.command"), description=describe("reason.description"))
    rp.add_argument("name")
    settings_mod.add_arguments(rp, REASON, defaults=False, lang=lang)
    settings_mod.add_arguments(rp, FROM_ZERO, only=("pretrain_time", "corpus_docs"), lang=lang)
    for dim in ("d_model", "num_layers", "num_heads", "d_ff", "max_seq_len"):
        rp.add_argument("--" + dim.replace("_", "-"), dest=dim, type=int,
                        help=say_help("reason.shape", what=catalogue.text(f"settings.help.{dim}", lang),
                                      value=reasoning_shape_default(dim)))
    rp.add_argument("--pretrain-only", action="store_true", help=say_help("reason.pretrain_only"))
    rp.add_argument("--eval-only", action="store_true", help=say_help("reason.eval_only"))
    rp.add_argument("--eval-split", default="test", choices=("test", "train"), help=say_help("reason.eval_split"))
    rp.add_argument("--pass-k", type=int, default=1, help=say_help("reason.pass_k"))
    rp.add_argument("--show-buffers", action="store_true", help=say_help("reason.show_buffers"))
    _add_output(rp, lang)
    rp.set_defaults(func=cmd_reason)

    s = sub.add_parser("serve", help=say_help("serve.command"))
    s.add_argument("--host", default="127.0.0.1", help=say_help("serve.host"))
    s.add_argument("--port", type=int, default=8000, help=say_help("serve.port"))
    # Also accepted after "serve"; SUPPRESS keeps an absent one from hiding `azr --home X serve`.
    s.add_argument("--home", default=argparse.SUPPRESS, help=say_help("home"))
    s.add_argument("--max-runs", type=int, default=1, help=say_help("serve.max_runs"))
    s.add_argument("--max-upload-mb", type=float, default=200, help=say_help("serve.max_upload_mb"))
    s.add_argument("--token", help=say_help("serve.token"))
    s.add_argument("--open", action="store_true", help=say_help("serve.open"))
    s.set_defaults(func=cmd_serve)
    return p


def _add_output(p, lang: str) -> None:
    """What a run subcommand shares besides its settings: which run, and how it reports."""
    p.add_argument("--run-id", help=_help("cli.help.run.run_id", lang))
    p.add_argument("--quiet", action="store_true", help=_help("cli.help.run.quiet", lang))
    p.add_argument("--json", action="store_true", help=_help("cli.help.run.json", lang))


def _help(key: str, lang: str, **params) -> str:
    """An option's or a subcommand's help from the catalogue, its % escaped for argparse."""
    return catalogue.text(key, lang, **params).replace("%", "%%")


def reasoning_shape_default(dim: str) -> int:
    from .from_zero import FROM_ZERO_SHAPE
    return FROM_ZERO_SHAPE[dim]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        home = home_dir(args.home)
        from . import decode
        decode.remember_in(home)
        args.func(args, home)
        return 0
    except UserError as e:
        lang = catalogue.language_from_environment()
        print(f"{catalogue.text('cli.error', lang)}: {e.render(lang)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(say("interrupted"), file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
