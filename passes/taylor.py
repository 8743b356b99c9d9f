"""First-order Taylor importance with calibration data (Molchanov et al., CVPR 2019, in its group form).

Removing channel c of a group zeroes every weight the group holds for it, in every member (the
producer's filter, the consumers' input columns, the norm's scale and shift); to first order the
loss changes by -sum of w * dL/dw over those weights. A channel's importance is the magnitude of
that sum, the gradient being the mean over ``batches`` calibration batches (``calib_data``, a
DataLoader or a list of batches, with ``loss_fn`` as ``graphprune.fit`` takes them). Scores are
then allocated like l1's: divided by their group's mean, the globally lowest channels go until the
budget is met (see magnitude.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import register
from .importance import CalibratedScorePass, calibration_gradients, member_sums


@register
class TaylorPass(CalibratedScorePass):
    """Options: ``calib_data``, ``loss_fn``, ``batches`` (8)."""

    name = "taylor"

    def __init__(self, *args: Any, batches: int = 8, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batches = batches

    def scores(self) -> dict[int, np.ndarray]:
        grads = calibration_gradients(self.model, self.data, self.loss_fn, self.batches, self.name)

        def first_order(module: str, param: str, w: torch.Tensor, dim: int, others: list[int]) -> torch.Tensor:
            g = grads.get(f"{module}.{param}" if module else param)
            if g is None:  # a buffer member: no gradient, no first-order change
                return torch.zeros(w.shape[dim])
            return (w * g).sum(others) if others else w * g

        return {gid: np.abs(total) for gid, total in member_sums(self.model, self.gg, first_order).items()}
