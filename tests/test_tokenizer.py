import pytest

from azr_trainer.tokenizer import Tokenizer, text_chunks, train_bpe, train_char, vocab_size_warning

from conftest import WORDS_RU, make_text

HARD = "Привет, мир! Ёлка. 你好，世界 🎉👩‍👩‍👧 e\u0301 café\ttab\r\nnull\x01 end"


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_lossless_round_trip_on_any_unicode(kind):
    corpus = make_text() + make_text(WORDS_RU)
    tok = train_bpe(text_chunks(corpus), 400) if kind == "bpe" else train_char([corpus], 300)
    for text in (HARD, corpus[:500], "", " ", "\n\n"):
        assert tok.decode(tok.encode(text)) == text


def test_bpe_learns_merges_and_respects_vocab_size():
    tok = train_bpe(text_chunks(make_text()), 320)
    assert tok.vocab_size <= 320
    text = "the king said"
    assert len(tok.encode(text)) < len(text.encode("utf-8"))


def test_char_tokenizer_falls_back_to_bytes_for_unseen_characters():
    tok = train_char(["abc"], 300)
    ids = tok.encode("ab€")
    assert len(ids) == 2 + 3  # two known chars, three UTF-8 bytes for €
    assert tok.decode(ids) == "ab€"


def test_saved_tokenizer_is_identical(tmp_path):
    tok = train_bpe(text_chunks(make_text()), 300)
    tok.save(tmp_path / "t.json")
    again = Tokenizer.load(tmp_path / "t.json")
    assert again.encode(HARD) == tok.encode(HARD) and again.eot_id == tok.eot_id == 0


def test_warns_when_vocab_is_large_for_the_text():
    assert "large" in vocab_size_warning("bpe", 8000, 50_000)
    assert vocab_size_warning("bpe", 1000, 10_000_000) is None
