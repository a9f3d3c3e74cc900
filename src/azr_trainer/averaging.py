"""The model a run gives: an average of its recent weights, not the last step's.

While the learning rate is high, each step's weights jitter around where the loss is low; their
average sits nearer to it. Measured on novel- and story-sized books (BENCHMARKS.md, "An average
of the recent weights"), the averaged weights beat the last step's by far in the middle of a
long run and by a little at its end; in the first minute they lag, and a three-minute run whose
rate decays to zero ends about level.

The average is a "power" moving average: after step t each weight moves towards the new one by
1 − (1 − 1/t)^(POWER + 1), so it covers about the last 1/(POWER + 2) of the run so far, however
long the run is — no horizon in steps to fit to a run's length, and the random starting weights
are forgotten at once (step 1 takes the new weights whole).

Why not ``torch.optim.swa_utils.AveragedModel``: it reads its step count from the device every
step, which makes a GPU's host wait for each step to finish before it can queue the next one.
"""

from __future__ import annotations

import copy

import torch

POWER = 8


class WeightAverage:
    """``module`` is a copy of ``model`` whose parameters follow the average of ``model``'s.
    Buffers are copied as they are (nothing in them is learned)."""

    def __init__(self, model: torch.nn.Module, power: float = POWER):
        self.power = power
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.module.eval()
        self._own = list(model.parameters())  # tied weights appear once, as in the copy
        self._avg = list(self.module.parameters())

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after ``step`` (1 for a run's first step)."""
        weight = 1.0 - (1.0 - 1.0 / max(1, step)) ** (self.power + 1)
        torch._foreach_lerp_(self._avg, self._own, weight)
