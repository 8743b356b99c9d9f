"""Activation-aware importance with bias compensation: FLAP (An et al., "Fluctuation-based Adaptive
Structured Pruning for Large Language Models", AAAI 2024), in its group form.

Criterion. A layer that reads channel j as input feature j (a linear or convolution layer: the
group's "in" members) loses W[:, j] x_j when j goes. Replacing x_j by its mean over the calibration
tokens instead (the compensation below) leaves an error whose expected square is
Var(x_j) * ||W[:, j]||², the fluctuation of the input times the squared norm of the weights that read
it. A channel's importance is that product summed over every layer reading it (for a convolution,
W[:, j] holds every kernel position; for a heads group, j's head dims are summed), with the
statistics from forward hooks over ``batches`` batches of ``calib_data`` (``importance.input_statistics``:
no loss, no gradients). Scores are then allocated like l1's: divided by their group's mean (FLAP
standardizes per layer), the globally lowest channels go until the budget is met (magnitude.py).

Bias compensation (``compensate``, default True). For each removed channel j and each layer reading
it, W[:, j] · mean_j is added to that layer's bias, so its output keeps its mean over the calibration
data: FLAP's way of pruning without retraining. Like NAP's OBS updates (nap_channel.py), it is written
into the model the pass was given, once the plan is final (``commit``: after a latency budget's
re-plans, before slimming), with the removed channels' slices
zeroed in every member (``exactness.zero_pruned``): that model then computes what the slim model does,
and the slim pass copies it. Exact in expectation where the reading layer is linear in what it reads
and removing j changes none of its other inputs, which the statistics (taken at the layer's own
input, after any activation function) make true for elementwise activations; not where the channels
meet a normalization across them on the way (LayerNorm, an RMS norm: removing one rescales the
others; the analysis flags these), so such groups are left uncompensated. A convolution's
compensation is exact where its window lies inside the input (zero padding reads no mean). Layers
without a bias are not given one (the analysis and the cost model do not know the parameter, and
a Hugging Face config could not state it): their removed inputs stay uncompensated. The report
lists what was and was not compensated, and why. Statistics come from the unpruned model, as in
FLAP: layers downstream of a pruned one see inputs shifted by its pruning.

Options: ``calib_data`` (or ``train_data``, which ``apply`` passes), ``batches`` (8), ``compensate`` (True).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch

from graphprune.common.distributed import broadcast_module
from graphprune.slimming.exactness import zero_pruned
from graphprune.groups.graph import GroupGraph
from graphprune.common.locations import describe_node
from graphprune.groups.plan import Plan

from .base import register
from .importance import CalibratedScorePass, InputStatistics, input_statistics, member_sums


@register
class FlapPass(CalibratedScorePass):
    """Options: ``calib_data``, ``batches`` (8), ``compensate`` (True); see the module docstring."""

    name = "flap"

    def __init__(self, *args: Any, batches: int = 8, compensate: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batches, self.compensate = batches, compensate
        self.notes: list[str] = []

    @functools.cached_property
    def statistics(self) -> dict[str, InputStatistics]:
        return input_statistics(self.model, self.gg, self.data, self.batches, self.name)

    def scores(self) -> dict[int, np.ndarray]:
        statistics = self.statistics

        def fluctuation(module: str, param: str, w: torch.Tensor, dim: int, others: list[int]) -> torch.Tensor:
            read = statistics.get(module) if param == "weight" and dim == 1 else None
            return torch.zeros(w.shape[dim]) if read is None else read.var.to(w.device) * w.double().square().sum(others)

        scores = member_sums(self.model, self.gg, fluctuation)
        unread = [gid for gid, s in scores.items() if not s.any()]
        if unread:
            self.notes.append(f"flap: no linear or convolution layer reads group(s) {', '.join(map(str, unread))} as its input "
                              "(or every channel is constant there): their channels rank as equals")
        return scores

    def commit(self, plan: Plan) -> None:
        if self.compensate:
            self.notes.extend(compensate_biases(self.model, self.gg, plan, self.statistics))
            broadcast_module(self.model)  # rank 0's compensated weights, as nap's OBS-updated ones

    def refine_report(self, report: Any) -> Any:
        return dataclasses.replace(report, notes=[*report.notes, *self.notes])


def compensate_biases(model: torch.nn.Module, gg: GroupGraph, plan: Plan, statistics: dict[str, InputStatistics]) -> list[str]:
    """Add W[:, j] · mean_j of every removed channel j to the bias of each layer reading it and zero the
    removed channels in every member of ``model`` (in place); returns what the report says of it."""
    mixed = _normalized_across(gg)
    modules = dict(model.named_modules())
    shifts: dict[str, torch.Tensor] = {}
    skipped: dict[int, str] = {}
    no_bias: set[str] = set()
    unread: set[str] = set()
    for gid, kept in plan.keep.items():
        g = gg.groups[gid]
        dropped = sorted(set(range(g.size)) - set(kept))
        if not dropped:
            continue
        if gid in mixed:
            skipped[gid] = mixed[gid]
            continue
        for m in g.members:
            if m.role != "in":
                continue
            layer, read = modules[m.module], statistics.get(m.module)
            if read is None or m.param != "weight":
                unread.add(m.qualified_name)
            elif layer.bias is None:
                no_bias.add(m.module)
            else:
                cols = torch.tensor(m.indices(dropped), dtype=torch.long)
                w = layer.weight.detach().double().cpu().index_select(1, cols)
                w = w.flatten(2).sum(2) if w.dim() > 2 else w  # a convolution: every kernel position reads the mean
                shifts[m.module] = shifts.get(m.module, 0.0) + w @ read.mean[cols]
    if shifts:
        zero_pruned(model, gg, plan)
        with torch.no_grad():
            for name, shift in shifts.items():
                bias = modules[name].bias
                bias.add_(shift.to(device=bias.device, dtype=bias.dtype))
    notes = [f"flap: the biases of {len(shifts)} layer(s) absorb their removed inputs' means: {', '.join(sorted(shifts))}"] if shifts else []
    notes += [f"flap: group {gid} not compensated: {why} (removing a channel changes the others there)" for gid, why in skipped.items()]
    if no_bias:
        notes.append(f"flap: not compensated, no bias to add to (graphprune adds no parameter): {', '.join(sorted(no_bias))}")
    if unread:
        notes.append(f"flap: not compensated, not a linear or convolution layer reading the channels: {', '.join(sorted(unread))}")
    return notes


def _normalized_across(gg: GroupGraph) -> dict[int, str]:
    """The prunable groups whose channels a normalization across them reads: flagged inexact
    (LayerNorm, ...) or kept exact by an RMS norm's fixed divisor (``gg.channel_means``)."""
    out = {g.id: g.inexact for g in gg.prunable_groups if g.inexact}
    for node in gg.channel_means:
        cmap = gg.channel_maps.get(node.args[0])
        labels = getattr(cmap, "labels", np.zeros(0, dtype=np.int64))
        for gid in np.unique(gg.groups_of(labels[labels >= 0])).tolist():
            out.setdefault(gid, f"an RMS norm takes a mean of squares across these channels ({describe_node(node)})")
    return out
