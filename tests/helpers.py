"""Shared test tools: find groups by member, and the leak oracle for channel groups."""

from __future__ import annotations

import numpy as np
import torch

import graphprune
from graphprune.slimming.exactness import exactness_error, flat_outputs as _flat


def groups_with(gg: graphprune.GroupGraph, module: str, param: str = "weight", dim: int = 0) -> list[graphprune.ChannelGroup]:
    """Groups having a member (module, param, dim), in group order."""
    return [g for g in gg.groups if any(m.module == module and m.param == param and m.dim == dim for m in g.members)]


def group_with(gg, module: str, param: str = "weight", dim: int = 0) -> graphprune.ChannelGroup:
    found = groups_with(gg, module, param, dim)
    assert len(found) == 1, f"{module}.{param}:{dim} is in {len(found)} groups"
    return found[0]


def member(group: graphprune.ChannelGroup, module: str, param: str = "weight", dim: int = 0):
    (m,) = [m for m in group.members if m.module == module and m.param == param and m.dim == dim]
    return m


def random_keep(gg, rng: np.random.Generator) -> dict[int, list[int]]:
    """A random non-empty subset of channels for every prunable group that normalizes exactly."""
    keep = {}
    for g in gg.prunable_groups:
        if g.inexact or g.size < 2:
            continue
        k = int(rng.integers(1, g.size))
        keep[g.id] = sorted(rng.choice(g.size, size=k, replace=False).tolist())
    return keep


def _slices(model: torch.nn.Module, gg, keep: dict[int, list[int]], roles: set[str]):
    """(member, tensor, pruned indices) for every member of a pruned group with one of ``roles``."""
    for gid, kept in keep.items():
        g = gg.groups[gid]
        dropped = sorted(set(range(g.size)) - set(kept))
        for m in g.members:
            if m.role in roles:
                yield m, getattr(model.get_submodule(m.module), m.param), torch.tensor(m.indices(dropped), dtype=torch.long)


def leak_check(model: torch.nn.Module, gg, keep: dict[int, list[int]], inputs: tuple, seed: int = 0) -> float:
    """Max output change when the pruned channels carry garbage.

    The pruned channels' consumer weights ("in" members) are zeroed; then their producers and
    per-channel parameters ("out"/"channelwise" members) are overwritten with large random values.
    If the groups are right, nothing of that garbage reaches the output: the result is 0.
    """
    torch.manual_seed(seed)
    read = _read_by_channel_means(gg)
    with torch.no_grad():
        _zero_consumers(model, gg, keep)
        before = _flat(model(*inputs))
        for m, t, idx in _slices(model, gg, {g: k for g, k in keep.items() if g not in read}, {"out", "channelwise"}):
            noise = torch.randn_like(t.index_select(m.dim, idx)) * 10 + 5
            t.index_copy_(m.dim, idx, noise.abs() if m.param == "running_var" else noise)
        _zero_consumers(model, gg, keep)  # garbage rows must not read garbage columns: no blow-up
        after = _flat(model(*inputs))
    return float((before - after).abs().max())


def _read_by_channel_means(gg) -> set[int]:
    """Groups whose channels a mean over channels reads (RMS normalization written out): exact
    when their pruned channels are zero, as slim_error checks, but garbage there reaches the mean
    by design; the leak oracle leaves their producers as they are."""
    a = gg._analysis
    labels = np.concatenate([a.map(n.args[0]).labels.reshape(-1) for n in a.channel_means] or [np.zeros(0, dtype=np.int64)])
    return set(gg._atom_group[labels[labels >= 0]].tolist())


def _zero_consumers(model, gg, keep) -> None:
    for m, t, idx in _slices(model, gg, keep, {"in"}):
        t.index_fill_(m.dim, idx, 0.0)


def random_plan(gg, rng: np.random.Generator, ratio: float | None = None) -> graphprune.Plan:
    """Random kept channels in every prunable group (about ``ratio`` of them, if given)."""
    keep = {}
    for g in gg.prunable_groups:
        k = max(1, int(round(g.size * ratio))) if ratio is not None else int(rng.integers(1, g.size + 1))
        keep[g.id] = sorted(rng.choice(g.size, size=k, replace=False).tolist())
    return graphprune.Plan(keep, {g: gg.groups[g].size for g in keep})


def slim_at_budget(gg, plan: graphprune.Plan, x) -> torch.nn.Module:
    """The slim model of ``plan``, checked to cost exactly what the budget says: MACs as
    ``flop_counter()`` counts one forward on ``x``, and parameters."""
    from graphprune.tracing.flops import flop_counter

    slim = graphprune.slim(gg, plan)
    with flop_counter() as counter:
        slim(x)
    assert counter.get_total_flops() // 2 == gg.cost.macs(plan.counts())
    assert sum(p.numel() for p in slim.parameters()) == gg.cost.params(plan.counts())
    return slim


EXACT = 1e-6  # slim_error of an exact plan: rounding only (float64, or float32 where a model casts: HF's RMSNorm)


def slim_error(model: torch.nn.Module, gg, plan, inputs: tuple) -> float:
    """Max |slim - original| / max |original| after zeroing the pruned channels in the original,
    both run in float64."""
    return exactness_error(model, gg, plan, inputs)
