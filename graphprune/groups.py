"""Channel groups: the channels that share one keep ratio, one mask, one latent vector.

After the rules have linked atoms, each connected component of the atom graph is one *channel*
(removed or kept as a whole). Channels that occur equally often in every channel map and every
parameter dim are interchangeable for every cost and every slice: they form one *group*. For a
plain conv this is its output channels; a split, slice or non-uniform reuse downstream divides
them into several groups, and a residual add or shared weight merges producers into one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .analysis import Analysis, MacTerm
from .channels import ChannelMap
from .trace import Fallback, TracedModel, trace


@dataclasses.dataclass(eq=False)
class Member:
    """One parameter dim of a group: ``channels[i]`` is the group channel at index ``i`` of
    ``positions``, the parameter indices along ``dim`` that belong to the group."""

    module: str
    param: str
    dim: int
    role: str
    positions: np.ndarray
    channels: np.ndarray

    def indices(self, keep: Iterable[int]) -> list[int]:
        """Parameter indices along ``dim`` that hold the kept group channels, in order."""
        kept = np.isin(self.channels, np.fromiter(keep, dtype=np.int64))
        return self.positions[kept].tolist()

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.param}" if self.module else self.param

    def __repr__(self) -> str:
        return f"Member({self.qualified_name}, dim={self.dim}, role={self.role!r}, n={len(self.positions)})"


@dataclasses.dataclass(eq=False)
class ChannelGroup:
    """Channels pruned with one shared keep ratio."""

    id: int
    size: int
    members: list[Member]
    reason: str | None = None
    inexact: str | None = None
    round_to: int = 1

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"frozen: {self.reason}"
        return f"ChannelGroup(id={self.id}, size={self.size}, members={len(self.members)}, {state})"


class GroupGraph:
    """The result of analysis: traced graph, channel groups and the exact budget model."""

    def __init__(self, traced: TracedModel, analysis: Analysis, groups: list[ChannelGroup], atom_group: np.ndarray, atom_channel: np.ndarray):
        from .budget import BudgetModel

        self.traced = traced
        self.gm = traced.gm
        self.groups = groups
        self._analysis = analysis
        self._atom_group = atom_group  # atom -> group id
        self._atom_channel = atom_channel  # atom -> channel index within its group
        self.budget = BudgetModel(self)

    @property
    def fallbacks(self) -> list[Fallback]:
        return self.traced.fallbacks

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def mac_terms(self) -> list[MacTerm]:
        return self._analysis.mac_terms

    def spaces(self) -> list[tuple[Any, ChannelMap]]:
        """Every (fx node, channel map) found, in graph order."""
        return list(self._analysis.spaces)

    def group_counts(self, labels: np.ndarray) -> dict[int, int]:
        """How many positions of a channel map (atom labels) fall in each group."""
        gids, counts = np.unique(self._atom_group[labels], return_counts=True)
        return dict(zip(gids.tolist(), counts.tolist()))

    def groups_of(self, labels: np.ndarray) -> np.ndarray:
        return self._atom_group[labels]

    def kept(self, labels: np.ndarray, keep: dict[int, Iterable[int]]) -> np.ndarray:
        """Which positions of a channel map survive when group ``g`` keeps channels ``keep[g]``."""
        mask = np.ones(len(labels), dtype=bool)
        groups, channels = self._atom_group[labels], self._atom_channel[labels]
        for gid, kept in keep.items():
            here = groups == gid
            mask[here] = np.isin(channels[here], np.fromiter(kept, dtype=np.int64))
        return mask

    def prunable_mac_share(self) -> float:
        """Share of MACs that depend on at least one prunable group (the rest is fixed)."""
        return self.budget.prunable_share("macs")

    # rendering lives in inspect.py; these are the entry points users look for
    def summary(self, console=None) -> None:
        from .inspect import print_summary

        print_summary(self, console)

    def to_json(self) -> dict:
        from .inspect import to_json

        return to_json(self)

    def to_dot(self) -> str:
        from .inspect import to_dot

        return to_dot(self)

    def draw(self, path: str) -> None:
        from .inspect import draw

        draw(self, path)

    def __repr__(self) -> str:
        return f"GroupGraph({len(self.groups)} groups, {len(self.prunable_groups)} prunable)"


def build_groups(analysis: Analysis, round_to: int = 1) -> tuple[list[ChannelGroup], np.ndarray, np.ndarray]:
    """Partition channels into groups by their multiplicity signature; attach members and reasons."""
    atoms = analysis.atoms
    channel = atoms.components()
    n_channels = int(channel.max()) + 1 if len(channel) else 0
    maps: list[np.ndarray] = [m.labels for _, m in analysis.spaces]
    maps += [rec.labels for rec in analysis.members.values()]
    maps += [f.labels for t in analysis.mac_terms for f in t.factors]
    # (channel, map, multiplicity) triples, sorted by channel then map: a channel's signature
    triples = []
    for i, labels in enumerate(maps):
        chans, counts = np.unique(channel[labels], return_counts=True)
        triples.append(np.stack([chans, np.full(len(chans), i), counts], 1))
    table = np.concatenate(triples) if triples else np.zeros((0, 3), dtype=np.int64)
    table = table[np.lexsort((table[:, 1], table[:, 0]))]
    bounds = np.searchsorted(table[:, 0], np.arange(n_channels + 1))
    group_of_sig: dict[bytes, int] = {}
    channel_group = np.empty(n_channels, dtype=np.int64)
    for c in range(n_channels):  # channels are numbered by their first atom: groups come in graph order
        key = table[bounds[c] : bounds[c + 1], 1:].tobytes()
        channel_group[c] = group_of_sig.setdefault(key, len(group_of_sig))
    channel_index = np.empty(n_channels, dtype=np.int64)
    sizes = np.zeros(len(group_of_sig), dtype=np.int64)
    for c in range(n_channels):
        g = channel_group[c]
        channel_index[c] = sizes[g]
        sizes[g] += 1

    reasons: dict[int, str] = {}
    for atom, why in atoms.frozen.items():
        reasons.setdefault(int(channel_group[channel[atom]]), why)
    inexact: dict[int, str] = {}
    for atom, why in atoms.inexact.items():
        inexact.setdefault(int(channel_group[channel[atom]]), why)

    members: dict[int, list[Member]] = {g: [] for g in range(len(sizes))}
    for rec in analysis.members.values():
        gids = channel_group[channel[rec.labels]]
        for g in np.unique(gids).tolist():
            pos = np.nonzero(gids == g)[0]
            members[g].append(Member(rec.module, rec.param, rec.dim, rec.role, pos, channel_index[channel[rec.labels[pos]]]))

    groups = []
    for g, size in enumerate(sizes.tolist()):
        reason = reasons.get(g)
        if reason is None and not members[g]:
            reason = "no parameter produces these channels"
        groups.append(ChannelGroup(g, size, members[g], reason, inexact.get(g), round_to))
    return groups, channel_group[channel], channel_index[channel]


def analyze(
    model: torch.nn.Module,
    example_inputs: Any,
    leaf_modules: Sequence[str | type] = (),
    concrete_args: dict[str, Any] | None = None,
    round_to: int = 1,
) -> GroupGraph:
    """Trace ``model`` on ``example_inputs`` and find its channel groups and budget model.

    ``leaf_modules``: module names or types to keep opaque (their channels are frozen).
    ``round_to``: default channel multiple for every group (e.g. 8 for tensor cores).
    """
    traced = trace(model, example_inputs, leaf_modules, concrete_args)
    analysis = Analysis(traced).run()
    groups, atom_group, atom_channel = build_groups(analysis, round_to)
    return GroupGraph(traced, analysis, groups, atom_group, atom_channel)
