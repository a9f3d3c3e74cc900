"""Rewards for text self-play: small, documented functions that you weigh and combine.

Every reward is a callable ``reward(texts, prompts) -> list[float]``: ``texts`` are the
continuations the model wrote (without their prompts), ``prompts`` the text each one
continued; one number per text, higher is better. The same shape as a user's own
``compute_reward`` (see ``load_reward_file``).

Words, not model tokens. Text metrics here count *words*: ``\\w+`` runs (any script, so
Russian works) and single punctuation marks, case-folded (``words()``). That keeps them
independent of the tokenizer, comparable between models, and the same for a reward file
that only sees strings. The two metrics reported in evals are

- ``repeated_ngram_rate(text, 4)``: the share of the text's word 4-grams that already
  occurred earlier in the same text (0 = nothing repeats; a text stuck in a loop → 1);
- ``distinct_n(text, 2)``: distinct word bigrams / all word bigrams (1 = no bigram twice).

and beside them ``repeated_char_ngram_rate(text, 20)``, the same on character 20-grams.

The components (each in [0, 1] except coherence, which is in nats):

- ``diversity``: mean of distinct-2 and the unique-word ratio (type/token ratio).
- ``repetition``: 1 − the larger of the repeated word-4-gram rate and the repeated
  character-20-gram rate (which sees loops inside a word), counting n-grams the prompt
  already had as repeats too (so copying the prompt earns nothing).
- ``length``: closeness to a target number of words, 1 at the target and falling linearly
  to 0 at 0 and at twice the target; *not* "longer is better".
- ``real_words``: the share of the continuation's words that occur in the model's books (the
  words of its training split, as the "real words" milestone counts them: ``milestones.words``,
  letters only). Diversity alone pays for made-up words (each one is new); this term is what
  makes self-play cut loops without writing more nonsense. A word the rollout cut off at its
  end is not counted, and one that continues the prompt's last word is read whole.
- ``coherence``: mean per-token log-likelihood (nats, ≤ 0) of the continuation given its
  prompt under the *frozen* starting model (``Coherence``), each token's counted at most
  ``cap`` (−1.4 nats in self-play). It is what stops a policy from buying diversity with word
  salad: rare-token spray and gibberish score very low. Uncapped, it pays for repeating
  (a loop is very likely text), which the benchmark saw.

Presets (``preset_weights``): ``default`` is the reward the self-play benchmark shows
working (see BENCHMARKS.md); ``original`` is the product's first description taken literally
(diversity + length only), kept to show how it fails.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from numbers import Real
from pathlib import Path

import torch

from .home import UserError
from .milestones import words as book_words
from .settings import SELFPLAY

RewardFn = Callable[[list[str], list[str]], list[float]]

_WORD_RE = re.compile(r"\w+|[^\w\s]")
_SPACE_RE = re.compile(r"\s+")


# ---- text metrics ---------------------------------------------------------------------------

def words(text: str) -> list[str]:
    """Case-folded words and punctuation marks: the unit every text metric here counts."""
    return _WORD_RE.findall(text.casefold())


def _ngrams(seq: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def repeated_ngram_rate(text: str, n: int = 4, context: str = "") -> float:
    """Share of the word n-grams of ``text`` that already occurred earlier in ``context`` + ``text``.
    0 for a text with fewer than n words."""
    return _repeat_share(_ngrams(words(text), n), set(_ngrams(words(context), n)) if context else set())


def repeated_char_ngram_rate(text: str, n: int = 20, context: str = "") -> float:
    """Share of the character n-grams of ``text`` (case-folded, whitespace runs as one space)
    that already occurred earlier in ``context`` + ``text``: catches loops *inside* a word
    ("AMILTAMILTAMILTA…") that word n-grams cannot see. 20 characters span about four words;
    book prose repeats ~0.2% of them (Tiny Shakespeare's validation text), greedy loops 30%+."""
    t = _SPACE_RE.sub(" ", text.casefold())
    c = _SPACE_RE.sub(" ", context.casefold()) if context else ""
    return _repeat_share([t[i:i + n] for i in range(len(t) - n + 1)], {c[i:i + n] for i in range(len(c) - n + 1)})


def _repeat_share(grams: list, seen: set) -> float:
    """Share of ``grams`` already in ``seen`` or earlier in ``grams``; 0 when there are none."""
    if not grams:
        return 0.0
    repeats = 0
    for g in grams:
        if g in seen:
            repeats += 1
        else:
            seen.add(g)
    return repeats / len(grams)


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct word n-grams over all word n-grams of the text; 0 when it has none (an empty
    text is not diverse)."""
    grams = _ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else 0.0


def unique_word_ratio(text: str) -> float:
    """Distinct words over words (type/token ratio); 0 for an empty text."""
    w = words(text)
    return len(set(w)) / len(w) if w else 0.0


def corpus_distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n over all texts together: low when every sample says the same thing."""
    grams = [g for t in texts for g in _ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def sample_metrics(texts: Sequence[str]) -> dict:
    """What evals report about a set of samples (means over samples, words as above)."""
    n = max(1, len(texts))
    return {"rep4": sum(repeated_ngram_rate(t, 4) for t in texts) / n,
            "char_rep20": sum(repeated_char_ngram_rate(t, 20) for t in texts) / n,
            "distinct2": sum(distinct_n(t, 2) for t in texts) / n,
            "distinct2_corpus": corpus_distinct_n(texts, 2),
            "words": sum(len(words(t)) for t in texts) / n}


# ---- reward components ----------------------------------------------------------------------

def diversity(texts: list[str], prompts: list[str]) -> list[float]:
    """Mean of distinct-2 and the unique-word ratio, in [0, 1]."""
    return [0.5 * (distinct_n(t, 2) + unique_word_ratio(t)) for t in texts]


def repetition(texts: list[str], prompts: list[str]) -> list[float]:
    """1 − the larger of the repeated word-4-gram rate and the repeated character-20-gram rate
    of the continuation, the prompt's n-grams counting as seen. Both, because a policy rewarded
    on words alone learned to loop inside one long made-up word (BENCHMARKS.md, S1)."""
    return [1.0 - max(repeated_ngram_rate(t, 4, context=p), repeated_char_ngram_rate(t, 20, context=p))
            for t, p in zip(texts, prompts)]


class Length:
    """Closeness to ``target`` words: 1 − |words − target| / target, floored at 0."""

    def __init__(self, target: float):
        if not target or target <= 0:
            raise UserError("reward.length_target", value=target)
        self.target = float(target)

    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]:
        return [max(0.0, 1.0 - abs(len(words(t)) - self.target) / self.target) for t in texts]


_LETTERS_AT_END = re.compile(r"[^\W\d_]+$")
_WORD_GOES_ON = re.compile(r"['’-]?[^\W\d_]")


class RealWords:
    """Share of each continuation's words found in ``vocabulary`` (the model's books, see
    ``milestones.book_vocabulary``), in [0, 1]; 0 for a continuation without a word."""

    def __init__(self, vocabulary: set[str]):
        if not vocabulary:
            raise UserError("quality.no_vocabulary")
        self.vocabulary = vocabulary

    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]:
        return [self.share(t, p) for t, p in zip(texts, prompts)]

    def share(self, text: str, prompt: str = "") -> float:
        head = _LETTERS_AT_END.search(prompt) if prompt and _WORD_GOES_ON.match(text) else None
        ws = book_words((head.group() if head else "") + text)
        if ws and text[-1:].isalpha():
            ws.pop()  # cut off mid-word by the rollout's length, most likely: not the model's word
        return sum(w in self.vocabulary for w in ws) / len(ws) if ws else 0.0


