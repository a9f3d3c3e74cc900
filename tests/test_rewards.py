"""Reward functions on hand-made texts, the composite, and user reward files (good and broken)."""

import math

import pytest
import torch

from azr_trainer import settings
from azr_trainer.home import UserError
from azr_trainer.milestones import book_vocabulary
from azr_trainer.model import ModelConfig, Transformer
from azr_trainer.rewards import (Coherence, Length, build_reward, check_rewards, corpus_distinct_n, distinct_n,
                                 diversity, load_reward_file, pack_rows, parse_weights, preset_weights,
                                 repeated_char_ngram_rate, repeated_ngram_rate, repetition, unique_word_ratio, words)

FRESH = "The king rode north at dawn, and the queen wrote letters to her sister in the south."
LOOP = "I am the king. I am the king. I am the king. I am the king. I am the king."


def test_words_are_casefolded_words_and_punctuation_in_any_script():
    assert words("The KING, the king!") == ["the", "king", ",", "the", "king", "!"]
    assert words("Король сказал: «нет».") == ["король", "сказал", ":", "«", "нет", "»", "."]


def test_repeated_4gram_rate_by_hand():
    assert repeated_ngram_rate(FRESH) == 0.0
    # "a b c d a b c d": 5 four-grams, of which "a b c d" (the 5th) repeats the 1st
    assert repeated_ngram_rate("a b c d a b c d") == pytest.approx(1 / 5)
    assert repeated_ngram_rate("a b c") == 0.0  # too short to have a 4-gram
    # 4-grams of the prompt count as already seen
    assert repeated_ngram_rate("a b c d", context="x a b c d") == 1.0
    assert repeated_ngram_rate(LOOP) > 0.7


def test_repeated_char_ngram_rate_sees_loops_inside_a_word():
    loop = "Bishop of AUMERIAMILTAMILTAMILTAMILTAMILTAMILTAMILTA"
    assert repeated_ngram_rate(loop) == 0.0  # one long word: no word 4-gram repeats
    assert repeated_char_ngram_rate(loop, 20) > 0.3
    assert repeated_char_ngram_rate(FRESH, 20) == 0.0
    # case and whitespace runs do not hide a repeat; the prompt counts as seen
    assert repeated_char_ngram_rate("abcdef ABCDEF", 6) == pytest.approx(1 / 8)
    assert repeated_char_ngram_rate("abc  def\nabc def", 7) == pytest.approx(1 / 9)
    assert repeated_char_ngram_rate("hello world", 11, context="say hello world") == 1.0
    assert repetition([loop], [""])[0] < 0.7


def test_distinct_and_unique_ratios_by_hand():
    assert distinct_n("a b a b", 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n("", 2) == 0.0 and unique_word_ratio("") == 0.0
    assert unique_word_ratio("a b a b") == 0.5
    assert corpus_distinct_n(["a b", "a b"], 2) == 0.5


def test_a_repetitive_text_scores_worse_on_repetition_and_diversity():
    texts, prompts = [FRESH, LOOP], ["", ""]
    rep, div = repetition(texts, prompts), diversity(texts, prompts)
    assert rep[0] == 1.0 and rep[1] < 0.3
    assert div[0] > 0.9 and div[1] < 0.4


def test_length_reward_peaks_at_the_target_and_is_not_longer_is_better():
    f = Length(10)
    texts = [" ".join(["w"] * n) for n in (0, 5, 10, 15, 20, 40)]
    scores = f(texts, [""] * len(texts))
    assert scores == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.0])
    assert max(range(len(scores)), key=scores.__getitem__) == 2
    with pytest.raises(UserError, match="length target"):
        Length(0)


def test_pack_rows_marks_exactly_the_continuation_targets():
    x, y, mask = pack_rows([([1, 2, 3], [4, 5]), ([7], [8, 9, 10])], max_len=16)
    assert x.tolist() == [[1, 2, 3, 4], [7, 8, 9, 0]]
    assert y.tolist() == [[2, 3, 4, 5], [8, 9, 10, -1]]
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    # too long: the oldest prompt tokens go, the continuation stays
    x, y, mask = pack_rows([([1, 2, 3, 4, 5], [6, 7])], max_len=4)
    assert x.tolist() == [[3, 4, 5, 6]] and y.tolist() == [[4, 5, 6, 7]] and mask.tolist() == [[0, 0, 1, 1]]


class _ByteTok:
    """A stand-in tokenizer: one token per byte, <|endoftext|> = 0."""
    eot_id = 0

    def encode(self, text):
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 1 for i in ids if i > 0).decode("utf-8", errors="replace")


def test_coherence_is_the_mean_token_log_likelihood_under_the_frozen_model():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=300, d_model=32, num_layers=1, num_heads=4, d_ff=64, max_seq_len=32))
    coh = Coherence(model, _ByteTok())
    assert not any(p.requires_grad for p in model.parameters())
    got = coh(["ab", "", "xyz"], ["hi", "hi", ""])
    tok = _ByteTok()
    ids = tok.encode("hi") + tok.encode("ab")
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
    logp = torch.log_softmax(logits[0], -1)
    expected = (logp[1, ids[2]] + logp[2, ids[3]]) / 2
    assert got[0] == pytest.approx(float(expected), abs=1e-5)
    assert got[1] == pytest.approx(-math.log(300))  # empty continuation: as bad as chance
    assert got[2] < 0


