"""Milestones: the compressor line and the real-word share, computed on real text."""

import random

from azr_trainer import catalogue
from azr_trainer.milestones import Baselines, real_word_share, xz_bits_per_byte

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
