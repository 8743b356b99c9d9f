"""Data-free magnitude baselines: l1, l2 and random channel importance, allocated globally.

A channel's importance is the norm of its slices summed over *all* members of its group (the
producer's filters, the consumers' input columns, norm scales): what removing the channel takes
away. Scores are divided by their group's mean, so groups of different scales rank on one list
(each group's average channel scores 1); the cost model then decides how many of the globally
lowest channels go. With ``uniform_layers`` a repeated layer's groups are ranked as one role (the
mean of their k-th scores, see ``allocate.Allocation``) and keep one count.
"""

from __future__ import annotations

import numpy as np

from .base import register
from .importance import ScorePass, member_norms


@register
class L1Pass(ScorePass):
    name = "l1"

    def scores(self):
        return member_norms(self.model, self.gg, 1)


@register
class L2Pass(ScorePass):
    name = "l2"

    def scores(self):
        return member_norms(self.model, self.gg, 2)


@register
class RandomPass(ScorePass):
    """Random importance: the control every method must beat. ``seed`` fixes it."""

    name = "random"

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed

    def scores(self):
        rng = np.random.default_rng(self.seed)
        return {g.id: rng.uniform(0.5, 1.5, g.size) for g in self.gg.prunable_groups}
