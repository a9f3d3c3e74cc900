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
    p = argparse.ArgumentParser(prog="azr", description="AZR Trainer: grow a language model from your own books.")
    p.add_argument("--home", help="data folder (default: $AZR_HOME, else ~/azr-home)")
    sub = p.add_subparsers(dest="command", required=True)

    books = sub.add_parser("books", help="add, list, show and delete books").add_subparsers(dest="sub", required=True)
    a = books.add_parser("add", help="detect the encoding, decode, normalise and store a .txt book")
    a.add_argument("path")
    a.add_argument("--name")
    a.add_argument("--encoding", help="override detection, e.g. cp1251, utf-8, koi8-r")
    a.add_argument("--overwrite", action="store_true", help="replace a book of the same name")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_books_add)
    a = books.add_parser("list")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_books_list)
    a = books.add_parser("cat", help="print the stored text (UTF-8)")
    a.add_argument("name")
    a.set_defaults(func=cmd_books_cat)
    a = books.add_parser("delete")
    a.add_argument("name")
    a.set_defaults(func=cmd_books_delete)

    models = sub.add_parser("models", help="create, list, show, delete and export models").add_subparsers(
        dest="sub", required=True)
    a = models.add_parser("create", help="create a transformer of the shape you choose, or --auto: the best "
                                         "for --books in --minutes on this machine")
    a.add_argument("name")
    settings_mod.add_arguments(a, MODEL, skip=("tie_embeddings",), defaults=False)
    a.add_argument("--untied", action="store_true", help="separate input and output embeddings")
    a.add_argument("--auto", action="store_true",
                   help="choose the shape and the training recipe from the books, the minutes and this machine's "
                        "measured speed (then give no shape options)")
    a.add_argument("--books", nargs="+", help="with --auto: the books the model will learn")
    a.add_argument("--minutes", type=float, help="with --auto: the training time to plan for")
    a.add_argument("--threads", type=int, help="with --auto: the CPU threads training will use (default: all)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_models_create)
    a = models.add_parser("list")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_models_list)
    a = models.add_parser("show")
    a.add_argument("name")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_models_show)
    a = models.add_parser("delete")
    a.add_argument("name")
    a.set_defaults(func=cmd_models_delete)
    a = models.add_parser("export", help="write the model as a .pt file, a Hugging Face folder (or zip) or GGUF")
    a.add_argument("name")
    a.add_argument("--format", default="pt", choices=["pt", "hf", "gguf"])
    a.add_argument("--dtype", choices=["f32", "f16", "bf16", "q8_0"],
                   help="weights: hf f32 (default), f16 or bf16; gguf f16 (default), f32 or q8_0")
    a.add_argument("--zip", action="store_true", help="with --format hf: one .zip instead of a folder")
    a.add_argument("-o", "--output", help="file (pt, gguf, zip) or folder (hf); default: in the current folder")
    a.add_argument("--checkpoint", default="best",
                   help="best, latest, selfplay (the newest self-play checkpoint) or a step number")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_models_export)
    a = models.add_parser("import", help="make a model from a Hugging Face Llama folder/zip, a GGUF file or a .pt")
    a.add_argument("path", help="a local folder or file; nothing is downloaded")
    a.add_argument("--name", help="model name (default: from the file name)")
    a.add_argument("--max-seq-len", type=int, help="longest sequence to use (default: the model's, at most 2048)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_models_import)

    t = sub.add_parser("train", help="train a model on books")
    t.add_argument("name")
    t.add_argument("--books", required=True, help="book names, comma-separated")
    settings_mod.add_arguments(t, TRAIN, defaults=False)
    t.add_argument("--nnodes", type=int, default=1, help="machines taking part (run the same command on each)")
    t.add_argument("--rdzv-endpoint", help="HOST:PORT that all machines can reach, for --nnodes > 1")
    _add_output(t)
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="continue a prompt")
    g.add_argument("name", nargs="?")
    g.add_argument("prompt", nargs="?")
    g.add_argument("--model", dest="model_file", help="a .pt file instead of a model name")
    settings_mod.add_arguments(g, GENERATE)
    g.add_argument("--checkpoint", default="best",
                   help="best, latest, selfplay (the newest self-play checkpoint) or a step number")
    g.add_argument("--device", default="auto")
    g.add_argument("--threads", type=int)
    g.set_defaults(func=cmd_generate)

    sp = sub.add_parser(
        "selfplay", help="let a trained model improve its own writing against a reward",
        description="Self-play: from a trained checkpoint, each step samples GROUP_SIZE continuations of "
                    "PROMPTS_PER_STEP prompts, scores them, and updates the model with a group-relative policy "
                    "gradient, a KL penalty to the starting model and (optionally) the book's next-token loss. "
                    "Runs until stopped (Ctrl-C saves a checkpoint), --max-iterations or --max-time. Checkpoints "
                    "go to models/NAME/checkpoints/selfplay/RUN/; generate from them with --checkpoint selfplay.")
    sp.add_argument("name")
    settings_mod.add_arguments(sp, SELFPLAY, defaults=False)
    sp.add_argument("--reward-weights", help=catalogue.text("settings.help.reward_weights",
                                                            catalogue.language_from_environment()))
    _add_output(sp)
    sp.set_defaults(func=cmd_selfplay)

    rp = sub.add_parser(
        "reason", help="Absolute Zero reasoning: the model proposes and solves programs; a sandbox judges",
        description="AZR self-play. A model that does not exist yet is first created from zero (char tokenizer) "
                    "and pretrained on triplets from the random program generator for --pretrain-time seconds. "
                    "Then each step the model proposes deduction, abduction and induction tasks, a sandboxed "
                    "executor keeps the valid ones, the model solves them, and both roles learn from verified "
                    "rewards. Runs until stopped, --max-iterations or --max-time; checkpoints go to "
                    "models/NAME/checkpoints/reason/RUN/.")
    rp.add_argument("name")
    settings_mod.add_arguments(rp, REASON, defaults=False)
    settings_mod.add_arguments(rp, FROM_ZERO, only=("pretrain_time", "corpus_docs"))
    for dim in ("d_model", "num_layers", "num_heads", "d_ff", "max_seq_len"):
        rp.add_argument("--" + dim.replace("_", "-"), dest=dim, type=int,
                        help=f"from-zero shape (default {reasoning_shape_default(dim)})")
    rp.add_argument("--pretrain-only", action="store_true", help="create and pretrain, no self-play")
    rp.add_argument("--eval-only", action="store_true",
                    help="print the held-out accuracy of --checkpoint as JSON (with --pass-k: pass@k at T=1)")
    rp.add_argument("--eval-split", default="test", choices=("test", "train"),
                    help="test: the shifted held-out distribution; train: the pretraining one")
    rp.add_argument("--pass-k", type=int, default=1)
    rp.add_argument("--show-buffers", action="store_true", help="print the newest run's task buffers as JSON")
    _add_output(rp)
    rp.set_defaults(func=cmd_reason)

    s = sub.add_parser("serve", help="start the web studio (http://127.0.0.1:8000)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on; any but loopback requires a token")
    s.add_argument("--port", type=int, default=8000)
    # Also accepted after "serve"; SUPPRESS keeps an absent one from hiding `azr --home X serve`.
    s.add_argument("--home", default=argparse.SUPPRESS, help="data folder (default: $AZR_HOME, else ~/azr-home)")
    s.add_argument("--max-runs", type=int, default=1, help="training runs at once; the others wait in a queue")
    s.add_argument("--max-upload-mb", type=float, default=200, help="largest upload accepted, in MiB")
    s.add_argument("--token", help="access token to require (default: made up when --host is not loopback)")
    s.add_argument("--open", action="store_true", help="open the studio in the web browser once it is up")
    s.set_defaults(func=cmd_serve)
    return p


def _add_output(p) -> None:
    """What a run subcommand shares besides its settings: which run, and how it reports."""
    p.add_argument("--run-id", help="the run's folder name: start it under this name, or resume this run")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")


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
