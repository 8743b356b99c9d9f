"""The networkx graph of channel spaces: identity edges, composite edges, maps, topological groups."""

import numpy as np
import pytest

import toy_models
import graphprune
from graphprune.analysis.spaces import smallest_connected, space
from helpers import group_with


def analyze(name, **options):
    model, x = toy_models.build(name)
    return graphprune.analyze(model, x, **options)


def named(gg, name):
    """The node of the space or map called ``name``."""
    (node,) = [n for n, d in gg.space_graph.nodes(data=True) if d.get("name") == name]
    return node


def test_residual_add_is_an_identity_of_spaces():
    """The add links two whole spaces index by index: one identity edge, no atom-level link."""
    gg = analyze("residual")
    g = gg.space_graph
    stem, conv2 = named(gg, "stem"), named(gg, "conv2")
    assert g.edges[stem, conv2]["relation"] == "identity" and g.nodes[stem]["size"] == 8
    assert all(kind == "space" for kind, _ in g.nodes) and not gg._analysis.atoms._links  # one node per producer, not per channel
    residual, inner = group_with(gg, "stem"), group_with(gg, "conv1")
    assert residual.component != inner.component
    assert [residual.id] in gg.topological_groups


def test_concat_couples_its_parts_without_merging_their_groups():
    gg = analyze("dense_concat")
    g = gg.space_graph
    (cat,) = [n for n in g if n[0] == "map"]
    assert g.nodes[cat]["size"] == 12 and set(g[cat]) == {named(gg, "a"), named(gg, "b")}
    assert all(d["relation"] == "holds" for *_, d in g.edges(cat, data=True))
    a, b, c = group_with(gg, "a"), group_with(gg, "b"), group_with(gg, "c")
    assert a is not b and a.component == b.component != c.component
    assert [a.id, b.id] in gg.topological_groups
    assert gg.to_json()["groups"][a.id]["component"] == a.component


def test_heads_are_composite_links_within_a_space():
    gg = analyze("attention_gqa_repeat_kv")
    g = gg.space_graph
    q, k = named(gg, "q"), named(gg, "k")
    assert g.edges[q, q]["relation"] == "composite" and g.edges[q, k]["relation"] == "composite"
    assert group_with(gg, "q").component == group_with(gg, "k").component


@pytest.mark.parametrize("name", ["residual", "shared_conv", "channels_last", "grouped", "attention_gqa_repeat_kv", "depthwise"])
def test_channels_are_those_of_every_link_resolved_atom_by_atom(name):
    """Renaming atoms along identity edges, then a union-find over the composite links, gives what a
    union-find over every link (identities spelled out atom by atom) gives."""
    atoms = analyze(name)._analysis.atoms
    sizes = atoms.sizes
    starts = np.cumsum(sizes) - sizes
    whole = [(np.arange(starts[a], starts[a] + sizes[a]), np.arange(starts[b], starts[b] + sizes[b])) for a, b in atoms._identity]
    links = atoms._links + whole
    n = len(atoms)
    u = np.concatenate([a for a, _ in links]) if links else np.zeros(0, dtype=np.int64)
    v = np.concatenate([b for _, b in links]) if links else np.zeros(0, dtype=np.int64)
    smallest = smallest_connected(n, u, v)
    expected = (np.cumsum(smallest == np.arange(n)) - 1)[smallest]
    assert np.array_equal(atoms.components(), expected)
    assert set(atoms.space_graph()) == {space(i) for i in range(len(sizes))}
