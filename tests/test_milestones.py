"""Milestones: the compressor line and the real-word share, computed on real text."""

import random

from azr_trainer import books, catalogue, store
from azr_trainer.events import iter_events
from azr_trainer.milestones import Baselines, real_word_share, xz_bits_per_byte
from azr_trainer.model import ModelConfig
from azr_trainer.train import TrainConfig, train
from test_train import StopAt  # stops at an exact step; "pause" as the studio pauses

BOOK = ("Жила-была на свете собака. Она любила гулять по лесу и слушать, как поют птицы. "
        "Однажды утром собака увидела в лесу маленького ежика. ") * 40


def test_xz_line_is_the_compressors_bits_per_byte():
    bpb = xz_bits_per_byte(BOOK)
    assert 0 < bpb < 1  # a repetitive text compresses very well
    rnd = random.Random(0)
    noise = "".join(rnd.choice("абвгдежзийклмнопрстуфхцчшщыэюя ") for _ in range(20_000))
    assert xz_bits_per_byte(noise) > 4 * bpb
    assert xz_bits_per_byte("") is None


def test_real_word_share_counts_words_from_the_books():
    vocabulary = set(Baselines.from_texts(BOOK, BOOK).vocabulary)
    assert real_word_share("Собака увидела ежика в лесу.", vocabulary) == 1.0
    assert real_word_share("Собака увидела кракозябру, 123!", vocabulary) == 2 / 3
    assert real_word_share("...", vocabulary) is None


def test_milestones_are_reported_once_each_in_both_languages():
    base = Baselines.from_texts(BOOK, BOOK)
    assert base.reached(val_bpb=base.xz_bpb + 1, real_words=0.3) == []
    first = base.reached(val_bpb=base.xz_bpb - 0.01, real_words=0.72)
    assert [m["code"] for m in first] == ["milestone.beats_xz", "milestone.real_words", "milestone.real_words"]
    assert [m["params"].get("percent") for m in first[1:]] == [50, 70]
    assert base.reached(val_bpb=base.xz_bpb - 0.02, real_words=0.72) == []  # nothing twice
    for m in first:
        ru = catalogue.message(m["code"], "ru", **m["params"])
        en = catalogue.message(m["code"], "en", **m["params"])
        assert ru != en and "{" not in ru and "{" not in en and any("а" <= c <= "я" for c in ru.lower())


def test_a_paused_and_resumed_run_announces_each_milestone_once(home, tmp_path):
    # a few words repeated: the small model passes real-word milestones before the pause; the
    # resumed worker (a new process in the studio, a new trainer here) must not announce them again
    path = tmp_path / "words.txt"
    path.write_text("\n".join(["the cat sat on the mat and the dog sat on the log"] * 600), encoding="utf-8")
    books.add_book(home, path, name="words")
    store.create_model(home, "m", ModelConfig(vocab_size=300, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                                              max_seq_len=32, tokenizer="char"))
    cfg = dict(books=["words"], max_iterations=300, batch_size=4, learning_rate=1e-2, eval_every=100,
               save_every=100, threads=1, sample_length=24)
    first = train(home, "m", TrainConfig(**cfg), stop=StopAt(200, "pause"), log=lambda m: None)
    assert first["status"] == "paused" and first["step"] == 200
    before = [e for e in iter_events(first["events"]) if e["type"] == "milestone"]
    assert ("milestone.real_words", 50) in [(e["code"], e["params"].get("percent")) for e in before]
    again = train(home, "m", TrainConfig(**cfg, resume=True), log=lambda m: None)
    assert again["status"] == "completed" and again["step"] == 300 and again["run"] == first["run"]
    events = list(iter_events(again["events"]))
    assert any(e["type"] == "quality" and e["step"] == 300 for e in events)  # the resumed run did measure
    codes = [(e["code"], e["params"].get("percent")) for e in events if e["type"] == "milestone"]
    assert len(codes) == len(set(codes)) and len(codes) >= len(before)