class Coherence:
    """Mean per-token log-likelihood (nats) of each continuation given its prompt, under a frozen
    language model (the model as it was when self-play started).

    With ``cap`` (nats), each token's log-likelihood counts at most ``cap``: a token the model
    already finds likelier than e^cap earns nothing more. Then the reward punishes improbable
    tokens (made-up words, broken grammar) without paying for the very likely ones a text
    gets by repeating itself, which an uncapped likelihood reward drifts into.

    Prompt and continuation are tokenized separately and joined (as in generation); only the
    continuation's tokens are scored. A sequence longer than the model's window keeps its last
    ``max_seq_len`` tokens. An empty continuation scores log(1/vocab), as bad as chance.
    """

    def __init__(self, model, tokenizer, device: torch.device | str = "cpu", batch_size: int = 64,
                 cap: float | None = None):
        self.model, self.tokenizer, self.cap = model, tokenizer, cap
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def rows(self, texts: list[str], prompts: list[str]) -> list[tuple[list[int], list[int]]]:
        """The (prompt ids, continuation ids) this scorer reads for each text."""
        tok = self.tokenizer
        return [((tok.encode(p) if p else []) or [tok.eot_id], tok.encode(t)) for t, p in zip(texts, prompts)]

    def remember(self, rows: list[tuple[list[int], list[int]]], values: list[float]) -> None:
        """Scores already computed from the same token rows (self-play has the frozen model's
        log-probabilities of its rollouts anyway); the next call uses them instead of a forward pass."""
        self._known = {(tuple(p), tuple(c)): v for (p, c), v in zip(rows, values)}

    def score_logprobs(self, logp: torch.Tensor, mask: torch.Tensor) -> list[float]:
        """Per-row mean of the (capped) token log-likelihoods ``logp`` where ``mask`` is 1."""
        if self.cap is not None:
            logp = logp.clamp(max=self.cap)
        total, count = (logp * mask).sum(-1), mask.sum(-1)
        floor = -math.log(self.model.cfg.vocab_size)
        return [float(s / c) if c > 0 else floor for s, c in zip(total.tolist(), count.tolist())]

    @torch.no_grad()
    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]:
        rows = self.rows(texts, prompts)
        known, self._known = getattr(self, "_known", {}), {}
        out: list[float | None] = [known.get((tuple(p), tuple(c))) for p, c in rows]
        todo = [i for i, v in enumerate(out) if v is None]
        for i in range(0, len(todo), self.batch_size):
            idx = todo[i:i + self.batch_size]
            x, y, mask = pack_rows([rows[j] for j in idx], self.model.cfg.max_seq_len)
            logits, _ = self.model(x.to(self.device))
            logp = torch.log_softmax(logits.float(), -1).gather(-1, y.clamp(min=0).to(self.device)[..., None])[..., 0]
            for j, v in zip(idx, self.score_logprobs(logp, mask.to(self.device))):
                out[j] = v
        return out  # type: ignore[return-value]


