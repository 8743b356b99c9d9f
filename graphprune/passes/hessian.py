"""Second-order importance with calibration data: Optimal Brain Damage's saliency per channel.

Removing channel c sets every weight its group holds for it to zero, dw = -w on those weights; at
a minimum of the loss (gradient ~ 0) the loss then changes by about 1/2 dw^T H dw. H is estimated by
the empirical Fisher F = E[g g^T], g each sample's own gradient (over up to ``samples`` samples of
``calib_data``, with ``loss_fn`` as ``graphprune.fit`` takes them; one backward pass each), as
Torch-Pruning's Hessian importance does. ``block`` says how much of F's block over the channel's
weights is read:

- ``"diagonal"`` (default): OBD (LeCun et al., 1990), 1/2 * sum of F_ii * w_i^2, each weight alone;
- ``"channel"``: the whole block, 1/2 dw^T F dw = 1/2 E[(g . dw)^2], the cross terms between the
  channel's weights included (within a filter, between a producer's row and its consumers' columns),
  at the same cost (Liu et al.'s Group Fisher, ICML 2021, reads this block through a channel mask).

On a tiny MLP where F is the loss's exact Hessian, the diagonal came to 0.27x to 2.9x of
1/2 dw^T H dw and ordered both layers' channels differently from the loss change of removing them;
the block is 1/2 dw^T H dw and ordered them as that change does (``tests/test_criteria.py``).
Scores are then allocated like l1's (magnitude.py).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch

from graphprune.errors import OptionError
from graphprune.groups.graph import GroupGraph

from .base import register
from .importance import CalibratedScorePass, fisher_diagonal, gradients, mean_squared_change, member_sums

BLOCKS = ("diagonal", "channel")


def hessian_scores(model: torch.nn.Module, gg: GroupGraph, data: Iterable[Any] | None, loss_fn: Callable | None,
                   samples: int, block: str, method: str = "hessian") -> dict[int, np.ndarray]:
    """Per prunable group, each channel's 1/2 dw^T F dw (``block``: see the module docstring)."""
    if block == "channel":
        per_sample = gradients(model, data, loss_fn, samples, method, per_sample=True)
        return {gid: 0.5 * s for gid, s in mean_squared_change(model, gg, per_sample).items()}
    fisher = fisher_diagonal(model, data, loss_fn, samples, method)

    def saliency(module: str, param: str, w: torch.Tensor, dim: int, others: list[int]) -> torch.Tensor:
        f = fisher.get(f"{module}.{param}" if module else param)
        if f is None:  # a buffer member: no gradient
            return torch.zeros(w.shape[dim])
        return 0.5 * ((f * w * w).sum(others) if others else f * w * w)

    return member_sums(model, gg, saliency)


@register
class HessianPass(CalibratedScorePass):
    """Options: ``calib_data``, ``loss_fn``, ``samples`` (64), ``block`` ("diagonal" or "channel")."""

    name = "hessian"

    def __init__(self, *args: Any, samples: int = 64, block: str = "diagonal", **kwargs: Any):
        super().__init__(*args, **kwargs)
        if block not in BLOCKS:
            raise OptionError(f"hessian: block is 'diagonal' (OBD: each weight's own Fisher entry) or 'channel' (the "
                              f"channel's whole Fisher block, cross terms included), got {block!r}")
        self.samples, self.block = samples, block

    def scores(self) -> dict[int, np.ndarray]:
        return hessian_scores(self.model, self.gg, self.data, self.loss_fn, self.samples, self.block, self.name)
