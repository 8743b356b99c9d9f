"""Channel groups: the channels that share one keep ratio, one mask, one latent vector.

After the rules have linked atoms, the atoms the links connect are one *channel* (removed or kept
as a whole), resolved on the networkx graph of channel spaces (spaces.py). Channels that occur
equally often in every channel map and every parameter dim are interchangeable for every cost and
every slice: they form one *group*. For a plain conv this is its output channels; a split, slice or
non-uniform reuse downstream divides them into several groups, and a residual add or shared weight
merges producers into one.

A group is one keep ratio, one mask and one latent vector (DHP; DSA's alpha). Which layers share a
latent vector is what the space graph (``GroupGraph.space_graph``) says: the spaces joined by
identity edges read the same element for every channel (a residual stage: DHP's shared vector),
composite relations give parts of spaces the same elements (a flatten repeats them, heads tie them
across heads), and a map holding several spaces (a concat) reads their vectors side by side. The
graph's connected components, the topological groups, each hold whole groups (two channels with
one signature occur in a common map, and a map's spaces are connected through it): a group's
``component`` says which coupled layers its pruning reshapes, and the groups of one component (a
concat's parts, the pieces of a split producer) are pruned in view of each other but keep a ratio
and a vector each. Groups of one role of a repeated stack (``layer_roles``) may be tied to one
count, never to one vector.

Attention has two prunable dimensions, but one atom graph holds only one of them: a head's
channels are linked into one channel for whole-head pruning, a head dim's channels across the heads
for head-dim pruning, and linking both would make the whole attention one channel. So
``analyze(attention=...)`` picks one. ``"head_dims"`` (the default): a reshape splitting channels
into ``(heads, head_dim)`` keeps the head dim, pruned in lockstep across heads; q and k share
their contraction dim, v and the output projection theirs (apart where q, k and v are separate
tensors; one packed qkv reshape puts q, k and v of one head dim in one channel). ``"heads"``:
such a reshape keeps the heads; a head is its q, k and v channels and the projection's input
columns for it, attention matmuls and ``scaled_dot_product_attention`` carry heads through their
batch dim, and the slim pass rewrites the head count in reshapes. With grouped-query attention a
key/value head repeated for its query heads (``repeat_kv``'s expand + reshape, ``repeat_interleave``:
its atoms repeated along the heads dim; sdpa's ``enable_gqa``) is linked to them: one channel is a kv
head with the query heads sharing it. A relative-position bias ``table[index]`` is sliced by its
heads columns. The default is the finer of the
two and is what every other split of a channel dim (a channel shuffle's view into groups) always got;
``"heads"`` treats every such split as heads, so it is meant for attention models. A factorized
group (keep-heads x keep-dims) would make the budget cubic, and the allocators (allocate.py, the
quadratic F_A/F_B/c of graphprune/passes/dsa.py) rely on quadratic costs.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import gc
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import networkx as nx
import numpy as np
import torch

from ..analysis.runner import Analysis, MacTerm, channel_dims
from ..analysis.channels import ChannelMap
from ..common.heap import release_freed_memory
from ..analysis.spaces import add_maps, space, space_of_atoms, topological_groups
from ..tracing.tracer import Fallback, TracedModel, trace

if TYPE_CHECKING:
    from .plan import Plan


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
    """Channels pruned with one shared keep ratio. ``component``: its topological group, the
    connected component of ``GroupGraph.space_graph`` its channels are in (the channels no map
    holds, if any, are one group wherever they are: theirs is that of its first channel)."""

    id: int
    size: int
    members: list[Member]
    reason: str | None = None
    inexact: str | None = None
    round_to: int = 1
    component: int = 0

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"frozen: {self.reason}"
        return f"ChannelGroup(id={self.id}, size={self.size}, members={len(self.members)}, {state})"


class GroupGraph:
    """The result of analysis: traced graph, channel groups and the exact cost model."""

    def __init__(self, traced: TracedModel, analysis: Analysis, groups: list[ChannelGroup], atom_group: np.ndarray,
                 atom_channel: np.ndarray, space_graph: nx.Graph):
        from .cost import CostModel

        self.traced = traced
        self.gm = traced.gm
        self.groups = groups
        #: the channel spaces and the relations the groups were found on (spaces.py), for inspection
        self.space_graph = space_graph
        self._analysis = analysis
        self._atom_group = atom_group  # atom -> group id
        self._atom_channel = atom_channel  # atom -> channel index within its group
        self.cost = CostModel(self)

    def keeping_whole(self, reasons: dict[int, str]) -> "GroupGraph":
        """This analysis with the groups in ``reasons`` kept whole for those reasons (the cost
        model follows); this one is left as it was, so that it can be planned on again."""
        from .cost import CostModel

        if not reasons:
            return self
        view = copy.copy(self)
        view.groups = [dataclasses.replace(g, reason=reasons[g.id]) if g.id in reasons else g for g in self.groups]
        view.cost = CostModel(view)
        return view

    @property
    def fallbacks(self) -> list[Fallback]:
        return self.traced.fallbacks

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def topological_groups(self) -> list[list[int]]:
        """The ids of the groups of each topological group (``ChannelGroup.component``), in order."""
        found: dict[int, list[int]] = {}
        for g in self.groups:
            found.setdefault(g.component, []).append(g.id)
        return [found[k] for k in sorted(found)]

    @property
    def mac_terms(self) -> list[MacTerm]:
        return self._analysis.mac_terms

    @property
    def channel_maps(self) -> dict[Any, Any]:
        """fx node -> its channel map(s) (``ChannelMap``, a tuple of them, or None): what slimming resizes."""
        return self._analysis.maps

    @property
    def member_records(self) -> dict[tuple[str, str, int], Any]:
        """(module, parameter, dim) -> the atoms along that dim of every sliced tensor."""
        return self._analysis.members

    @property
    def channel_means(self) -> set:
        """Means over a channel dim kept exact by keeping their divisor (RMS norms, see rules.mean)."""
        return self._analysis.channel_means

    @property
    def literal_sizes(self) -> dict:
        """fx node -> the channel counts its constant arguments hold (see slim.rewrite_sizes)."""
        return self._analysis.literal_sizes

    def channels_of(self, labels: np.ndarray) -> np.ndarray:
        """The index within its group of each atom in ``labels``."""
        return self._atom_channel[labels]

    def spaces(self) -> list[tuple[Any, ChannelMap]]:
        """Every (fx node, channel map) found, in graph order."""
        return list(self._analysis.spaces)

    def group_counts(self, labels: np.ndarray) -> dict[int, int]:
        """How many positions of a channel map (atom labels) fall in each group."""
        gids, counts = np.unique(self._atom_group[labels], return_counts=True)
        return dict(zip(gids.tolist(), counts.tolist()))

    def group_counts_many(self, maps: list[np.ndarray]) -> list[dict[int, int]]:
        """``group_counts`` of every channel map in ``maps`` (one pass over all of them)."""
        if not maps:
            return []
        lengths = np.fromiter((len(m) for m in maps), dtype=np.int64, count=len(maps))
        gids = self._atom_group[np.concatenate(maps)] if lengths.sum() else np.zeros(0, dtype=np.int64)
        owner = np.repeat(np.arange(len(maps), dtype=np.int64), lengths)
        n_groups = len(self.groups)
        if len(maps) * n_groups <= 4 * len(gids) + 65536:
            table = np.bincount(owner * n_groups + gids, minlength=len(maps) * n_groups).reshape(len(maps), n_groups)
            rows, cols = np.nonzero(table)
            counts = table[rows, cols]
        else:
            keys, counts = np.unique(owner * n_groups + gids, return_counts=True)
            rows, cols = keys // n_groups, keys % n_groups
        out: list[dict[int, int]] = [{} for _ in maps]
        bounds = np.searchsorted(rows, np.arange(len(maps) + 1)).tolist()
        cols, counts = cols.tolist(), counts.tolist()
        for i in range(len(maps)):
            lo, hi = bounds[i], bounds[i + 1]
            out[i] = dict(zip(cols[lo:hi], counts[lo:hi]))
        return out

    def groups_of(self, labels: np.ndarray) -> np.ndarray:
        return self._atom_group[labels]

    def kept(self, labels: np.ndarray, keep: dict[int, Iterable[int]]) -> np.ndarray:
        """Which positions of a channel map survive when group ``g`` keeps channels ``keep[g]``."""
        mask = np.ones(len(labels), dtype=bool)
        groups, channels = self._atom_group[labels], self._atom_channel[labels]
        for gid in np.unique(groups).tolist():  # only the groups this map holds
            kept = keep.get(gid)
            if kept is not None:
                here = groups == gid
                mask[here] = np.isin(channels[here], np.fromiter(kept, dtype=np.int64))
        return mask

    def kept_atoms(self, keep: dict[int, Iterable[int]]) -> np.ndarray:
        """``kept`` for every atom at once: index it with a channel map's labels."""
        sizes, offsets = self._channel_offsets()
        table = np.ones(int(sizes.sum()), dtype=bool)
        for gid, kept in keep.items():
            if isinstance(gid, (int, np.integer)) and 0 <= gid < len(self.groups):
                k = np.fromiter(kept, dtype=np.int64)
                k = k[(k >= 0) & (k < sizes[gid])]  # np.isin ignores what is not a channel
                table[offsets[gid] : offsets[gid] + sizes[gid]] = False
                table[offsets[gid] + k] = True
        return self._per_atom(table, offsets)

    def atom_copies(self, copies: dict[int, np.ndarray]) -> np.ndarray:
        """Per atom: ``copies[g][c]`` for an atom of channel ``c`` of group ``g`` (1 where ``g`` is
        not listed); index it with a channel map's labels. The widen pass's ``kept_atoms``."""
        sizes, offsets = self._channel_offsets()
        table = np.ones(int(sizes.sum()), dtype=np.int64)
        for gid, n in copies.items():
            table[offsets[gid] : offsets[gid] + sizes[gid]] = n
        return self._per_atom(table, offsets)

    def _channel_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Group sizes, and where each group's channels start in a table of all channels."""
        sizes = np.array([g.size for g in self.groups], dtype=np.int64)
        return sizes, np.cumsum(sizes) - sizes

    def _per_atom(self, table: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """A table with one entry per (group, channel), read out for every atom."""
        if not len(table):
            return np.ones(len(self._atom_group), dtype=table.dtype)
        return table[offsets[self._atom_group] + self._atom_channel]

    def prunable_mac_share(self) -> float:
        """Share of MACs that depend on at least one prunable group (the rest is fixed)."""
        return self.cost.prunable_share("macs")

    # rendering lives in groups/views.py (table, JSON, dot) and inspector.py (pictures); these are the entry points users look for
    def summary(self, console=None, plan: "Plan | None" = None) -> None:
        """Print the groups as a table (with ``plan``: how many channels each keeps)."""
        from .views import print_summary

        print_summary(self, console, plan)

    def to_json(self) -> dict:
        from .views import to_json

        return to_json(self)

    def to_dot(self) -> str:
        from .views import to_dot

        return to_dot(self)

    def draw(self, path: str, plan: "Plan | None" = None) -> None:
        """Write a PNG of the layers coloured and numbered by group, with a legend."""
        from .inspector import draw

        draw(self, path, plan)

    def to_html(self, plan: "Plan | None" = None) -> str:
        """One self-contained HTML page to explore the groups: tooltips, search, zoom, click to highlight a group."""
        from .inspector import to_html

        return to_html(self, plan)

    def __repr__(self) -> str:
        return f"GroupGraph({len(self.groups)} groups, {len(self.prunable_groups)} prunable)"


def layer_pattern(module: str) -> str:
    """A module path with its layer indices abstracted (``model.layers.3.mlp`` -> ``model.layers.*.mlp``):
    every numeric component, nested ones too, indexes a ModuleList or Sequential."""
    return ".".join("*" if part.isdigit() else part for part in module.split("."))


def layer_roles(gg: GroupGraph) -> list[list[int]]:
    """The prunable groups that play one part in every layer of a repeated stack: one list of group
    ids per role, in group order.

    A config describes a stack with one width per role (Hugging Face's intermediate_size,
    num_key_value_heads), so ``uniform_layers`` ties the kept counts of a role's groups. Groups share
    a role when they have the same size and the same members (parameter, dim, role, and positions)
    once the layer index in each module path is abstracted (:func:`layer_pattern`): each layer's MLP
    hidden dim, or each of a stage's blocks (torchvision's ``layer1.0`` / ``layer1.1``). A group
    not repeated (a stem conv, the residual stream all layers share) is a role of its own.
    """
    roles: dict[tuple, list[int]] = {}
    for g in gg.prunable_groups:
        members = collections.Counter((layer_pattern(m.module), m.param, m.dim, m.role, m.positions.tobytes()) for m in g.members)
        roles.setdefault((g.size, tuple(sorted(members.items()))), []).append(g.id)
    return list(roles.values())


def auto_round_to(size: int, cap: int = 8) -> int:
    """The default channel multiple of a group of ``size`` channels: 8 (at most ``cap``), or less in small groups.

    Kernels run odd widths slowly (onnxruntime: mobilenet_v2 at 50% MACs with round_to=1 ran
    slower than unpruned, see bench/results/ort_speed.md), while coarse steps in a small group cost
    the budget's fit and the method's choice: each group keeps steps of at most 1/8 of its size
    (16 channels: multiples of 2; 32: of 4; 64 and more: of 8).
    """
    step = 1
    while step < cap and size >= 16 * step:
        step *= 2
    return step


def set_round_to(groups: Sequence[ChannelGroup], round_to: int | str, cap: int = 8) -> None:
    """Give every group its channel multiple: ``round_to``, or with ``"auto"`` :func:`auto_round_to`."""
    for g in groups:
        g.round_to = auto_round_to(g.size, cap) if round_to == "auto" else round_to


def build_groups(analysis: Analysis, round_to: int | str = 1) -> tuple[list[ChannelGroup], np.ndarray, np.ndarray, nx.Graph]:
    """Partition channels into groups by their multiplicity signature; attach members, reasons and
    topological groups. Also returns the graph of the spaces (spaces.py), maps included."""
    atoms = analysis.atoms
    channel = atoms.components()
    n_channels = int(channel.max()) + 1 if len(channel) else 0
    maps = _distinct_maps(analysis)
    graph = atoms.space_graph().copy()
    add_maps(graph, atoms.sizes, maps)
    topological = topological_groups(graph)
    channel_group = _signature_groups(channel, [m for _, m in maps], n_channels)
    sizes = np.bincount(channel_group, minlength=int(channel_group.max()) + 1 if n_channels else 0)
    # a channel's index in its group: its rank among the group's channels, in channel order
    order = np.argsort(channel_group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    channel_index = np.empty(n_channels, dtype=np.int64)
    channel_index[order] = np.arange(n_channels, dtype=np.int64) - starts[channel_group[order]]
    # the topological group of a group: that of the space holding its first channel's first atom
    first_atom = np.searchsorted(np.maximum.accumulate(channel), order[starts[: len(sizes)]])
    first_space = space_of_atoms(atoms.sizes)[first_atom].tolist()

    atom_group = channel_group[channel]
    reasons = atoms.frozen_by(atom_group)
    inexact = atoms.inexact_by(atom_group)

    members: dict[int, list[Member]] = {g: [] for g in range(len(sizes))}
    records = list(analysis.members.values())
    if records:  # one Member per (record, group it holds), positions ascending, in record order
        lengths = np.fromiter((len(r.labels) for r in records), dtype=np.int64, count=len(records))
        labels = np.concatenate([np.asarray(r.labels, dtype=np.int64).reshape(-1) for r in records])
        owner = np.repeat(np.arange(len(records), dtype=np.int64), lengths)
        pos = np.arange(len(labels), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        gids = atom_group[labels]
        key = owner * (int(gids.max()) + 1) + gids
        if np.any(key[1:] < key[:-1]):  # by record, group, position (usually each record is one group already)
            order = np.argsort(key, kind="stable")
            owner, gids, pos, labels = owner[order], gids[order], pos[order], labels[order]
        chans = channel_index[channel[labels]]
        cut = (np.flatnonzero((np.diff(owner) != 0) | (np.diff(gids) != 0)) + 1).tolist()
        starts, ends = [0, *cut], [*cut, len(labels)]
        for lo, hi, o, g in zip(starts, ends, owner[starts].tolist(), gids[starts].tolist()):
            rec = records[o]
            members[g].append(Member(rec.module, rec.param, rec.dim, rec.role, pos[lo:hi], chans[lo:hi]))

    groups = []
    for g, size in enumerate(sizes.tolist()):
        reason = reasons.get(g)
        if reason is None and not members[g]:
            reason = "no parameter produces these channels"
        groups.append(ChannelGroup(g, size, members[g], reason, inexact.get(g), component=topological[space(first_space[g])]))
    set_round_to(groups, round_to)
    return groups, atom_group, channel_index[channel], graph


def _distinct_maps(analysis: Analysis) -> list[tuple[str, np.ndarray]]:
    """Every channel map, parameter dim and MAC factor of the analysis, named, once per array (most
    share theirs with others: a conv's output and its norm's)."""
    maps: dict[int, tuple[str, np.ndarray]] = {}
    for node, m in analysis.spaces:
        maps.setdefault(id(m.labels), (node.name, m.labels))
    for rec in analysis.members.values():
        maps.setdefault(id(rec.labels), (f"{rec.module}.{rec.param}:{rec.dim}".lstrip("."), rec.labels))
    for t in analysis.mac_terms:
        for f in t.factors:
            maps.setdefault(id(f.labels), (t.node.name, f.labels))
    return list(maps.values())


def _signature_groups(channel: np.ndarray, maps: list[np.ndarray], n_channels: int) -> np.ndarray:
    """Group id of every channel: channels with the same (map, multiplicity) signature share one,
    numbered in order of their first channel.

    Maps with the same channel sequence count once (they add the same entry to every channel's
    signature). Signatures are compared through a 64-bit hash of their (map, multiplicity) entries;
    every channel is then checked entry by entry against the first channel with its hash, and any
    collision falls back to comparing the signatures themselves.
    """
    if n_channels == 0:
        return np.zeros(0, dtype=np.int64)
    # maps holding the same channel sequence give every channel the same entry: keep one of each
    lengths = np.fromiter((len(m) for m in maps), dtype=np.int64, count=len(maps))
    per_map = channel[np.concatenate(maps)] if maps else np.zeros(0, dtype=np.int64)
    distinct: dict[bytes, np.ndarray] = {}
    for lo, hi in zip((np.cumsum(lengths) - lengths).tolist(), np.cumsum(lengths).tolist()):
        distinct.setdefault(per_map[lo:hi].tobytes(), per_map[lo:hi])
    maps = list(distinct.values())
    n_maps = max(len(maps), 1)
    lengths = np.fromiter((len(m) for m in maps), dtype=np.int64, count=len(maps))
    chans = np.concatenate(maps) if maps else np.zeros(0, dtype=np.int64)
    # one row per (channel, map) it occurs in, sorted by channel then map, with the multiplicity
    key, counts = np.unique(chans * n_maps + np.repeat(np.arange(len(maps), dtype=np.int64), lengths), return_counts=True)
    row_channel, row_map = key // n_maps, key % n_maps
    bounds = np.searchsorted(row_channel, np.arange(n_channels + 1))
    rows = np.diff(bounds)
    with np.errstate(over="ignore"):
        mixed = _mix64(row_map.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + counts.astype(np.uint64))
        sums = np.zeros(n_channels, dtype=np.uint64)
        if len(mixed):
            present = rows > 0
            sums[present] = np.add.reduceat(mixed, bounds[:-1][present])
        digest = _mix64(sums + rows.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9))
    _, first, inverse = np.unique(digest, return_index=True, return_inverse=True)
    rep = first[inverse]  # the first channel with the same digest
    offset = np.arange(len(key), dtype=np.int64) - bounds[row_channel]
    rep_row = bounds[rep[row_channel]] + offset
    same_length = np.array_equal(rows, rows[rep])
    if same_length and np.array_equal(row_map, row_map[rep_row]) and np.array_equal(counts, counts[rep_row]):
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.int64)
        return rank[inverse]
    group_of_sig: dict[bytes, int] = {}  # a digest collision: compare the signatures themselves
    table = np.stack([row_map, counts], 1)
    out = np.empty(n_channels, dtype=np.int64)
    for c in range(n_channels):
        out[c] = group_of_sig.setdefault(table[bounds[c] : bounds[c + 1]].tobytes(), len(group_of_sig))
    return out


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (uint64, wrapping)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def analyze(
    model: torch.nn.Module,
    example_inputs: Any,
    leaf_modules: Sequence[str | type] = (),
    concrete_args: dict[str, Any] | None = None,
    round_to: int | str = 1,
    attention: str = "head_dims",
    specialize_submodules: bool = False,
) -> GroupGraph:
    """Trace ``model`` on ``example_inputs`` and find its channel groups and cost model.

    ``leaf_modules``: module names or types to keep opaque (their channels are frozen).
    ``round_to``: the channel multiple every group keeps (unless it keeps all): an int, or
    ``"auto"`` (:func:`auto_round_to`: 8, or less in groups under 64 channels). ``prepare`` and
    ``apply`` set it again, to their own ``round_to`` or the method's default.
    ``attention``: ``"head_dims"`` prunes per-head dims, ``"heads"`` whole heads (module docstring).
    ``specialize_submodules``: a submodule whose code needs a Python value from a traced tensor
    (``if H == grid_size:``, ``int(x.shape[-1] ** 0.5)``) is traced along the example inputs'
    path, as the model's own forward is, with a guard per value taken, instead of becoming an
    opaque leaf whose channels are frozen. Its layers become prunable; the graph (and the slim
    model) then raises GuardError on inputs that would take another path, such as another
    resolution.
    """
    with _no_cyclic_gc():
        traced = trace(model, example_inputs, leaf_modules, concrete_args, specialize_submodules, channel_dims)
        release_freed_memory()  # what tracing freed, for the slices of an in-place resize (see heap.py)
        analysis = Analysis(traced, attention).run()
        groups, atom_group, atom_channel, space_graph = build_groups(analysis, round_to)
        gg = GroupGraph(traced, analysis, groups, atom_group, atom_channel, space_graph)
    # what re-analyzing the model needs (a checkpoint re-applies its plan to a fresh instance)
    gg.example_inputs = example_inputs
    gg.options = dict(leaf_modules=tuple(leaf_modules), concrete_args=concrete_args, attention=attention,
                      specialize_submodules=specialize_submodules)
    return gg


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector (reference counting still frees everything else).

    Analysis creates many small objects (graph nodes, channel maps, members) that stay alive
    until it returns; each automatic collection walks all of them again, so with the collector on,
    analysis time grows faster than the graph (ResNet-1202: +40%). Cycles made meanwhile are
    collected as usual once it is back on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
