"""Data-free magnitude baselines: l1, l2 and random channel importance, allocated globally.

A channel's importance is the norm of its slices summed over *all* members of its group (the
producer's filters, the consumers' input columns, norm scales): what removing the channel takes
away. Scores are divided by their group's mean, so groups of different scales rank on one list
(each group's average channel scores 1); the budget model then decides how many of the globally
lowest channels go. With ``uniform_layers`` a repeated layer's groups are ranked as one role (the
mean of their k-th scores, see ``allocate.Allocation``) and keep one count.
"""

from __future__ import annotations

import numpy as np
import torch

from graphprune.allocate import allocate_by_score
from graphprune.plan import Plan

from .base import MethodPass, register


def member_norms(model: torch.nn.Module, gg, p: int) -> dict[int, np.ndarray]:
    """Per prunable group, each channel's p-norm summed over the group's members."""
    groups = gg.prunable_groups
    used = [(k, m) for k, g in enumerate(groups) for m in g.members
            if m.param not in ("running_mean", "running_var")]  # statistics, not weights
    wanted: dict[tuple[str, str], set[int]] = {}  # parameter -> the dims members slice it along
    for _, m in used:
        wanted.setdefault((m.module, m.param), set()).add(m.dim)
    # |w|^p summed over all but one dim, per index, for every (parameter, dim) end to end in one array
    sums: list[np.ndarray] = []
    offsets: dict[tuple[str, str, int], int] = {}
    at = 0
    modules = dict(model.named_modules())
    with torch.no_grad():
        for (module, param), dims in wanted.items():
            owner = modules[module] if module in modules else model.get_submodule(module)
            t = getattr(owner, param).detach().float()
            for dim in sorted(dims):
                others = [d for d in range(t.ndim) if d != dim]
                # a reduction, not |t| ** p materialized: a weight-sized temporary per tensor fragments the heap
                # (pruning a 1.2 GB Llama in place peaked 0.6x of the model higher, bench/results/prune_memory.md)
                summed = torch.linalg.vector_norm(t, p, dim=others) ** p if others else t.abs() ** p
                sums.append(summed.numpy())
                offsets[module, param, dim] = at
                at += t.shape[dim]
    sizes = np.array([g.size for g in groups], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    if not used:
        return {g.id: np.zeros(g.size) for g in groups}
    # one weighted bincount over every member of every group, indexed without a numpy call per
    # member: per channel, the same float64 additions in the same order (group by group, member by
    # member) as one np.add.at per member, at a fraction of the cost
    lengths = np.array([len(m.positions) for _, m in used], dtype=np.int64)
    index = np.concatenate([m.positions for _, m in used]) + np.repeat(
        np.array([offsets[m.module, m.param, m.dim] for _, m in used], dtype=np.int64), lengths)
    channels = np.concatenate([m.channels for _, m in used]) + np.repeat(starts[[k for k, _ in used]], lengths)
    total = np.bincount(channels, weights=np.concatenate(sums)[index], minlength=int(sizes.sum()))
    return {g.id: total[start : start + g.size] ** (1.0 / p) for g, start in zip(groups, starts.tolist())}


def normalized(scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    return {g: s / s.mean() if s.mean() > 0 else np.ones_like(s) for g, s in scores.items()}


class _ScorePass(MethodPass):
    default_round_to = "auto"  # a data-free prune is for deployment: widths the kernels run fast
    ties_layers = True

    def scores(self) -> dict[int, np.ndarray]:
        raise NotImplementedError

    def plan(self) -> Plan:
        scores = normalized(self.scores())
        return self.rounded(lambda: allocate_by_score(self.gg, scores, self.budget, self.min_channels, self.min_ratio, roles=self.roles, **self.bounds))


@register
class L1Pass(_ScorePass):
    name = "l1"

    def scores(self):
        return member_norms(self.model, self.gg, 1)


@register
class L2Pass(_ScorePass):
    name = "l2"

    def scores(self):
        return member_norms(self.model, self.gg, 2)


@register
class RandomPass(_ScorePass):
    """Random importance: the control every method must beat. ``seed`` fixes it."""

    name = "random"

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed

    def scores(self):
        rng = np.random.default_rng(self.seed)
        return {g.id: rng.uniform(0.5, 1.5, g.size) for g in self.gg.prunable_groups}
