"""Turn channel scores into a plan that meets a budget, using the exact budget model.

Every method that ranks channels (l1, l2, random, NAP's OBS scores, ...) ends here. Channels are
removed in increasing order of score across all groups; a binary search over how many to remove
finds the fewest removals whose cost is within the budget. The last channel removed can be a big
step (a wide layer's channel), so removed channels are then given back, most important first,
wherever the budget still allows. Per-group floors (``min_channels``,
``min_ratio``) and ``round_to`` are respected: a group never drops below its floor and keeps a
multiple of its ``round_to`` unless that would exceed its size.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .budget_target import Budget
from .errors import BudgetError
from .groups import GroupGraph
from .plan import Plan


def floor_of(size: int, round_to: int, min_channels: int, min_ratio: float) -> int:
    """The fewest channels a group of ``size`` may keep."""
    return min(size, round_up(max(min_channels, math.ceil(min_ratio * size), 1), round_to, size))


def round_up(count: int, round_to: int, size: int) -> int:
    return min(size, int(math.ceil(count / round_to) * round_to)) if round_to > 1 else min(size, count)


class Allocation:
    """Kept counts of the prunable groups as a function of which low-score channels are removed."""

    def __init__(self, gg: GroupGraph, scores: dict[int, np.ndarray], min_channels: int = 1, min_ratio: float = 0.0,
                 floors: Mapping[int, int] | None = None, ceilings: Mapping[int, int] | None = None):
        self.gg = gg
        self.groups = [g for g in gg.prunable_groups if g.id in scores]
        self.scores = scores
        # every channel's group, lowest score first (a stable sort: ties keep group order, then channel order)
        gids = list(scores)
        flat = np.concatenate([np.asarray(scores[gid], dtype=np.float64).reshape(-1) for gid in gids]) if gids else np.zeros(0)
        owner = np.repeat(np.asarray(gids, dtype=np.int64), [np.size(scores[gid]) for gid in gids])
        self.ranked_groups = owner[np.argsort(flat, kind="stable")]
        self.floors = {g.id: max(floor_of(g.size, g.round_to, min_channels, min_ratio), (floors or {}).get(g.id, 0))
                       for g in self.groups}  # ``floors``: per-group minimum counts on top (LW-DNA's Eq. 11)
        # ``ceilings``: per-group maximum counts (NAP: channels already zeroed for good never come back)
        self.ceilings = {g.id: (ceilings or {}).get(g.id, g.size) for g in self.groups}

    def dropped(self, removed: int) -> dict[int, int]:
        """Channels dropped per group when the ``removed`` lowest-ranked channels go."""
        counts = np.bincount(self.ranked_groups[:removed], minlength=len(self.gg.groups))
        return {g.id: int(counts[g.id]) for g in self.groups}

    def kept(self, dropped: dict[int, int]) -> dict[int, int]:
        return {g.id: self.kept_one(g, dropped[g.id]) for g in self.groups}

    def kept_one(self, g, dropped: int) -> int:
        """Kept count of group ``g`` with ``dropped`` of its channels removed (floors, ceilings and rounding applied)."""
        return min(self.ceilings[g.id], max(self.floors[g.id], round_up(g.size - dropped, g.round_to, g.size)))

    def counts(self, removed: int) -> dict[int, int]:
        return self.kept(self.dropped(removed))

    def plan(self, counts: dict[int, int]) -> Plan:
        """Keep each group's highest-scoring channels."""
        keep = {gid: sorted(np.argsort(-self.scores[gid], kind="stable")[:n].tolist()) for gid, n in counts.items()}
        return Plan.from_counts(self.gg, keep)


def check_reachable(gg: GroupGraph, budget: Budget, floor_counts: dict[int, int]) -> float:
    """The absolute target; BudgetError if even the floors cost more."""
    full = gg.budget.exact(budget.metric)
    target = budget.target(full)
    lowest = gg.budget.exact(budget.metric, floor_counts)
    if lowest > target:
        raise BudgetError(
            f"a {budget.metric} budget of {target / full:.4f} of the model is unreachable: with every prunable "
            f"group at its floor the model keeps {lowest / full:.4f}. Lower min_channels/min_ratio/round_to "
            f"or unfreeze groups (see graphprune inspect)."
        )
    return target


