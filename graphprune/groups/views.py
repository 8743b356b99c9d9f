"""What the views of a GroupGraph show: per-group facts and colours, the layer graph, and the text views
(table, JSON, dot).

Every view reads the same facts (``group_facts``), colours (``group_colours``) and graph (``layer_graph``),
so the table, the JSON, the dot file and the pictures (``inspector.py``) never disagree about a group.
"""

from __future__ import annotations

import colorsys
import dataclasses
from typing import TYPE_CHECKING, Sequence

import networkx as nx
import numpy as np

from ..common.locations import describe_node

if TYPE_CHECKING:
    from .graph import ChannelGroup, GroupGraph
    from .plan import Plan

FROZEN = "#d4d4d4"  # the colour of frozen groups in every picture
SHARE_MEANING = ("MACs % / params %: the share of the model's MACs / parameters that depend on the group, i.e. what "
                 "pruning every channel of it would remove (groups overlap: the shares add up to more than 100); "
                 "- for a frozen group, which is never pruned")


@dataclasses.dataclass
class GroupFacts:
    """One group as every view shows it. ``macs_share``/``params_share``: see ``SHARE_MEANING`` (None: frozen).
    ``kept``: the channels a plan keeps (None without a plan)."""

    id: int
    size: int
    reason: str | None
    inexact: str | None
    round_to: int
    macs_share: float | None
    params_share: float | None
    members: list[str]  # qualified parameter names, top-level ones (cls_token) included
    layers: list[str]  # the modules (or top-level parameters) the members belong to, in first-seen order
    kept: int | None = None

    @property
    def prunable(self) -> bool:
        return self.reason is None

    @property
    def status(self) -> str:
        if self.reason is not None:
            return f"frozen: {self.reason}"
        return "prunable" + (f" (inexact: {self.inexact})" if self.inexact else "")


def group_colours(facts: Sequence[GroupFacts]) -> dict[int, str]:
    """A colour per group: prunable groups walk the hue circle by the golden angle (neighbouring ids look
    different however many there are) at three lightnesses, all light enough for black text; frozen: grey."""
    colours, k = {}, 0
    for f in facts:
        if not f.prunable:
            colours[f.id] = FROZEN
            continue
        r, g, b = colorsys.hls_to_rgb((k * 0.618034) % 1.0, (0.78, 0.66, 0.72)[k % 3], 0.65)
        colours[f.id] = f"#{round(255 * r):02x}{round(255 * g):02x}{round(255 * b):02x}"
        k += 1
    return colours


def _group_shares(gg: "GroupGraph", metric: str) -> dict[int, float]:
    """Share of the full cost that disappears when a group alone is pruned away entirely."""
    n = len(gg.prunable_groups)
    if n == 0:
        return {}
    full = gg.cost.evaluate(metric, np.ones(n))
    without_each = gg.cost.evaluate(metric, 1 - np.eye(n))
    return {g.id: float((full - v) / full) for g, v in zip(gg.prunable_groups, without_each)}


def _layer_of(member, called: set[str]) -> str:
    """A member's layer: its module where the graph calls it, else the parameter itself (``cls_token``,
    ``encoder.pos_embedding``, the in-projection weight of an attention module traced through)."""
    return member.module if member.module in called else member.qualified_name


def group_facts(gg: "GroupGraph", plan: "Plan | None" = None) -> list[GroupFacts]:
    """The facts of every group, in id order; with ``plan``, how many channels it keeps."""
    if plan is not None:
        plan.validate(gg)
    macs, params = _group_shares(gg, "macs"), _group_shares(gg, "params")
    called = {str(n.target) for n in gg.gm.graph.nodes if n.op == "call_module"}

    def facts(g: "ChannelGroup") -> GroupFacts:
        kept = None if plan is None else len(plan.keep.get(g.id, range(g.size)))
        layers = list(dict.fromkeys(_layer_of(m, called) for m in g.members))
        return GroupFacts(g.id, g.size, g.reason, g.inexact, g.round_to, macs.get(g.id), params.get(g.id),
                          [m.qualified_name for m in g.members], layers, kept)

    return [facts(g) for g in gg.groups]


