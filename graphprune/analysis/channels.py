"""Channel atoms, channel maps and label execution: the representation every rule works on.

A *channel map* says which tensor dimension of an fx node carries channels, and, for each index
along it, which *atom* it holds. Atoms are created by producers, a block at a time (a conv's
output channels, a parameter's rows: a channel space). Rules *link* atoms that must be pruned
together; what the links connect are the prunable channels (found on the networkx graph of the
spaces, spaces.py), and channels with the same multiplicity in every map form one group (see
groups/graph.py).

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

from .spaces import resolve_channels, space_graph

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
    """Atoms, made in blocks (one per ``new``: a channel space), and the links between them.

    A link of two whole blocks index by index is kept as the pair of blocks (an identity of spaces),
    any other link as arrays of atom pairs; ``space_graph`` and ``components`` resolve them into
    channels (spaces.py). ``frozen``/``inexact`` map each atom to the first reason it got.
    """

    def __init__(self) -> None:
        self._next = 0
        self._sizes: list[int] = []
        self._block_at: dict[int, int] = {}  # first atom of a block -> the block
        self._identity: list[tuple[int, int]] = []
        self._links: list[tuple[np.ndarray, np.ndarray]] = []
        self._link_count = 0
        self._frozen: list[tuple[np.ndarray, str]] = []
        self._inexact: list[tuple[np.ndarray, str]] = []
        self._views: dict[str, tuple[object, object]] = {}

    def __len__(self) -> int:
        return self._next

    def new(self, n: int, frozen: str | None = None) -> np.ndarray:
        ids = np.arange(self._next, self._next + n, dtype=np.int64)
        if n:
            self._block_at[self._next] = len(self._sizes)
            self._sizes.append(n)
        self._next += n
        if frozen is not None:
            self.freeze(ids, frozen)
        return ids

    def link(self, a: np.ndarray, b: np.ndarray) -> None:
        """Elementwise: a[i] and b[i] are the same channel (constants are skipped)."""
        if a is b:  # an activation's output and input: nothing to link
            return
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        keep = (a >= 0) & (b >= 0) & (a != b)
        if keep.any():
            a, b = a[keep].ravel(), b[keep].ravel()
            blocks = self._whole_block(a), self._whole_block(b)
            if None in blocks:
                self._links.append((a, b))
            else:
                self._identity.append(blocks)
            self._link_count += len(a)

    def _whole_block(self, atoms: np.ndarray) -> int | None:
        """The block ``atoms`` is, all of it in order; None if it is not one."""
        block = self._block_at.get(int(atoms[0]))
        if block is None or self._sizes[block] != len(atoms) or not (np.diff(atoms) == 1).all():
            return None
        return block

    def link_rows(self, rows: np.ndarray) -> None:
        """Each row of a 2-D array of atoms is one channel."""
        rows = np.asarray(rows)
        self.link(rows[:, :-1].ravel(), rows[:, 1:].ravel())

    def link_all(self, atoms: np.ndarray) -> None:
        """All of ``atoms`` are one channel."""
        self.link_rows(np.asarray(atoms).reshape(1, -1))

    @property
    def link_count(self) -> int:
        """Links added so far (pairs of distinct atoms, repeats included); 0 iff nothing was linked."""
        return self._link_count

    def mark_inexact(self, atoms: np.ndarray, reason: str) -> None:
        atoms = np.asarray(atoms, dtype=np.int64).reshape(-1)
        if atoms.size:
            self._inexact.append((atoms.copy(), reason))

    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        atoms = np.asarray(atoms, dtype=np.int64).reshape(-1)
        atoms = atoms[atoms >= 0]
        if atoms.size:
            self._frozen.append((atoms, reason))

    @property
    def frozen(self) -> dict[int, str]:
        """{atom: reason it was first frozen for}, in the order atoms were first frozen."""
        return self._first_reasons("frozen", self._frozen)

    @property
    def inexact(self) -> dict[int, str]:
        """{atom: reason it was first marked inexact for}, in the order atoms were first marked."""
        return self._first_reasons("inexact", self._inexact)

    def _first_reasons(self, name: str, chunks: list[tuple[np.ndarray, str]]) -> dict[int, str]:
        cached = self._views.get(name)
        if cached is not None and cached[0] == len(chunks):
            return cached[1]
        view = first_reasons(chunks, None)
        self._views[name] = (len(chunks), view)
        return view

    def frozen_by(self, key: np.ndarray) -> dict[int, str]:
        """{key[atom]: reason} for the first frozen atom of each key (e.g. key = atom -> group)."""
        return first_reasons(self._frozen, key)

    def inexact_by(self, key: np.ndarray) -> dict[int, str]:
        """{key[atom]: reason} for the first atom of each key marked inexact."""
        return first_reasons(self._inexact, key)

    @property
    def sizes(self) -> np.ndarray:
        """How many atoms each block (channel space) holds, in the order they were made."""
        return np.array(self._sizes, dtype=np.int64)

    def space_graph(self) -> nx.Graph:
        """The blocks as networkx nodes, linked by identity and composite edges (spaces.space_graph)."""
        state = (len(self._sizes), len(self._identity), len(self._links))
        cached = self._views.get("space_graph")
        if cached is None or cached[0] != state:
            cached = (state, space_graph(self.sizes, self._identity, *self._composite()))
            self._views["space_graph"] = cached
        return cached[1]

    def components(self) -> np.ndarray:
        """Channel id of every atom, numbered in order of each channel's smallest atom."""
        return resolve_channels(self.space_graph(), self.sizes, *self._composite())

    def _composite(self) -> tuple[np.ndarray, np.ndarray]:
        """Both ends of every link that is not an identity of blocks."""
        if not self._links:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate([a for a, _ in self._links]), np.concatenate([b for _, b in self._links])


