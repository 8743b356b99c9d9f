"""The picture of a GroupGraph: its layers in data-flow order, coloured and numbered by group.

One layout, two renderings: a PNG (matplotlib) with a legend, and a self-contained HTML page (inline
SVG and a little JavaScript, nothing fetched at view time) with tooltips, search, zoom and pan, and a
group table that highlights a group's layers when clicked. The layout is layered left to right and
wraps into rows, like text, so a deep network stays a page and not a 5000-pixel column; edges run
only in the gaps between columns and rows, never through a box.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
import textwrap
from typing import TYPE_CHECKING

import networkx as nx

from .views import FROZEN, SHARE_MEANING, GroupFacts, group_colours, group_facts, layer_graph

if TYPE_CHECKING:
    from .graph import GroupGraph
    from .plan import Plan

BOX_W, BOX_H = 150, 38  # a layer's box, in pixels
COLUMN, SLOT = 185, 50  # pitch of the layers along a row, and of the boxes within a layer
ROW_GAP, MARGIN = 46, 30
LABEL_CHARS = 26  # what fits on a box's line at the PNG's and the page's font size
KEY = ("Each box is a layer's output channels: its name, then its channel groups (g = graphprune's group id, not a conv's "
       "groups=) and channel count. Boxes of one colour are pruned together. Grey hatched with a red dashed outline: frozen, "
       "never pruned (the reason is below). Striped: channels of several groups. " + SHARE_MEANING + ".")


def abbreviate(name: str, limit: int = LABEL_CHARS) -> str:
    """``encoder.layers.encoder_layer_0.self_attention.out_proj`` -> ``e.l.el0.sa.out_proj``: the parts of a long
    name shrink to initials (and their numbers) from the left until it fits; the last part stays whole unless it is
    an op after ``/``; what still does not fit is cut from the left, after ``…``."""
    path, slash, op = name.partition("/")
    parts = path.split(".")
    ops = [op] if slash else []
    shrinkable = len(parts) - (0 if slash else 1)
    for i in range(shrinkable + len(ops)):
        if len(_joined(parts, ops)) <= limit:
            break
        if i < len(parts):
            parts[i] = _initials(parts[i])
        else:
            ops[0] = _initials(ops[0])
    short = _joined(parts, ops)
    return short if len(short) <= limit else "…" + short[-(limit - 1):]


def _joined(parts: list[str], ops: list[str]) -> str:
    return ".".join(parts) + "".join(f"/{op}" for op in ops)


def _initials(part: str) -> str:
    """``encoder_layer_0`` -> ``el0``, ``scaled_dot_product_attention`` -> ``sdpa``."""
    words = part.split("_")
    return "".join(w[0] for w in words if w and not w.isdigit()) + "".join(w for w in words if w.isdigit())


def _short_paths(text: str) -> str:
    """File paths cut to their file name, so that a reason's ``file.py:line`` fits a legend line."""
    return re.sub(r"(?:[\w.~-]*/)+([\w.-]+\.py)", r"\1", text)


@dataclasses.dataclass
class Box:
    """A node of ``layer_graph`` and where the layout put it (top-left corner, row, layer)."""

    key: str
    name: str
    op: str
    where: str
    channels: int
    groups: list[int]
    counts: dict[int, int]
    x: float = 0.0
    y: float = 0.0
    row: int = 0
    layer: int = 0


