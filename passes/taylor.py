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

from .base import register
from .importance import CalibratedScorePass, gradients, mean_squared_change


@register
class TaylorPass(CalibratedScorePass):
    """Options: ``calib_data``, ``loss_fn``, ``batches`` (8)."""

    name = "taylor"

    def __init__(self, *args: Any, batches: int = 8, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batches = batches

    def scores(self) -> dict[int, np.ndarray]:
        return mean_squared_change(self.model, self.gg, gradients(self.model, self.data, self.loss_fn, self.batches, self.name))
