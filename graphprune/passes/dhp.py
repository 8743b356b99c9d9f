"""DHP: differentiable meta pruning via hypernetworks (Li et al., ECCV 2020).

Every conv, transposed conv and linear layer the analysis sees gets its weight from a hypernetwork
fed by the latent vectors of its two channel dims, one latent vector per channel group (the
reparameterization, ``reparam.py``, shared with LW-DNA).

Optimization (Sec. 3.2): the user's optimizer trains hypernetworks and latents on the task loss;
after each optimizer step of the search the sparsified latents take the proximal step of threshold
``lambda * lr`` (l1: soft-thresholding, Eq. 8; l2: per-vector shrinkage, Eq. S1), ``lr`` read from
the optimizer the session was bound to (``graphprune.fit`` binds it; a user's own loop calls
``session.bind_optimizer(optimizer)``). Binding also moves the latents to a param group without
weight decay: Eq. 5 decays only the hypernetworks' W and B. Which latents are never sparsified:
see ``reparam.py``.

Schedule (``graphprune/passes/search.py``): the search is a window of training, ``warmup`` to ``search_end``
as fractions of its optimizer steps (default 5% to 20%). Before it, latents and hypernetworks train
on the task alone, so the |latent| ranking the shrinkage works on is already moved by the task
gradients rather than the random initialization alone. The paper picks lambda by hand so that its
search takes 5-10% of a 300-epoch run; here lambda follows from the window (``reg=None``): a latent
drops below ``tau`` once the summed thresholds reach its *exit time* (l1: ``|z| - tau``; l2:
``||z_g|| (1 - tau / |z|)``), and both operators lower every exit time by exactly the step's
threshold. So each search step the distance D still to go is read off the latents (the exit time of
the last latent that must go for the budget, on the exact cost model, plus tau / 2) and the step
takes the share of D that a cumulative schedule growing as progress² gives it: lambda_k = D_k *
(p_{k+1}² - p_k²) / (1 - p_k²) / lr_k. Early steps shrink little, so the task gradient still
re-ranks the latents; D is re-read every step, so gradients pushing latents up are answered; the
last step of the window takes all of D, so the budget is met by the window's end on any schedule.
How much the task re-ranks the latents depends on the run's length, not on lambda: on ResNet-20 /
CIFAR an SGD step at lr 0.05 moves a latent by ~2e-4, against the paper's N(0, 1) initialization, so
a run of a few hundred steps keeps the initial ranking (a 4-epoch, 144-step run pruned exactly each
group's smallest initial latents; a 30-epoch run kept a Spearman correlation of 0.993-1.0 with it
among the survivors). ``latent_init="sign"`` starts every latent at +-1 instead, so that the
soft-thresholding lowers equal magnitudes and only what the task gradients did to them ranks them;
on the CIFAR benchmark (ResNet-20, 25% MACs, 30 epochs, seed 0) it scored 58.66% against the
paper's N(0, 1) initialization's 60.43%: the equal magnitudes all reach tau within the window's
last few steps, so the cut rests on the small drifts the task gave them. The default stays the
paper's.
An explicit ``reg`` (the paper's CIFAR value is 2e-4) instead shrinks by ``reg * lr`` from the
window's start until the budget is met, however long that takes.

Search (Sec. 3.3): a channel survives while |latent| >= ``tau``; the search stops at the first
step whose surviving counts cost at most ``tolerance`` above the target on the exact cost model,
and its latents are kept as the result. ``plan`` keeps that mask if it lands in [target -
tolerance, target]; otherwise it moves the cut along the global |latent| ranking
(``allocate_by_score``), the order the l1 search itself removes channels in (every latent shrinks
by the same threshold, the mask is one global threshold), so the plan meets the budget exactly.
``detach`` removes the hypernetworks leaving the generated weights in place; the slim pass then
keeps the planned channels.

``uniform_layers``: the groups of a repeated layer (a role) keep one count. The proximal steps stay
per latent; where counts are decided (the mask, the distance to go, the plan's cut) a role's k-th
channel is its groups' k-th smallest latents together, its magnitude (and exit time) their mean,
so the mask of a role drops a channel in every layer at once and each layer keeps its own largest
latents.

Under torchrun the hypernetworks and latents are parameters, so DDP keeps them identical on every
rank and the proximal step, a function of them, is identical too; whether the search stops is rank
0's decision (``graphprune.common.distributed.agree``), so no rank stops a step early on a rounding tie.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from graphprune.budget.allocate import Allocation, allocate_by_score, check_reachable
from graphprune.common.distributed import agree
from graphprune.errors import BudgetError, GraphPruneError
from graphprune.groups.plan import Plan
from graphprune.training.plots import plot_search

from .base import register
from .reparam import Reparameterization
from .search import ScheduledSearch, SearchSchedule, exempt_from_weight_decay


def soft_threshold(z: torch.Tensor, threshold: float) -> torch.Tensor:
    """The l1 proximal operator (Eq. 8): sgn(z) [|z| - t]+."""
    return z.sign() * (z.abs() - threshold).clamp_min(0)


def shrink_vectors(z: torch.Tensor, vector: torch.Tensor, n_vectors: int, threshold: float) -> torch.Tensor:
    """The l2 proximal operator per latent vector (Eq. S1): (1 - t / max(||z_g||, t)) z_g.

    ``vector[i]`` says which latent vector element ``i`` belongs to.
    """
    norms = z.new_zeros(n_vectors).index_add_(0, vector, z * z).sqrt()
    return (1 - threshold / norms.clamp_min(threshold))[vector] * z


@register
class DHPPass(ScheduledSearch):
    """Options: ``reg`` (lambda; None derives it from the search window, see the module docstring;
    a number fixes it, the paper's CIFAR value being 2e-4), ``tau`` (mask threshold, 5e-3), ``norm``
    ("l1" or "l2"), ``embedding`` (m = 8), ``tolerance`` (how far above the target, as a fraction of
    the full cost, the search may stop; the plan always ends at or below the target and within this
    much of it: 0.005, the half point graphprune promises; at 0.01 a 25% run landed at 24.35%),
    ``keep_classifier_input`` (never prune the channels feeding the final classifier
    linear, as the authors' code; default True), ``latent_init`` ("normal": the paper's N(0, 1); "sign":
    +-1, every |latent| equal so the task alone ranks them), ``warmup``/``search_end`` (the search window as
    fractions of training, default 0.05/0.2), ``seed`` (latents and hypernetwork initialization).

    Window: 5% warm-up gives the latents a few hundred task-gradient steps on a CIFAR-length run
    before anything shrinks; ending by 20% keeps the search to the issue's bound (the paper: 5-10%
    of training searching from scratch) and leaves >= 80% of training to the slim model.
    """

    name = "dhp"
    trains = True
    ties_layers = True  # the mask, the distance and the cut count a role's channels together (module docstring)
    window = (0.05, 0.2)
    unready_source = ("latent vectors the search has not sparsified, and the slim model's weights would be what "
                      "untrained hypernetworks generate, not the model's own")

    def __init__(
        self, *args: Any, reg: float | None = None, tau: float = 5e-3, norm: str = "l1", embedding: int = 8,
        tolerance: float = 0.005, keep_classifier_input: bool = True, latent_init: str = "normal", seed: int = 0,
        loss_fn: Callable | None = None, **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)  # loss_fn: apply passes it to every trained method; DHP's loss is the loop's
        if norm not in ("l1", "l2"):
            raise GraphPruneError(f"dhp: norm must be 'l1' or 'l2', got {norm!r}")
        if reg is not None and reg <= 0:
            raise GraphPruneError(f"dhp: reg must be positive (or None to derive it from the schedule), got {reg}")
        self.reg, self.tau, self.norm, self.tolerance = reg, tau, norm, tolerance
        self.latents = Reparameterization(self.gg, self.model, "dhp", embedding=embedding, latent_init=latent_init,
                                          keep_classifier_input=keep_classifier_input, seed=seed)
        self.group_ids = self.latents.group_ids
        self._full = self.gg.cost.exact(self.budget.metric)
        self._target = self.budget.target(self._full)
        self._check_reachable()
        self.trajectory: list[float] = []  # masked cost per search step, % of the full model
        self.thresholds: list[float] = []  # lambda * lr of each search step
        self.kept_counts: dict[int, int] = {}  # per group, at the latest search step
        self.result: dict[int, np.ndarray] | None = None  # |latent| per group when the search stopped
        self._lr_group: dict | None = None

    def _check_reachable(self) -> None:
        """BudgetError now rather than a search that can never end."""
        floors = self._allocation({gid: np.zeros(self.gg.groups[gid].size) for gid in self.group_ids})
        try:
            check_reachable(self.gg, self.budget, floors.counts(len(floors.ranked_units)))
        except BudgetError as exc:
            if not self.latents.kept_whole:
                raise
            raise BudgetError(f"{exc} dhp keeps the classifier's input whole: keep_classifier_input=False searches it too") from None

    # ------------------------------------------------------------- instrumentation
    def attach(self) -> None:
        self.latents.attach()
        self._record()

    def detach(self) -> None:
        """Remove the hypernetworks; each layer keeps the weight they generate now."""
        self.latents.detach()

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer whose learning rate is the proximal step size mu; its weight decay stops at the latents."""
        latents = self.latents.bank.values
        exempt_from_weight_decay(optimizer, [latents])
        self._lr_group = next((g for g in optimizer.param_groups if any(p is latents for p in g["params"])), None)
        if self._lr_group is None:
            raise GraphPruneError("dhp: the optimizer does not hold the latent vectors; create it from model.parameters() "
                                  "after graphprune.prepare(...)")

    # ------------------------------------------------------------- search
    def after_step(self, step: int, loss: float | None = None) -> None:
        if self.result is not None:
            return
        if self._lr_group is None:
            raise GraphPruneError("dhp's proximal step needs the learning rate: call session.bind_optimizer(optimizer) "
                                  "before training in your own loop (graphprune.fit and apply do it)")
        schedule = self.require_schedule()
        if step < schedule.start_step:
            return
        threshold = self.reg * self._lr_group["lr"] if self.reg is not None else self.paced_threshold(step, schedule)
        self.thresholds.append(threshold)
        self.proximal_step(threshold)
        self._record()

    def paced_threshold(self, step: int, schedule: SearchSchedule) -> float:
        """This step's share of the distance still to go, on a cumulative schedule growing as progress²."""
        done, after = schedule.progress(step) ** 2, schedule.progress(step + 1) ** 2
        share = 1.0 if after >= 1.0 else (after - done) / (1.0 - done)
        return share * self.distance()

    def distance(self) -> float:
        """Summed thresholds still needed to meet the budget: the exit time of the last latent that must go.

        The fewest removals (along the |latent| ranking, floors applied) whose cost is within
        ``tolerance`` of the target, on the exact cost model; that many latents must fall below
        ``tau``, the ones with the earliest exit times. tau / 2 more takes the last one clearly below.
        """
        scores = self.magnitudes()
        alloc = self._allocation(scores)
        limit = self._target + self.tolerance * self._full
        lo, hi = 0, len(alloc.ranked_units)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.gg.cost.exact(self.budget.metric, alloc.counts(mid)) <= limit else (mid + 1, hi)
        if lo == 0:
            return 0.0
        exits = np.partition(np.concatenate(alloc.combine({gid: self.exit_times(s) for gid, s in scores.items()})), lo - 1)
        return max(0.0, float(exits[lo - 1]) + self.tau / 2)

    def exit_times(self, magnitudes: np.ndarray) -> np.ndarray:
        """Summed thresholds after which each latent of one group is below tau (l1: |z| - tau; l2: ||z|| (1 - tau / |z|))."""
        if self.norm == "l1":
            return magnitudes - self.tau
        return np.linalg.norm(magnitudes) * (1.0 - self.tau / np.maximum(magnitudes, 1e-30))

    @torch.no_grad()
    def proximal_step(self, threshold: float) -> None:
        """Eq. 8 (l1) or Eq. S1 (l2) on the sparsified latents, after the optimizer's step."""
        z = self.latents.bank.values
        searched, vector = self.latents.on_device()
        if self.norm == "l1":
            z[searched] = soft_threshold(z[searched], threshold)
        else:
            z[searched] = shrink_vectors(z[searched], vector, len(self.group_ids), threshold)

    def ready(self) -> bool:
        return self.result is not None

    def magnitudes(self) -> dict[int, np.ndarray]:
        """|latent| of every sparsified group."""
        return self.latents.per_group(self.latents.bank.values.abs())

    def _allocation(self, scores: dict[int, np.ndarray]) -> Allocation:
        """The allocation over ``scores`` (|latent|s), a role's groups as one unit under ``uniform_layers``."""
        return Allocation(self.gg, scores, self.min_channels, self.min_ratio, roles=self.roles, **self.bounds)

    def _masked(self, scores: dict[int, np.ndarray]) -> tuple[Allocation, dict[int, int]]:
        """Kept counts when every latent below tau goes (floors and round_to applied; a role's channel
        goes when the mean of its groups' latents at that rank is below tau)."""
        alloc = self._allocation(scores)
        return alloc, alloc.counts(alloc.below(self.tau))

    def _record(self) -> None:
        scores = self.magnitudes()
        if not all(np.isfinite(s).all() for s in scores.values()):
            raise GraphPruneError("dhp: the latent vectors are no longer finite (training diverged); lower the learning rate")
        _, self.kept_counts = self._masked(scores)
        cost = self.gg.cost.exact(self.budget.metric, self.kept_counts)
        self.trajectory.append(100 * cost / self._full)
        if agree(cost <= self._target + self.tolerance * self._full):  # rank 0 decides when the search stops
            self.result = scores

    # ------------------------------------------------------------- the plan
    def plan(self) -> Plan:
        """The search's mask if it meets the budget within tolerance, else the exact cut by |latent|."""
        scores = self.result if self.result is not None else self.magnitudes()
        alloc, counts = self._masked(scores)
        if self._target - self.tolerance * self._full <= self.gg.cost.exact(self.budget.metric, counts) <= self._target:
            return alloc.plan(counts)
        return allocate_by_score(self.gg, scores, self.budget, self.min_channels, self.min_ratio, roles=self.roles, **self.bounds)

    def report_png(self, path: str) -> None:
        """Budget trajectory over the search steps and the plan's kept channels per layer."""
        plot_search(path, self.trajectory, self.plan().kept_per_layer(self.gg), 100 * self._target / self._full,
                    f"DHP: {self.budget.metric} search")


__all__ = ["DHPPass", "soft_threshold", "shrink_vectors"]
