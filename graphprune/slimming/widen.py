"""The widen pass (LW-DNA): a freshly initialized copy of the model with every prunable group wider.

LW-DNA trains a wider model and prunes it back to the original budget, so widening is the inverse
of slimming: where the slim pass takes each channel 0 or 1 times, this pass takes it 1 or more
times, through the same parameter slicing, module fixups and graph-constant rewrites (slim.py's
``_Resizer``), and the result is checked the same way (every node's shape against the widened
sizes). Copies of a channel would stay copies under training, so the wide model is
re-initialized: the copies only give it its shapes.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from typing import TypeVar

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import WidenError
from ..groups.graph import GroupGraph, analyze
from .slim import _Resizer


class _Widener(_Resizer):
    error = WidenError
    model_name = "wide model"
    implied_by = "widening"
    verb = "widened"
    advice = ("Analyze the model with that module as a leaf (leaf_modules=[...]) so that its channels keep "
              "their size, and report the model.")


@dataclasses.dataclass
class Widened:
    """The wide model, and how its channel groups relate to those of the original analysis.

    ``sizes`` and ``origin`` cover the original's prunable groups (frozen groups keep their size).
    ``origin[g]``: for each channel of group ``g``, the wide group's channel index that holds its
    first copy, so slimming the wide model to ``origin`` gives back the original architecture.
    ``not_widened``: {group id: why it keeps its size} for prunable groups that could not be
    widened. ``analysis``: the wide model's own analysis (what ``analyze`` gives on it), made to
    check the groups; reuse it rather than analyzing again. ``member_groups``: {(module, param, dim): the original group id of each index along
    that dim of the wide model}, what ``wide_groups`` matches by.
    """

    model: fx.GraphModule
    beta: float
    sizes: dict[int, int]
    origin: dict[int, np.ndarray]
    not_widened: dict[int, str]
    analysis: GroupGraph = dataclasses.field(repr=False)
    member_groups: dict[tuple[str, str, int], np.ndarray] = dataclasses.field(repr=False)

    def wide_groups(self, wide_gg: GroupGraph) -> dict[int, int]:
        """{group id of ``analyze(self.model, ...)``: the original group id it came from}, matched
        through members (module, param, dim); groups without members are left out."""
        found = {}
        for g in wide_gg.groups:
            for m in g.members:
                source = self.member_groups.get((m.module, m.param, m.dim))
                if source is not None:
                    found[g.id] = int(source[m.positions[0]])
                    break
        return found


#: why a group that some tensor holds as its only channel keeps its size: the analysis reads a
#: single channel as broadcasting (elementwise ops do not link it), which no plan can change
_SINGLE = ("a tensor holds it as its only channel, and a single channel broadcasts against other tensors "
           "where graphprune does not follow it, so its copies could change what an op computes; it keeps its size")

#: why a prunable group whose copies do not form one wide group keeps its size (see ``_mismatches``)
_REGROUPED = ("at another width its channels fall into other channel groups (an op such as a channel "
              "shuffle followed by a split groups channels by their position), so widening it would not keep "
              "the model's groups; it keeps its size")


def widen(gg: GroupGraph, beta: float = 2.0, round_to: int = 1, seed: int | None = None) -> Widened:
    """A freshly initialized copy of the analyzed model with every prunable group ``beta`` times wider.

    A group of ``n`` channels gets ``round(beta * n)``, rounded to a multiple of ``round_to`` when
    ``n`` is one; frozen groups keep their size. Channel ``c`` is taken ``copies[c]`` times, the
    extra copies spread evenly over the group (beta 1.5: every other channel twice). It works on any
    model ``analyze`` handles, not only constructors with a width argument: the graph constants the
    slim pass rewrites (split sizes, view sizes, slice bounds, conv ``groups``, GroupNorm groups,
    LayerNorm shapes, pads) follow the new sizes.

    The wide model is checked twice: every node's shape against the widened sizes (as the slim
    pass does), and its own analysis against the original's: each original group must become one
    wide group holding the copies of its channels, in order, so that ``sizes``, ``origin`` and
    ``wide_groups`` hold. A group for which that fails (channel shuffles regroup channels by
    position, and positions move when channels are copied) keeps its size, and so does a group
    that a tensor holds as its only channel (it broadcasts); the reasons are in
    ``Widened.not_widened``, and a warning says so.

    The wide model is then initialized afresh by ``reinitialize(model, seed)``: modules'
    ``reset_parameters()``, and parameters no reset covers redrawn with their own mean and
    standard deviation (copies have the original's); see there.
    """
    if not (isinstance(beta, numbers.Real) and math.isfinite(beta) and beta >= 1):
        raise WidenError(f"beta must be a finite number >= 1 (the factor every group's size is multiplied by), not {beta!r}; "
                         "to make a model smaller, prune it (graphprune.apply or slim with a Plan)")
    if not (isinstance(round_to, numbers.Integral) and round_to >= 1):
        raise WidenError(f"round_to must be a positive integer (the channel multiple of each widened group), not {round_to!r}")
    not_widened = {g: _SINGLE for g in _single_channel_groups(gg) if gg.groups[g].prunable}
    while True:
        copies = {
            g.id: _copies(g.size, g.size if g.id in not_widened else _widened_size(g.size, float(beta), int(round_to)))
            for g in gg.prunable_groups
        }
        gm, sources = _build(gg, copies)
        wide_gg = analyze(gm, tuple(gg.traced.placeholder_values), attention=gg.options["attention"])
        mismatched = _mismatches(gg, wide_gg, copies, sources)
        if not mismatched:
            break
        found = {g: why for g, why in mismatched.items() if g in copies and g not in not_widened}
        if not found:  # only groups that keep their size: nothing left to take back
            raise WidenError(f"the wide model's channel groups do not match the original's at groups {sorted(mismatched)} "
                             f"({next(iter(mismatched.values()))}), and none of them is widened; please report the model")
        not_widened.update(sorted(found.items()))
    if not_widened:
        reasons = "; ".join(dict.fromkeys(not_widened.values()))
        warnings.warn(f"widen: {len(not_widened)} of {len(copies)} prunable groups keep their size ({reasons}); "
                      "Widened.not_widened lists them", stacklevel=2)
    reinitialize(gm, seed)
    return Widened(
        gm, float(beta), {g: int(c.sum()) for g, c in copies.items()}, {g: np.cumsum(c) - c for g, c in copies.items()},
        not_widened, wide_gg, {key: group for key, (group, _) in sources.items()},
    )


Sources = dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]]


def _build(gg: GroupGraph, copies: dict[int, np.ndarray]) -> tuple[fx.GraphModule, Sources]:
    """The wide model taking channel ``c`` of group ``g`` ``copies[g][c]`` times, its shapes
    checked, and per member dim, the original group and channel at each index of the wide model."""
    counts = gg.atom_copies(copies)
    changed = {g: f"{len(c)} -> {int(c.sum())} channels" for g, c in copies.items() if c.sum() != len(c)}
    widener = _Widener(gg, counts, changed)
    gm = widener.run()
    widener.verify(gm)
    sources = {
        key: (np.repeat(gg.groups_of(rec.labels), counts[rec.labels]), np.repeat(gg.channels_of(rec.labels), counts[rec.labels]))
        for key, rec in gg.member_records.items()
    }
    return gm, sources


def _single_channel_groups(gg: GroupGraph) -> list[int]:
    """Groups that some tensor of the graph holds as its only channel."""
    single = [m.labels for _, m in gg.spaces() if m.size == 1]
    return sorted(set(gg.groups_of(np.concatenate(single)).tolist())) if single else []


def _mismatches(gg: GroupGraph, wide_gg: GroupGraph, copies: dict[int, np.ndarray], sources: Sources) -> dict[int, str]:
    """{original group: why}, for the groups that do not become exactly one wide group, as
    prunable as they were, whose channel ``j`` is a copy of channel ``np.repeat(arange(n),
    copies)[j]`` in every member (``sources``: per member dim, the original group and channel at
    each wide index)."""
    bad: dict[int, str] = {}
    found: set[int] = set()
    for w in wide_gg.groups:
        if not w.members:
            continue
        groups = np.unique(np.concatenate([sources[m.module, m.param, m.dim][0][m.positions] for m in w.members])).tolist()
        g = groups[0]
        copy_of = np.repeat(np.arange(gg.groups[g].size), copies.get(g, 1))
        if len(groups) > 1 or g in found or w.size != len(copy_of) or any(
            not np.array_equal(sources[m.module, m.param, m.dim][1][m.positions], copy_of[m.channels]) for m in w.members
        ):
            bad.update(dict.fromkeys(groups, _REGROUPED))
        elif gg.groups[g].prunable and not w.prunable:
            bad[g] = f"the wide model's analysis freezes its copies ({w.reason}); it keeps its size"
        found.update(groups)
    return bad | {g.id: _REGROUPED for g in gg.groups if g.members and g.id not in found}


def _widened_size(n: int, beta: float, round_to: int) -> int:
    """``round(beta * n)``, to a multiple of ``round_to`` when ``n`` is one (never below ``n``: beta >= 1)."""
    if n % round_to == 0:
        return round_to * math.floor(beta * n / round_to + 0.5)
    return math.floor(beta * n + 0.5)


def _copies(n: int, wide: int) -> np.ndarray:
    """How many times each of ``n`` channels is taken to make ``wide`` channels, the extra ones spread evenly."""
    return np.diff(np.arange(n + 1, dtype=np.int64) * wide // n)


M = TypeVar("M", bound=nn.Module)


def reinitialize(model: M, seed: int | None = None) -> M:
    """Fresh parameters for ``model``, in place (and returned), under ``torch.manual_seed(seed)``
    in a forked RNG when ``seed`` is given.

    Every module's ``reset_parameters()`` runs, children first so that a parent's own reset has
    the last word (norm layers reset their running statistics too). A parameter that no
    ``reset_parameters`` covers (a layer scale, a position embedding, the weight of a module fx
    traced through: a graph module keeps it on a plain attribute holder) is redrawn from a normal
    distribution with its own mean and standard deviation; a constant one (ones, zeros, a layer
    scale's init value) stays as it is. Schemes a constructor applies over the defaults (e.g.
    torchvision's Kaiming fan-out convs) are not replayed.
    """
    with torch.random.fork_rng(enabled=seed is not None), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        reset: set[int] = set()
        for m in reversed(list(model.modules())):  # a module comes after all of its children
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
                reset.update(id(p) for p in m.parameters(recurse=False))
        for p in model.parameters():
            if id(p) not in reset and p.is_floating_point() and p.numel() > 1 and not bool((p == p.flatten()[0]).all()):
                values = p.detach().double()
                p.normal_(float(values.mean()), float(values.std()))
    return model
