"""Uniform baseline: every prunable group keeps the same ratio, found by bisection on the budget.

Groups of equal size step up together as the ratio grows, so the bisection alone can stop a whole
step short of the budget; groups are then stepped up one at a time, largest first, while the
budget allows (ratios stay equal up to about one rounding step). Within a group, the channels with
the largest l1 norm (over all members) stay.
"""

from __future__ import annotations

import math

from graphprune.allocate import Allocation, check_reachable, fill_up, round_up
from graphprune.plan import Plan

from . import register
from .base import MethodPass
from .magnitude import member_norms


@register
class UniformPass(MethodPass):
    name = "uniform"

    def plan(self) -> Plan:
        alloc = Allocation(self.gg, member_norms(self.model, self.gg, 1), self.min_channels, self.min_ratio)

        def counts(ratio: float) -> dict[int, int]:
            return {g.id: max(alloc.floors[g.id], round_up(math.ceil(ratio * g.size), g.round_to, g.size)) for g in alloc.groups}

        metric = self.budget.metric
        target = check_reachable(self.gg, self.budget, counts(0.0))
        lo, hi = 0.0, 1.0  # cost grows with the ratio: find the largest ratio that fits
        for _ in range(50):
            mid = (lo + hi) / 2
            if self.gg.budget.exact(metric, counts(mid)) <= target:
                lo = mid
            else:
                hi = mid
        order = sorted(counts(lo), key=lambda g: -self.gg.groups[g].size)
        return alloc.plan(fill_up(self.gg, metric, counts(lo), target, order))
