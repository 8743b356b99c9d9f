"""A model reparameterized by hypernetworks: every conv/linear weight generated from group latents.

DHP searches by shrinking the latents; LW-DNA shrinks a widened model by the latents' gradients.
Both need the same thing: one latent element per channel of each group, shared by every layer the
group touches (Li et al., ECCV 2020, Sec. 3 and B.1-B.5), hypernetworks that generate each weight
from the latents of its two channel dims (``hypernet.py``), and a way to remove them again leaving
the generated weights in place.

The latents live in one bank, one segment per channel group: a group is exactly the paper's shared
latent vector (residual stages, Sec. B.2). A weight dim's latent is gathered from the bank through
the dim's group members, ``z[member.positions] = latent[group][member.channels]``, which gives dense
concats (the sources' latents concatenated, B.3), pixel shuffle and flatten -> linear (latents
repeated, B.5) and transposed convs (dim 0 is the input there) without a special case. Positions
no group covers (the per-group input dim of depthwise/grouped convs, B.1 II(b)) get a latent of
their own. Never searched (B.1 IV and the authors' code): the input image's latent, frozen groups',
the per-layer latents of depthwise/grouped convs, and by default the latents feeding the final
classifier (``keep_classifier_input``; the last-stage residual latent of a ResNet).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from graphprune.errors import GraphPruneError
from graphprune.groups.graph import GroupGraph
from graphprune.ops import module_is

from .hypernet import HyperNetwork, fan_in


class LatentBank(nn.Module):
    """All latent vectors in one parameter; every generated weight reads its slices from here.

    ``init``: "normal" draws N(0, 1) (the paper); "sign" draws +-1 (same second moment, so the
    hypernetworks' initialization is unchanged), so that every |latent| starts equal and only the
    task gradients rank them before the shrinkage (see the DHP module docstring).
    """

    def __init__(self, size: int, generator: torch.Generator, init: str = "normal"):
        super().__init__()
        values = torch.randn(size, generator=generator)
        self.values = nn.Parameter(values.sign() if init == "sign" else values)


class GeneratedWeight(nn.Module):
    """Parametrization: the weight is the hypernetwork's output, the stored weight is left empty."""

    def __init__(self, hypernet: HyperNetwork, bank: LatentBank, index0: np.ndarray, index1: np.ndarray):
        super().__init__()
        self.hypernet, self.bank = hypernet, bank
        self.register_buffer("index0", torch.from_numpy(index0), persistent=False)
        self.register_buffer("index1", torch.from_numpy(index1), persistent=False)

    def forward(self, _stored: torch.Tensor) -> torch.Tensor:
        z = self.bank.values
        return self.hypernet(z[self.index0], z[self.index1])

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.new_empty(0)  # the hypernetwork replaces the weight; removal writes it back


def latent_layout(gg: GroupGraph, shapes: dict[str, torch.Size]) -> tuple[dict[int, int], dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """Bank offsets per group, bank indices of each layer's weight dims 0 and 1, and the bank size.

    ``shapes``: the generated layers' weight shapes. The groups found on their dims 0 and 1 come
    first, in group order; then each layer's uncovered positions, a segment per dim.
    """
    by_dim: dict[tuple[str, int], list[tuple[int, Any]]] = {}
    for g in gg.groups:
        for m in g.members:
            if m.param == "weight" and m.dim in (0, 1) and m.module in shapes:
                by_dim.setdefault((m.module, m.dim), []).append((g.id, m))
    used = {gid for entries in by_dim.values() for gid, _ in entries}
    offsets, size = {}, 0
    for g in gg.groups:
        if g.id in used:
            offsets[g.id], size = size, size + g.size
    indices = {}
    for name in shapes:
        dims = []
        for dim in (0, 1):
            index = np.full(shapes[name][dim], -1, dtype=np.int64)
            for gid, m in by_dim.get((name, dim), []):
                index[m.positions] = offsets[gid] + m.channels
            free = index < 0
            index[free] = size + np.arange(int(free.sum()))
            size += int(free.sum())
            dims.append(index)
        indices[name] = (dims[0], dims[1])
    return offsets, indices, size


def classifier_inputs(gg: GroupGraph, model: nn.Module, layers: Iterable[str]) -> set[int]:
    """Groups on the input dim of a linear layer whose outputs are the model's outputs: the classifier's input."""
    def on(g, name: str, dim: int) -> bool:
        return any(m.module == name and m.param == "weight" and m.dim == dim for m in g.members)

    heads = [name for name in layers if isinstance(model.get_submodule(name), nn.Linear)
             and any(g.reason == "model output" and on(g, name, 0) for g in gg.groups)]
    return {g.id for g in gg.groups if any(on(g, name, 1) for name in heads)}


class Reparameterization:
    """The hypernetworks and latents of one model: which layers, which latents, which are searched.

    ``group_ids``: the groups whose latents a method may sparsify. ``attach`` puts the hypernetworks
    in place of the weights (seeded by ``seed``), ``detach`` removes them keeping what they generate.
    """

    def __init__(self, gg: GroupGraph, model: nn.Module, method: str, *, embedding: int = 8,
                 latent_init: str = "normal", keep_classifier_input: bool = True, seed: int = 0):
        if latent_init not in ("sign", "normal"):
            raise GraphPruneError(f"{method}: latent_init must be 'sign' or 'normal', got {latent_init!r}")
        self.gg, self.model, self.embedding, self.latent_init = gg, model, embedding, latent_init
        self.generator = torch.Generator().manual_seed(seed)
        analyzed = {m.module for g in gg.groups for m in g.members}
        shapes = {name: module.weight.shape for name, module in model.named_modules()
                  if module_is(module, "generated") and name in analyzed}
        self.layers = list(shapes)
        self.offsets, self.indices, self.size = latent_layout(gg, shapes)
        self.kept_whole = classifier_inputs(gg, model, shapes) if keep_classifier_input else set()
        self.group_ids = [g.id for g in gg.prunable_groups if g.size > 1 and g.id in self.offsets and g.id not in self.kept_whole]
        if not self.group_ids:
            raise GraphPruneError(f"{method} found no prunable group on a conv or linear weight to search (see graphprune inspect)"
                                  + ("; keep_classifier_input=False lets it prune the classifier's input" if self.kept_whole else ""))
        segments = [np.arange(self.offsets[gid], self.offsets[gid] + gg.groups[gid].size) for gid in self.group_ids]
        self.searched = torch.from_numpy(np.concatenate(segments))  # bank indices of the searched latents
        self.vector = torch.from_numpy(np.concatenate([np.full(len(s), i) for i, s in enumerate(segments)]))  # their group's index
        self.bank: LatentBank | None = None

    def attach(self) -> None:
        first = self.model.get_submodule(self.layers[0]).weight
        self.bank = LatentBank(self.size, self.generator, self.latent_init).to(first.device, first.dtype)
        self._trainable = {name: self.model.get_submodule(name).weight.requires_grad for name in self.layers}
        for name in self.layers:
            module = self.model.get_submodule(name)
            hyper = HyperNetwork(module.weight.shape, fan_in(module), self.embedding, self.generator)
            generated = GeneratedWeight(hyper, self.bank, *self.indices[name]).to(module.weight.device, module.weight.dtype)
            parametrize.register_parametrization(module, "weight", generated)
            module.parametrizations.weight.original.requires_grad_(False)  # empty and unused: DDP would wait for its gradient

    def detach(self) -> None:
        """Remove the hypernetworks; each layer keeps the weight they generate now."""
        for name in self.layers:
            module = self.model.get_submodule(name)
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
                module.weight.requires_grad_(self._trainable[name])  # as the user had it

    def on_device(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``searched`` and ``vector`` on the bank's device (fit moves the model after attach)."""
        device = self.bank.values.device
        if self.searched.device != device:
            self.searched, self.vector = self.searched.to(device), self.vector.to(device)
        return self.searched, self.vector

    def per_group(self, values: torch.Tensor) -> dict[int, np.ndarray]:
        """A bank-sized tensor (latents, their gradients) split into the searched groups' segments."""
        v = values.detach().cpu().double().numpy()
        return {gid: v[self.offsets[gid] : self.offsets[gid] + self.gg.groups[gid].size] for gid in self.group_ids}


__all__ = ["GeneratedWeight", "LatentBank", "Reparameterization", "classifier_inputs", "latent_layout"]
