"""Fixed prompts cut from a model's books, and the measures of what the model writes from them.

Self-play draws its prompts here (a stretch of the books starting at a line, or a user's prompt
file) and measures its evaluations here: the same validation prompts at every evaluation, each
continued once with a fixed seed, scored for loops, variety and the reward. The benchmarks use
the same functions, so a benchmark's figures and a run's events mean the same thing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import PreparedData
from .home import UserError
from .rewards import Composite, sample_metrics, words
from .sample import generate


def validation_prompts(data: PreparedData, tokenizer, n: int, prompt_tokens: int) -> list[list[int]]:
    """``n`` fixed prompts from the validation split: evenly spaced, each starting at a line."""
    val = data.val
    span = 3 * prompt_tokens
    if len(val) <= span + 1:
        return [[tokenizer.eot_id]] * n
    starts = np.linspace(1, len(val) - span - 1, n).astype(int).tolist()
    return [line_prompt(tokenizer, val[s:s + span], prompt_tokens) for s in starts]


def line_prompt(tokenizer, chunk, prompt_tokens: int) -> list[int]:
    """Decode a stretch of tokens, start after its first newline, re-encode, keep ``prompt_tokens``."""
    text = tokenizer.decode(np.asarray(chunk, dtype=np.int64).tolist())
    cut = text.find("\n")
    if 0 <= cut < len(text) - 1:
        text = text[cut + 1:]
    text = text.lstrip("\ufffd")
    ids = tokenizer.encode(text)[:prompt_tokens]
    return ids or [tokenizer.eot_id]


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line (UTF-8); blank lines are skipped; ``\\n`` inside a line is a newline."""
    path = Path(path)
    if not path.is_file():
        raise UserError("codes.prompt_file_missing", path=str(path))
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise UserError("codes.prompt_file_encoding", path=str(path)) from None
    prompts = [line.replace("\\n", "\n") for line in lines if line.strip()]
    if not prompts:
        raise UserError("codes.prompt_file_empty", path=str(path))
    return prompts


@torch.no_grad()
def evaluate_samples(model, tokenizer, prompts: list[list[int]], *, length: int, temperature: float, seed: int,
                     reward: Composite | None = None, batch_size: int = 64) -> dict:
    """Continue each prompt once (fixed seed, no top-k; temperature 0 is greedy) and measure the
    samples: repeated-4-gram rate, distinct-2 (words; see rewards.py), and the reward with each
    component. The model's own fp32 weights decode them: the faster precision a decode would
    measure and pick varies with the machine's load, and its rounding changes greedy text, so two
    evaluations would differ where the models do not."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    texts: list[str] = []
    for i in range(0, len(prompts), batch_size):
        outs = generate(model, prompts[i:i + batch_size], max_new_tokens=length, temperature=temperature, top_k=None,
                        top_p=None, generator=gen, eot_id=tokenizer.eot_id, precision="fp32")
        texts += [tokenizer.decode(o) for o in outs]
    prompt_texts = [tokenizer.decode(p) for p in prompts]
    res = {f"sample_{k}": v for k, v in sample_metrics(texts).items()}
    if reward is not None:
        comps = reward.components(texts, prompt_texts)
        res["sample_reward"] = float(np.mean(reward.combine(comps)))
        for k, v in comps.items():
            res[f"sample_reward_{k}"] = float(np.mean(v))
    res["texts"], res["prompts"] = texts, prompt_texts
    return res


def default_length_target(data: PreparedData, tokenizer, rollout_tokens: int) -> float:
    """90% of the words that ``rollout_tokens`` tokens of the book usually hold."""
    sample = np.asarray(data.train[:min(len(data.train), 20000)], dtype=np.int64).tolist()
    per_token = len(words(tokenizer.decode(sample))) / max(1, len(sample))
    return max(1.0, round(0.9 * per_token * rollout_tokens, 1))
