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

from typing import Any

import numpy as np
import torch

from .base import register
from .importance import CalibratedScorePass, gradients, member_sums


@register
class TaylorPass(CalibratedScorePass):
    """Options: ``calib_data``, ``loss_fn``, ``batches`` (8)."""

    name = "taylor"

    def __init__(self, *args: Any, batches: int = 8, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batches = batches

    def scores(self) -> dict[int, np.ndarray]:
        total: dict[int, np.ndarray] = {}
        count = 0
        for grads in gradients(self.model, self.data, self.loss_fn, self.batches, self.name):
            def first_order(module: str, param: str, w: torch.Tensor, dim: int, others: list[int]) -> torch.Tensor:
                g = grads.get(f"{module}.{param}" if module else param)
                if g is None:  # a buffer member: no gradient, no first-order change
                    return torch.zeros(w.shape[dim])
                return (w * g).sum(others) if others else w * g

            for gid, change in member_sums(self.model, self.gg, first_order).items():
                total[gid] = total.get(gid, 0.0) + change ** 2
            count += 1
        return {gid: t / count for gid, t in total.items()}
