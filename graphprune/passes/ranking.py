"""A criterion as the ranking inside a pass that decides its own counts (DSA's base importance).

Such a pass ranks each group's channels itself, to draw its masks and to pick the channels its
counts keep. ``importance=`` names the criterion: "taylor", "hessian" or a function as method
"importance" takes it, each computed by that criterion's own code (taylor.py, hessian.py,
custom.py) on calibration batches the pass hands it.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np
import torch

from graphprune.errors import GraphPruneError, OptionError
from graphprune.groups.graph import GroupGraph

from .custom import custom_scores
from .hessian import hessian_scores
from .taylor import taylor_scores

CRITERIA = ("taylor", "hessian")


class Ranking:
    """One data-aware criterion, checked when the pass is built, scored on the batches it is given."""

    def __init__(self, importance: str | Callable, method: str, default: str):
        if not (callable(importance) or importance in CRITERIA):
            raise OptionError(f"{method}: importance is {default!r} (the default), {' or '.join(map(repr, CRITERIA))}, or "
                              f"your function fn(group, members) -> one score per channel, as method 'importance' takes it; "
                              f"got {importance!r}")
        self.importance, self.method = importance, method

    @property
    def name(self) -> str:
        return self.importance if isinstance(self.importance, str) else "your importance function"

    def scores(self, model: torch.nn.Module, gg: GroupGraph, batches: list[Any], loss_fn: Callable | None) -> dict[int, np.ndarray]:
        """Per prunable group, the criterion's scores (>= 0) on ``batches``: taylor over them, hessian over every
        sample of them (one backward pass each), a function with their gradients and activations."""
        if self.importance == "taylor":
            scores = taylor_scores(model, gg, batches, loss_fn, len(batches), self.method)
        elif self.importance == "hessian":
            scores = hessian_scores(model, gg, batches, loss_fn, sys.maxsize, "diagonal", self.method)
        else:
            scores = custom_scores(model, gg, self.importance, batches, loss_fn, len(batches), self.method)
        negative = [gid for gid, s in scores.items() if (s < 0).any()]
        if negative:
            raise GraphPruneError(f"{self.method} ranks channels by the logarithm of their importance, and your function gave "
                                  f"negative scores (groups {negative[:5]}): return magnitudes, e.g. abs() or a square")
        return scores
