"""LW-DNA: widen the network, shrink it in one shot (Li et al., "The Heterogeneity Hypothesis", Sec. 3-4).

The paper's claim: a layer-wise differentiated channel configuration of the same (or lower) cost
matches or beats the hand-designed uniform widths, and one mini-batch finds it. The pipeline:

1. widen every prunable group by ``beta`` (``graphprune/slimming/widen.py``, the inverse of the slim pass:
   any analyzable model, graph constants included; frozen groups keep their size);
2. reparameterize the widened model with DHP's hypernetworks and group latents (``reparam.py``),
   freshly initialized, latents N(0, 1) as in the paper;
3. one-shot shrinkage: the loss gradient w.r.t. the latents on ``batches`` mini-batches (default 1);
   a channel's score is |dL/dz| (``criterion="gradient"``, Eq. 10, the paper), or |z| after two SGD
   steps of hypernetworks and latents (``criterion="magnitude"``, what the authors' ResNet code
   does: it ranks by where two steps moved the random latents, so it mostly keeps the initially
   large ones; the gradient ranks by sensitivity at initialization, as single-shot pruning does);
4. the cut: channels go in increasing score across all groups, binary-searched to the budget on the
   exact cost model of the widened network (``allocate_by_score``), within the floors of Eq. 11:
   each group keeps at least ``conv_floor`` (rho, 0.4) of its *original* channels, and a group
   feeding the final classifier at least ``linear_floor`` (tau, 0.45); with ``uniform_layers``, a
   repeated layer's groups are cut as one role (one count, the strictest floor);
5. the result: the plan on the widened model, and ``result.model`` the LW-DNA architecture as a
   slim, re-initialized model, to be trained from scratch with the baseline's protocol
   (``graphprune.apply(..., epochs=N)`` does it).

The budget is relative to the **original** model by default (``budget=1.0``: the original's MACs);
``relative_to="widened"`` makes it relative to the widened one. Without ``train_data`` (the CLI),
the batch is the example inputs and the labels are drawn from the model's own predictive
distribution (classification outputs only). Under torchrun the latents' gradient (and, for the
magnitude criterion, every gradient of the two SGD steps) is averaged over the ranks' batches.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from graphprune.budget.allocate import Allocation, allocate_by_score, check_reachable, floor_of
from graphprune.budget.targets import Budget
from graphprune.common.distributed import all_reduce_gradients
from graphprune.errors import BudgetError, GraphPruneError
from graphprune.groups.graph import GroupGraph
from graphprune.groups.plan import Plan
from graphprune.training.plots import plot_widths
from graphprune.slimming.slim import slim
from graphprune.slimming.widen import reinitialize, widen

from .base import MethodPass, register
from .reparam import Reparameterization, classifier_inputs


@register
class LWDNAPass(MethodPass):
    """Options: ``beta`` (width multiplier, 2), ``batches`` (mini-batches for the gradient, 1),
    ``criterion`` ("gradient" or "magnitude"), ``conv_floor`` (rho, 0.4) and ``linear_floor`` (tau,
    0.45) as fractions of the original channels, ``relative_to`` ("original" or "widened"),
    ``embedding`` (hypernetwork embedding size, 8), ``seed`` (initialization of the widened model,
    its hypernetworks, and of the result)."""

    name = "lwdna"
    takes_controls = False  # it plans on the groups of a widened copy, analyzed again
    reads_data = True
    ties_layers = True  # the cut (step 4) ranks a role's channels together; roles of the widened model

    def __init__(
        self, *args: Any, train_data: Iterable | None = None, loss_fn: Callable | None = None, beta: float = 2.0,
        batches: int = 1, criterion: str = "gradient", conv_floor: float = 0.4, linear_floor: float = 0.45,
        relative_to: str = "original", embedding: int = 8, seed: int = 0, **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if criterion not in ("gradient", "magnitude"):
            raise GraphPruneError(f"lwdna: criterion must be 'gradient' or 'magnitude', got {criterion!r}")
        if relative_to not in ("original", "widened"):
            raise GraphPruneError(f"lwdna: relative_to must be 'original' or 'widened', got {relative_to!r}")
        if batches < 1 or not (0 <= conv_floor <= 1 and 0 <= linear_floor <= 1):
            raise GraphPruneError("lwdna: need batches >= 1 and floors (conv_floor, linear_floor) in [0, 1], as fractions of the original channels")
        self.train_data, self.loss_fn, self.batches, self.criterion, self.seed = train_data, loss_fn, batches, criterion, seed
        self.widened = widen(self.gg, beta, seed=seed)
        self.wide_gg = self.widened.analysis
        self.origin = self.widened.wide_groups(self.wide_gg)  # wide group id -> original group id
        self.latents = Reparameterization(self.wide_gg, self.widened.model, "lwdna", embedding=embedding,
                                          latent_init="normal", keep_classifier_input=False, seed=seed)
        self.group_ids = self.latents.group_ids
        classifier = classifier_inputs(self.wide_gg, self.widened.model, self.latents.layers)
        self.floors = {}
        for gid in self.group_ids:
            g, share = self.wide_gg.groups[gid], linear_floor if gid in classifier else conv_floor
            original = self.gg.groups[self.origin[gid]].size if gid in self.origin else g.size
            self.floors[gid] = max(floor_of(g.size, g.round_to, self.min_channels, self.min_ratio),
                                   min(g.size, math.ceil(share * original)))
        metric = self.budget.metric
        reference = self.gg if relative_to == "original" else self.wide_gg
        # absolute: what the report measures against
        self.budget = Budget(**{metric: math.floor(self.budget.target(reference.cost.exact(metric)))})
        lowest = self._allocation({gid: np.zeros(self.wide_gg.groups[gid].size) for gid in self.group_ids})
        try:
            check_reachable(self.wide_gg, self.budget, lowest.counts(len(lowest.ranked_units)))
        except BudgetError as exc:
            raise BudgetError(f"{exc} lwdna keeps at least conv_floor={conv_floor} (linear_floor={linear_floor} before the "
                              "classifier) of each group's original channels: lower them for this budget") from None
        self.scores: dict[int, np.ndarray] | None = None

    def _allocation(self, scores: dict[int, np.ndarray]) -> Allocation:
        return Allocation(self.wide_gg, scores, self.min_channels, self.min_ratio, floors=self.floors, roles=self.roles)

    # ------------------------------------------------------------- instrumentation
    def attach(self) -> None:
        self.latents.attach()

    def detach(self) -> None:
        self.latents.detach()

    # ------------------------------------------------------------- one-shot shrinkage
    def score(self) -> dict[int, np.ndarray]:
        """Each searched channel's score: |dL/dz| summed over ``batches`` batches, or |z| after two SGD steps."""
        model, latents = self.widened.model, self.latents.bank.values
        model.train()
        if self.criterion == "gradient":
            latents.grad = None
            for x, y in self._batches(self.batches):
                self._loss(model, x, y).backward()
            all_reduce_gradients([latents])  # under torchrun: the gradient of every rank's batches
            return self.latents.per_group(latents.grad.abs())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for x, y in self._batches(2):
            optimizer.zero_grad()
            self._loss(model, x, y).backward()
            all_reduce_gradients(model.parameters())
            optimizer.step()
        return self.latents.per_group(latents.abs())

    def _batches(self, n: int) -> Iterable[tuple[Any, Any]]:
        if self.train_data is None:
            for _ in range(n):
                yield tuple(self.gg.traced.placeholder_values), None
            return
        taken = 0
        while taken < n:
            for batch in self.train_data:
                yield batch
                taken += 1
                if taken == n:
                    return

    def _loss(self, model: torch.nn.Module, x: Any, y: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        inputs = tuple(v.to(device) if isinstance(v, torch.Tensor) else v for v in (x if isinstance(x, tuple) else (x,)))
        out = model(*inputs)
        if y is None:  # no data: labels sampled from the model's own predictive distribution
            if not (isinstance(out, torch.Tensor) and out.dim() == 2):
                raise GraphPruneError("lwdna without train_data samples labels from a classifier's (N, classes) output; "
                                      "this model's output is not one: pass train_data= and loss_fn=")
            y = torch.multinomial(F.softmax(out.detach(), 1), 1).squeeze(1)
            return F.cross_entropy(out, y)
        if self.loss_fn is None:
            raise GraphPruneError("lwdna with train_data needs loss_fn= (e.g. torch.nn.functional.cross_entropy)")
        return self.loss_fn(out, y.to(device))

    def plan(self) -> Plan:
        """The lowest-scoring channels go until the budget is met (binary search), floors kept."""
        if self.scores is None:
            self.scores = self.score()
        return allocate_by_score(self.wide_gg, self.scores, self.budget, self.min_channels, self.min_ratio, floors=self.floors,
                                 roles=self.roles)

    # ------------------------------------------------------------- the result
    def planned_on(self) -> GroupGraph:
        return self.wide_gg

    def build(self, plan: Plan) -> torch.nn.Module:
        """The LW-DNA architecture, re-initialized: it trains from scratch."""
        return reinitialize(slim(self.wide_gg, plan), self.seed)

    def refine_report(self, report: Any) -> Any:
        notes = [f"lwdna: the slim model is the LW-DNA architecture re-initialized (seed {self.seed}), none of the model's "
                 "weights: train it from scratch (graphprune.apply(..., epochs=N) does)"]
        if self.train_data is None:
            notes.append("lwdna: channels scored on the example inputs with labels sampled from the model's own predictions "
                         "(no train_data)")
        return dataclasses.replace(report, notes=[*report.notes, *notes])

    def width_percentages(self, plan: Plan) -> dict[str, float]:
        """Kept output channels per layer as a percentage of the original layer's (the paper's Fig. 5/8)."""
        original = _out_channels(self.gg)
        wide = _out_channels(self.wide_gg)
        return {layer: 100 * fraction * wide[layer] / original[layer]
                for layer, fraction in plan.kept_per_layer(self.wide_gg).items() if layer in original}

    def report_png(self, path: str) -> None:
        plot_widths(path, self.width_percentages(self.plan()), f"LW-DNA: output channels vs the original ({self.budget.metric} budget)")


def _out_channels(gg: GroupGraph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for g in gg.groups:
        for m in g.members:
            if m.role == "out" and m.param == "weight":
                counts[m.module] = counts.get(m.module, 0) + len(m.positions)
    return counts


__all__ = ["LWDNAPass"]
