"""NAP's structured granularity (``granularity="channel"``): see "Structured mode" in ``nap.py``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from graphprune.budget.allocate import Allocation, allocate_by_score, check_reachable
from graphprune.common.distributed import broadcast_object
from graphprune.errors import GraphPruneError
from graphprune.groups.plan import Plan

from .kfac import Inverse, covered, set_weight_matrix, weight_matrix

if TYPE_CHECKING:
    from .nap import NAPPass

STATISTICS = ("running_mean", "running_var")


class ChannelPruning:
    """A unit is a channel of a prunable group: its ΔL sums over every member's slice (a residual stage is
    one unit), ranked per unit of what removing it saves on the exact cost model."""

    unit = "channels"
    default_fraction = 0.01

    def __init__(self, nap: NAPPass):
        self.nap, self.gg, self.metric = nap, nap.gg, nap.metric
        self.group_ids = [g.id for g in self.gg.prunable_groups if g.size > 1]
        if not self.group_ids:
            raise GraphPruneError("nap found no prunable group of two or more channels to prune (see graphprune inspect)")
        modules = dict(nap.model.named_modules())
        members = [m for gid in self.group_ids for m in self.gg.groups[gid].members]
        self.layers = list(dict.fromkeys(m.module for m in members if m.param == "weight" and covered(modules[m.module])))
        self.diagonal = list(dict.fromkeys((m.module, m.param) for m in members if m.param not in STATISTICS
                                           and isinstance(getattr(modules[m.module], m.param), nn.Parameter)
                                           and not (m.module in self.layers and m.param in ("weight", "bias"))))
        self.full = self.gg.cost.exact(self.metric)
        self.target = self._reachable()
        self.cost_name = {"macs": "MACs", "latency": "latency"}.get(self.metric, "params")
        self.alive = {gid: np.ones(self.gg.groups[gid].size, dtype=bool) for gid in self.group_ids}
        self.final_plan: Plan | None = None
        self._budget_index = {g.id: i for i, g in enumerate(self.gg.cost.groups)}

    def _reachable(self) -> float:
        floors = self._allocation({gid: np.zeros(self.gg.groups[gid].size) for gid in self.group_ids})
        return check_reachable(self.gg, self.nap.budget, floors.counts(len(floors.ranked_units)))

    def _allocation(self, scores: dict[int, np.ndarray]) -> Allocation:
        """The allocation over channel importances, a role's groups as one unit under ``uniform_layers``."""
        return Allocation(self.gg, scores, self.nap.min_channels, self.nap.min_ratio, roles=self.nap.roles, **self.nap.bounds)

    # ------------------------------------------------------------- importance and forecast
    def scores(self, inverses: dict[str, tuple[Inverse, Inverse]]) -> dict[int, np.ndarray]:
        return broadcast_object(self.channel_importance(inverses))  # rank 0 decides what goes

    def channel_importance(self, inverses: dict[str, tuple[Inverse, Inverse]]) -> dict[int, np.ndarray]:
        """Per group, each channel's ΔL (summed over its members) over what removing it saves; removed channels -inf."""
        dl = self.nap.parameter_importance(inverses)
        per_pos: dict[tuple[str, str, int], np.ndarray] = {}
        delta = self._marginal_costs()
        scores = {}
        for gid in self.group_ids:
            g = self.gg.groups[gid]
            total = np.zeros(g.size)
            for m in g.members:
                key = (m.module, m.param)
                if key not in dl:
                    continue
                if (m.module, m.param, m.dim) not in per_pos:
                    t = dl[key]
                    per_pos[m.module, m.param, m.dim] = t.movedim(m.dim, 0).reshape(t.shape[m.dim], -1).sum(1).numpy()
                np.add.at(total, m.channels, per_pos[m.module, m.param, m.dim][m.positions])
            saves = delta[gid]
            score = total / saves if saves > 0 else np.full(g.size, np.inf)
            scores[gid] = np.where(self.alive[gid], score, -np.inf)
        return scores

    def _counts(self) -> dict[int, int]:
        return {gid: int(a.sum()) for gid, a in self.alive.items()}

    def _marginal_costs(self) -> dict[int, float]:
        """What removing one channel of each group saves on the cost model, at the current sizes."""
        b = self.gg.cost
        ratios = b.ratios(self._counts())
        rows = np.repeat(ratios[None], len(self.group_ids), 0)
        for r, gid in enumerate(self.group_ids):
            rows[r, self._budget_index[gid]] -= 1.0 / self.gg.groups[gid].size
        return dict(zip(self.group_ids, (float(b.evaluate(self.metric, ratios)) - b.evaluate(self.metric, rows)).tolist()))

    def forecast(self, scores: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
        """The ranking the schedule counts the iterations left on (which channels go decides what they save), the
        removed channels at -inf. Before the first iteration (``scores`` None): NAP's channel importance with unit
        curvature (w² / 2, normalized per layer, summed over the members, per unit of cost), no inversions. (Plain l2
        norms per unit of cost are no proxy: they rank the wide residual streams first, whose channels NAP's sum over
        ~40 members ranks with the rest, and predict a handful of iterations.)"""
        if scores is None:
            scores = self.channel_importance(self.nap._inverses(curvature=False))
        return {gid: np.where(self.alive[gid], s, -np.inf) for gid, s in scores.items()}

    def iterations_left(self, forecast: dict[int, np.ndarray], fraction: float) -> int:
        """Iterations of p-steps on the fixed ranking until the budget is met (the last one exact)."""
        alloc = self._allocation(forecast)
        removed = alloc.below(-np.inf, inclusive=True)  # removed for good: scored -inf
        total, n = len(alloc.ranked_units), 0
        while n < 100_000:
            n += 1
            removed = min(total, removed + max(1, math.ceil(fraction * (total - removed))))
            if removed >= total or self.gg.cost.exact(self.metric, alloc.counts(removed)) <= self.target:
                break
        return n

    # ------------------------------------------------------------- one iteration
    def remove(self, scores: dict[int, np.ndarray], inverses: dict[str, tuple[Inverse, Inverse]], final: bool,
               fraction: float) -> tuple[int, bool]:
        """Remove p of the live channels (or exactly what the budget needs) with the OBS updates: the channels
        removed and whether the cut met the budget."""
        alloc = self._allocation(scores)
        current = self._counts()
        removed = alloc.below(-np.inf, inclusive=True)  # removed for good: scored -inf
        total = len(alloc.ranked_units)
        n = max(1, math.ceil(fraction * (total - removed)))
        counts = alloc.counts(min(total, removed + n))
        while counts == current and removed + n < total:  # rounding (round_to) or floors swallowed the step
            n *= 2
            counts = alloc.counts(min(total, removed + n))
        if final or counts == current or self.gg.cost.exact(self.metric, counts) <= self.target:
            keep, final = self._final_keep(scores), True
            self.final_plan = Plan.from_indices(self.gg, keep)
        else:
            keep = alloc.plan(counts).keep
        removal = {}
        for gid in self.group_ids:
            alive = np.flatnonzero(self.alive[gid])
            gone = np.setdiff1d(alive, np.asarray(keep.get(gid, range(self.gg.groups[gid].size)), dtype=np.int64))
            if len(gone):
                removal[gid] = gone
        self.remove_channels(removal, inverses)
        return sum(len(v) for v in removal.values()), final

    def _final_keep(self, scores: dict[int, np.ndarray]) -> dict[int, list[int]]:
        """What the budget needs exactly: ``allocate_by_score`` on the importances, the channels removed
        before scored lowest and capped out (zero for good: a plan that gave one back would spend budget
        on a dead channel)."""
        live = {gid: np.where(self.alive[gid], scores[gid], -np.inf) for gid in self.group_ids}
        nap = self.nap
        fixed = nap.bounds["ceilings"]
        ceilings = {gid: min(int(self.alive[gid].sum()), fixed.get(gid, self.gg.groups[gid].size)) for gid in self.group_ids}
        plan = allocate_by_score(self.gg, live, nap.budget, nap.min_channels, nap.min_ratio, floors=nap.bounds["floors"],
                                 ceilings=ceilings, roles=nap.roles)
        keep = {gid: list(plan.keep.get(gid, range(self.gg.groups[gid].size))) for gid in self.group_ids}
        cost = self.gg.cost.exact(self.metric, {g: len(k) for g, k in keep.items()})
        if self.target - cost > 0.005 * self.full:  # a coarse channel overshot: fill the cut with finer ones
            filled = self._fill(scores, 0.005 * self.full)
            if filled is not None and self.gg.cost.exact(self.metric, {g: len(k) for g, k in filled.items()}) > cost:
                return filled
        return keep

    def _fill(self, scores: dict[int, np.ndarray], tolerance: float) -> dict[int, list[int]] | None:
        """The live channels (of a role: its groups' channels of one rank) in increasing importance, each
        removed unless that would take the cost more than ``tolerance`` under the target, until the target is
        met; None where ``round_to`` forbids single steps."""
        if any(self.gg.groups[gid].round_to > 1 for gid in self.group_ids):
            return None
        alloc = self._allocation({gid: np.where(self.alive[gid], scores[gid], -np.inf) for gid in self.group_ids})
        kept = np.array([min(int(self.alive[gid].sum()) for gid in gids) for gids in alloc.units], dtype=np.int64)
        cost = self.gg.cost.exact(self.metric, alloc.by_id(kept))
        for u in alloc.ranked_units[alloc.below(-np.inf, inclusive=True):].tolist():
            if cost <= self.target:
                break
            if kept[u] - 1 < alloc.floors[alloc.units[u][0]]:
                continue
            trial = kept.copy()
            trial[u] -= 1
            after = self.gg.cost.exact(self.metric, alloc.by_id(trial))
            if after >= self.target - tolerance:
                kept, cost = trial, after
        if cost > self.target:
            return None
        return alloc.plan(alloc.by_id(kept)).keep

    def remove_channels(self, removal: dict[int, np.ndarray], inverses: dict[str, tuple[Inverse, Inverse]] | None = None) -> None:
        """Zero the channels' slices in every member, keep them zero, and apply the OBS update to each affected layer."""
        nap = self.nap
        before = {name: nap._layer_mask(name) for name in self.layers}
        for gid, channels in removal.items():
            for m in self.gg.groups[gid].members:
                key = (m.module, m.param)
                if m.param in STATISTICS or not isinstance(nap._param(key), nn.Parameter):
                    continue
                index = torch.tensor(m.indices(channels.tolist()), dtype=torch.long, device=nap._param(key).device)
                nap._mask(key).index_fill_(m.dim, index, False)
            self.alive[gid][channels] = False
        for name in self.layers:
            after = nap._layer_mask(name)
            if nap.compensate != "none" and not torch.equal(before[name], after):
                if inverses is None:
                    inverses = nap._inverses()
                self._compensate(name, before[name], after, inverses[name])
        nap._keep_zero()

    def _compensate(self, name: str, before: torch.Tensor, after: torch.Tensor, inverses: tuple[Inverse, Inverse]) -> None:
        """OBS for whole rows R and columns C of each group's [W | b] (exact under A ⊗ S, see nap.py)."""
        module = self.nap.model.get_submodule(name)
        s_inv, a_inv = inverses
        device = s_inv.blocks.device
        w = weight_matrix(module).to(device)
        before, after = before.to(device), after.to(device)
        rows_before, rows_after = before.any(-1), after.any(-1)
        cols_before, cols_after = before.any(-2), after.any(-2)
        changed = ((rows_before & ~rows_after).any(-1) | (cols_before & ~cols_after).any(-1)).nonzero().flatten().tolist()
        rows_kept = rows_after if self.nap.compensate in ("outputs", "both") else torch.zeros_like(rows_after)
        cols_kept = cols_after if self.nap.compensate in ("inputs", "both") else torch.zeros_like(cols_after)
        for j in changed:
            w[j] = obs_structured(w[j], s_inv, a_inv, j, rows_before[j] & ~rows_after[j], rows_kept[j],
                                  cols_before[j] & ~cols_after[j], cols_kept[j])
        set_weight_matrix(module, w * after)

    # ------------------------------------------------------------- the result
    def cost(self) -> float:
        return 100 * self.gg.cost.exact(self.metric, self._counts()) / self.full

    def plan(self) -> Plan:
        return self.final_plan

    def build(self, model: nn.Module) -> nn.Module:
        return model  # the slim model has no pruned channel left

    def refine_report(self, report: Any) -> Any:
        return report

    def kept_per_layer(self) -> dict[str, float]:
        plan = self.final_plan or Plan.from_indices(self.gg, {gid: np.flatnonzero(a).tolist() for gid, a in self.alive.items()})
        return plan.kept_per_layer(self.gg)


def obs_structured(w: torch.Tensor, s_inv: Inverse, a_inv: Inverse, j: int, rows_gone: torch.Tensor, rows_kept: torch.Tensor,
                   cols_gone: torch.Tensor, cols_kept: torch.Tensor) -> torch.Tensor:
    """Group ``j``'s [W | b] after removing whole rows and columns with the optimal update of the rest
    under A ⊗ S (the inverses restricted to the entries alive before); removed entries are zero."""
    w = w.clone()
    r, k = rows_gone.nonzero().flatten(), rows_kept.nonzero().flatten()
    c, d = cols_gone.nonzero().flatten(), cols_kept.nonzero().flatten()
    if len(c) and len(d):
        q = torch.linalg.solve(a_inv.sub(j, c, c), a_inv.sub(j, c, d))
        w[:, d] -= w[:, c] @ q
    if len(r) and len(k):
        p = torch.linalg.solve(s_inv.sub(j, r, r), s_inv.sub(j, r, k)).T
        w[k, :] -= p @ w[r, :]
    w[r, :] = 0
    w[:, c] = 0
    return w


__all__ = ["ChannelPruning", "obs_structured"]