def pack_rows(rows: Sequence[tuple[list[int], list[int]]], max_len: int):
    """(prompt ids, continuation ids) pairs → right-padded inputs x, targets y (−1 on padding) and
    a float mask that is 1 where y is a continuation token. Rows longer than ``max_len`` + 1
    tokens lose their oldest prompt tokens."""
    seqs, starts = [], []
    for prompt, cont in rows:
        seq = list(prompt) + list(cont)
        cut = max(0, len(seq) - (max_len + 1))
        seqs.append(seq[cut:])
        starts.append(max(1, len(prompt) - cut))  # index in seq of the first continuation token
    T = max(1, max(len(s) for s in seqs) - 1)
    x = torch.zeros(len(seqs), T, dtype=torch.long)
    y = torch.full((len(seqs), T), -1, dtype=torch.long)
    mask = torch.zeros(len(seqs), T)
    for i, (seq, start) in enumerate(zip(seqs, starts)):
        n = len(seq) - 1
        if n <= 0:
            continue
        x[i, :n] = torch.tensor(seq[:-1])
        y[i, :n] = torch.tensor(seq[1:])
        mask[i, start - 1:n] = 1.0
    return x, y, mask


# ---- composite and presets ------------------------------------------------------------------

PRESETS: dict[str, dict[str, float]] = {
    # Chosen with the self-play benchmark (BENCHMARKS.md, S1): diversity and repetition push
    # against loops, length is a small nudge. Coherence is left out: at weights 0.25 and 0.5
    # it made loops worse (it pays for likely text, and loops are likely); the KL leash and
    # the book loss keep val bpb.
    # Real words (weight: the setting real_words_weight) keep that from costing made-up words.
    "default": {"diversity": 1.0, "repetition": 1.0, "length": 0.1,
                "real_words": SELFPLAY.default("real_words_weight")},
    # The product's first description taken literally: token uniqueness and length.
    "original": {"diversity": 0.5, "length": 0.5},
}
COMPONENTS = ("diversity", "repetition", "length", "real_words", "coherence", "custom")


def preset_weights(name: str) -> dict[str, float]:
    if name not in PRESETS:
        raise UserError("reward.unknown", name=str(name), options=list(PRESETS))
    return dict(PRESETS[name])


def parse_weights(spec: str | dict | None) -> dict[str, float]:
    """"repetition=1,coherence=0.5" (or a dict) → weights, checked against the known components."""
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, dict) else (part.split("=", 1) if "=" in part else (part, None)
                                                         for part in str(spec).split(",") if part.strip())
    out: dict[str, float] = {}
    for key, value in items:
        key = str(key).strip()
        if key not in COMPONENTS:
            raise UserError("reward.unknown_component", name=key, options=list(COMPONENTS))
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise UserError("reward.weight_not_number", component=key, value=value) from None
        if not math.isfinite(w):
            raise UserError("reward.weight_not_finite", component=key, value=value)
        out[key] = w
    return out


