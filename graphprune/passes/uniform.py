"""Uniform baseline: every prunable group keeps the same ratio, found by bisection on the budget.

Groups of equal size step up together as the ratio grows, so the bisection alone can stop a whole
step short of the budget; groups are then stepped up one at a time, largest first, while the
budget allows (ratios stay equal up to about one rounding step). Within a group, the channels with
the largest l1 norm (over all members) stay.
"""

from __future__ import annotations

from graphprune.budget.allocate import Allocation, allocate_by_ratios
from graphprune.budget.targets import Budget
from graphprune.groups.plan import Plan

from .base import MethodPass, register
from .importance import member_norms


@register
class UniformPass(MethodPass):
    name = "uniform"
    default_round_to = "auto"  # as the score methods: widths the kernels run fast
    ties_layers = True  # equal sizes keep equal counts already; fill_up steps a role's groups together

    def plan(self) -> Plan:
        return self.allocate(self.budget)

    def allocate(self, budget: Budget) -> Plan:
        scores = member_norms(self.model, self.gg, 1)
        order = sorted((g.id for g in self.gg.prunable_groups), key=lambda g: -self.gg.groups[g].size)

        def allocate() -> Plan:
            alloc = Allocation(self.gg, scores, self.min_channels, self.min_ratio, roles=self.roles, **self.bounds)
            return allocate_by_ratios(self.gg, alloc, {g.id: 1.0 for g in alloc.groups}, budget, order)

        return self.rounded(allocate, budget)
