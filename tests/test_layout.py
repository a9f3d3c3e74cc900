"""The data folder's layout: what a book, a model, a training run, an export and the registry
leave in $AZR_HOME, and that layout.py is the one place that names those paths."""

import json
import re
from pathlib import Path

from azr_trainer import layout, store
from azr_trainer.export import default_output, export_model
from azr_trainer.home import home_dir
from azr_trainer.model import ModelConfig
from azr_trainer.registry import Registry
from azr_trainer.train import TrainConfig, train

SHAPE = dict(vocab_size=300, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_seq_len=32)
SRC = Path(__file__).resolve().parent.parent / "src" / "azr_trainer"


def tree(home: Path) -> set[str]:
    return {p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file()}


def test_a_book_a_model_a_run_and_an_export_make_this_tree(tmp_path, book):
    home = home_dir(tmp_path / "home")
    store.create_model(home, "m", ModelConfig(**SHAPE))
    summary = train(home, "m", TrainConfig(books=[book], max_iterations=4, batch_size=4, eval_every=2, save_every=2,
                                           keep_last=1, threads=1, sample_length=4), log=lambda m: None)
    run = summary["run"]
    export_model(home, "m", "pt", default_output(home, "m", "pt", "float32"))
    Registry(home).close()

    files = tree(home) - {"azr.sqlite-wal", "azr.sqlite-shm"}  # SQLite's own, while it is open
    mdir = layout.model_dir(home, "m")
    version = json.loads(layout.data_info(mdir).read_text(encoding="utf-8"))["version"]  # each tokenization's own
    assert files == {
        "azr.sqlite",
        f"books/{book}/text.txt",
        f"books/{book}/book.json",
        "models/m/model.json",
        "models/m/tokenizer.json",
        f"models/m/data/train-{version}.bin",
        f"models/m/data/val-{version}.bin",
        "models/m/data/data.json",
        "models/m/checkpoints/step_0000004.pt",
        "models/m/checkpoints/best.pt",
        f"models/m/runs/{run}/events.jsonl",
        "exports/m/m.pt",
    }
    # ... and each of them is what layout.py calls it
    named = {layout.registry_file(home), layout.book_text(layout.book_dir(home, book)),
             layout.book_info(layout.book_dir(home, book)), layout.model_file(mdir), layout.tokenizer_file(mdir),
             layout.data_file(mdir, "train", version), layout.data_file(mdir, "val", version), layout.data_info(mdir),
             layout.step_file(layout.checkpoints_dir(mdir), 4), layout.best_checkpoint(mdir),
             layout.events_file(layout.run_dir(home, "m", run)), default_output(home, "m", "pt", "float32")}
    assert {p.relative_to(home).as_posix() for p in named} == files
    assert Path(summary["events"]) == layout.events_file(layout.run_dir(home, "m", run))


def test_only_layout_joins_the_data_folders_names():
    # A path built by hand elsewhere ("home / 'models' / name") would drift from the layout.
    names = "models|books|runs|checkpoints|exports|data|events\\.jsonl|worker\\.log|model\\.json|best\\.pt|text\\.txt"
    by_hand = re.compile(rf'/ "({names})"|"({names})" /')
    found = [f"{p.name}:{n}" for p in SRC.glob("*.py") if p.name != "layout.py"
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if by_hand.search(line)]
    assert found == []
