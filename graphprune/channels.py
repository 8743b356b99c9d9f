"""Channel atoms, channel maps and label execution: the representation every rule works on.

A *channel map* says which tensor dimension of an fx node carries channels, and, for each index
along it, which *atom* it holds. Atoms are created by producers (a conv's output channels, a
parameter's rows). Rules *link* atoms that must be pruned together; the connected components of the
atom graph (networkx) are the prunable channels, and channels with the same multiplicity in every
map form one group (see groups.py).

Data-movement ops (view, permute, cat, split, pixel shuffle, slicing, pad, ...) are not described
by hand: they are *executed* on a label tensor (each element holds its atom id) and the result is
compressed back into a channel map. That is what makes flatten blocks, pixel-shuffle interleaves,
channel-shuffle permutations and concat offsets fall out of one mechanism.
"""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import torch

#: label of an element that holds a constant (e.g. zero padding), not a channel.
CONSTANT = -1


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelMap:
    """Tensor dim ``dim`` carries channels; ``labels[i]`` is the atom at index ``i`` along it."""

    dim: int
    labels: np.ndarray

    @property
    def size(self) -> int:
        return len(self.labels)

    def moved(self, dim: int) -> "ChannelMap":
        return ChannelMap(dim, self.labels)


class AtomGraph:
    """Atoms (one per channel position of a producer) and the links between them.

    Only linked atoms enter the networkx graph; an atom no rule linked is a channel on its own.
    """

    def __init__(self) -> None:
        self.graph = nx.Graph()
        self.frozen: dict[int, str] = {}
        self.inexact: dict[int, str] = {}
        self._next = 0

    def __len__(self) -> int:
        return self._next

    def new(self, n: int, frozen: str | None = None) -> np.ndarray:
        ids = np.arange(self._next, self._next + n, dtype=np.int64)
        self._next += n
        if frozen is not None:
            self.freeze(ids, frozen)
        return ids

    def link(self, a: np.ndarray, b: np.ndarray) -> None:
        """Elementwise: a[i] and b[i] are the same channel (constants are skipped)."""
        a, b = np.asarray(a), np.asarray(b)
        keep = (a >= 0) & (b >= 0) & (a != b)
        self.graph.add_edges_from(zip(a[keep].tolist(), b[keep].tolist()))

    def link_rows(self, rows: np.ndarray) -> None:
        """Each row of a 2-D array of atoms is one channel."""
        rows = np.asarray(rows)
        self.link(rows[:, :-1].ravel(), rows[:, 1:].ravel())

    def link_all(self, atoms: np.ndarray) -> None:
        """All of ``atoms`` are one channel."""
        self.link_rows(np.asarray(atoms).reshape(1, -1))

    def mark_inexact(self, atoms: np.ndarray, reason: str) -> None:
        for a in np.asarray(atoms).tolist():
            self.inexact.setdefault(a, reason)

    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        for a in np.asarray(atoms).reshape(-1).tolist():
            if a >= 0:
                self.frozen.setdefault(a, reason)

    def components(self) -> np.ndarray:
        """Component id of every atom, numbered in order of each component's smallest atom."""
        smallest = np.arange(self._next, dtype=np.int64)
        for atoms in nx.connected_components(self.graph):
            members = np.fromiter(atoms, dtype=np.int64)
            smallest[members] = members.min()
        return np.unique(smallest, return_inverse=True)[1]


def label_tensor(cmap: ChannelMap | None, shape: tuple[int, ...], offset: int = 0) -> torch.Tensor:
    """A float64 tensor of ``shape`` whose elements are positions ``offset + i`` along ``cmap.dim``.

    Positions, not atoms, are what a movement op moves: they keep repeated channels apart.
    """
    if cmap is None:
        return torch.full(shape, float(CONSTANT), dtype=torch.float64)
    view = [1] * len(shape)
    view[cmap.dim] = cmap.size
    positions = torch.arange(offset, offset + cmap.size, dtype=torch.float64)
    return positions.reshape(view).expand(shape).contiguous()


