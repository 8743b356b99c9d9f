"""DHP: differentiable meta pruning via hypernetworks (Li et al., ECCV 2020).

Every conv, transposed conv and linear layer the analysis sees gets its weight from a hypernetwork
(``hypernet.py``) fed by the latent vectors of the weight's two channel dims. The latents live in
one bank, one segment per channel group: a group is exactly the paper's shared latent vector
(residual stages, Sec. B.2). A weight dim's latent is gathered from the bank through the dim's
group members, ``z[member.positions] = latent[group][member.channels]``, which gives dense concats
(the sources' latents concatenated, B.3), pixel shuffle and flatten -> linear (latents repeated,
B.5) and transposed convs (dim 0 is the input there) without a special case. Positions no group
covers (the per-group input dim of depthwise/grouped convs, B.1 II(b)) get a latent of their own.

Optimization (Sec. 3.2): the user's optimizer trains hypernetworks and latents on the task loss;
after each optimizer step the sparsified latents (prunable groups') take the proximal step of
``reg * lr`` (l1: soft-thresholding, Eq. 8; l2: per-vector shrinkage, Eq. S1), ``lr`` read from the
optimizer the session was bound to (``graphprune.fit`` binds it; a user's own loop calls
``session.bind_optimizer(optimizer)``). The input's latents, frozen groups' and the per-layer
latents are trained but never sparsified (B.1 IV). Weight decay is whatever the optimizer applies;
the paper decays only W and B: give ``session.method.bank.values`` a param group with no weight decay.

Search (Sec. 3.3): a channel survives while |latent| >= ``tau``; the search stops at the first
step whose surviving counts cost at most ``tolerance`` above the target on the exact budget model,
and its latents are kept as the result. ``plan`` keeps that mask if it lands in [target -
tolerance, target]; otherwise it moves the cut along the global |latent| ranking
(``allocate_by_score``), the order the search itself removes channels in (every latent shrinks by
the same ``reg * lr``, the mask is one global threshold), so the plan meets the budget exactly.
``detach`` removes the hypernetworks leaving the generated weights in place; the slim pass then
keeps the planned channels.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from graphprune.allocate import Allocation, allocate_by_score
from graphprune.errors import GraphPruneError
from graphprune.groups import GroupGraph
from graphprune.plan import Plan
from graphprune.plots import plot_search

from . import register
from .base import MethodPass
from .hypernet import HyperNetwork, fan_in

GENERATED = (nn.modules.conv._ConvNd, nn.Linear)


class LatentBank(nn.Module):
    """All latent vectors in one parameter; every generated weight reads its slices from here."""

    def __init__(self, size: int, generator: torch.Generator):
        super().__init__()
        self.values = nn.Parameter(torch.randn(size, generator=generator))


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


def soft_threshold(z: torch.Tensor, threshold: float) -> torch.Tensor:
    """The l1 proximal operator (Eq. 8): sgn(z) [|z| - t]+."""
    return z.sign() * (z.abs() - threshold).clamp_min(0)


def shrink_vectors(z: torch.Tensor, vector: torch.Tensor, n_vectors: int, threshold: float) -> torch.Tensor:
    """The l2 proximal operator per latent vector (Eq. S1): (1 - t / max(||z_g||, t)) z_g.

    ``vector[i]`` says which latent vector element ``i`` belongs to.
    """
    norms = z.new_zeros(n_vectors).index_add_(0, vector, z * z).sqrt()
    return (1 - threshold / norms.clamp_min(threshold))[vector] * z


@register
class DHPPass(MethodPass):
    """Options: ``reg`` (lambda; the paper's CIFAR value 2e-4), ``tau`` (mask threshold, 5e-3),
    ``norm`` ("l1" or "l2"), ``embedding`` (m = 8), ``tolerance`` (how far above the target, as a
    fraction of the full cost, the search may stop; the plan always ends at or below the target
    and within this much of it), ``seed`` (latents and hypernetwork initialization)."""

    name = "dhp"
    trains = True

    def __init__(
        self, *args: Any, reg: float = 2e-4, tau: float = 5e-3, norm: str = "l1", embedding: int = 8,
        tolerance: float = 0.01, seed: int = 0, loss_fn: Callable | None = None, **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)  # loss_fn: apply passes it to every trained method; DHP's loss is the loop's
        if norm not in ("l1", "l2"):
            raise GraphPruneError(f"dhp: norm must be 'l1' or 'l2', got {norm!r}")
        self.reg, self.tau, self.norm, self.embedding, self.tolerance = reg, tau, norm, embedding, tolerance
        self.generator = torch.Generator().manual_seed(seed)
        analyzed = {m.module for g in self.gg.groups for m in g.members}
        shapes = {name: module.weight.shape for name, module in self.model.named_modules()
                  if isinstance(module, GENERATED) and name in analyzed}
        self.layers = list(shapes)
        self.offsets, self.indices, self.size = latent_layout(self.gg, shapes)
        self.group_ids = [g.id for g in self.gg.prunable_groups if g.size > 1 and g.id in self.offsets]
        if not self.group_ids:
            raise GraphPruneError("dhp found no prunable group on a conv or linear weight; nothing to search (see graphprune inspect)")
        sparse = [np.arange(self.offsets[gid], self.offsets[gid] + self.gg.groups[gid].size) for gid in self.group_ids]
        self._sparse = torch.from_numpy(np.concatenate(sparse))
        self._vector = torch.from_numpy(np.concatenate([np.full(len(s), i) for i, s in enumerate(sparse)]))
        self._full = self.gg.budget.exact(self.budget.metric)
        self._target = self.budget.target(self._full)
        self.trajectory: list[float] = []  # masked cost per search step, % of the full model
        self.kept_counts: dict[int, int] = {}  # per group, at the latest search step
        self.result: dict[int, np.ndarray] | None = None  # |latent| per group when the search stopped
        self.bank: LatentBank | None = None
        self._lr_group: dict | None = None

    # ------------------------------------------------------------- instrumentation
    def attach(self) -> None:
        first = self.model.get_submodule(self.layers[0]).weight
        self.bank = LatentBank(self.size, self.generator).to(first.device, first.dtype)
        for name in self.layers:
            module = self.model.get_submodule(name)
            hyper = HyperNetwork(module.weight.shape, fan_in(module), self.embedding, self.generator)
            generated = GeneratedWeight(hyper, self.bank, *self.indices[name]).to(module.weight.device, module.weight.dtype)
            parametrize.register_parametrization(module, "weight", generated)
        self._sparse, self._vector = self._sparse.to(first.device), self._vector.to(first.device)
        self._record()

    def detach(self) -> None:
        """Remove the hypernetworks; each layer keeps the weight they generate now."""
        for name in self.layers:
            module = self.model.get_submodule(name)
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer whose learning rate is the proximal step size mu."""
        self._lr_group = next((g for g in optimizer.param_groups if any(p is self.bank.values for p in g["params"])), None)
        if self._lr_group is None:
            raise GraphPruneError("dhp: the optimizer does not hold the latent vectors; create it from model.parameters() "
                                  "after graphprune.prepare(...)")

    # ------------------------------------------------------------- search
    def after_step(self, step: int, loss: float | None = None) -> None:
        if self.result is not None:
            return
        if self._lr_group is None:
            raise GraphPruneError("dhp's proximal step needs the learning rate: call session.bind_optimizer(optimizer) "
                                  "before training in your own loop (graphprune.fit and apply do it)")
        self.proximal_step(self.reg * self._lr_group["lr"])
        self._record()

    @torch.no_grad()
    def proximal_step(self, threshold: float) -> None:
        """Eq. 8 (l1) or Eq. S1 (l2) on the sparsified latents, after the optimizer's step."""
        z = self.bank.values
        sparse = z[self._sparse]
        if self.norm == "l1":
            z[self._sparse] = soft_threshold(sparse, threshold)
        else:
            z[self._sparse] = shrink_vectors(sparse, self._vector, len(self.group_ids), threshold)

    def ready(self) -> bool:
        return self.result is not None

    def magnitudes(self) -> dict[int, np.ndarray]:
        """|latent| of every sparsified group."""
        z = self.bank.values.detach().abs().cpu().double().numpy()
        return {gid: z[self.offsets[gid] : self.offsets[gid] + self.gg.groups[gid].size] for gid in self.group_ids}

    def _masked(self, scores: dict[int, np.ndarray]) -> tuple[Allocation, dict[int, int]]:
        """Kept counts when every latent below tau goes (floors and round_to applied)."""
        alloc = Allocation(self.gg, scores, self.min_channels, self.min_ratio)
        return alloc, alloc.counts(sum(int((s < self.tau).sum()) for s in scores.values()))

    def _record(self) -> None:
        scores = self.magnitudes()
        if not all(np.isfinite(s).all() for s in scores.values()):
            raise GraphPruneError("dhp: the latent vectors are no longer finite (training diverged); lower the learning rate")
        _, self.kept_counts = self._masked(scores)
        cost = self.gg.budget.exact(self.budget.metric, self.kept_counts)
        self.trajectory.append(100 * cost / self._full)
        if cost <= self._target + self.tolerance * self._full:
            self.result = scores

    # ------------------------------------------------------------- the plan
    def plan(self) -> Plan:
        """The search's mask if it meets the budget within tolerance, else the exact cut by |latent|."""
        scores = self.result if self.result is not None else self.magnitudes()
        alloc, counts = self._masked(scores)
        if self._target - self.tolerance * self._full <= self.gg.budget.exact(self.budget.metric, counts) <= self._target:
            return alloc.plan(counts)
        return allocate_by_score(self.gg, scores, self.budget, self.min_channels, self.min_ratio)

    def report_png(self, path: str) -> None:
        """Budget trajectory over the search steps and the plan's kept channels per layer."""
        plot_search(path, self.trajectory, self.plan().kept_per_layer(self.gg), 100 * self._target / self._full,
                    f"DHP: {self.budget.metric} search")


__all__ = ["DHPPass", "GeneratedWeight", "LatentBank", "latent_layout", "soft_threshold", "shrink_vectors"]
