"""Second-order importance with calibration data: Optimal Brain Damage's saliency per channel.

Removing channel c sets every weight its group holds for it to zero; at a minimum of the loss
(gradient ~ 0) the loss then changes by about 1/2 dw^T H dw, which OBD (LeCun et al., 1990) reads
with H's diagonal: 1/2 * sum of H_ii * w_i^2 over those weights. H_ii is estimated by the
empirical Fisher, the mean of each sample's squared gradient (over up to ``samples`` samples of
``calib_data``, with ``loss_fn`` as ``graphprune.fit`` takes them; one backward pass each), as
Torch-Pruning's Hessian importance does. Scores are then allocated like l1's (magnitude.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import register
from .importance import CalibratedScorePass, fisher_diagonal, member_sums


@register
class HessianPass(CalibratedScorePass):
    """Options: ``calib_data``, ``loss_fn``, ``samples`` (64)."""

    name = "hessian"

    def __init__(self, *args: Any, samples: int = 64, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.samples = samples

    def scores(self) -> dict[int, np.ndarray]:
        fisher = fisher_diagonal(self.model, self.data, self.loss_fn, self.samples, self.name)

        def saliency(module: str, param: str, w: torch.Tensor, dim: int, others: list[int]) -> torch.Tensor:
            f = fisher.get(f"{module}.{param}" if module else param)
            if f is None:  # a buffer member: no gradient
                return torch.zeros(w.shape[dim])
            return 0.5 * ((f * w * w).sum(others) if others else f * w * w)

        return member_sums(self.model, self.gg, saliency)
