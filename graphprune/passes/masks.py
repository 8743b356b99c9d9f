"""Channel masks for method passes that train: a mask per group, applied where channels are consumed.

Scaling a group's channels in every consumer's input weights ("in" members) is the same as scaling
the channels themselves at every place they reach a weight, and the leak tests show those are the
only places a channel's values matter downstream. So a zero mask makes a channel carry no signal,
whatever BatchNorm shift or activation precedes the consumer. Implemented as
``torch.nn.utils.parametrize`` parametrizations, removed cleanly afterwards.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from graphprune.groups.graph import GroupGraph


class _Scale(nn.Module):
    """W -> W * scale along each masked dim; ``source()`` gives the current masks per group."""

    def __init__(self, entries: list[tuple[int, torch.Tensor, int, torch.Tensor]], source: Callable[[], dict[int, torch.Tensor]]):
        super().__init__()
        self.entries = entries  # (dim, positions, group id, channels)
        self.source = source

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        masks = self.source()
        for dim, positions, gid, channels in self.entries:
            if gid not in masks:
                continue
            scale = torch.ones(w.shape[dim], dtype=w.dtype, device=w.device)
            scale = scale.index_copy(0, positions.to(w.device), masks[gid][channels.to(w.device)].to(w.dtype))
            shape = [1] * w.ndim
            shape[dim] = -1
            w = w * scale.view(shape)
        return w


def unmasked(owner: nn.Module, name: str) -> torch.Tensor:
    """``owner.<name>`` as trained, not through these masks: what ranks the channels (DSA ranks by
    it while its masks read DSA's ranking: through the mask, each would ask the other without end)."""
    if parametrize.is_parametrized(owner, name) and all(isinstance(p, _Scale) for p in owner.parametrizations[name]):
        return owner.parametrizations[name].original
    return getattr(owner, name)


def by_tensor_name(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's parameters by name, where these masks parametrize a weight its original under the
    weight's own name ("conv.weight", not "conv.parametrizations.weight.original"): the names the
    groups' members use, so that a criterion pairs each :func:`unmasked` weight with its gradient."""
    renamed = {}
    for prefix, owner in model.named_modules():
        if parametrize.is_parametrized(owner):
            for name, chain in owner.parametrizations.items():
                if all(isinstance(p, _Scale) for p in chain):
                    at = f"{prefix}." if prefix else ""
                    renamed[f"{at}parametrizations.{name}.original"] = f"{at}{name}"
    return {renamed.get(name, name): p for name, p in model.named_parameters()}


class ChannelMasks:
    """Parametrizes every consumer weight of ``groups`` so it reads ``source()[group id]`` as a mask."""

    def __init__(self, model: nn.Module, gg: GroupGraph, group_ids: list[int], source: Callable[[], dict[int, torch.Tensor]]):
        self.model = model
        per_param: dict[tuple[str, str], list] = {}
        for gid in group_ids:
            for m in gg.groups[gid].members:
                if m.role == "in":
                    per_param.setdefault((m.module, m.param), []).append(
                        (m.dim, torch.from_numpy(m.positions), gid, torch.from_numpy(m.channels))
                    )
        self.params = list(per_param)
        for (module, name), entries in per_param.items():
            parametrize.register_parametrization(model.get_submodule(module), name, _Scale(entries, source), unsafe=True)

    def remove(self) -> None:
        """Back to plain parameters holding the unmasked weights."""
        for module, name in self.params:
            owner = self.model.get_submodule(module)
            if parametrize.is_parametrized(owner, name):
                parametrize.remove_parametrizations(owner, name, leave_parametrized=False)