def first_reasons(chunks: list[tuple[np.ndarray, str]], key: np.ndarray | None) -> dict[int, str]:
    """{k: reason} where k = key[atom] (the atom itself if key is None) and the reason is that of
    the earliest chunk entry with that k; keys in order of first appearance."""
    if not chunks:
        return {}
    atoms = np.concatenate([c for c, _ in chunks])
    which = np.repeat(np.arange(len(chunks)), [len(c) for c, _ in chunks])
    keys = atoms if key is None else key[atoms]
    uniq, first = np.unique(keys, return_index=True)
    order = np.argsort(first, kind="stable")
    return {k: chunks[w][1] for k, w in zip(uniq[order].tolist(), which[first[order]].tolist())}


#: positions below this are exact in float32; labels use it when they fit (half the memory traffic)
FLOAT32_EXACT = 1 << 24


def label_tensor(cmap: ChannelMap | None, shape: tuple[int, ...], offset: int = 0, contiguous: bool = True) -> torch.Tensor:
    """A float tensor of ``shape`` whose elements are positions ``offset + i`` along ``cmap.dim``
    (float32 while every position is exact in it, else float64).

    Positions, not atoms, are what a movement op moves: they keep repeated channels apart.
    ``contiguous=False`` gives the positions broadcast along the other dims without copying them
    (movement ops give the same values either way; an op that needs real memory raises).
    """
    end = offset + (cmap.size if cmap is not None else 0)
    dtype = torch.float32 if end < FLOAT32_EXACT else torch.float64
    if cmap is None:
        return torch.full(shape, float(CONSTANT), dtype=dtype)
    view = [1] * len(shape)
    view[cmap.dim] = cmap.size
    positions = torch.arange(offset, end, dtype=dtype).reshape(view).expand(shape)
    return positions.contiguous() if contiguous else positions


