"""The user's own importance, allocated like the built-in criteria.

``apply(model, "importance", budget, x, importance=fn)``: ``fn(group, members)`` returns one score
per channel of a prunable group (higher is kept), where each member is a :class:`MemberTensor`:
the module and tensor that hold the group's channels along ``dim``; with ``calib_data``, its mean
gradient over the batches (``grad``, with ``loss_fn`` as ``graphprune.fit`` takes it) and, for a
linear or convolution layer reading the channels as input ("in" members), the statistics of those
inputs over every calibration token or position (``activation``: ``count``, ``mean``, ``var``, shaped
to broadcast against ``tensor``); and :meth:`MemberTensor.per_channel`, which reduces a tensor of the
member's shape to the group's channel order. Gradients and activations are computed on first use
(only an ``fn`` reading ``grad`` needs a loss). Scores are then divided by their group's mean and the
globally lowest channels go until the budget is met, exactly as for l1 (magnitude.py), with the same
per-layer controls.

    def l1(group, members):
        return sum(m.per_channel(m.tensor.abs()) for m in members)

    def taylor(group, members):  # with calib_data= and loss_fn=: one batch's (built-in taylor squares each batch's)
        return sum(m.per_channel(m.tensor * m.grad) for m in members) ** 2

    def flap(group, members):  # with calib_data=: flap's criterion, without its bias compensation
        return sum(m.per_channel(m.tensor ** 2 * m.activation.var) for m in members if m.activation is not None)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable

import numpy as np
import torch

from graphprune.errors import GraphPruneError, OptionError
from graphprune.groups.graph import GroupGraph, Member

from .base import register
from .importance import CalibratedScorePass, InputStatistics, calibration_gradients, input_statistics
from .masks import unmasked


class _Calibration:
    """What ``calib_data`` says about the model, each part computed on its first use."""

    def __init__(self, model: torch.nn.Module, gg: GroupGraph, data: Iterable, loss_fn: Callable | None, batches: int,
                 method: str):
        self.model, self.gg, self.data, self.loss_fn, self.batches, self.method = model, gg, data, loss_fn, batches, method

    @functools.cached_property
    def gradients(self) -> dict[str, torch.Tensor]:
        return calibration_gradients(self.model, self.data, self.loss_fn, self.batches, self.method)

    @functools.cached_property
    def inputs(self) -> dict[str, InputStatistics]:
        return input_statistics(self.model, self.gg, self.data, self.batches, self.method)


@dataclasses.dataclass
class MemberTensor:
    """One tensor holding a group's channels along ``dim``, as an importance function sees it."""

    module: torch.nn.Module
    name: str  # the module's parameter or buffer
    dim: int
    role: str  # "out" (a producer's channels), "in" (a consumer's inputs), "channelwise" (a norm's scale)
    tensor: torch.Tensor  # as trained (inside DSA's search: past its masks)
    size: int  # the group's channels
    member: Member
    calibration: _Calibration | None = dataclasses.field(default=None, repr=False)

    @property
    def grad(self) -> torch.Tensor | None:
        """The mean gradient of ``tensor`` over ``calib_data`` (None without calibration data)."""
        return None if self.calibration is None else self.calibration.gradients.get(self.member.qualified_name)

    @property
    def activation(self) -> InputStatistics | None:
        """Where this member is a linear or convolution layer's input features (its weight's dim 1):
        their mean and variance over ``calib_data``'s tokens or positions, shaped to broadcast against
        ``tensor``; None elsewhere and without calibration data."""
        if self.calibration is None or self.role != "in" or self.name != "weight":
            return None
        read = self.calibration.inputs.get(self.member.module)
        return None if read is None else read.along(self.dim, self.tensor.dim())

    def per_channel(self, values: torch.Tensor) -> np.ndarray:
        """``values`` (shaped like ``tensor``) summed over every dim but ``dim``, added up per group channel."""
        if tuple(values.shape) != tuple(self.tensor.shape):
            raise GraphPruneError(f"per_channel takes a tensor shaped like {self.name} {tuple(self.tensor.shape)}, "
                                  f"got {tuple(values.shape)}")
        others = [d for d in range(values.dim()) if d != self.dim]
        reduced = (values.detach().double().sum(others) if others else values.detach().double()).cpu().numpy()
        out = np.zeros(self.size)
        np.add.at(out, self.member.channels, reduced[self.member.positions])
        return out


@register
class ImportancePass(CalibratedScorePass):
    """Options: ``importance`` (the function), ``calib_data`` (for ``grad`` and ``activation``), ``loss_fn``
    (for ``grad``), ``batches`` (8)."""

    name = "importance"

    def __init__(self, *args: Any, importance: Callable | None = None, batches: int = 8, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not callable(importance):
            raise OptionError("method 'importance' scores channels with your function: pass importance=fn, "
                              "fn(group, members) -> one score per channel (see help(graphprune.passes.get('importance')))")
        self.importance, self.batches = importance, batches

    def scores(self) -> dict[int, np.ndarray]:
        return custom_scores(self.model, self.gg, self.importance, self.data, self.loss_fn, self.batches, self.name)


def custom_scores(model: torch.nn.Module, gg: GroupGraph, importance: Callable, data: Iterable | None,
                  loss_fn: Callable | None, batches: int, method: str = "importance") -> dict[int, np.ndarray]:
    """Per prunable group, ``importance(group, members)``, checked to be one finite score per channel."""
    calibration = _Calibration(model, gg, data, loss_fn, batches, method) if data is not None else None
    modules = dict(model.named_modules())
    out = {}
    for g in gg.prunable_groups:
        members = [MemberTensor(modules[m.module], m.param, m.dim, m.role, unmasked(modules[m.module], m.param).detach(),
                                g.size, m, calibration)
                   for m in g.members if m.param not in ("running_mean", "running_var")]
        scores = np.asarray(importance(g, members), dtype=np.float64).reshape(-1)
        if scores.shape != (g.size,):
            raise GraphPruneError(f"importance returned {scores.shape[0]} scores for group {g.id} of {g.size} channels: "
                                  "it must return one score per channel")
        if not np.isfinite(scores).all():
            raise GraphPruneError(f"importance returned scores that are not finite for group {g.id}: rank with finite values")
        out[g.id] = scores
    return out