def test_composite_weights_presets_and_parsing():
    r = build_reward({"repetition": 1.0, "diversity": 0.5, "length": 0.0})
    assert set(r.weights) == {"repetition", "diversity"}
    comps = r.components([FRESH, LOOP], ["", ""])
    total = r([FRESH, LOOP], ["", ""])
    for i in range(2):
        assert total[i] == pytest.approx(comps["repetition"][i] + 0.5 * comps["diversity"][i])
    assert total[0] > total[1]
    assert set(preset_weights("original")) == {"diversity", "length"}
    assert {"diversity", "repetition"} <= set(preset_weights("default"))
    assert parse_weights("repetition=2, coherence=0.5") == {"repetition": 2.0, "coherence": 0.5}
    with pytest.raises(UserError, match="Unknown reward component"):
        parse_weights("fluency=1")
    with pytest.raises(UserError, match="must be a number"):
        parse_weights("repetition=lots")
    with pytest.raises(UserError, match="Unknown reward"):
        preset_weights("best")
    with pytest.raises(UserError, match="frozen starting model"):
        build_reward({"coherence": 1.0})
    with pytest.raises(UserError, match="no component"):
        build_reward({"repetition": 0.0})


BOOKS = ("The king said that his horse was lost in the night, and the queen wept for the old town. "
         "Король сказал, что его конь пропал ночью.")


def test_made_up_words_lower_the_default_reward():
    vocabulary = book_vocabulary(BOOKS)
    assert "king" in vocabulary and "конь" in vocabulary
    reward = build_reward(preset_weights("default"), length_target=8, vocabulary=vocabulary)
    assert reward.weights["real_words"] == settings.SELFPLAY.default("real_words_weight") > 0
    real = " the queen said that the old horse was lost in town."
    made_up = " the quorn saith thet the olb hurse was lost in town."  # the same shape, five made-up words
    comps = reward.components([real, made_up], ["KING:", "KING:"])
    assert comps["real_words"] == [1.0, pytest.approx(6 / 11)]
    total = reward([real, made_up], ["KING:", "KING:"])
    assert total[0] - total[1] == pytest.approx(5 / 11 * reward.weights["real_words"])
    # Russian counts the same way; a word the rollout cut off at its end is not held against it,
    # and one that goes on from the prompt's last letters is read whole
    assert reward.components([" пропал ночью конь пропа"], ["Король сказал"])["real_words"] == [1.0]
    assert reward.components(["ng said that the horse"], ["The ki"])["real_words"] == [1.0]
    assert reward.components(["rk horse said"], ["The ki"])["real_words"] == [0.5]
    assert reward.components(["...", ""], ["", ""])["real_words"] == [0.0, 0.0]  # no word is no credit
    with pytest.raises(UserError) as e:
        build_reward({"real_words": 1.0}, vocabulary=set())
    assert e.value.code == "quality.no_vocabulary" and "books" in str(e.value)


def test_check_rewards_accepts_numbers_and_refuses_the_rest():
    import numpy as np
    assert check_rewards([1, 2.5], 2, "f") == [1.0, 2.5]
    assert check_rewards(np.array([1.0, 2.0]), 2, "f") == [1.0, 2.0]
    assert check_rewards(torch.tensor([0.5]), 1, "f") == [0.5]
    with pytest.raises(UserError, match="returned 1 values for 2 texts"):
        check_rewards([1.0], 2, "f")
    with pytest.raises(UserError, match="list of 2 numbers"):
        check_rewards(3.0, 2, "f")
    with pytest.raises(UserError, match="every value must be a number"):
        check_rewards(["1", 2], 2, "f")
    with pytest.raises(UserError, match="finite"):
        check_rewards([float("inf")], 1, "f")


GOOD = '''
def compute_reward(texts, prompts):
    """Longer continuations of their prompt score higher (a toy)."""
    return [len(t) / 100 for t in texts]
'''


def test_a_good_reward_file_loads_and_is_checked(tmp_path):
    f = tmp_path / "good.py"
    f.write_text(GOOD, encoding="utf-8")
    fn = load_reward_file(f)
    assert fn(["abc", ""], ["p", "q"]) == [0.03, 0.0]
    r = build_reward({"custom": 2.0, "repetition": 1.0}, custom=fn)
    assert r(["abcd"], [""]) == [pytest.approx(2 * 0.04 + 1.0)]


@pytest.mark.parametrize("body, message", [
    ("def compute_reward(texts, prompts):\n    raise ValueError('no idea')\n", r"raised ValueError: no idea"),
    ("def compute_reward(texts, prompts):\n    return [1.0]\n", r"returned 1 values for 3 texts"),
    ("def compute_reward(texts, prompts):\n    return [float('nan')] * len(texts)\n", r"NaN"),
    ("def compute_reward(texts, prompts):\n    return 'good'\n", r"list of 3 numbers"),
    ("def compute_reward(texts, prompts):\n    return [None] * len(texts)\n", r"every value must be a number"),
    ("def reward(texts, prompts):\n    return [0.0] * len(texts)\n", r"does not define compute_reward"),
    ("compute_reward = 3\n", r"is not a function"),
    ("def compute_reward(texts, prompts)\n    return []\n", r"syntax error on line 1"),
    ("import no_such_module_here\n", r"failed to import: ModuleNotFoundError"),
])
def test_broken_reward_files_fail_with_a_clear_error(tmp_path, body, message):
    f = tmp_path / "broken.py"
    f.write_text(body, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_reward_file(f)


def test_reward_file_must_exist_and_be_python(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_reward_file(tmp_path / "nope.py")
    txt = tmp_path / "reward.txt"
    txt.write_text(GOOD, encoding="utf-8")
    with pytest.raises(UserError, match=r"\.py"):
        load_reward_file(txt)