def allocate_by_score(gg: GroupGraph, scores: dict[int, np.ndarray], budget: Budget, min_channels: int = 1, min_ratio: float = 0.0,
                      floors: Mapping[int, int] | None = None, ceilings: Mapping[int, int] | None = None) -> Plan:
    """Remove the globally lowest-scoring channels until ``budget`` is met (as few as possible)."""
    alloc = Allocation(gg, scores, min_channels, min_ratio, floors, ceilings)
    total = len(alloc.ranked_groups)
    target = check_reachable(gg, budget, alloc.counts(total))
    lo, hi = 0, total  # cost falls as more channels are removed: find the fewest removals that fit
    while lo < hi:
        mid = (lo + hi) // 2
        if gg.budget.exact(budget.metric, alloc.counts(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    searched = dropped = alloc.dropped(lo)
    margin = 1e-9 * gg.budget.exact(budget.metric)  # float checks, confirmed exactly below

    def fits(d: dict[int, int]) -> bool:
        return float(gg.budget.evaluate(budget.metric, gg.budget.ratios(alloc.kept(d)))) <= target - margin

    order = alloc.ranked_groups[:lo][::-1]  # give back, most important first
    try:
        quadratic = gg.budget.quadratic(budget.metric)
    except BudgetError:  # not quadratic: try every channel on the full evaluator
        quadratic = None
    if quadratic is None:
        for gid in order.tolist():
            trial = {**dropped, gid: dropped[gid] - 1}
            if alloc.kept(trial) != alloc.kept(dropped) and fits(trial):
                dropped = trial
    else:
        dropped = _give_back(gg, alloc, dropped, order, quadratic, target - margin, fits)
    if gg.budget.exact(budget.metric, alloc.kept(dropped)) > target:
        dropped = searched
    return alloc.plan(alloc.kept(dropped))


def _give_back(gg: GroupGraph, alloc: Allocation, dropped: dict[int, int], order: np.ndarray, quadratic, limit: float, fits) -> dict[int, int]:
    """The give-back walk of ``allocate_by_score`` without evaluating the budget once per channel.

    Walking ``order``, a channel goes back to its group when that changes the group's kept count
    and the cost still fits (``fits``). Between two accepted channels nothing changes, so each
    group's answer is fixed: it is computed for all groups at once from the quadratic form (moving
    ratio i by d changes the cost by ``d * (b_i + 2 (F a)_i + F_ii d)``) and the walk jumps to the
    next channel of a group that fits. Answers within a tolerance of the limit, where float
    rounding could decide, are asked of ``fits`` itself: every decision is the per-channel walk's.
    """
    fa, fb, c = quadratic
    b = gg.budget
    index = {g.id: i for i, g in enumerate(b.groups)}
    groups = list(alloc.groups)
    slot = np.array([index[g.id] for g in groups], dtype=np.int64)
    row_of = {g.id: k for k, g in enumerate(groups)}
    rows = np.array([row_of[gid] for gid in order.tolist()], dtype=np.int64)
    positions = [np.nonzero(rows == k)[0] for k in range(len(groups))]  # each group's channels in the walk
    sizes = np.array([g.size for g in groups], dtype=np.float64)
    diagonal = np.diag(fa)[slot] if len(slot) else np.zeros(0)
    at = 0
    while at < len(order):
        kept = alloc.kept(dropped)
        ratios = b.ratios(kept)
        now = np.array([kept[g.id] for g in groups], dtype=np.float64)
        trial = np.array([alloc.kept_one(g, dropped[g.id] - 1) for g in groups], dtype=np.float64)
        step = (trial - now) / sizes
        cost = float(ratios @ fa @ ratios + fb @ ratios + c)
        estimate = cost + step * (fb[slot] + 2 * (fa[slot] @ ratios) + diagonal * step)
        tolerance = 1e-9 * max(abs(cost), abs(limit), 1.0)
        changes = trial != now
        sure = changes & (estimate <= limit - tolerance)
        unsure = changes & ~sure & (estimate <= limit + tolerance)
        following = [(int(p[i]), k) for k, p in enumerate(positions) if (sure[k] or unsure[k]) and (i := int(np.searchsorted(p, at))) < len(p)]
        following.sort()
        nxt = None
        for pos, k in following:  # the first channel whose group fits
            gid = groups[k].id
            if sure[k] or fits({**dropped, gid: dropped[gid] - 1}):
                nxt = pos
                break
        if nxt is None:
            break
        gid = int(order[nxt])
        dropped = {**dropped, gid: dropped[gid] - 1}
        at = nxt + 1
    return dropped


def fill_up(gg: GroupGraph, metric: str, counts: dict[int, int], target: float, order: list[int]) -> dict[int, int]:
    """Step groups up (in ``order``, one ``round_to`` at a time) while the budget still allows.

    Allocations that scale all groups together stop short of the budget by up to one step of
    every group at once; this closes that gap. Checks run in floats, the result is confirmed exactly.
    """
    margin = 1e-9 * gg.budget.exact(metric)
    current = dict(counts)
    for gid in order:
        g = gg.groups[gid]
        while current[gid] < g.size:
            trial = {**current, gid: min(g.size, current[gid] + g.round_to)}
            if float(gg.budget.evaluate(metric, gg.budget.ratios(trial))) > target - margin:
                break
            current = trial
    return current if gg.budget.exact(metric, current) <= target else counts


def allocate_by_ratios(gg: GroupGraph, alloc: Allocation, weights: dict[int, float], budget: Budget, order: list[int]) -> Plan:
    """Group k keeps ``scale * weights[k]`` of its channels, the largest scale that meets the budget,
    then ``fill_up`` in ``order``; within a group the highest-scoring channels stay.

    Uniform width is all weights 1; DSA passes its learned keep ratios.
    """
    def counts(scale: float) -> dict[int, int]:
        return {g.id: max(alloc.floors[g.id], round_up(math.ceil(min(1.0, scale * weights[g.id]) * g.size), g.round_to, g.size))
                for g in alloc.groups}

    target = check_reachable(gg, budget, counts(0.0))
    lo, hi = 0.0, 1.0 / max(min(weights.values()), 1e-6)  # cost grows with the scale
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gg.budget.exact(budget.metric, counts(mid)) <= target else (lo, mid)
    return alloc.plan(fill_up(gg, budget.metric, counts(lo), target, order))