def to_json(gg: "GroupGraph") -> dict:
    facts = group_facts(gg)
    return {
        "model": type(gg.traced.model).__name__,
        "macs": gg.cost.macs(),
        "params": gg.cost.params(),
        "prunable_mac_share": gg.prunable_mac_share(),
        "share_meaning": SHARE_MEANING,
        "fallbacks": [{"module": f.module, "error": f.error, "location": f.location} for f in gg.fallbacks],
        "groups": [
            {
                "id": f.id,
                "size": f.size,
                "prunable": f.prunable,
                "reason": f.reason,
                "inexact": f.inexact,
                "round_to": f.round_to,
                "component": g.component,
                "macs_share": f.macs_share or 0.0,
                "params_share": f.params_share or 0.0,
                "members": [
                    {"name": m.qualified_name, "module": m.module, "param": m.param, "dim": m.dim, "role": m.role,
                     "count": len(m.positions)}
                    for m in g.members
                ],
            }
            for f, g in zip(facts, gg.groups)
        ],
    }


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.2f}"


def print_summary(gg: "GroupGraph", console=None, plan: "Plan | None" = None) -> None:
    """The groups as a table: id, size (kept with a plan), the layers they span, MACs and params shares, status."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    facts = group_facts(gg, plan)
    table = Table(title=f"{type(gg.traced.model).__name__}: {len(gg.groups)} channel groups, {len(gg.prunable_groups)} prunable",
                  caption=f"group: the group id (graphprune's, not a conv's groups=); size: its channels; "
                          f"{'kept: what the plan keeps; ' if plan else ''}layers: the modules or top-level parameters "
                          f"its channels run through; {SHARE_MEANING}", caption_justify="left")
    columns = ["group", "size"] + (["kept"] if plan else []) + ["layers", "MACs %", "params %", "status"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("layers", "status") else "right", overflow="fold")
    for f in facts:
        shown = ", ".join(f.layers[:3]) + (f" +{len(f.layers) - 3}" if len(f.layers) > 3 else "")
        status = "prunable" if f.prunable else f"[red]frozen[/red]: {f.reason}"
        if f.prunable and f.inexact:
            status += f" [yellow](inexact: {f.inexact})[/yellow]"
        kept = [str(f.kept)] if plan else []
        table.add_row(str(f.id), str(f.size), *kept, shown, _percent(f.macs_share), _percent(f.params_share), status)
    console.print(table)
    console.print(
        f"MACs {gg.cost.macs():,}  params {gg.cost.params():,}  "
        f"MACs that scale with prunable groups: {100 * gg.prunable_mac_share():.2f}%"
    )
    for f in gg.fallbacks:
        console.print(f"[yellow]fallback[/yellow] {f.module} is an opaque leaf: {f.error} ({f.location}){f.advice}")


def _node_name(node) -> str:
    """How a picture names an fx node: a module by its path, a parameter by its name, any other op by the
    module it ran in and the op (``layer1.0/add``)."""
    if node.op in ("call_module", "get_attr"):
        return str(node.target)
    if node.op == "placeholder":
        return node.name
    stack = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
    op = node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
    return f"{stack[-1]}/{op}" if stack and stack[-1] else str(op)


def _op_kind(gg: "GroupGraph", node) -> str:
    if node.op == "call_module":
        return type(gg.gm.get_submodule(node.target)).__name__
    if node.op == "get_attr":
        return "parameter"
    return node.op.replace("call_", "") if node.op != "call_function" else "function"


def _owns_parameters(gg: "GroupGraph", node, spaces: dict) -> bool:
    """A module with parameters of its own, a parameter, or an op that reads a weight (``F.linear(x, w)``)."""
    if node.op == "call_module":
        return any(True for _ in gg.gm.get_submodule(node.target).parameters(recurse=False))
    return node.op == "get_attr" or any(a.op == "get_attr" and a not in spaces for a in node.all_input_nodes)


def layer_graph(gg: "GroupGraph") -> nx.DiGraph:
    """The model's channel-carrying ops as nodes, data flow as edges, in graph order.

    Each node is one channel space (an op's output channels) with ``name``, ``op``, ``where`` (the
    source line), ``channels``, ``groups`` (ids) and ``counts`` (how many of its channels each group
    holds). Ops that only pass channels on (activations, dropout, pooling, a reshape that keeps the
    groups) are left out and their edges bridged: what remains are the layers with parameters, the
    merges and splits, and every op where the groups change.
    """
    spaces = gg.spaces()
    keys: dict = {}  # fx node -> keys of its spaces (a tuple output has one per element)
    full = nx.DiGraph()
    for node, cmap in spaces:
        key = f"{node.name}:{cmap.dim}" + (f"#{len(keys[node])}" if node in keys else "")
        keys.setdefault(node, []).append(key)
        counts = gg.group_counts(cmap.labels)
        full.add_node(key, fx=node, channels=cmap.size, groups=sorted(counts), counts=counts, labels=cmap.labels)
    for node, own in keys.items():
        for src in node.all_input_nodes:
            parts = keys.get(src, [])
            for b in own:  # from a tuple output (chunk), only the parts whose channels flow into b (its getitem)
                linked = [a for a in parts if len(parts) == 1
                          or np.intersect1d(full.nodes[a]["labels"], full.nodes[b]["labels"]).size]
                for a in linked or parts:
                    full.add_edge(a, b)
    keep = [k for k, d in full.nodes(data=True) if _shown(gg, full, k, d, keys)]
    g = nx.DiGraph()
    for k in keep:
        d = full.nodes[k]
        index = keys[d["fx"]].index(k)
        name = _node_name(d["fx"]) + (f"[{index}]" if len(keys[d["fx"]]) > 1 else "")
        g.add_node(k, name=name, op=_op_kind(gg, d["fx"]), where=describe_node(d["fx"]), channels=d["channels"],
                   groups=d["groups"], counts=d["counts"])
    shown = set(keep)
    for k in keep:  # bridge the ops left out: connect each shown node to its nearest shown ancestors
        stack, seen = list(full.predecessors(k)), set()
        while stack:
            p = stack.pop()
            if p in seen:
                continue
            seen.add(p)
            if p in shown:
                g.add_edge(p, k)
            else:
                stack.extend(full.predecessors(p))
    return g


def _shown(gg: "GroupGraph", full: nx.DiGraph, key: str, data: dict, spaces: dict) -> bool:
    """Whether a space is drawn: not if its op only passes one input's channels on, unchanged, to another op."""
    preds = list(full.predecessors(key))
    passes_on = len(preds) == 1 and full.nodes[preds[0]]["groups"] == data["groups"] and full.out_degree(key) > 0
    return not passes_on or _owns_parameters(gg, data["fx"], spaces)


