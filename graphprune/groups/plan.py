"""Pruning plans: which channels each group keeps. Plans are plain data: JSON in, JSON out."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

from ..errors import PlanError

if TYPE_CHECKING:
    from .graph import GroupGraph


@dataclasses.dataclass
class Plan:
    """``keep[group id]`` = sorted kept channel indices; a group left out keeps everything.

    ``sizes`` records each listed group's full size, so re-applying the plan to another instance
    can check it is the same architecture.
    """

    keep: dict[int, list[int]]
    sizes: dict[int, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keep = {int(g): sorted(map(int, kept)) for g, kept in self.keep.items()}
        self.sizes = {int(g): int(n) for g, n in self.sizes.items()}

    @classmethod
    def from_indices(cls, gg: "GroupGraph", kept: dict[int, list[int]]) -> "Plan":
        """``kept[group id]``: the channel indices that group keeps; the groups' sizes from ``gg``."""
        return cls(kept, {g: gg.groups[g].size for g in kept})

    def validate(self, gg: "GroupGraph") -> None:
        """Raise PlanError unless every listed group exists, is prunable and keeps a valid subset."""
        for gid, kept in self.keep.items():
            if gid >= len(gg.groups):
                raise PlanError(f"plan names group {gid}, but the model has {len(gg.groups)} groups: is it the same architecture?")
            g = gg.groups[gid]
            if gid in self.sizes and self.sizes[gid] != g.size:
                raise PlanError(f"group {gid} has {g.size} channels here but {self.sizes[gid]} in the plan: the plan is for another architecture")
            if not g.prunable and len(kept) != g.size:
                raise PlanError(f"group {gid} is frozen ({g.reason}); a plan cannot prune it")
            if not kept:
                raise PlanError(f"group {gid} would keep no channel; every group keeps at least one")
            if kept[0] < 0 or kept[-1] >= g.size or len(set(kept)) != len(kept):
                raise PlanError(f"group {gid}: kept indices must be distinct and in [0, {g.size})")

    def counts(self) -> dict[int, int]:
        return {g: len(k) for g, k in self.keep.items()}

    def to_json(self) -> str:
        return json.dumps({"format": "graphprune.plan/1", "groups": [
            {"id": g, "size": self.sizes.get(g), "keep": kept} for g, kept in sorted(self.keep.items())
        ]})

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        data = json.loads(text)
        if data.get("format") != "graphprune.plan/1":
            raise PlanError("not a graphprune plan (missing format 'graphprune.plan/1')")
        groups = data["groups"]
        return cls({g["id"]: g["keep"] for g in groups}, {g["id"]: g["size"] for g in groups if g.get("size") is not None})

    def kept_per_layer(self, gg: "GroupGraph") -> dict[str, float]:
        """{layer: kept fraction of its output channels} for every layer that produces channels, in graph order."""
        kept: dict[str, list[int]] = {}
        for g in gg.groups:
            for m in g.members:
                if m.role == "out" and m.param == "weight":
                    n = kept.setdefault(m.module, [0, 0])
                    n[0] += len(m.indices(self.keep[g.id])) if g.id in self.keep else len(m.positions)
                    n[1] += len(m.positions)
        order = {node.target: i for i, node in enumerate(gg.gm.graph.nodes) if node.op == "call_module"}
        return {name: k / total for name, (k, total) in sorted(kept.items(), key=lambda item: order.get(item[0], len(order)))}

    def summary(self, gg: "GroupGraph") -> list[tuple[int, int, int, str]]:
        """(group, kept, size, members) rows, for reports."""
        rows = []
        for g in gg.prunable_groups:
            kept = len(self.keep.get(g.id, range(g.size)))
            names = sorted({m.module for m in g.members})
            rows.append((g.id, kept, g.size, ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")))
        return rows
