"""First-order Taylor importance with calibration data (Molchanov et al., CVPR 2019, in its group form).

Removing channel c of a group zeroes every weight the group holds for it, in every member (the
producer's filter, the consumers' input columns, the norm's scale and shift); to first order the
loss changes by -sum of w * dL/dw over those weights. A channel's importance is the square of that
change on each of ``batches`` calibration batches, averaged over them (``calib_data``, a
DataLoader or a list of batches, with ``loss_fn`` as ``graphprune.fit`` takes them): the paper's
Eq. 8 per minibatch. Squaring before averaging matters: on a trained model the gradient of the
mean loss is near zero, so the change computed from the mean gradient is mostly noise, while each
batch's change measures how much the channel moves the loss. Scores are then allocated like l1's:
divided by their group's mean, the globally lowest channels go until the budget is met (see
magnitude.py).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch

from graphprune.groups.graph import GroupGraph

from .base import register
from .importance import CalibratedScorePass, gradients, mean_squared_change


def taylor_scores(model: torch.nn.Module, gg: GroupGraph, data: Iterable[Any] | None, loss_fn: Callable | None, batches: int,
                  method: str = "taylor") -> dict[int, np.ndarray]:
    """Per prunable group, each channel's first-order loss change of zeroing it, squared per batch and averaged."""
    return mean_squared_change(model, gg, gradients(model, data, loss_fn, batches, method))


@register
class TaylorPass(CalibratedScorePass):
    """Options: ``calib_data``, ``loss_fn``, ``batches`` (8)."""

    name = "taylor"

    def __init__(self, *args: Any, batches: int = 8, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batches = batches

    def scores(self) -> dict[int, np.ndarray]:
        return taylor_scores(self.model, self.gg, self.data, self.loss_fn, self.batches, self.name)
