"""What a time budget lets training's evaluations cost.

Each evaluation reads held-out windows and writes a round of samples. Under a budget of
``max_time`` seconds:

- a periodic evaluation (a fixed, evenly spaced subset of windows) with its samples takes at most
  ``EVAL_COST_SHARE`` of the budget: after each one, timed, the next reads only as many windows as
  fit (never fewer than ``MIN_EVAL_WINDOWS``; the subset only ever shrinks, so it changes at most
  a few times in a run, usually never);
- the final evaluation reads the whole held-out split where that takes at most
  ``FINAL_EVAL_SHARE`` of the budget, else as many evenly spaced windows as fit; the loop stops
  ``reserve`` seconds before the budget's end for it and its samples, so the run ends on time.

Both are planned from the last periodic evaluation's own timing; without a budget nothing is
planned (the periodic subset stays as set, the final evaluation reads the whole split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EVAL_COST_SHARE = 0.05   # of the budget: the most one periodic evaluation and its samples may take
FINAL_EVAL_SHARE = 0.02  # of the budget: what the final evaluation is planned to take
# fewer windows than this would make the periodic figure wobble more than the patience allows for
MIN_EVAL_WINDOWS = 8


@dataclass
class EvalBudget:
    max_time: float
    seq_len: int
    split_tokens: int            # held-out tokens an evaluation can predict (the split's length − 1)
    windows: int | None          # a periodic evaluation's windows (None: the whole split)
    final_windows: int | None = None  # the final evaluation's (None: the whole split)
    seconds_per_token: float = 0.0    # of the last periodic evaluation
    reserve: float = 0.0              # seconds kept at the budget's end for the final evaluation

    def timed(self, seconds: float, tokens: int, sample_seconds: float) -> None:
        """Plan from a periodic evaluation that read ``tokens`` in ``seconds``; its samples (or
        the last round's) took ``sample_seconds``."""
        self.seconds_per_token = per_token = max(seconds, 1e-6) / max(1, tokens)  # a coarse clock can say 0
        per_window = per_token * self.seq_len
        all_windows = math.ceil(self.split_tokens / self.seq_len)
        current = min(self.windows or all_windows, all_windows)
        fits = int((EVAL_COST_SHARE * self.max_time - sample_seconds) / per_window)
        self.windows = max(min(MIN_EVAL_WINDOWS, current), min(current, fits))
        fits_final = int(FINAL_EVAL_SHARE * self.max_time / per_token)
        if fits_final >= self.split_tokens:
            self.final_windows, final_tokens = None, self.split_tokens
        else:
            self.final_windows = max(self.windows, fits_final // self.seq_len)
            final_tokens = self.final_windows * self.seq_len
        self.reserve = final_tokens * per_token + sample_seconds

    def final(self, seconds_left: float) -> int | None:
        """The final evaluation's windows: the whole split where it fits in the time left (a run
        that ended by its steps or its patience, minutes before the budget), else the plan's."""
        if self.final_windows is None or self.split_tokens * self.seconds_per_token <= seconds_left:
            return None
        return self.final_windows