@dataclasses.dataclass
class Picture:
    """What both renderings draw: the boxes placed, the edges routed (SVG path data), the groups' facts."""

    title: str
    boxes: dict[str, Box]
    edges: list[tuple[str, str, str]]  # (from, to, SVG path data: M, H, V and C commands)
    facts: list[GroupFacts]
    colours: dict[int, str]
    width: float
    height: float

    def label(self, box: Box) -> tuple[str, str]:
        """The box's two lines: its name, and its group ids with the channel count (kept/size under a plan)."""
        ids = "+".join(f"g{i}" for i in box.groups[:3]) + ("+…" if len(box.groups) > 3 else "")
        kept = self._kept(box)
        size = f"{kept}/{box.channels}" if kept is not None else str(box.channels)
        frozen = any(not self.facts[i].prunable for i in box.groups)
        return abbreviate(box.name), f"{ids} · {size} ch" + (" · frozen" if frozen else "")

    def _kept(self, box: Box) -> int | None:
        """A group's channels occur equally often in a space (a flatten repeats each), so each keeps its share."""
        facts = [self.facts[i] for i in box.groups]
        if any(f.kept is None for f in facts):
            return None
        return sum(box.counts[f.id] * f.kept // f.size for f in facts)

    def tooltip(self, box: Box) -> str:
        lines = [box.name, f"{box.op}, {box.channels} channels", box.where]
        lines += [f"group {i}: {self.facts[i].size} channels, {self.facts[i].status}" for i in box.groups]
        return "\n".join(lines)


def picture(gg: "GroupGraph", plan: "Plan | None" = None) -> Picture:
    """Lay ``gg``'s layer graph out: layered left to right, wrapped into rows cut where fewest edges cross."""
    g = layer_graph(gg)
    facts = group_facts(gg, plan)
    boxes = {k: Box(k, d["name"], d["op"], d["where"], d["channels"], d["groups"], d["counts"]) for k, d in g.nodes(data=True)}
    layers = _layers(g)
    order = _order(g, layers)
    rows = _rows(g, layers)
    width, height = _place(boxes, layers, order, rows)
    edges = [(a, b, _route(boxes[a], boxes[b], rows, boxes)) for a, b in g.edges()]
    model = type(gg.traced.model).__name__
    title = f"{model}: {len(gg.groups)} channel groups, {len(gg.prunable_groups)} prunable"
    return Picture(title, boxes, edges, facts, group_colours(facts), width, height)


def _layers(g: nx.DiGraph) -> dict[str, int]:
    """Longest path from the inputs; a parameter read somewhere deep sits just before its reader, not at the start."""
    layer: dict[str, int] = {}
    for n in nx.topological_sort(g):
        layer[n] = max((layer[p] + 1 for p in g.predecessors(n)), default=0)
    for n in reversed(list(nx.topological_sort(g))):
        if g.in_degree(n) == 0 and g.out_degree(n):
            layer[n] = min(layer[s] for s in g.successors(n)) - 1
    return layer


def _order(g: nx.DiGraph, layers: dict[str, int]) -> dict[str, int]:
    """Within a layer, each box goes by the mean position of its inputs (fewer crossings), then graph order."""
    by_layer: dict[int, list[str]] = {}
    for n in g.nodes:  # graph order
        by_layer.setdefault(layers[n], []).append(n)
    slot: dict[str, int] = {}
    for layer in sorted(by_layer):
        nodes = by_layer[layer]
        mean = {n: sum(slot.get(p, 0) for p in g.predecessors(n)) / max(1, g.in_degree(n)) for n in nodes}
        for i, n in enumerate(sorted(nodes, key=lambda n: mean[n])):
            slot[n] = i
    return slot


def _rows(g: nx.DiGraph, layers: dict[str, int]) -> list[range]:
    """Consecutive layers per row: about as many as make the picture 3:2, each row cut where fewest edges cross."""
    depth = max(layers.values(), default=0) + 1
    widths = [0] * depth
    for n in g.nodes:
        widths[layers[n]] += 1
    row_px = 1.5 * sum(widths) / depth * SLOT + ROW_GAP  # a row is as tall as its widest layer, about 1.5x the mean
    per_row = max(4, min(24, round(math.sqrt(1.5 * depth * row_px / COLUMN))))
    crossing = [0] * depth  # edges that cross a cut after each layer
    for a, b in g.edges:
        for c in range(layers[a], layers[b]):
            crossing[c] += 1
    rows, start = [], 0
    while start < depth:
        end = start + per_row
        if end < depth:
            candidates = range(start + max(1, (3 * per_row) // 5), end + 1)
            end = min(candidates, key=lambda c: (crossing[c - 1], -c))
        rows.append(range(start, min(end, depth)))
        start = end
    return rows


def _place(boxes: dict[str, Box], layers: dict[str, int], order: dict[str, int], rows: list[range]) -> tuple[float, float]:
    row_of = {layer: r for r, row in enumerate(rows) for layer in row}
    widths: dict[int, int] = {}
    for k in boxes:
        widths[layers[k]] = widths.get(layers[k], 0) + 1
    tops, y = [], MARGIN + 24  # room above the first row for its skip edges
    for row in rows:
        tops.append(y)
        y += max(widths.get(layer, 0) for layer in row) * SLOT + ROW_GAP
    for k, box in boxes.items():
        layer = layers[k]
        r = row_of[layer]
        slots = max(widths.get(layer2, 0) for layer2 in rows[r])
        box.row, box.layer = r, layer
        box.x = MARGIN + (layer - rows[r].start) * COLUMN
        box.y = tops[r] + (order[k] + (slots - widths[layer]) / 2) * SLOT
    width = MARGIN * 2 + max(len(row) for row in rows) * COLUMN if rows else 2 * MARGIN
    return width, y - ROW_GAP + MARGIN


def _route(a: Box, b: Box, rows: list[range], boxes: dict[str, Box]) -> str:
    """An edge's path: straight to the next layer in the same row; otherwise out into the gap after ``a``'s
    column, along the gap above ``b``'s row, and down the gap before ``b``'s column."""
    gap = (COLUMN - BOX_W) / 2
    y1, y2 = a.y + BOX_H / 2, b.y + BOX_H / 2
    x1, x2 = a.x + BOX_W, b.x
    if a.row == b.row and b.layer == a.layer + 1:
        return f"M{x1:.0f} {y1:.0f} C{x1 + gap:.0f} {y1:.0f} {x2 - gap:.0f} {y2:.0f} {x2:.0f} {y2:.0f}"
    row_top = min(box.y for box in boxes.values() if box.row == b.row)
    lane = row_top - 12 - 6 * ((a.layer + b.layer) % 3)  # a few lanes, so parallel edges stay apart
    return (f"M{x1:.0f} {y1:.0f} H{x1 + gap:.0f} V{lane:.0f} H{x2 - gap:.0f} V{y2:.0f} H{x2:.0f}")


def draw(gg: "GroupGraph", path: str, plan: "Plan | None" = None) -> None:
    """PNG of ``figure(gg, plan)``."""
    figure(gg, plan).savefig(path, dpi=100)


def figure(gg: "GroupGraph", plan: "Plan | None" = None):
    """A matplotlib figure of ``picture(gg, plan)`` with a legend: what the boxes mean, and one entry per group
    (colour, size, shares or frozen reason). 100 pixels per inch: the layout's pixels are the PNG's. A plain
    ``Figure``, not pyplot's: drawing leaves the user's matplotlib backend and open figures alone."""
    from matplotlib.figure import Figure
    from matplotlib.patches import PathPatch

    pic = picture(gg, plan)
    columns = max(1, int(pic.width // 460))
    entry_rows = math.ceil(len(pic.facts) / columns)
    key = textwrap.wrap(KEY, int((pic.width - 2 * MARGIN) / 5.4))
    legend_h = 30 + 14 * len(key) + 18 * entry_rows
    total_h = pic.height + legend_h
    fig = Figure(figsize=(pic.width / 100, total_h / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, pic.width)
    ax.set_ylim(total_h, 0)
    ax.axis("off")
    ax.text(MARGIN, 20, pic.title, fontsize=11, weight="bold", va="center")
    for _, _, d in pic.edges:
        ax.add_patch(PathPatch(_mpl_path(d), fill=False, edgecolor="#8a8a8a", linewidth=0.7))
    for box in pic.boxes.values():
        _draw_box(ax, pic, box)
    _draw_legend(ax, pic, pic.height, key, columns)
    return fig


def _mpl_path(d: str):
    """Our path data (M, L, H, V, C with absolute coordinates) as a matplotlib Path."""
    from matplotlib.path import Path as MplPath

    verts, codes, x, y = [], [], 0.0, 0.0
    for cmd, args in re.findall(r"([MLHVC])([^MLHVC]*)", d):
        nums = [float(v) for v in args.split()]
        if cmd == "H":
            x = nums[0]
        elif cmd == "V":
            y = nums[0]
        elif cmd == "C":
            verts += [(nums[0], nums[1]), (nums[2], nums[3])]
            codes += [MplPath.CURVE4, MplPath.CURVE4]
            x, y = nums[4], nums[5]
            verts.append((x, y))
            codes.append(MplPath.CURVE4)
            continue
        else:
            x, y = nums[0], nums[1]
        verts.append((x, y))
        codes.append(MplPath.MOVETO if cmd == "M" else MplPath.LINETO)
    return MplPath(verts, codes)


def _draw_box(ax, pic: Picture, box: Box) -> None:
    from matplotlib.patches import Rectangle

    stripe = BOX_W / len(box.groups)
    for i, gid in enumerate(box.groups):
        frozen = not pic.facts[gid].prunable
        ax.add_patch(Rectangle((box.x + i * stripe, box.y), stripe, BOX_H, facecolor=pic.colours[gid],
                               hatch="///" if frozen else None, edgecolor="#ababab" if frozen else "none", linewidth=0))
    frozen = any(not pic.facts[i].prunable for i in box.groups)
    ax.add_patch(Rectangle((box.x, box.y), BOX_W, BOX_H, fill=False, edgecolor="#b00000" if frozen else "#333333",
                           linewidth=1.6 if frozen else 0.6, linestyle="--" if frozen else "-"))
    name, groups = pic.label(box)
    ax.text(box.x + 4, box.y + 12, name, fontsize=6.5, va="center", family="DejaVu Sans")
    ax.text(box.x + 4, box.y + 27, groups, fontsize=6.5, va="center", weight="bold", family="DejaVu Sans")


def _draw_legend(ax, pic: Picture, top: float, key: list[str], columns: int) -> None:
    from matplotlib.patches import Rectangle

    for i, line in enumerate(key):
        ax.text(MARGIN, top + 8 + 14 * i, line, fontsize=7.5, va="center")
    top += 14 * len(key) + 16
    width = (pic.width - 2 * MARGIN) / columns
    rows = math.ceil(len(pic.facts) / columns)
    for i, f in enumerate(pic.facts):
        x, y = MARGIN + (i // rows) * width, top + (i % rows) * 18
        ax.add_patch(Rectangle((x, y - 6), 22, 12, facecolor=pic.colours[f.id], hatch=None if f.prunable else "////",
                               edgecolor="#7a7a7a" if not f.prunable else "#333333", linewidth=0.6))
        ax.text(x + 28, y, _legend_text(f, int(width / 5.6) - 6), fontsize=7, va="center")


def _legend_text(f: GroupFacts, limit: int) -> str:
    size = f"{f.kept}/{f.size}" if f.kept is not None else str(f.size)
    if f.prunable:
        text = f"g{f.id}  {size} ch  MACs {100 * f.macs_share:.1f}%  params {100 * f.params_share:.1f}%"
        text += "  inexact" if f.inexact else ""
    else:
        text = f"g{f.id}  {size} ch  frozen: {_short_paths(f.reason)}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_html(gg: "GroupGraph", plan: "Plan | None" = None) -> str:
    """One self-contained HTML page of ``picture(gg, plan)``: hover a box for its groups and source line, click a
    box or a row of the group table to highlight the group's layers, search by module name, wheel to zoom, drag to pan."""
    pic = picture(gg, plan)
    svg = _svg(pic)
    groups = [{"id": f.id, "size": f.size, "kept": f.kept, "prunable": f.prunable, "status": f.status,
               "macs": f.macs_share, "params": f.params_share, "members": f.members, "layers": f.layers,
               "colour": pic.colours[f.id]} for f in pic.facts]
    rows = "\n".join(_table_row(f, pic.colours[f.id]) for f in pic.facts)
    data = json.dumps({"groups": groups}).replace("</", "<\\/")
    kept = "<th>kept</th>" if plan is not None else ""
    return _PAGE.format(title=html.escape(pic.title), svg=svg, rows=rows, data=data, kept=kept,
                        share=html.escape(SHARE_MEANING), count=len(pic.facts), prunable=sum(f.prunable for f in pic.facts),
                        layers=len(pic.boxes), script=_SCRIPT, style=_STYLE)


def _table_row(f: GroupFacts, colour: str) -> str:
    swatch = f'<span class="sw{"" if f.prunable else " frozen"}" style="background:{colour}"></span>'
    kept = f"<td>{f.kept}</td>" if f.kept is not None else ""
    share = (lambda s: "-" if s is None else f"{100 * s:.2f}")
    status = "prunable" if f.prunable else "frozen"
    return (f'<tr data-group="{f.id}" class="{status}"><td>{swatch}g{f.id}</td><td>{f.size}</td>{kept}'
            f"<td>{share(f.macs_share)}</td><td>{share(f.params_share)}</td>"
            f'<td class="status" title="{html.escape(f.status)}">{html.escape(_short_paths(f.status))}</td></tr>')


def _svg(pic: Picture) -> str:
    parts = [f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {pic.width:.0f} {pic.height:.0f}" '
             f'data-width="{pic.width:.0f}" data-height="{pic.height:.0f}">',
             '<defs><pattern id="hatch" patternUnits="userSpaceOnUse" width="7" height="7" patternTransform="rotate(45)">'
             f'<rect width="7" height="7" fill="{FROZEN}"/><line x1="0" y1="0" x2="0" y2="7" stroke="#b0b0b0" stroke-width="2"/>'
             '</pattern><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="6" markerHeight="6" orient="auto">'
             '<path d="M0 0 L8 4 L0 8 z" fill="#8a8a8a"/></marker></defs>', '<g id="edges">']
    parts += [f'<path d="{d}" data-from="{html.escape(a)}" data-to="{html.escape(b)}"/>' for a, b, d in pic.edges]
    parts.append('</g><g id="boxes">')
    for box in pic.boxes.values():
        stripe = BOX_W / len(box.groups)
        fills = "".join(
            f'<rect x="{box.x + i * stripe:.1f}" y="{box.y:.0f}" width="{stripe:.1f}" height="{BOX_H}" '
            f'fill="{pic.colours[gid] if pic.facts[gid].prunable else "url(#hatch)"}"/>' for i, gid in enumerate(box.groups))
        frozen = any(not pic.facts[i].prunable for i in box.groups)
        name, groups = pic.label(box)
        parts.append(
            f'<g class="box{" frozen" if frozen else ""}" data-key="{html.escape(box.key)}" data-name="{html.escape(box.name)}" '
            f'data-groups="{" ".join(map(str, box.groups))}"><title>{html.escape(pic.tooltip(box))}</title>{fills}'
            f'<rect class="outline" x="{box.x:.0f}" y="{box.y:.0f}" width="{BOX_W}" height="{BOX_H}"/>'
            f'<text x="{box.x + 5:.0f}" y="{box.y + 15:.0f}">{html.escape(name)}</text>'
            f'<text class="ids" x="{box.x + 5:.0f}" y="{box.y + 30:.0f}">{html.escape(groups)}</text></g>')
    parts.append("</g></svg>")
    return "\n".join(parts)


_STYLE = """
body{margin:0;font:13px system-ui,sans-serif;display:flex;height:100vh;color:#222}
#main{flex:1;display:flex;flex-direction:column;min-width:0}
header{padding:8px 12px;border-bottom:1px solid #ddd}
header h1{font-size:16px;margin:0 0 4px}
header p{margin:2px 0;color:#555;font-size:12px}
#tools{display:flex;gap:8px;align-items:center;margin-top:6px}
#search{width:260px;padding:3px 6px}
#view{flex:1;overflow:hidden;cursor:grab;background:#fafafa}
#view.dragging{cursor:grabbing}
svg{width:100%;height:100%;display:block}
#edges path{fill:none;stroke:#8a8a8a;stroke-width:1;marker-end:url(#arrow)}
.box text{font:10.5px system-ui,sans-serif;pointer-events:none}
.box text.ids{font-weight:600}
.box .outline{fill:none;stroke:#333;stroke-width:.8}
.box.frozen .outline{stroke:#b00000;stroke-width:2;stroke-dasharray:5 3}
.box{cursor:pointer}
.dim .box:not(.hit){opacity:.18}
.dim #edges path{opacity:.25}
.box.hit .outline{stroke:#000;stroke-width:3}
aside{width:430px;border-left:1px solid #ddd;display:flex;flex-direction:column;min-height:0}
#detail{padding:8px 12px;border-bottom:1px solid #ddd;max-height:40%;overflow:auto;font-size:12px;white-space:pre-wrap}
#tablewrap{overflow:auto;flex:1}
table{border-collapse:collapse;width:100%;font-size:12px}
th,td{padding:2px 6px;text-align:right;vertical-align:top;white-space:nowrap}
td.status{white-space:normal;overflow-wrap:anywhere}
th{position:sticky;top:0;background:#f0f0f0}
td.status,th.status{text-align:left}
tr{cursor:pointer}
tr:hover{background:#eef}
tr.sel{background:#ffe9a8}
.sw{display:inline-block;width:14px;height:10px;margin-right:4px;border:1px solid #555;vertical-align:middle}
.sw.frozen{background-image:repeating-linear-gradient(45deg,#8a8a8a 0 2px,transparent 2px 5px)!important}
"""

_SCRIPT = """
const data = JSON.parse(document.getElementById('data').textContent);
const svg = document.getElementById('graph'), view = document.getElementById('view');
const boxes = [...document.querySelectorAll('.box')];
const detail = document.getElementById('detail'), found = document.getElementById('found');
const full = [0, 0, +svg.dataset.width, +svg.dataset.height];
let vb = full.slice();
function setView(v) { vb = v; svg.setAttribute('viewBox', v.join(' ')); }
function fit() { setView(full.slice()); }
view.addEventListener('wheel', e => {
  e.preventDefault();
  const r = svg.getBoundingClientRect(), s = Math.min(r.width / vb[2], r.height / vb[3]);
  const px = vb[0] + (e.clientX - r.left - (r.width - vb[2] * s) / 2) / s;
  const py = vb[1] + (e.clientY - r.top - (r.height - vb[3] * s) / 2) / s;
  const k = e.deltaY > 0 ? 1.2 : 1 / 1.2;
  setView([px - (px - vb[0]) * k, py - (py - vb[1]) * k, vb[2] * k, vb[3] * k]);
}, {passive: false});
let drag = null;
view.addEventListener('mousedown', e => { drag = [e.clientX, e.clientY, vb.slice()]; view.classList.add('dragging'); });
window.addEventListener('mouseup', () => { drag = null; view.classList.remove('dragging'); });
window.addEventListener('mousemove', e => {
  if (!drag) return;
  const r = svg.getBoundingClientRect(), s = Math.min(r.width / vb[2], r.height / vb[3]);
  setView([drag[2][0] - (e.clientX - drag[0]) / s, drag[2][1] - (e.clientY - drag[1]) / s, vb[2], vb[3]]);
});
function highlight(hits) {
  svg.classList.toggle('dim', hits !== null);
  boxes.forEach(b => b.classList.toggle('hit', hits !== null && hits.includes(b)));
}
function selectGroups(ids, about) {
  const hits = boxes.filter(b => b.dataset.groups.split(' ').some(g => ids.includes(+g)));
  highlight(hits);
  document.querySelectorAll('tr[data-group]').forEach(tr => tr.classList.toggle('sel', ids.includes(+tr.dataset.group)));
  const lines = [about];
  for (const id of ids) {
    const g = data.groups[id];
    lines.push(`group ${id}: ${g.kept === null ? g.size : g.kept + '/' + g.size} channels, ${g.status}`,
               `  ${hits.filter(b => b.dataset.groups.split(' ').includes(String(id))).length} boxes here; ` +
               `${g.members.length} parameters:`, ...g.members.map(m => '    ' + m));
  }
  detail.textContent = lines.join('\\n');
  found.textContent = `${hits.length} boxes`;
}
boxes.forEach(b => b.addEventListener('click', e => {
  e.stopPropagation();
  selectGroups(b.dataset.groups.split(' ').map(Number), b.querySelector('title').textContent);
}));
document.querySelectorAll('tr[data-group]').forEach(tr => tr.addEventListener('click', () =>
  selectGroups([+tr.dataset.group], '')));
function clear() { highlight(null); detail.textContent = detail.dataset.help; found.textContent = '';
  document.querySelectorAll('tr.sel').forEach(tr => tr.classList.remove('sel')); }
document.getElementById('search').addEventListener('input', e => {
  const q = e.target.value.trim().toLowerCase();
  if (!q) { clear(); return; }
  const hits = boxes.filter(b => b.dataset.name.toLowerCase().includes(q));
  highlight(hits);
  found.textContent = `${hits.length} of ${boxes.length} boxes match`;
  if (hits.length) {
    const r = hits[0].querySelector('.outline');
    const x = +r.getAttribute('x'), y = +r.getAttribute('y'), w = Math.max(900, vb[2] < full[2] ? vb[2] : 900);
    setView([x - w / 3, y - w / 4, w, w * 0.6]);
  }
});
document.getElementById('fit').addEventListener('click', fit);
document.getElementById('clear').addEventListener('click', () => { document.getElementById('search').value = ''; clear(); fit(); });
document.addEventListener('keydown', e => { if (e.key === 'Escape') clear(); });
clear();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>
<body>
<div id="main">
<header><h1 id="title">{title}</h1>
<p>{layers} boxes, each a layer's output channels: its name, then its channel groups (g = graphprune's group id, not a conv's
<code>groups=</code>) and channel count. One colour, one group: its channels are pruned together. Grey hatched with a red dashed
outline: frozen, never pruned (the reason is in the table and the tooltip). Striped: channels of several groups.</p>
<div id="tools"><input id="search" placeholder="search a module name (layer2.0.conv1)"><span id="found"></span>
<button id="fit">fit</button><button id="clear">clear</button>
<span style="color:#777">hover: details · click a box or a group: highlight its layers · wheel: zoom · drag: pan</span></div>
</header>
<div id="view">{svg}</div>
</div>
<aside>
<div id="detail" data-help="Click a box or a row to see a group's parameters."></div>
<div id="tablewrap"><table>
<caption style="caption-side:bottom;text-align:left;padding:6px;color:#555">{share}</caption>
<thead><tr><th>group</th><th>size</th>{kept}<th>MACs %</th><th>params %</th><th class="status">status
({prunable} of {count} prunable)</th></tr></thead>
<tbody>
{rows}
</tbody></table></div>
</aside>
<script type="application/json" id="data">{data}</script>
<script>{script}</script>
</body></html>
"""
