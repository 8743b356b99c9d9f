"""Reference architectures, constructible by name: ``graphprune.models.get("digits_cnn")``.

Each entry also knows its natural input shape, so the CLI can build example inputs for it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch.nn as nn

from .digits import DigitsCNN


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    summary: str


REGISTRY: dict[str, ModelEntry] = {
    "digits_cnn": ModelEntry(DigitsCNN, (1, 1, 8, 8), "small residual CNN for scikit-learn's 8x8 digits (the demo model)"),
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments go to its factory (e.g. width multipliers)."""
    from graphprune.errors import ModelSpecError

    if name not in REGISTRY:
        raise ModelSpecError(f"unknown model {name!r}; graphprune.models has: {', '.join(names())}")
    return REGISTRY[name].factory(**kwargs)


def input_shape(name: str) -> tuple[int, ...]:
    return REGISTRY[name].input_shape