def compress(positions: torch.Tensor, atom_of: np.ndarray, atoms: AtomGraph, what: str, outer: bool = False) -> ChannelMap | None:
    """Turn executed position labels back into a channel map (``atom_of[position]`` is its atom).

    The channel dim is the one along which the positions vary; if they vary along several dims
    (a channel dim split into heads or shuffle groups, or interleaved with space by a pixel
    shuffle), the dim holding the most distinct channels is kept and the atoms along the others
    are linked, since those dims must then be pruned in lockstep. ``outer`` (a reshape splitting
    channels into heads, analyzed with ``attention="heads"``) keeps the second innermost of those
    dims instead: the heads of ``(..., heads, head_dim)`` and of ``(..., 3, heads, head_dim)``.
    Indices along the channel dim that hold only constants (zero padding of channels) get atoms
    of their own.

    Positions are read as integers (``int64`` conversion). The common case, positions varying
    along one dim only, is recognized on the tensor as it is (no full-size conversion or index
    list); any doubt falls back to the general path on the converted tensor.
    """
    origin = _first_valid(positions)
    if origin is None:
        return None
    fast = _single_dim_direct(positions, origin)
    if fast is not None:
        dim, fiber = fast
        return ChannelMap(dim, _atoms_with_constants(fiber.numpy(), atom_of, atoms, what))
    pos = positions.to(torch.int64)
    valid = pos >= 0
    fast = _single_dim(pos, origin)
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
        atoms.freeze(atom_of[pos[origin].reshape(1).numpy()], f"{what} reduces the channels to a single one")
        return None
    first = list(origin)

    def distinct_along(d: int) -> int:  # channel indices met walking along d from a valid element
        fiber = pos[tuple(slice(None) if k == d else i for k, i in enumerate(first))]
        return int(torch.unique(fiber[fiber >= 0]).numel())

    def one_atom_per_index(d: int) -> bool:  # the other dims only repeat atoms (rotate-half's cat)
        atom = torch.from_numpy(atom_of)[pos.clamp(min=0)]
        others = tuple(k for k in range(pos.ndim) if k != d)
        hi = torch.where(valid, atom, -1).amax(others)
        lo = torch.where(valid, atom, torch.iinfo(torch.int64).max).amin(others)
        return bool(((hi == lo) | (hi < 0)).all())

    if outer and len(support) > 1:
        dim = support[-2]
    else:
        dim = max(support, key=lambda d: (one_atom_per_index(d), distinct_along(d), d))
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


def _first_valid(positions: torch.Tensor) -> tuple[int, ...] | None:
    """Index of the first element (row-major) whose integer value is a position (>= 0), or None.

    ``x > -1`` on the raw values is ``int64(x) >= 0`` (the conversion truncates toward zero).
    """
    if positions.numel() == 0:
        return None
    corner = (0,) * positions.ndim
    if bool(positions[corner] > -1):
        return corner
    valid = (positions > -1).reshape(-1)
    if not bool(valid.any()):
        return None
    flat = int(valid.to(torch.uint8).argmax())  # the first maximal element
    return tuple(int(i) for i in np.unravel_index(flat, tuple(positions.shape)))


def _fiber(pos: torch.Tensor, origin: tuple[int, ...], d: int) -> torch.Tensor:
    return pos[tuple(slice(None) if k == d else i for k, i in enumerate(origin))]


def _single_dim_direct(positions: torch.Tensor, origin: tuple[int, ...]) -> tuple[int, torch.Tensor] | None:
    """``_single_dim`` without converting the whole tensor: the first dim along which the
    (converted) fiber through ``origin`` holds two positions must reproduce the whole tensor
    exactly, and that fiber must hold integers, so the converted tensor is the same broadcast.
    None means: decide on the converted tensor."""
    for d in range(positions.ndim):
        if positions.shape[d] == 1:
            continue
        raw = _fiber(positions, origin, d)
        fiber = raw.to(torch.int64)
        if int(torch.unique(fiber[fiber >= 0]).numel()) < 2:
            continue
        if not torch.equal(fiber.to(raw.dtype), raw):
            return None
        return (d, fiber) if _broadcast_of(positions, raw, d) else None
    return None


def _broadcast_of(positions: torch.Tensor, fiber: torch.Tensor, d: int) -> bool:
    """``torch.equal(positions, fiber broadcast along dim d)``, computed as: every slice across
    ``d`` has minimum and maximum equal to the fiber's value (a few times faster), reading one
    entry of each stride-0 dim (its entries are one memory location)."""
    for k in range(positions.ndim):
        if k != d and positions.stride(k) == 0 and positions.shape[k] > 1:
            positions = positions.narrow(k, 0, 1)
    others = tuple(k for k in range(positions.ndim) if k != d)
    if not others:
        return torch.equal(positions, fiber)
    return torch.equal(positions.amin(dim=others), fiber) and torch.equal(positions.amax(dim=others), fiber)


def _single_dim(pos: torch.Tensor, origin: tuple[int, ...]) -> tuple[int, torch.Tensor] | None:
    """The common case in one pass: positions vary along one dim only (constants included)."""
    for d in range(pos.ndim):
        if pos.shape[d] == 1:
            continue
        fiber = _fiber(pos, origin, d)
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
