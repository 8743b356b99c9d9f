"""Turn channel scores into a plan that meets a budget, using the exact cost model.

Every method that ranks channels (l1, l2, random, NAP's OBS scores, ...) ends here. Channels are
removed in increasing order of score across all groups; a binary search over how many to remove
finds the fewest removals whose cost is within the budget. The last channel removed can be a big
step (a wide layer's channel), so removed channels are then given back, most important first,
wherever the budget still allows. Per-group floors (``min_channels``,
``min_ratio``) and ``round_to`` are respected: a group never drops below its floor and keeps a
multiple of its ``round_to`` unless that would exceed its size.

Ties of counts (``uniform_layers``: each layer's MLP hidden dim, ...; the model's own class: a
chunk into equal parts) make the tied groups one unit of the allocation (:class:`Allocation`), so
the search, the give-back, ``fill_up`` and the ratio bisection all move them together and the
budget is met exactly as for lone groups; no count is equalized after the fact.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import networkx as nx
import numpy as np

from .targets import Budget
from ..errors import BudgetError, GraphPruneError
from ..groups.graph import GroupGraph, set_round_to
from ..groups.plan import Plan


def floor_of(size: int, round_to: int, min_channels: int, min_ratio: float) -> int:
    """The fewest channels a group of ``size`` may keep."""
    return min(size, round_up(max(min_channels, math.ceil(min_ratio * size), 1), round_to, size))


def round_up(count, round_to, size):
    """``count`` rounded up to a multiple of ``round_to`` (1 or less: as it is), at most ``size``;
    elementwise on integer arrays (a Python int for ints, exact in the budget's integer arithmetic)."""
    step = np.maximum(round_to, 1)
    rounded = np.minimum(size, -(-count // step) * step)
    return rounded if isinstance(rounded, np.ndarray) else int(rounded)


Roles = Sequence[Sequence[int]]
"""Groups whose kept counts are tied (``uniform_layers``: :func:`graphprune.groups.graph.layer_roles`;
the model's class: :func:`graphprune.rebuild.user_class.class_fit`)."""


class Allocation:
    """Kept counts of the prunable groups as a function of which low-score channels are removed.

    The unit of allocation is a *role*: groups tied to one kept count (``roles``; a group in no role
    is a role of its own, so without roles every group is allocated alone). A role's k-th channel
    is its groups' k-th lowest channels together, scored by the mean of their scores: on the same
    scale as a lone group's channels, so a role of many layers competes with the groups that are
    not repeated (a sum would grow with the number of layers and push the residual stream to its
    floor first). Removing it costs what removing all of them does; each group still keeps its own
    highest-scoring channels (:meth:`plan`). Floors and ceilings of a role are the strictest of its
    groups', its ``round_to`` the coarsest.

    Counts are arrays over ``units`` (the roles, ordered by their first group in ``scores``), so a
    search evaluates all of them at once; ``by_id`` and ``counts`` give them as {group id: kept count}.
    """

    def __init__(self, gg: GroupGraph, scores: dict[int, np.ndarray], min_channels: int = 1, min_ratio: float = 0.0,
                 floors: Mapping[int, int] | None = None, ceilings: Mapping[int, int] | None = None, roles: Roles | None = None):
        self.gg = gg
        self.groups = [g for g in gg.prunable_groups if g.id in scores]
        self.scores = scores
        row = {g.id: i for i, g in enumerate(self.groups)}
        self.units = tie([gid for gid in scores if gid in row], roles)
        self.ids = np.array([g.id for g in self.groups], dtype=np.int64)
        self.unit_of = np.empty(len(self.groups), dtype=np.int64)  # row of ``groups`` -> its unit
        for u, gids in enumerate(self.units):
            self.unit_of[[row[gid] for gid in gids]] = u
            if len({gg.groups[gid].size for gid in gids}) > 1:
                raise GraphPruneError(f"groups {gids} are tied to one kept count but differ in size; tie only groups of one size")
        floor = {g.id: max(floor_of(g.size, g.round_to, min_channels, min_ratio), (floors or {}).get(g.id, 0))
                 for g in self.groups}  # ``floors``: per-group minimum counts on top (LW-DNA's Eq. 11)
        # ``ceilings``: per-group maximum counts (NAP: channels already zeroed for good never come back)
        ceiling = {g.id: (ceilings or {}).get(g.id, g.size) for g in self.groups}
        first = [gg.groups[gids[0]] for gids in self.units]
        self.sizes = np.array([g.size for g in first], dtype=np.int64)
        self._round = np.array([max(gg.groups[gid].round_to for gid in gids) for gids in self.units], dtype=np.int64)
        self._floor = np.array([max(floor[gid] for gid in gids) for gids in self.units], dtype=np.int64)
        self._ceiling = np.array([min(ceiling[gid] for gid in gids) for gids in self.units], dtype=np.int64)
        self.floors = {g.id: int(self._floor[self.unit_of[i]]) for i, g in enumerate(self.groups)}
        self.ceilings = {g.id: int(self._ceiling[self.unit_of[i]]) for i, g in enumerate(self.groups)}
        position = {g.id: i for i, g in enumerate(gg.cost.groups)}
        self.slot = np.array([position[g.id] for g in self.groups], dtype=np.int64)  # index in the cost model
        # every unit channel, lowest score first (a stable sort: ties keep unit order)
        combined = self.combine(scores)
        flat = np.concatenate(combined) if combined else np.zeros(0)
        order = np.argsort(flat, kind="stable")
        self.ranked_units = np.repeat(np.arange(len(self.units), dtype=np.int64), [len(c) for c in combined])[order]
        self.ranked_scores = flat[order]

    def combine(self, values: Mapping[int, np.ndarray]) -> list[np.ndarray]:
        """Per unit, its channels' values in increasing order: the mean of its groups' k-th lowest."""
        out = []
        for gids in self.units:
            rows = [np.sort(np.asarray(values[gid], dtype=np.float64).reshape(-1)) for gid in gids]
            out.append(rows[0] if len(rows) == 1 else np.mean(rows, axis=0))
        return out

    def below(self, value: float, inclusive: bool = False) -> int:
        """How many unit channels score below ``value`` (``inclusive``: or at it)."""
        return int(np.searchsorted(self.ranked_scores, value, side="right" if inclusive else "left"))

    def dropped(self, removed: int) -> np.ndarray:
        """Channels dropped per unit when the ``removed`` lowest-ranked unit channels go."""
        return np.bincount(self.ranked_units[:removed], minlength=len(self.units))

    def kept(self, dropped: np.ndarray) -> np.ndarray:
        """Kept count per unit with ``dropped`` of its channels removed: rounded up to its
        ``round_to`` (at most its size), within its floor and ceiling."""
        return np.minimum(self._ceiling, np.maximum(self._floor, round_up(self.sizes - dropped, self._round, self.sizes)))

    def by_id(self, kept: np.ndarray) -> dict[int, int]:
        """Per-unit counts as {group id: kept count}."""
        return dict(zip(self.ids.tolist(), kept[self.unit_of].tolist()))

    def ratios(self, kept: np.ndarray) -> np.ndarray:
        """Keep ratios in the cost model's order (groups not allocated here stay whole)."""
        out = np.ones(len(self.gg.cost.groups))
        out[self.slot] = (kept / self.sizes)[self.unit_of]
        return out

    def per_unit(self, values: np.ndarray) -> np.ndarray:
        """Sums over each unit's groups of per-group ``values`` (rows of ``groups``)."""
        return np.bincount(self.unit_of, weights=values, minlength=len(self.units))

    def block_sums(self, matrix: np.ndarray) -> np.ndarray:
        """Per unit, the sum of a budget-order matrix over its slots x its slots (a lone group: its diagonal entry)."""
        sums = self.per_unit(np.diag(matrix)[self.slot]) if len(self.slot) else np.zeros(len(self.units))
        for u, gids in enumerate(self.units):
            if len(gids) > 1:
                slots = self.slot[self.unit_of == u]
                sums[u] = matrix[np.ix_(slots, slots)].sum()
        return sums

    def counts(self, removed: int) -> dict[int, int]:
        return self.by_id(self.kept(self.dropped(removed)))

    def plan(self, counts: dict[int, int]) -> Plan:
        """Keep each group's highest-scoring channels."""
        keep = {gid: np.sort(np.argsort(-self.scores[gid], kind="stable")[:n]).tolist() for gid, n in counts.items()}
        return Plan.from_indices(self.gg, keep)


def tie(gids: Sequence[int], roles: Roles | None) -> list[list[int]]:
    """``gids`` partitioned by ``roles`` into the units allocated together (a group in no role alone),
    in order of each unit's first group."""
    role_of: dict[int, int] = {}
    for r, role in enumerate(roles or ()):
        for gid in role:
            role_of[int(gid)] = r
    units: dict[object, list[int]] = {}
    for gid in gids:
        units.setdefault(role_of.get(gid, ("alone", gid)), []).append(gid)
    return list(units.values())


def merge_ties(*partitions: Roles | None) -> list[list[int]]:
    """Groups tied to one count by any of ``partitions`` (layer roles, the model class's ties), as
    the connected components of the graph whose edges tie two groups; each sorted, groups in no tie left out."""
    graph = nx.Graph()
    for partition in partitions:
        for gids in partition or ():
            graph.add_nodes_from(int(g) for g in gids)
            graph.add_edges_from(zip(map(int, gids), map(int, gids[1:])))
    return sorted(sorted(c) for c in nx.connected_components(graph) if len(c) > 1)


def check_reachable(gg: GroupGraph, budget: Budget, floor_counts: dict[int, int]) -> float:
    """The absolute target; BudgetError if even the floors cost more."""
    full = gg.cost.exact(budget.metric)
    target = budget.target(full)
    lowest = gg.cost.exact(budget.metric, floor_counts)
    if lowest > target:
        given = budget.describe() if budget.is_ratio else f"{budget.describe()} ({target / full:.2g} of the model's {budget.amount(full)})"
        raise BudgetError(
            f"a budget of {given} is unreachable: with every prunable group at its floor the model keeps "
            f"{lowest / full:.4f} of its {budget.metric} ({budget.amount(lowest)} of {budget.amount(full)}). Lower min_channels/min_ratio/round_to "
            f"or unfreeze groups (see graphprune inspect)"
            + ("" if budget.is_ratio else "; for a ratio of the model give a number in (0, 1] (0.5 keeps half; '50%' on the command line)")
            + "."
        )
    return target


def fitted_rounding(gg: GroupGraph, budget: Budget, allocate: Callable[[], Plan], steps: Mapping[int, int | str] | None = None,
                    tolerance: float = 0.005) -> Plan:
    """``allocate()`` under the ``"auto"`` rounding, with finer steps where the coarse ones miss the budget.

    Multiples of 8 can leave a model whose cost sits in a few groups (CIFAR ResNet-20's 64-channel
    stage holds most of its parameters) a point or more under its budget, or make its floors
    unreachable; the steps are capped at 4, 2, then single channels until the plan is within
    ``tolerance`` of the full model under the target. ``steps``: groups whose multiple the user
    gave (``round_to`` per layer), which keep it.

    A measured cost (a latency budget) names the multiple it holds at (``CostModel.round_to``):
    every group keeps multiples of it, however far under the target that lands, since finer
    counts run slower than the model can tell (onnxruntime's kernels at widths off their blocks);
    the auto steps are the fallback where its floors are unreachable.
    """
    full = gg.cost.exact(budget.metric)
    target = budget.target(full)
    measured = gg.cost.round_to(budget.metric)
    for cap, at_measured in ([(measured, True)] if measured else []) + [(c, False) for c in (8, 4, 2, 1)]:
        set_round_to(gg.groups, cap if at_measured else "auto", cap)
        for gid, step in (steps or {}).items():
            set_round_to([gg.groups[gid]], step)
        try:
            plan = allocate()
        except BudgetError:
            if cap == 1 and not at_measured:
                raise
            continue
        if at_measured or gg.cost.exact(budget.metric, plan.counts()) >= target - tolerance * full:
            break
    return plan


def allocate_by_score(gg: GroupGraph, scores: dict[int, np.ndarray], budget: Budget, min_channels: int = 1, min_ratio: float = 0.0,
                      floors: Mapping[int, int] | None = None, ceilings: Mapping[int, int] | None = None,
                      roles: Roles | None = None) -> Plan:
    """Remove the globally lowest-scoring channels until ``budget`` is met (as few as possible);
    the groups of a role (``roles``) keep one count (see :class:`Allocation`)."""
    alloc = Allocation(gg, scores, min_channels, min_ratio, floors, ceilings, roles)
    total = len(alloc.ranked_units)
    target = check_reachable(gg, budget, alloc.counts(total))
    lo, hi = 0, total  # cost falls as more channels are removed: find the fewest removals that fit
    while lo < hi:
        mid = (lo + hi) // 2
        if gg.cost.exact(budget.metric, alloc.counts(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    searched = dropped = alloc.dropped(lo)
    margin = 1e-9 * gg.cost.exact(budget.metric)  # float checks, confirmed exactly below

    def fits(d: np.ndarray) -> bool:
        return float(gg.cost.evaluate(budget.metric, alloc.ratios(alloc.kept(d)))) <= target - margin

    order = alloc.ranked_units[:lo][::-1]  # give back, most important first
    try:
        quadratic = gg.cost.quadratic(budget.metric)
    except BudgetError:  # not quadratic: try every channel on the full evaluator
        quadratic = None
    if quadratic is None:
        for k in order.tolist():
            trial = dropped.copy()
            trial[k] -= 1
            if alloc.kept(trial)[k] != alloc.kept(dropped)[k] and fits(trial):
                dropped = trial
    else:
        dropped = _give_back(alloc, dropped, order, quadratic, target - margin, fits)
    kept = alloc.by_id(alloc.kept(dropped))
    if gg.cost.exact(budget.metric, kept) > target:
        kept = alloc.by_id(alloc.kept(searched))
    return alloc.plan(kept)


def _give_back(alloc: Allocation, dropped: np.ndarray, order: np.ndarray, quadratic, limit: float, fits) -> np.ndarray:
    """The give-back walk of ``allocate_by_score`` without evaluating the budget once per channel.

    Walking ``order`` (units of ``alloc``), a channel goes back to its unit when that changes the
    unit's kept count and the cost still fits (``fits``). Between two accepted channels nothing
    changes, so each unit's answer is fixed: it is computed for all units at once from the
    quadratic form (moving the ratios of a unit's slots S by d changes the cost by
    ``d * (sum_{i in S} (b_i + 2 (F a)_i) + d sum_{i, j in S} F_ij)``) and the walk jumps to the
    next channel of a unit that fits. Answers within a tolerance of the limit, where float rounding could decide, are asked of
    ``fits`` itself: every decision is the per-channel walk's.
    """
    fa, fb, c = quadratic
    slot = alloc.slot
    sizes = alloc.sizes.astype(np.float64)
    block = alloc.block_sums(fa)
    at = 0
    while at < len(order):
        kept = alloc.kept(dropped)
        ratios = alloc.ratios(kept)
        trial = alloc.kept(dropped - 1)
        step = (trial - kept) / sizes
        cost = float(ratios @ fa @ ratios + fb @ ratios + c)
        estimate = cost + step * (alloc.per_unit(fb[slot] + 2 * (fa[slot] @ ratios)) + block * step)
        tolerance = 1e-9 * max(abs(cost), abs(limit), 1.0)
        changes = trial != kept
        sure = changes & (estimate <= limit - tolerance)
        unsure = changes & ~sure & (estimate <= limit + tolerance)
        later = order[at:]
        nxt, rejected = None, set()
        for offset in np.nonzero((sure | unsure)[later])[0].tolist():  # the first channel whose unit fits
            k = int(later[offset])
            if k in rejected:
                continue
            if sure[k]:
                nxt = at + offset
                break
            trial_dropped = dropped.copy()
            trial_dropped[k] -= 1
            if fits(trial_dropped):
                nxt = at + offset
                break
            rejected.add(k)
        if nxt is None:
            break
        dropped = dropped.copy()
        dropped[order[nxt]] -= 1
        at = nxt + 1
    return dropped


def fill_up(alloc: Allocation, metric: str, counts: dict[int, int], target: float, order: list[int]) -> dict[int, int]:
    """Step units up (in the order of their groups in ``order``, one ``round_to`` at a time) while the budget still allows.

    Allocations that scale all groups together stop short of the budget by up to one step of
    every group at once; this closes that gap. A role's groups step together. Checks run in
    floats, the result is confirmed exactly.
    """
    gg = alloc.gg
    margin = 1e-9 * gg.cost.exact(metric)
    row = {gid: i for i, gid in enumerate(alloc.ids.tolist())}
    units = list(dict.fromkeys(int(alloc.unit_of[row[gid]]) for gid in order if gid in row))
    current = dict(counts)
    for u in units:
        gids, top, step = alloc.units[u], int(alloc._ceiling[u]), int(alloc._round[u])
        while current[gids[0]] < top:
            trial = {**current, **dict.fromkeys(gids, min(top, current[gids[0]] + step))}
            if float(gg.cost.evaluate(metric, gg.cost.ratios(trial))) > target - margin:
                break
            current = trial
    return current if gg.cost.exact(metric, current) <= target else counts


def allocate_by_ratios(gg: GroupGraph, alloc: Allocation, weights: dict[int, float], budget: Budget, order: list[int]) -> Plan:
    """Group k keeps ``scale * weights[k]`` of its channels, the largest scale that meets the budget,
    then ``fill_up`` in ``order``; within a group the highest-scoring channels stay. A unit of
    ``alloc`` (a role) takes the mean of its groups' weights, so its groups keep one count.

    Uniform width is all weights 1; DSA passes its learned keep ratios.
    """
    unit_weights = np.array([np.mean([weights[gid] for gid in gids]) for gids in alloc.units])

    def counts(scale: float) -> dict[int, int]:
        wanted = np.ceil(np.minimum(1.0, scale * unit_weights) * alloc.sizes).astype(np.int64)
        return alloc.by_id(np.minimum(alloc._ceiling, np.maximum(alloc._floor, round_up(wanted, alloc._round, alloc.sizes))))

    target = check_reachable(gg, budget, counts(0.0))
    lo, hi = 0.0, 1.0 / max(min(weights.values()), 1e-6)  # cost grows with the scale
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gg.cost.exact(budget.metric, counts(mid)) <= target else (lo, mid)
    return alloc.plan(fill_up(alloc, budget.metric, counts(lo), target, order))
