"""Per-layer control: the groups a user's layers reach, and what options given per layer mean
for those groups.

Users name layers (a module, its path or a path prefix, or a class); graphprune prunes groups,
each of which spans every layer its channels flow through (a residual stage ties a dozen convs).
A layer reaches every group one of its tensors is a member of, so an option given for one layer
acts on whole groups, and the report says which. Options:

``ignored_layers``
    every group they reach keeps all its channels: the groups of the channels they produce and of
    those they read, so that the layers stay as they are;
``ratios``
    ``{layer: keep ratio}``: the groups of the channels they produce keep that share (rounded up to
    their channel multiple), and the method allocates the rest of the budget over the other groups;
``min_ratio``, ``round_to``
    one value for every group, or ``{layer: value}`` for the groups of the channels those layers
    produce (others keep the default: no floor, the method's multiple).

A layer given twice with different values for one group (two members of a residual stage, say)
is an error: the option would not mean what it says.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Mapping, Sequence

import torch.nn as nn

from ..errors import OptionError
from .graph import ChannelGroup, GroupGraph

Layer = nn.Module | str | type


@dataclasses.dataclass
class Controls:
    """Per-group constraints resolved from per-layer options (group id -> value)."""

    kept_whole: dict[int, str] = dataclasses.field(default_factory=dict)  # -> why
    fixed: dict[int, float] = dataclasses.field(default_factory=dict)  # -> keep ratio
    min_ratio: dict[int, float] = dataclasses.field(default_factory=dict)
    round_to: dict[int, int | str] = dataclasses.field(default_factory=dict)
    tied: list[list[int]] = dataclasses.field(default_factory=list)  # one count each: the model's class sizes them together

    def given(self) -> list[str]:
        """The per-layer options these come from."""
        return [option for option, value in (("ignored_layers", self.kept_whole), ("ratios", self.fixed),
                                             ("min_ratio per layer", self.min_ratio), ("round_to per layer", self.round_to)) if value]

    def notes(self, gg: GroupGraph) -> list[str]:
        return ([f"group {g} kept whole: {why}" for g, why in self.kept_whole.items()]
                + [f"group {g} keeps {ratio:g} of its {gg.groups[g].size} channels (ratios=)" for g, ratio in self.fixed.items()])

    def fixed_count(self, g: ChannelGroup) -> int:
        """The channels a group with a fixed ratio keeps: a multiple of its step, at least one."""
        step = g.round_to
        return min(g.size, max(step, step * math.ceil(self.fixed[g.id] * g.size / step - 1e-9)))


def resolve(gg: GroupGraph, ignored_layers: Sequence[Layer] = (), ratios: Mapping[Layer, float] | None = None,
            min_ratio: float | Mapping[Layer, float] = 0.0, round_to: int | str | Mapping[Layer, int | str] | None = None,
            ) -> Controls:
    """What the per-layer options say for each group of ``gg``."""
    controls = Controls()
    for layer in ignored_layers:
        for gid, paths in _reached(gg, layer, "ignored_layers", inputs=True).items():
            via = "" if paths == [layer] else f" (through {', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''})"
            controls.kept_whole.setdefault(gid, f"ignored_layers: {_name(layer)}{via} uses this group "
                                                f"({_describe(gg.groups[gid])})")
    if isinstance(min_ratio, Mapping):
        controls.min_ratio = _per_group(gg, min_ratio, "min_ratio", _check_ratio)
    if isinstance(round_to, Mapping):
        controls.round_to = _per_group(gg, round_to, "round_to", _check_round_to)
    controls.fixed = {gid: ratio for gid, ratio in _per_group(gg, ratios or {}, "ratios", _check_ratio).items()
                      if gid not in controls.kept_whole}
    return controls


def _per_group(gg: GroupGraph, values: Mapping[Layer, Any], option: str, check: Any) -> dict[int, Any]:
    out: dict[int, Any] = {}
    given: dict[int, Layer] = {}
    for layer, value in values.items():
        check(option, layer, value)
        for gid in _reached(gg, layer, option):
            if gid in out and out[gid] != value:
                raise OptionError(f"{option}: {_name(given[gid])} and {_name(layer)} reach the same group {gid} "
                                  f"({_describe(gg.groups[gid])}) with different values ({out[gid]!r}, {value!r}): give one")
            out[gid], given[gid] = value, layer
    return out


def _reached(gg: GroupGraph, layer: Layer, option: str, inputs: bool = False) -> dict[int, list[str]]:
    """Prunable group id -> the paths of ``layer``'s modules among its members: the channels those
    modules produce or hold, and with ``inputs`` those they read too (an ignored layer is left as it is)."""
    paths = _paths(gg, layer, option)
    found: dict[int, list[str]] = {}
    for g in gg.prunable_groups:
        hit = sorted({m.module for m in g.members if (inputs or m.role != "in")
                      and any(m.module == p or m.module.startswith(p + ".") or not p for p in paths)})
        if hit:
            found[g.id] = hit
    return found


def _paths(gg: GroupGraph, layer: Layer, option: str) -> list[str]:
    model = gg.traced.model
    modules = dict(model.named_modules(remove_duplicate=False))
    if isinstance(layer, nn.Module):
        paths = [p for p, m in modules.items() if m is layer]
        if not paths:
            raise OptionError(f"{option}: {_name(layer)} is not a module of the model pruned")
        return paths
    if isinstance(layer, type):
        paths = [p for p, m in modules.items() if isinstance(m, layer)]
        if not paths:
            raise OptionError(f"{option}: the model has no {layer.__qualname__}")
        return paths
    if isinstance(layer, str):
        if layer and layer not in modules and not any(p.startswith(layer + ".") for p in modules):
            close = difflib.get_close_matches(layer, [p for p in modules if p], n=3)
            raise OptionError(f"{option}: the model has no module {layer!r}" + (f"; did you mean {', '.join(map(repr, close))}?" if close else ""))
        return [layer]
    raise OptionError(f"{option} names layers by module, path (a prefix such as 'layer3' reaches everything under it) "
                      f"or class, got {type(layer).__name__}")


def _check_ratio(option: str, layer: Layer, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise OptionError(f"{option}[{_name(layer)}] is a share of a group's channels in [0, 1], got {value!r}")


def _check_round_to(option: str, layer: Layer, value: Any) -> None:
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise OptionError(f"{option}[{_name(layer)}] is a channel multiple (an int >= 1) or 'auto', got {value!r}")


def _describe(g: ChannelGroup) -> str:
    modules = sorted({m.module for m in g.members})
    return f"{g.size} channels: {', '.join(modules[:4])}{' ...' if len(modules) > 4 else ''}"


def _name(layer: Layer) -> str:
    if isinstance(layer, type):
        return layer.__qualname__
    if isinstance(layer, nn.Module):
        return f"the {type(layer).__name__} given"
    return repr(layer)
