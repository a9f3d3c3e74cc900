"""Text self-play: a pretrained book model improves its own writing against a reward.

Each step:

1. **Prompts.** ``prompts_per_step`` openings, from one of three sources (``prompt_source``):
   ``book`` — a random stretch of the training split of the model's books, starting at a line;
   ``self`` — the last ``prompt_tokens`` tokens of one of the model's own earlier
   continuations (the best of each group is kept in a pool; with an empty pool the model starts
   from ``<|endoftext|>``, so no book text is needed at all); ``file:PATH`` — a UTF-8 file with
   one prompt per line (``\\n`` in a line stands for a newline).
2. **Rollouts.** ``group_size`` continuations of ``rollout_tokens`` tokens per prompt: the first
   ``greedy_rollouts`` (1) of each group decoded greedily, the others sampled at ``temperature``
   (no top-k/top-p, so the policy being trained is exactly the one that sampled), all in one
   left-padded batch through the KV-cache generator in ``sample.py``. The greedy member is
   the one exception to sampling: a small model's loops live in its most likely continuation,
   which a sampled group seldom holds, so without it the reward never sees them; in its group
   it is pushed down where it scores below the samples and up where above.
3. **Reward.** A weighted sum of the components in ``rewards.py`` (or a user's
   ``compute_reward``), scored on the decoded text.
4. **Update.** Group-relative policy gradient: advantage = (r − group mean) / (group std + 1e-6)
   (population std; a group whose rewards are all equal gets advantage 0); the loss is
   −advantage × log π(token) averaged over every continuation token of the batch (token
   mean), where π is the sampling distribution (logits / temperature). One optimizer step per
   batch of rollouts, so the importance ratio is exactly 1 and PPO clipping would do nothing;
   there is none. Plus ``kl_weight`` × KL(π ‖ π_ref) to the frozen starting model, computed
   **exactly** over the whole next-token distribution (temperature 1) at every continuation
   position and averaged over tokens — cheap at these vocabulary sizes and without the
   variance of the k1/k3 sample estimators. Plus ``lm_weight`` × the book's next-token loss on
   a random training batch ("continuous learning"). AdamW, gradient clipping, linear warmup,
   then a cosine down to ``min_lr_ratio`` of the rate over the run's end (its steps or its
   minutes, whichever comes first); a run without an end keeps the rate constant.

Defaults, and why (numbers in BENCHMARKS.md, "S1"): the reward is ``rewards.PRESETS["default"]``
— diversity ×1, repetition ×1 (word 4-grams and character 20-grams), real words ×2 (words found in
the model's books; the setting ``real_words_weight``), length ×0.1; rollouts at
temperature 0.3, 4 prompts × 8 continuations of 96 tokens, one of each 8 greedy; KL 0.1;
learning rate 1e-4, decayed to a tenth over the run (at a constant rate the end of a run landed
on whichever step's swing the clock stopped at: made-up words and loops moved by as much from step
to step as the whole run gained; decayed, four seeds ended with about half the loops and a third of
the held-out loss's drift, for most of a point of real words); book loss 2.0 (at 0.5 an 8.3 M model
trained ten minutes lost two points of real words over 120 steps, at 1.0 and the decayed rate 0.7
points; at 2.0 it gained half a point over four seeds, every seed above its run at 1.0, loops still
cut by three quarters and the held-out loss as at 1.0; a P1 model wrote 0.2–0.3 points more made-up
words at 2.0 than at 1.0, still 0.6 below its start, with its held-out loss unchanged). At the
usual sampling temperature (0.8) a small book model almost never repeats a 4-gram within a
continuation, so rollouts there carry no repetition signal; at 0.3 its loops show up and the
reward can push against them. The greedy member shows the reward
the loops a person meets when decoding greedily: measured on two start models × two seeds, greedy
word loops changed by −42% to +45% without it, by −63% to −91% with it; with it, real words at
weight 1 let made-up words rise (by up to 1.8 points), at 2 they held on average (−1.0 to +0.6
points). A likelihood ("coherence") term made loops worse in every
setting tried (it pays for likely text, and a loop is likely) and is off by default; the KL leash
and the book loss are what keep val bpb and the words real: without them bpb rose 3–6% and the
share of made-up words by half in the benchmark.

Evals (``eval_every``) sample ``eval_prompts`` fixed validation prompts at ``eval_temperature``
(0.8) and greedily, and report both.

Checkpoints use the training format (``checkpoint.FORMAT``: weights, tokenizer, config, so
``azr generate NAME --checkpoint selfplay`` and export work unchanged) plus optimizer, step,
data-sampler RNG and the self-prompt pool, so a resumed run repeats a straight run's numbers
exactly (where its rate decays over minutes rather than steps, a resumed invocation starts its
minutes afresh, as training's does). They live apart from pretraining, one folder per run::

    models/<m>/checkpoints/selfplay/<run>/reference.pt      the frozen starting model
    models/<m>/checkpoints/selfplay/<run>/step_0000050.pt   self-play checkpoints (meta kind "selfplay")

so pretraining's ``step_*.pt``/``best.pt`` and its resume are never touched. Events go to
``models/<m>/runs/<run>/events.jsonl`` like training: ``status``, ``step`` (reward mean/std and
each component, KL, entropy, policy/LM loss, rollouts/s, tokens/s), ``eval`` (val bpb on the
held-out split, and repeated-4-gram rate, distinct-2 and reward of samples from fixed
validation prompts), ``sample`` (the best and worst continuation of the first group), and
``checkpoint``. Stops like training: max_iterations, max_time, Ctrl-C/SIGTERM, or the studio's
control file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from . import decode, layout, store
from .checkpoint import build_model, export_pt, latest_selfplay_checkpoint, resolve_checkpoint, \
    safe_load, save_step
from .data import BatchSampler, PreparedData, open_data, prepare_data
from .device import pick_device, set_threads
from .events import EventLog, Listener, new_run_id
from .errors import Notice
from .home import NotFound, UserError, read_json
from .milestones import book_vocabulary, real_word_share, split_text
from .rewards import Coherence, build_reward, load_reward_file, pack_rows, parse_weights, preset_weights, \
    sample_metrics
from .runloop import Job, StopRequested, check_finite, checkpoint_obj, locked, make_optimizer, run_loop, \
    warmup_cosine
from .sample import generate
from .sample_eval import default_length_target, evaluate_samples, line_prompt, read_prompt_file, \
    validation_prompts
from .settings import GENERATE, SELFPLAY
from .train import evaluate


@dataclass
class SelfPlayConfig:
    # start from: best, latest, a step number, or "selfplay" (latest self-play)
    checkpoint: str = SELFPLAY.default("checkpoint")
    max_iterations: int | None = SELFPLAY.default("max_iterations")  # self-play steps in all (None: until stopped)
    max_time: float | None = SELFPLAY.default("max_time")  # seconds of wall clock for this invocation
    prompts_per_step: int = SELFPLAY.default("prompts_per_step")
    group_size: int = SELFPLAY.default("group_size")  # continuations per prompt (the group of the baseline)
    # new tokens per continuation; default min(96, what the window leaves)
    rollout_tokens: int | None = SELFPLAY.default("rollout_tokens")
    # book/self prompt length; default min(32, max_seq_len / 4)
    prompt_tokens: int | None = SELFPLAY.default("prompt_tokens")
    temperature: float = SELFPLAY.default("temperature")  # low: where a small model's loops show (see BENCHMARKS.md)
    learning_rate: float = SELFPLAY.default("learning_rate")
    min_lr_ratio: float = SELFPLAY.default("min_lr_ratio")  # where the rate ends when the run has an end
    # continuations per group decoded greedily instead of sampled (see the module doc)
    greedy_rollouts: int = SELFPLAY.default("greedy_rollouts")
    warmup_iters: int = 10
    weight_decay: float = 0.0
    beta2: float = 0.99
    grad_clip: float = 1.0
    kl_weight: float = SELFPLAY.default("kl_weight")  # weight of the exact per-token KL(policy ‖ starting model)
    lm_weight: float = SELFPLAY.default("lm_weight")  # weight of the book's next-token loss (0: off)
    lm_batch_size: int = 8
    reward: str = SELFPLAY.default("reward")  # a preset from rewards.PRESETS, or "file" (only the reward file)
    # a .py with compute_reward(texts, prompts); its weight is "custom"
    reward_file: str | None = SELFPLAY.default("reward_file")
    reward_weights: dict | None = None  # override preset weights, e.g. {"coherence": 0.5}
    # the weight of real words (from the model's books) where the preset has that term
    real_words_weight: float = SELFPLAY.default("real_words_weight")
    # words; default: what rollout_tokens of the book usually hold
    length_target: float | None = SELFPLAY.default("length_target")
    coherence_cap: float | None = -1.4  # nats; a token likelier than e^cap earns no more coherence (None: off)
    prompt_source: str = SELFPLAY.default("prompt_source")  # book, self, or file:PATH
    self_pool: int = 256
    eval_every: int = SELFPLAY.default("eval_every")
    eval_windows: int | None = 32     # validation windows per periodic eval; the final eval uses all
    eval_prompts: int = SELFPLAY.default("eval_prompts")
    eval_length: int = SELFPLAY.default("eval_length")
    # eval samples: the usual sampling temperature (no top-k), and greedy
    eval_temperature: float = GENERATE.default("temperature")
    sample_every: int = 1
    save_every: int = SELFPLAY.default("save_every")
    keep_last: int = 3
    log_every: int = 1
    seed: int = SELFPLAY.default("seed")
    device: str = SELFPLAY.default("device")
    threads: int | None = SELFPLAY.default("threads")
    resume: bool = SELFPLAY.default("resume")

    # What a resumed run takes from the new call; everything else comes from the checkpoint.
    RUN_CONTROL = ("max_iterations", "max_time", "device", "threads", "save_every", "eval_every", "eval_windows",
                   "eval_prompts", "eval_length", "eval_temperature", "sample_every", "log_every", "keep_last",
                   "resume")

    def validate(self) -> "SelfPlayConfig":
        SELFPLAY.check(self)
        for name in ("lm_batch_size", "self_pool", "sample_every", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError("runs.whole_positive", name=name, value=repr(v))
        if self.greedy_rollouts >= self.group_size:  # a group needs one sample at least
            raise UserError("runs.between", name="greedy_rollouts", min=0, max=self.group_size - 1,
                            value=repr(self.greedy_rollouts))
        if not (0 <= self.eval_temperature <= 10):
            raise UserError("runs.between", name="eval_temperature", min=0, max=10, value=repr(self.eval_temperature))
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise UserError("runs.not_negative", name=name, value=repr(v))
        if not (self.prompt_source in ("book", "self") or self.prompt_source.startswith("file:")):
            raise UserError("settings.choice", name="prompt_source", choices=["book", "self", "file:PATH"],
                            value=repr(self.prompt_source))
        return self


# ---- the pieces, usable on their own --------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(r − group mean) / (group std + eps) for rewards laid out group after group; population
    std. A group with (numerically) equal rewards teaches nothing: its advantages are 0."""
    r = rewards.double().view(-1, group_size)
    mean = r.mean(-1, keepdim=True)
    std = r.std(-1, unbiased=False, keepdim=True)
    adv = (r - mean) / (std + eps)
    adv = torch.where(std > 1e-8, adv, torch.zeros_like(adv))
    return adv.view(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)) per position, p = softmax(logits) (the policy),
    q = softmax(ref_logits) (the frozen model); differentiable in ``logits``."""
    logp = torch.log_softmax(logits.float(), -1)
    logq = torch.log_softmax(ref_logits.float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def prime_coherence(coherence: Coherence, rows, outs, texts, prompt_texts, ref_logits, y, mask) -> int:
    """Give ``coherence`` its scores of the rollouts from the frozen model's logits, which the KL
    term computes anyway, so that scoring costs no second forward pass. Only rows whose text
    re-tokenizes to exactly the ids that were sampled are given (for them the result is the same
    as scoring the text); the rest are scored from the text as usual. Returns how many were given.
    ``rows``/``outs``: prompt and continuation ids; ``y``/``mask`` from ``pack_rows`` of the rows
    with <|endoftext|> appended to continuations that ended."""
    ref_logp = torch.log_softmax(ref_logits.float(), -1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
    text_mask = mask.clone()
    for i, o in enumerate(outs):
        last = int(mask[i].nonzero().max()) if mask[i].any() else -1
        if last >= 0 and int(y[i, last]) == coherence.tokenizer.eot_id and (not o or o[-1] != y[i, last]):
            text_mask[i, last] = 0  # the appended <|endoftext|>: the text does not contain it
    values = coherence.score_logprobs(ref_logp, text_mask)
    coh_rows = coherence.rows(texts, prompt_texts)
    same = [(list(p), list(o)) == (cp, cc) for p, o, (cp, cc) in zip(rows, outs, coh_rows)]
    coherence.remember([r for r, ok in zip(coh_rows, same) if ok], [v for v, ok in zip(values, same) if ok])
    return sum(same)


def selfplay_root(model_dir: Path) -> Path:
    return layout.run_checkpoints_root(model_dir, "selfplay")


def _load_data(home: Path, mdir: Path, book_names: list[str], mcfg, tokenizer, log) -> PreparedData:
    """The model's tokenized books; when a book was deleted since, its cached token files."""
    try:
        return prepare_data(home, mdir, book_names, mcfg.tokenizer, mcfg.vocab_size, log=log)
    except NotFound:
        meta_path = layout.data_info(mdir)
        if not meta_path.exists():
            raise
        meta = read_json(meta_path)
        log(Notice("cli.warning", warning=Notice("cli.book_gone_tokens_kept")))
        return PreparedData(*open_data(mdir, meta), meta["val_bytes"], meta["train_bytes"], tokenizer, [])


