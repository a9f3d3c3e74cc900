"""What the `azr` command prints while a run goes: the progress bar, its eval and sample lines,
and the library's log lines, in the locale's language (catalogue ``msg.cli``).

Numbers are formatted here, with a decimal point whatever the language, so a line stays easy
to read by a script; the words around them come from the catalogue.
"""

from __future__ import annotations

import json
import sys

from . import catalogue
from .errors import Notice
from .reasoning_tasks import TASK_TYPES
from .settings import TRAIN


def language() -> str:
    return catalogue.language_from_environment()


def say(key: str, **params) -> str:
    """The CLI's sentence ``msg.cli.<key>`` in the locale's language."""
    return catalogue.message(f"cli.{key}", language(), **params)


def make_log(quiet: bool):
    """The ``log`` a library call gets: a Notice in the locale's language, other text as it is;
    on stderr when stdout is for --json."""
    lang = language()
    out = sys.stderr if quiet else sys.stdout

    def log(message) -> None:
        print(message.render(lang) if isinstance(message, Notice) else message, file=out)
    return log


def print_json(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def state_word(status: str) -> str:
    """completed, stopped, paused, … in the locale's language."""
    return say(f"state.{status}") if catalogue.has(f"msg.cli.state.{status}") else status


def kind_word(kind: str) -> str:
    return say(f"kind.{kind}")


def accuracy_label(name: str) -> str:
    """deduction, mean, nontrivial_deduction … (an eval's accuracies) in the locale's language."""
    base = name.removeprefix("nontrivial_")
    label = kind_word(base) if catalogue.has(f"msg.cli.kind.{base}") else base
    return label + " " + say("kind.nontrivial") if base != name else label


class RunEnd:
    """Listens for the run's last status event and says why the run ended, as the page's run
    log does: the catalogue's sentence for the event's code ("Stopped at step 897: …")."""

    def __init__(self):
        self.event: dict | None = None

    def __call__(self, e: dict) -> None:
        if e["type"] == "status" and isinstance(e.get("code"), str):
            self.event = e

    def sentence(self) -> str | None:
        """Why the run stopped, in the locale's language; None when it simply completed."""
        e = self.event
        if e is None or e.get("state") == "completed" or not catalogue.has(f"msg.{e['code']}"):
            return None
        return catalogue.message(e["code"], language(), **(e.get("params") or {}))


def percent(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


class ProgressBar:
    """Renders training events as a tqdm bar: step/total, loss, tokens/s, elapsed<remaining."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def postfix(self, **values) -> None:
        """The bar's key=value part, its keys in the locale's language."""
        self.bar.set_postfix({say(f"bar.{k}"): v for k, v in values.items()}, refresh=False)

    def __call__(self, e: dict) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm
        if e["type"] == "status" and e["state"] in ("started", "resumed"):
            total = e["max_iterations"]
            if total is not None and total >= TRAIN["max_iterations"].upper:
                total = None  # a time budget ends the run, not a number of steps
            self.bar = tqdm(total=total, initial=e["step"], unit=say("unit_step"), dynamic_ncols=True,
                            file=sys.stderr)
        elif e["type"] == "step" and self.bar is not None:
            self.bar.update(e["step"] - self.bar.n)
            self.postfix(loss=f"{e['loss']:.3f}", tokens_s=f"{e['tokens_per_s']:.0f}")
        elif e["type"] == "eval" and self.bar is not None:
            self.bar.write(say("train_eval", step=str(e["step"]), loss=f"{e['val_loss']:.4f}",
                               ppl=f"{e['val_ppl']:.1f}", bpb=f"{e['val_bpb']:.4f}"))
        elif e["type"] == "sample" and self.bar is not None:
            self.bar.write(say("sample", step=str(e["step"]), text=repr((e["prompt"] + e["text"])[:120])))
        elif e["type"] == "status" and self.bar is not None:
            self.bar.close()


class SelfPlayProgress(ProgressBar):
    """The training bar, with the reward, KL and rollouts/s instead of the loss."""

    def __call__(self, e: dict) -> None:
        if not self.enabled or self.bar is None or e["type"] not in ("step", "eval", "sample"):
            return super().__call__(e)
        if e["type"] == "step":
            self.bar.update(e["step"] - self.bar.n)
            self.postfix(reward=f"{e['reward_mean']:.3f}", kl=f"{e['kl']:.4f}",
                         rollouts_s=f"{e['rollouts_per_s']:.0f}")
        elif e["type"] == "eval":
            bpb = say("bpb_part", bpb=f"{e['val_bpb']:.4f}") if "val_bpb" in e else ""
            self.bar.write(say("selfplay_eval", step=str(e["step"]), bpb=bpb, reward=f"{e['sample_reward']:.3f}",
                               rep4=f"{e['sample_rep4']:.2%}", distinct2=f"{e['sample_distinct2']:.3f}",
                               greedy_rep4=f"{e['greedy_rep4']:.2%}"))
        elif e.get("rank") == "best" and e["step"] % 25 == 0:
            self.bar.write(say("best_sample", step=str(e["step"]), reward=f"{e['reward']:.3f}",
                               text=repr((e["prompt"] + e["text"])[:160])))


class ReasonProgress(ProgressBar):
    """The training bar, with valid-proposal rates and solver accuracy per task type."""

    def __call__(self, e: dict) -> None:
        if not self.enabled or self.bar is None or e["type"] not in ("step", "eval", "sample"):
            return super().__call__(e)
        if e["type"] == "step":
            self.bar.update(e["step"] - self.bar.n)
            post = {k[:3]: f"{e[k + '_solve_acc']:.2f}" for k in TASK_TYPES if e.get(k + "_solve_acc") is not None}
            self.postfix(loss=f"{e['loss']:.3f}", **post)
        elif e["type"] == "eval":
            accs = ", ".join(f"{accuracy_label(k[:-4])} {v:.1%}" for k, v in e.items() if k.endswith("_acc"))
            self.bar.write(say("reason_eval", step=str(e["step"]), accs=accs))
