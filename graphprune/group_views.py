"""Human views of a GroupGraph: a rich table, JSON, Graphviz dot and a PNG drawing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

if TYPE_CHECKING:
    from .groups import GroupGraph


def _group_shares(gg: "GroupGraph", metric: str) -> dict[int, float]:
    """Share of the full cost that disappears when a group alone is pruned away entirely."""
    n = len(gg.prunable_groups)
    if n == 0:
        return {}
    full = gg.budget.evaluate(metric, np.ones(n))
    without_each = gg.budget.evaluate(metric, 1 - np.eye(n))
    return {g.id: float((full - v) / full) for g, v in zip(gg.prunable_groups, without_each)}


def to_json(gg: "GroupGraph") -> dict:
    macs, params = _group_shares(gg, "macs"), _group_shares(gg, "params")
    return {
        "model": type(gg.traced.model).__name__,
        "macs": gg.budget.macs(),
        "params": gg.budget.params(),
        "prunable_mac_share": gg.prunable_mac_share(),
        "fallbacks": [{"module": f.module, "error": f.error, "location": f.location} for f in gg.fallbacks],
        "groups": [
            {
                "id": g.id,
                "size": g.size,
                "prunable": g.prunable,
                "reason": g.reason,
                "inexact": g.inexact,
                "round_to": g.round_to,
                "macs_share": macs.get(g.id, 0.0),
                "params_share": params.get(g.id, 0.0),
                "members": [
                    {"module": m.module, "param": m.param, "dim": m.dim, "role": m.role, "count": len(m.positions)}
                    for m in g.members
                ],
            }
            for g in gg.groups
        ],
    }


def print_summary(gg: "GroupGraph", console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    macs, params = _group_shares(gg, "macs"), _group_shares(gg, "params")
    table = Table(title=f"{type(gg.traced.model).__name__}: {len(gg.groups)} channel groups, {len(gg.prunable_groups)} prunable")
    for col in ("group", "size", "members", "MACs %", "params %", "status"):
        table.add_column(col, justify="right" if col in ("group", "size", "MACs %", "params %") else "left")
    for g in gg.groups:
        names = sorted({m.module for m in g.members})
        shown = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
        status = "prunable" if g.prunable else f"[red]frozen[/red]: {g.reason}"
        if g.prunable and g.inexact:
            status += f" [yellow](inexact: {g.inexact})[/yellow]"
        table.add_row(
            str(g.id), str(g.size), shown,
            f"{100 * macs.get(g.id, 0):.2f}", f"{100 * params.get(g.id, 0):.2f}", status,
        )
    console.print(table)
    console.print(
        f"MACs {gg.budget.macs():,}  params {gg.budget.params():,}  "
        f"MACs that scale with prunable groups: {100 * gg.prunable_mac_share():.2f}%"
    )
    for f in gg.fallbacks:
        console.print(f"[yellow]fallback[/yellow] {f.module} is an opaque leaf: {f.error} ({f.location}){f.advice}")


def space_graph(gg: "GroupGraph") -> nx.DiGraph:
    """Channel spaces (fx node, dim) as nodes, data flow between them as edges, tagged by group."""
    g = nx.DiGraph()
    by_node = {}
    for node, cmap in gg.spaces():
        groups = sorted(set(gg.groups_of(cmap.labels).tolist()))
        key = f"{node.name}:{cmap.dim}"
        by_node[node] = key
        g.add_node(key, size=cmap.size, groups=groups, frozen=not all(gg.groups[i].prunable for i in groups))
    for node, key in by_node.items():
        for user in node.users:
            if user in by_node:
                g.add_edge(key, by_node[user])
    return g


def to_dot(gg: "GroupGraph") -> str:
    g = space_graph(gg)
    lines = ["digraph channel_spaces {", "  node [shape=box, fontsize=10];"]
    for key, data in g.nodes(data=True):
        label = f"{key}\\n{data['size']} ch, groups {','.join(map(str, data['groups']))}"
        color = "lightcoral" if data["frozen"] else "lightblue"
        lines.append(f'  "{key}" [label="{label}", style=filled, fillcolor={color}];')
    for a, b in g.edges():
        lines.append(f'  "{a}" -> "{b}";')
    lines.append("}")
    return "\n".join(lines)


def draw(gg: "GroupGraph", path: str) -> None:
    """PNG of the channel-space graph, one colour per group, frozen spaces outlined in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = space_graph(gg)
    layers = {n: i for i, gen in enumerate(nx.topological_generations(g)) for n in gen}
    nx.set_node_attributes(g, layers, "layer")
    pos = nx.multipartite_layout(g, subset_key="layer", align="horizontal")
    pos = {n: (x, -y) for n, (x, y) in pos.items()}
    height = min(60, max(6, 0.25 * (max(layers.values(), default=0) + 1)))
    fig, ax = plt.subplots(figsize=(12, height))
    colors = [data["groups"][0] if data["groups"] else -1 for _, data in g.nodes(data=True)]
    edgecolors = ["red" if data["frozen"] else "black" for _, data in g.nodes(data=True)]
    nx.draw_networkx(
        g, pos, ax=ax, node_color=colors, cmap="tab20", edgecolors=edgecolors, node_size=120,
        with_labels=len(g) <= 60, font_size=6, arrows=False, width=0.5,
    )
    ax.set_title(f"{type(gg.traced.model).__name__}: channel spaces coloured by group (red outline: frozen)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