def compress(positions: torch.Tensor, atom_of: np.ndarray, atoms: AtomGraph, what: str) -> ChannelMap | None:
    """Turn executed position labels back into a channel map (``atom_of[position]`` is its atom).

    The channel dim is the one along which the positions vary; if they vary along several dims
    (a channel dim split into heads or shuffle groups, or interleaved with space by a pixel
    shuffle), the dim holding the most distinct channels is kept and the atoms along the others
    are linked, since those dims must then be pruned in lockstep. Indices along the
    channel dim that hold only constants (zero padding of channels) get atoms of their own.
    """
    pos = positions.to(torch.int64)
    valid = pos >= 0
    if not bool(valid.any()):
        return None
    fast = _single_dim(pos, valid)
    if fast is not None:
        dim, fiber = fast
        return ChannelMap(dim, _atoms_with_constants(fiber.numpy(), atom_of, atoms, what))
    support = []
    for d in range(pos.ndim):
        if pos.shape[d] == 1:
            continue
        hi = torch.where(valid, pos, -1).amax(d)
        lo = torch.where(valid, pos, torch.iinfo(torch.int64).max).amin(d)
        if bool(((hi != lo) & valid.any(d)).any()):
            support.append(d)
    if not support:
        atoms.freeze(atom_of[pos[valid][:1].numpy()], f"{what} reduces the channels to a single one")
        return None
    first = [int(i[0]) for i in torch.nonzero(valid, as_tuple=True)]

    def distinct_along(d: int) -> int:  # channel indices met walking along d from a valid element
        fiber = pos[tuple(slice(None) if k == d else i for k, i in enumerate(first))]
        return int(torch.unique(fiber[fiber >= 0]).numel())

    dim = max(support, key=lambda d: (distinct_along(d), d))
    rows = pos.movedim(dim, 0).reshape(pos.shape[dim], -1)
    idx, col = torch.nonzero(rows >= 0, as_tuple=True)
    span = len(atom_of)
    keys = torch.unique(idx * span + rows[idx, col]).numpy()  # sorted distinct (row, position)
    pairs = np.stack([keys // span, atom_of[keys % span]], 1)
    same_row = pairs[1:, 0] == pairs[:-1, 0]
    atoms.link(pairs[:-1, 1][same_row], pairs[1:, 1][same_row])
    reps = np.full(pos.shape[dim], CONSTANT, dtype=np.int64)
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = ~same_row
    reps[pairs[first, 0]] = pairs[first, 1]
    return ChannelMap(dim, _atoms_with_constants(reps, None, atoms, what))


def _single_dim(pos: torch.Tensor, valid: torch.Tensor) -> tuple[int, torch.Tensor] | None:
    """The common case in one pass: positions vary along one dim only (constants included)."""
    origin = [int(i[0]) for i in torch.nonzero(valid, as_tuple=True)]
    for d in range(pos.ndim):
        if pos.shape[d] == 1:
            continue
        fiber = pos[tuple(slice(None) if k == d else i for k, i in enumerate(origin))]
        if int(torch.unique(fiber[fiber >= 0]).numel()) < 2:
            continue
        shape = [1] * pos.ndim
        shape[d] = -1
        return (d, fiber) if torch.equal(pos, fiber.view(shape).expand_as(pos)) else None
    return None


def _atoms_with_constants(labels: np.ndarray, atom_of: np.ndarray | None, atoms: AtomGraph, what: str) -> np.ndarray:
    """Positions (or atoms, if ``atom_of`` is None) to atoms; constant-only channels get new atoms."""
    out = np.full(len(labels), CONSTANT, dtype=np.int64)
    real = labels >= 0
    out[real] = labels[real] if atom_of is None else atom_of[labels[real]]
    if (~real).any():
        out[~real] = atoms.new(int((~real).sum()))
    return out