# ---- the run --------------------------------------------------------------------------------

def selfplay(home: Path, name: str, cfg: SelfPlayConfig, listeners: list[Listener] | None = None,
             stop: StopRequested | None = None, log: Callable[[str], None] = print, run_id: str | None = None) -> dict:
    """Run self-play on model ``name``; returns the summary the CLI prints with --json.

    A new run starts from ``cfg.checkpoint``; ``cfg.resume`` continues run ``run_id`` (or the
    self-play run saved most recently) from its last checkpoint with its own settings, taking
    only the run-control fields (max_iterations, max_time, device, …) from ``cfg``."""
    cfg.validate()
    store.get_model(home, name)
    with locked(store.model_dir(home, name), log):
        return run_loop(_SelfPlay(home, name, cfg, listeners, log, run_id), stop or StopRequested(), kind="selfplay")


class _SelfPlay(Job):
    """Self-play as a run_loop job (see the module doc for the step)."""

    def __init__(self, home, name, cfg: SelfPlayConfig, listeners, log, run_id):
        cfg = replace(cfg)  # defaults get filled in below; the caller's object stays as it was
        self.name = name
        self.mdir = mdir = store.model_dir(home, name)
        resume_obj = None
        if cfg.resume:
            path = latest_selfplay_checkpoint(mdir, run_id)
            if path is None:
                raise (UserError("run.nothing_to_resume_run", run=run_id) if run_id else
                       UserError("run.nothing_to_resume_selfplay", name=name))
            resume_obj = safe_load(path)
            # a run saved before the real-word term, the greedy rollouts or the decayed rate resumes as it ran
            saved = {"real_words_weight": 0.0, "greedy_rollouts": 0, "min_lr_ratio": 1.0,
                     **resume_obj["selfplay_config"]}
            known = {f.name for f in fields(SelfPlayConfig)}
            cfg = SelfPlayConfig(**{**{k: v for k, v in saved.items() if k in known},
                                    **{k: getattr(cfg, k) for k in SelfPlayConfig.RUN_CONTROL}}).validate()
            run_id = resume_obj["run_id"]
            start_obj = safe_load(layout.reference_checkpoint(path.parent))
            start_info = resume_obj["start"]
        else:
            start_path = resolve_checkpoint(mdir, cfg.checkpoint)
            start_obj = safe_load(start_path)
            start_info = {"checkpoint": str(start_path), "step": start_obj.get("step"),
                          "kind": (start_obj.get("meta") or {}).get("kind"),
                          "val_bpb": (start_obj.get("meta") or {}).get("val_bpb")}
            run_id = run_id or new_run_id("selfplay")
        self.cfg, self.run_id, self.start_info = cfg, run_id, start_info

        self.device = device = pick_device(cfg.device)
        self.threads = set_threads(cfg.threads) if device.type == "cpu" else None
        model, mcfg, tokenizer = build_model(start_obj)
        ref, _, _ = build_model(start_obj)
        model.to(device)
        ref.to(device).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        self.model, self.ref, self.mcfg, self.tokenizer = model, ref, mcfg, tokenizer
        if cfg.prompt_tokens is None:
            cfg.prompt_tokens = max(1, min(32, mcfg.max_seq_len // 4))
        if cfg.rollout_tokens is None:
            cfg.rollout_tokens = max(1, min(96, mcfg.max_seq_len - cfg.prompt_tokens))
        if cfg.rollout_tokens > mcfg.max_seq_len - 1:
            raise UserError("run.selfplay.rollout_too_long", rollout_tokens=cfg.rollout_tokens,
                            max_seq_len=mcfg.max_seq_len, suggest=mcfg.max_seq_len // 2)
        if cfg.prompt_tokens + cfg.rollout_tokens > mcfg.max_seq_len:
            raise UserError("run.selfplay.window", prompt_tokens=cfg.prompt_tokens, rollout_tokens=cfg.rollout_tokens,
                            max_seq_len=mcfg.max_seq_len)
        max_prompt = mcfg.max_seq_len - cfg.rollout_tokens
        self.pretrain_cfg = start_obj.get("train_config") or resume_obj and resume_obj.get("train_config") or {}
        self.book_names = list(self.pretrain_cfg.get("books") or store.get_model(home, name).books or [])
        if not self.book_names:
            raise UserError("run.selfplay.no_books", name=name)
        self.data = data = _load_data(home, mdir, self.book_names, mcfg, tokenizer, log)
        if data.tokenizer.to_json() != tokenizer.to_json():
            raise UserError("run.selfplay.tokenizer", checkpoint=start_info["checkpoint"], name=name)
        self.file_prompts = None
        if cfg.prompt_source.startswith("file:"):
            self.file_prompts = [tokenizer.encode(p)[-max_prompt:] or [tokenizer.eot_id]
                                 for p in read_prompt_file(cfg.prompt_source[5:])]

        self._make_rewards(cfg, data, tokenizer, ref, device)

        self.optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, cfg.beta2, device)
        self.seq_len = mcfg.max_seq_len
        self.sampler = (BatchSampler(data.train, self.seq_len, cfg.lm_batch_size, cfg.seed)
                        if cfg.lm_weight > 0 else None)
        self.pool: list[list[int]] = []
        self.tokens_seen = 0
        self.folder = layout.run_checkpoints_dir(mdir, "selfplay", run_id)
        if resume_obj is not None:
            model.load_state_dict(resume_obj["state_dict"])
            self.optimizer.load_state_dict(resume_obj["optimizer"])
            if self.sampler is not None and resume_obj["rng"].get("data") is not None:
                self.sampler.load_state(resume_obj["rng"]["data"])
            self.pool = [list(map(int, p)) for p in resume_obj.get("self_pool", [])]
            self.step = self.resumed_at = resume_obj["step"]
            self.tokens_seen = resume_obj["tokens_seen"]
            self.elapsed_before = resume_obj.get("elapsed", 0.0)
            self.resuming = True
        else:
            export_pt(start_obj, layout.reference_checkpoint(self.folder))
        self.events = EventLog(layout.events_file(layout.run_dir(home, name, run_id)), run_id, listeners)
        self.eval_prompts = validation_prompts(data, tokenizer, cfg.eval_prompts, cfg.prompt_tokens)
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)
        self.max_iterations, self.max_time = cfg.max_iterations, cfg.max_time
        # rollouts are a fifth of a step at the default shape: a compiled decode step pays only in long runs
        self.long_decode = decode.worth_compiling(cfg.max_iterations and cfg.max_iterations * cfg.rollout_tokens)
        self.eval_every, self.save_every, self.log_every = cfg.eval_every, cfg.save_every, cfg.log_every
        self.metrics: dict = {}

    def _make_rewards(self, cfg: SelfPlayConfig, data: PreparedData, tokenizer, ref, device) -> None:
        """The reward of the rollouts and of the eval samples. Coherence is scored by the frozen
        starting model; what counts as a real word are the words of the books, as for the
        "real words" milestone."""
        weights = {} if cfg.reward == "file" else preset_weights(cfg.reward)
        if "real_words" in weights:
            weights["real_words"] = cfg.real_words_weight
        custom = None
        if cfg.reward_file:
            custom = load_reward_file(cfg.reward_file)
            weights.setdefault("custom", 1.0)
        weights.update(parse_weights(cfg.reward_weights))
        if cfg.reward == "file" and not custom:
            raise UserError("run.selfplay.reward_file_needed")
        self.length_target = length_target = (cfg.length_target
                                              or default_length_target(data, tokenizer, cfg.rollout_tokens))
        self.coherence = Coherence(ref, tokenizer, device, cap=cfg.coherence_cap)
        self.vocabulary = book_vocabulary(split_text(tokenizer, data.train))
        self.reward = build_reward(weights, length_target=length_target, coherence=self.coherence, custom=custom,
                                   vocabulary=self.vocabulary)
        # Evals sample eval_length tokens: the same reward, its length target scaled to that length.
        self.eval_reward = build_reward(weights, length_target=length_target * cfg.eval_length / cfg.rollout_tokens,
                                        coherence=self.coherence, custom=custom, vocabulary=self.vocabulary)

    def start_fields(self) -> dict:
        cfg = self.cfg
        return dict(max_iterations=cfg.max_iterations, device=str(self.device), threads=self.threads,
                    parameters=self.model.num_parameters(), start=self.start_info,
                    reward_weights=self.reward.weights, length_target=self.length_target,
                    config=self.mcfg.to_dict(), selfplay_config=asdict(cfg),
                    warnings=[w.to_dict() for w in self.data.warnings])

    def before_loop(self) -> dict | None:
        return None if self.resuming else self.evaluate(full=False)

    def draw_prompts(self, s: int) -> list[list[int]]:
        cfg, tokenizer, pool = self.cfg, self.tokenizer, self.pool
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 2 * s)
        n = cfg.prompts_per_step
        if self.file_prompts is not None:
            return [self.file_prompts[i] for i in torch.randint(len(self.file_prompts), (n,), generator=g).tolist()]
        if cfg.prompt_source == "self":
            if not pool:
                return [[tokenizer.eot_id]] * n
            return [pool[i][-cfg.prompt_tokens:] for i in torch.randint(len(pool), (n,), generator=g).tolist()]
        span = 3 * cfg.prompt_tokens
        train = self.data.train
        starts = torch.randint(max(1, len(train) - span), (n,), generator=g).tolist()
        return [line_prompt(tokenizer, train[s:s + span], cfg.prompt_tokens) for s in starts]

    def train_step(self) -> None:
        cfg, tokenizer, device, step = self.cfg, self.tokenizer, self.device, self.step
        model, optimizer, reward = self.model, self.optimizer, self.reward
        t0 = time.time()
        lr = warmup_cosine(cfg.learning_rate, step, cfg.warmup_iters, self.budget_used(cfg.warmup_iters),
                          cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        prompts = self.draw_prompts(step)
        rows = [p for p in prompts for _ in range(cfg.group_size)]
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000_003 + 2 * step + 1)
        outs = generate(model, rows, max_new_tokens=cfg.rollout_tokens, temperature=cfg.temperature, top_k=None,
                        top_p=None, generator=gen, eot_id=tokenizer.eot_id, compile=self.long_decode,
                        greedy_rows=[i % cfg.group_size < cfg.greedy_rollouts for i in range(len(rows))])
        decode.release(model)  # the update below changes the weights
        gen_s = time.time() - t0
        self.stop_requested()  # a stop asked for during the rollouts: the step is given up here
        n_new = sum(len(o) for o in outs)
        texts = [tokenizer.decode(o) for o in outs]
        prompt_texts = [tokenizer.decode(p) for p in rows]
        # A row that ended gets its <|endoftext|> trained too: stopping was one of its choices.
        conts = [o + [tokenizer.eot_id] if len(o) < cfg.rollout_tokens else o for o in outs]
        x, y, mask = pack_rows(list(zip(rows, conts)), self.seq_len)
        x, y, mask = x.to(device), y.to(device), mask.to(device)
        n_tok = mask.sum().clamp(min=1)
        with torch.no_grad(), self.autocast():
            ref_logits, _ = self.ref(x)
        if "coherence" in reward.parts:
            prime_coherence(self.coherence, rows, outs, texts, prompt_texts, ref_logits, y, mask)
        comps = reward.components(texts, prompt_texts)
        r = torch.tensor(reward.combine(comps), dtype=torch.float64)
        adv = group_advantages(r, cfg.group_size).float().to(device)

        model.train()
        with self.autocast():
            logits, _ = model(x)
        logits = logits.float()
        logp_t = torch.log_softmax(logits / cfg.temperature, -1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
        policy_loss = -(adv[:, None] * logp_t * mask).sum() / n_tok
        kl_tok = exact_kl(logits, ref_logits)
        kl = (kl_tok * mask).sum() / n_tok
        with torch.no_grad():
            logp1 = torch.log_softmax(logits, -1)
            entropy = float((-(logp1.exp() * logp1).sum(-1) * mask).sum() / n_tok)
        loss = policy_loss + cfg.kl_weight * kl
        # Two backward passes, the rollouts' and then the book batch's, so that a stop asked for
        # between them answers within half a step (the gradient so far is dropped, no sampler
        # draw is spent), and the rollouts' graph is freed before the book batch's is built.
        loss.backward()
        lm_loss = None
        if self.sampler is not None:
            self.stop_requested(optimizer)
            xb, yb = self.sampler.next(device)
            with self.autocast():
                _, lm = model(xb, yb)
            (cfg.lm_weight * lm).backward()
            lm_loss = float(lm.detach())
        total_loss = float(loss.detach()) + (cfg.lm_weight * lm_loss if lm_loss is not None else 0.0)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        check_finite(total_loss, step + 1, cfg.learning_rate)

        # The best continuation of each group feeds the "self" prompt pool.
        rv = r.view(-1, cfg.group_size)
        for gi in range(rv.size(0)):
            best = gi * cfg.group_size + int(rv[gi].argmax())
            if outs[best]:
                self.pool.append(list(outs[best]))
        self.pool = self.pool[-cfg.self_pool:]
        self.tokens_seen += n_new
        sm = sample_metrics(texts)
        self.metrics = {
            "loss": total_loss, "policy_loss": float(policy_loss.detach()), "kl": float(kl.detach()),
            "entropy": entropy, "lm_loss": lm_loss, "reward_mean": float(r.mean()),
            "reward_std": float(r.std(unbiased=False)),
            **{f"reward_{k}": float(np.mean(v)) for k, v in comps.items()},
            "rep4": sm["rep4"], "distinct2": sm["distinct2"], "lr": lr, "grad_norm": float(grad_norm),
            "rollouts_per_s": len(rows) / max(1e-9, gen_s), "tokens_per_s": n_new / max(1e-9, gen_s),
            "gen_seconds": gen_s, "step_seconds": time.time() - t0, "tokens_seen": self.tokens_seen,
        }
        if (step + 1) % cfg.sample_every == 0:
            first = r[:cfg.group_size]
            for label, i in (("best", int(first.argmax())), ("worst", int(first.argmin()))):
                self.events.emit("sample", step=step + 1, prompt=prompt_texts[i], text=texts[i], reward=float(r[i]),
                                 rank=label)

    def step_fields(self, now: float) -> dict:
        return self.metrics

    def evaluate(self, full: bool) -> dict:
        cfg, model, tokenizer = self.cfg, self.model, self.tokenizer
        data = self.data
        res = evaluate(model, data.val, data.val_bytes, self.seq_len, self.device, self.autocast,
                       None if full else cfg.eval_windows) if len(data.val) > 1 else {}
        sm = evaluate_samples(model, tokenizer, self.eval_prompts, length=cfg.eval_length,
                              temperature=cfg.eval_temperature, seed=cfg.seed, reward=self.eval_reward)
        greedy = evaluate_samples(model, tokenizer, self.eval_prompts, length=cfg.eval_length, temperature=0.0,
                                  seed=cfg.seed)
        res.update({k: v for k, v in sm.items() if k not in ("texts", "prompts")})
        res.update({"greedy_rep4": greedy["sample_rep4"], "greedy_char_rep20": greedy["sample_char_rep20"],
                    "greedy_distinct2": greedy["sample_distinct2"]})
        share = real_word_share("\n".join(sm["texts"]), self.vocabulary)
        res["sample_real_words"] = share
        self.events.emit("eval", step=self.step, **res)
        if share is not None:  # the run's "real words" figure, as a training run reports it
            self.events.emit("quality", step=self.step, real_words=round(share, 4))
        model.train()
        return res

    def save(self, kind: str, last_eval: dict | None) -> Path:
        cfg = self.cfg
        bpb = (last_eval or {}).get("val_bpb")
        obj = checkpoint_obj(self, self.model, self.mcfg, self.tokenizer, self.optimizer, self.run_id,
                             {"model": self.name, "books": self.book_names, "kind": "selfplay",
                              "selfplay_kind": kind, "run": self.run_id, "val_bpb": bpb},
                             tokens_seen=self.tokens_seen, train_config=self.pretrain_cfg,
                             selfplay_config=asdict(cfg), best_val_bpb=bpb,
                             rng={"data": self.sampler.state() if self.sampler is not None else None},
                             self_pool=[list(p) for p in self.pool], start=self.start_info)
        path = save_step(obj, self.folder, cfg.keep_last)
        self.events.emit("checkpoint", step=self.step, path=str(path), best=False, kind=kind)
        return path

    def oom_error(self) -> UserError:
        cfg = self.cfg
        return UserError("run.oom.selfplay", step=self.step, prompts=cfg.prompts_per_step,
                         group_size=cfg.group_size, rollout_tokens=cfg.rollout_tokens)

    def summary(self, status, message, last_eval, start_eval, wall, checkpoints) -> dict:
        cfg, final, m = self.cfg, last_eval or {}, self.metrics
        return {
            "model": self.name, "run": self.run_id, "kind": "selfplay", "status": status, "message": message,
            "step": self.step, "max_iterations": cfg.max_iterations, "start": self.start_info,
            "reward_mean": m.get("reward_mean"), "kl": m.get("kl"),
            "val_bpb": final.get("val_bpb"), "sample_rep4": final.get("sample_rep4"),
            "sample_distinct2": final.get("sample_distinct2"), "sample_reward": final.get("sample_reward"),
            "greedy_rep4": final.get("greedy_rep4"), "sample_real_words": final.get("sample_real_words"),
            "start_eval": {k: start_eval.get(k) for k in ("val_bpb", "sample_rep4", "sample_distinct2",
                                                          "sample_reward", "greedy_rep4", "sample_real_words")}
            if start_eval else None,
            "tokens_seen": self.tokens_seen,
            "rollouts": (self.step - self.resumed_at) * cfg.prompts_per_step * cfg.group_size,
            "wall_seconds": wall, "device": str(self.device), "threads": self.threads,
            "checkpoints": checkpoints, "checkpoint": checkpoints[-1] if checkpoints else None,
            "events": str(self.events.path),
        }
