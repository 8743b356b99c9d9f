"""What a traced graph's tensors are on the example inputs, as plain data.

A module of its own below the tracer: the rule table and the analysis read these values, and the
tracer runs the analysis (to drop the guards of values computed from channel counts), so they
must not need to import it.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor an fx node produced on the example inputs."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)
