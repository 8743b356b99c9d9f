"""The graph of channel spaces: networkx finds which spaces are one and which constrain each other.

Every producer makes its channels as one block of atoms (``AtomGraph.new``): a *channel space* (a
conv's outputs, a parameter's rows, the constant channels a pad adds). Rules relate spaces in two
ways. An *identity* links two whole spaces index by index (a residual add, a gated product, a
parameter used twice, a depthwise conv's input and output): they are one space, so every layer
reading either holds the same channels and reads the same latent vector (DHP's residual stages,
Li et al. 2020, Sec. B.2). A *composite* relation links parts of spaces (a flatten block,
attention heads, a repeated kv head, a grouped conv's slices). And a channel map holding parts of
several spaces (a concat, the weight dim reading it) couples them without linking any channel.

``space_graph`` is that as a networkx graph: nodes are the spaces (``("space", i)``, the ``i``-th
block) and, in the analysis's graph, the maps holding several spaces (``("map", j)``); edges carry
``relation`` "identity", "composite" or "holds". networkx does the topological work on it, at the
scale of spaces (a few hundred for Llama-3-8B, against 1.8 million atoms):

- ``resolve_channels``: the connected components of the identity edges are one space each. Atoms
  are renamed to those at the same index of the component's first space, so only the composite
  links are left to resolve atom by atom, which a vectorized union-find does
  (``smallest_connected``; ResNet-50 has none left, Llama-3-8B a fifth of its links).
- ``topological_groups``: the connected components of the whole graph, maps included, are the
  topological groups (DepGraph's term): the spaces whose channels are pruned in view of each
  other. Each holds whole channel groups, which groups/graph.py records on them.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import networkx as nx
import numpy as np


def space(i: int) -> tuple[str, int]:
    """The node of the ``i``-th space (block of atoms)."""
    return ("space", i)


def space_of_atoms(sizes: np.ndarray) -> np.ndarray:
    """The space of every atom."""
    return np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)


def space_graph(sizes: np.ndarray, identity: Sequence[tuple[int, int]], u: np.ndarray, v: np.ndarray) -> nx.Graph:
    """Spaces of ``sizes`` atoms each (in atom order), with an identity edge per pair in ``identity``
    and a composite edge between the spaces of every linked atom pair ``(u[k], v[k])`` (once per pair
    of spaces; within one space, a self-loop)."""
    g = nx.Graph()
    g.add_nodes_from((space(i), {"size": s}) for i, s in enumerate(sizes.tolist()))
    if len(u):
        of = space_of_atoms(sizes)
        a, b = of[u], of[v]
        key = np.minimum(a, b) * len(sizes) + np.maximum(a, b)
        key = _distinct(key)
        g.add_edges_from(((space(k // len(sizes)), space(k % len(sizes))) for k in key.tolist()), relation="composite")
    g.add_edges_from(((space(a), space(b)) for a, b in identity), relation="identity")  # the stronger relation wins
    return g


def resolve_channels(graph: nx.Graph, sizes: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Channel id of every atom, numbered in order of each channel's smallest atom.

    Each space's atoms move onto the same index of its identity class's first space (the one with
    the smallest atoms, so every channel keeps its smallest atom); the union-find then joins what
    the composite links ``(u[k], v[k])`` link.
    """
    n = int(sizes.sum())
    atoms = np.arange(n, dtype=np.int64)
    identical = nx.Graph()  # (not nx.Graph(edges): its conversion compiles a dispatcher on first use, 7 ms)
    identical.add_edges_from(e for *e, relation in graph.edges(data="relation") if relation == "identity")
    shift = np.zeros(len(sizes), dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    for component in nx.connected_components(identical):
        if len(component) > 1:
            ids = np.fromiter((i for _, i in component), dtype=np.int64, count=len(component))
            shift[ids] = starts[ids.min()] - starts[ids]
    rep = atoms + np.repeat(shift, sizes) if shift.any() else atoms
    root = smallest_connected(n, rep[u], rep[v])[rep] if len(u) else rep
    first = np.cumsum(root == atoms) - 1  # a channel's smallest atom is the one that is its own root
    return first[root]


def smallest_connected(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """For each of ``n`` nodes, the smallest node connected to it by the edges ``(u[i], v[i])``.

    Vectorized union-find: every round hooks the larger root of each edge whose ends have different
    roots onto the smaller one, then jumps pointers until every node points at its root. A node's
    pointer never exceeds the node, so a root is the smallest node of its tree.
    """
    label = np.arange(n, dtype=np.int64)
    while True:
        lu, lv = label[u], label[v]
        active = lu != lv
        if not active.any():
            return label
        u, v, lu, lv = u[active], v[active], lu[active], lv[active]
        np.minimum.at(label, np.maximum(lu, lv), np.minimum(lu, lv))
        while True:
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped


def add_maps(graph: nx.Graph, sizes: np.ndarray, maps: Sequence[tuple[str, np.ndarray]]) -> None:
    """Put the named channel maps ``maps`` into ``graph``: a space takes the ``name`` of the first map
    holding its atoms only, as many as it has (its producer's output, usually); a map holding atoms
    of several spaces becomes a ``("map", j)`` node (``name``, ``size``) with a "holds" edge to each."""
    if not maps:
        return
    lengths = np.fromiter((len(m) for _, m in maps), dtype=np.int64, count=len(maps))
    spaces = space_of_atoms(sizes)[np.concatenate([m for _, m in maps])]
    key = np.repeat(np.arange(len(maps), dtype=np.int64), lengths) * len(sizes) + spaces
    key = _distinct(key)  # (map, space) pairs
    owner, held = key // len(sizes), key % len(sizes)
    count = np.bincount(owner, minlength=len(maps))
    for j, i in zip(owner.tolist(), held.tolist()):
        if count[j] > 1:
            graph.add_node(("map", j), name=maps[j][0], size=int(lengths[j]))
            graph.add_edge(("map", j), space(i), relation="holds")
        elif lengths[j] == sizes[i] and "name" not in graph.nodes[space(i)]:
            graph.nodes[space(i)]["name"] = maps[j][0]


def topological_groups(graph: nx.Graph) -> dict[Hashable, int]:
    """Topological group of every node: connected components, numbered in order of their first space."""
    components = sorted(nx.connected_components(graph), key=lambda c: min(i for kind, i in c if kind == "space"))
    return {node: k for k, component in enumerate(components) for node in component}


def _distinct(keys: np.ndarray) -> np.ndarray:
    """The distinct values of ``keys`` (>= 0), sorted. Consecutive repeats go first: links and maps
    come in runs of one pair. (``np.unique`` would import ``numpy.ma`` on its first call: 30 ms.)"""
    keys = np.sort(keys[np.diff(keys, prepend=-1) != 0])
    return keys[np.diff(keys, prepend=-1) != 0]