def _group_label(groups: list[int]) -> str:
    return ("group id " if len(groups) == 1 else "group ids ") + ", ".join(map(str, groups))


def to_dot(gg: "GroupGraph") -> str:
    """Graphviz dot of ``layer_graph``: each box says its channel count and group ids; frozen boxes are grey
    and dashed, with the reason as a tooltip."""
    facts = {f.id: f for f in group_facts(gg)}
    colours = group_colours(list(facts.values()))
    g = layer_graph(gg)
    lines = ["digraph channel_groups {", "  node [shape=box, fontsize=10, style=filled];"]
    for key, d in g.nodes(data=True):
        frozen = [facts[i] for i in d["groups"] if not facts[i].prunable]
        label = f"{d['name']}\\n{d['op']} · {d['channels']} ch · {_group_label(d['groups'])}" + ("\\nfrozen" if frozen else "")
        tooltip = "; ".join(f"group {f.id}: {f.status}" for f in (facts[i] for i in d["groups"]))
        style = ', style="filled,dashed"' if frozen else ""
        lines.append(f'  "{key}" [label="{_dot_escape(label)}", fillcolor="{colours[d["groups"][0]]}"{style}, '
                     f'tooltip="{_dot_escape(tooltip)}"];')
    for a, b in g.edges():
        lines.append(f'  "{a}" -> "{b}";')
    lines.append("}")
    return "\n".join(lines)


def _dot_escape(text: str) -> str:
    return text.replace('"', '\\"')
