"""The networkx graph of channel spaces: identity edges, composite edges, and the channels they resolve to."""

import numpy as np
import pytest

import toy_models
import graphprune
from graphprune.spaces import smallest_connected, space


def analyze(name, **options):
    model, x = toy_models.build(name)
    return graphprune.analyze(model, x, **options)


def named(gg, name):
    """The space of the producer ``name`` (its output channels)."""
    (labels,) = [m.labels for node, m in gg.spaces() if node.name == name]
    return space(gg._analysis.atoms._block_at[int(labels[0])])


def test_residual_add_is_an_identity_of_spaces():
    """The add links two whole spaces index by index: one identity edge, no atom-level link."""
    gg = analyze("residual")
    g = gg._analysis.atoms.space_graph()
    stem, conv2 = named(gg, "stem"), named(gg, "conv2")
    assert g.edges[stem, conv2]["relation"] == "identity" and g.nodes[stem]["size"] == 8
    assert all(kind == "space" for kind, _ in g.nodes) and not gg._analysis.atoms._links  # one node per producer, not per channel


def test_heads_are_composite_links_within_a_space():
    gg = analyze("attention_gqa_repeat_kv")
    g = gg._analysis.atoms.space_graph()
    q, k = named(gg, "q"), named(gg, "k")
    assert g.edges[q, q]["relation"] == "composite" and g.edges[q, k]["relation"] == "composite"


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