class Composite:
    """A weighted sum of named reward components. ``components()`` gives each one's values (for
    the step events); calling it gives the weighted sum."""

    def __init__(self, parts: dict[str, tuple[float, RewardFn]]):
        self.parts = {k: (w, fn) for k, (w, fn) in parts.items() if w != 0}
        if not self.parts:
            raise UserError("reward.no_weights")

    @property
    def weights(self) -> dict[str, float]:
        return {k: w for k, (w, _) in self.parts.items()}

    def components(self, texts: list[str], prompts: list[str]) -> dict[str, list[float]]:
        out = {}
        for name, (_, fn) in self.parts.items():
            out[name] = check_rewards(fn(list(texts), list(prompts)), len(texts), name)
        return out

    def combine(self, comps: dict[str, list[float]]) -> list[float]:
        n = len(next(iter(comps.values())))
        return [sum(self.parts[k][0] * comps[k][i] for k in self.parts) for i in range(n)]

    def __call__(self, texts: list[str], prompts: list[str]) -> list[float]:
        return self.combine(self.components(texts, prompts))


def build_reward(weights: dict[str, float], *, length_target: float | None = None,
                 coherence: Coherence | None = None, custom: RewardFn | None = None,
                 vocabulary: set[str] | None = None) -> Composite:
    """Assemble a Composite from weights; components that need something (a length target, the
    frozen model, a reward file, the books' words) get it here."""
    parts: dict[str, tuple[float, RewardFn]] = {}
    for name, w in weights.items():
        if w == 0:
            continue
        if name == "diversity":
            parts[name] = (w, diversity)
        elif name == "repetition":
            parts[name] = (w, repetition)
        elif name == "length":
            parts[name] = (w, Length(length_target or 0))
        elif name == "real_words":
            parts[name] = (w, RealWords(vocabulary or set()))
        elif name == "coherence":
            if coherence is None:
                raise UserError("reward.coherence_needs_model")
            parts[name] = (w, coherence)
        elif name == "custom":
            if custom is None:
                raise UserError("reward.custom_needs_file")
            parts[name] = (w, custom)
        else:
            raise UserError("reward.unknown_component", name=name, options=list(COMPONENTS))
    return Composite(parts)


# ---- checking values and user reward files --------------------------------------------------

def check_rewards(values, n: int, source: str) -> list[float]:
    """A list of ``n`` finite real numbers, or a UserError saying what ``source`` got wrong."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().reshape(-1).tolist() if values.dim() <= 1 else values
    elif hasattr(values, "tolist") and getattr(values, "ndim", 1) <= 1:  # numpy arrays
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise UserError("reward.not_list", source=source, count=n, type=type(values).__name__)
    if len(values) != n:
        raise UserError("reward.wrong_count", source=source, got=len(values), count=n)
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, Real):
            raise UserError("reward.not_number", source=source, value=repr(v)[:80], type=type(v).__name__, index=i)
        v = float(v)
        if not math.isfinite(v):
            raise UserError("reward.not_finite", source=source, value=str(v), index=i)
        out.append(v)
    return out


_PROBE_TEXTS = ["To be, or not to be, that is the question.", "", "the the the the the the the the"]
_PROBE_PROMPTS = ["HAMLET:\n", "", "And"]


def load_reward_file(path: str | Path, probe: bool = True) -> RewardFn:
    """Load ``compute_reward(texts, prompts) -> list[float]`` from a Python file.

    The returned function checks every call: an exception inside it, a result of the wrong
    length or type, or a NaN/inf becomes a UserError that names the file. With ``probe`` it is
    called once on three small texts right away, so a broken file fails before self-play
    starts instead of minutes into it. The file runs as ordinary Python with your rights:
    load only files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("reward.file_missing", path=str(path))
    if path.suffix != ".py":
        raise UserError("reward.file_not_py", path=str(path))
    mod_name = f"azr_user_reward_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise UserError("reward.file_unloadable", path=str(path))
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError("reward.file_syntax", file=path.name, line=e.lineno, error=str(e.msg)) from None
    except BaseException as e:  # noqa: BLE001 - anything at import time is the file's fault
        if isinstance(e, KeyboardInterrupt):
            raise
        raise UserError("reward.file_import", file=path.name, error=f"{type(e).__name__}: {e}") from None
    finally:
        sys.modules.pop(mod_name, None)
    fn = getattr(module, "compute_reward", None)
    if fn is None:
        raise UserError("reward.file_no_function", file=path.name)
    if not callable(fn):
        raise UserError("reward.file_not_function", file=path.name)
    source = f"{path.name}: compute_reward"

    def compute_reward(texts: list[str], prompts: list[str]) -> list[float]:
        try:
            values = fn(list(texts), list(prompts))
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            raise UserError("reward.raised", source=source, error=f"{type(e).__name__}: {e}") from None
        return check_rewards(values, len(texts), source)

    compute_reward.__doc__ = getattr(fn, "__doc__", None)
    compute_reward.path = str(path)  # type: ignore[attr-defined]
    if probe:
        compute_reward(_PROBE_TEXTS, _PROBE_PROMPTS)
    return compute_reward
