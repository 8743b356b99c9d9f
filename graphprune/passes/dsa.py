"""DSA: differentiable sparsity allocation under a budget (Ning et al., ECCV 2020).

Per prunable group k a keep ratio alpha_k. Channel i keeps with probability
p_i = 1 / (1 + (b_i / beta1)^-beta2), b_i its base importance (|BN scale| summed over the group's
BatchNorm members, else the l1 norm of its producers; or a data-aware criterion, ``importance``
below), beta1(alpha) solved by bisection so that sum_i p_i = alpha * C (Eq. 2), and the gradient
reaching alpha is Eq. 6: C * sum_i dL/dp_i * w_i / sum_j w_j with w_i = p_i (1 - p_i) (the implicit
derivative of Eq. 5). Masks are sampled from Bernoulli(p_i) with a straight-through estimator: the
forward pass sees the hard 0/1 masks the pruned network will have, the backward pass gives dL/dp_i,
which Eq. 6 needs.

Weight steps train the network the current allocation describes: ``weight_masks="hard"`` (default)
keeps each group's round(alpha_k C_k) most important channels, the beta2 -> infinity limit of the
paper's masks; ``"sampled"`` draws Bernoulli(p_i) masks for them as the paper does. Eq. 6 always reads
sampled masks at the current beta2 (on validation batches). Why: while beta2 is small the sampled
masks are i.i.d. channel dropout at rate 1 - alpha, and a short schedule cannot afford it. ResNet-20 on
the CIFAR subset at 25% MACs, 30 epochs, seed 0 (``bench/dsa_trajectory.py``): with sampled masks the
training loss stayed between 1.85 and 1.77 from epoch 4 to 13 of the search and the slim model ended
at 52.2%; with hard masks the loss ended the search at 1.47 and the slim model at 61.6%.

Schedule (``graphprune/passes/search.py``): plain training for the first ``warmup`` of the steps (7%: the
paper's 20 of 300 epochs; at initialization every BN scale is 1, so importance would play no part),
the search until ``search_end`` (half of training), the slim model after. ``allocation_steps``
allocation updates are spread over the search (one per weight step at most, one per 20 at least,
the paper's rate), and beta2 grows geometrically per allocation step from 0.05 to ``final_beta2``
at the end of the search, so the masks harden along the search (at 1000 a channel whose importance
is 1% from the threshold has p within 1e-4 of 0 or 1) instead of a final cut the search never saw.

Allocation (Eq. 7-8), one ADMM iteration per allocation step, on the keep ratios alpha themselves
in [floor_k, 1] (floor_k: ``min_ratio``, and ``min_channels`` of the group). The paper substitutes
theta = sigmoid^-1(alpha) to stay in (0, 1); there every step is scaled by sigmoid'(theta), which is
0.0099 at the start (alpha = 0.99) and grows as a group moves: the first groups the budget moves
get up to 25x the step of the others, in the budget's projection and in Eq. 6 alike, and the
geometry decides the allocation, not the loss. On ResNet-20 at 25% MACs, every block's first conv
stayed at 100% while the residual streams fell to 19-31%. On alpha, box constraints do the job of the
sigmoid and every group's step is what Eq. 6 and the budget say.
- alpha: the alpha sub-problem, L_v + u2 (alpha - z) + rho2/2 ||alpha - z||^2, solved with L_v
  linearized at the current alpha (the paper takes one stochastic gradient step; the linearized
  problem has a closed form, so no step size to tune): alpha = clip(z - (u2 + eta g) / rho2). g is
  dL_v/dalpha from Eq. 6 on ``val_batches`` validation batches with fresh masks, averaged over
  allocation steps by an exponential moving average (one batch's estimate is mostly mask noise) and
  divided by one scalar, the average's largest magnitude. Dividing by one scalar keeps the groups'
  relative sensitivities, which decide how far each group moves (Adam would move every group by
  its step size, whatever Eq. 6 says), and frees the step from the loss's units (the paper's fixed
  1e5 scale fits one loss). eta = ``travel`` / (allocation steps in the search): over the whole
  search the loss can move a group by ``travel`` (keep-ratio units) against the budget's path,
  whatever the schedule's length.
- z: the exact solution of its sub-problem, the projection of alpha + u2/rho2 onto the budget set
  F(z) <= B within the box (Eq. 9's inner gradient loop approximates it), by bisection along the
  budget gradient, re-linearized a few times. B follows the search: from the cost when the search
  starts down to the target at ``pace`` of the search, so that the budget is met on any schedule and
  the rest of the search hardens the masks at the target.
- u2 += rho2 (alpha - z).
Together: z moves by projected gradient descent on the normalized validation loss inside the
shrinking budget set, and alpha follows it; its fixed points are the KKT points of min L_v s.t.
F <= B, whatever the step size. The paper projects the gradient of theta to be non-negative
"to reach the budget faster"; the paced z-step reaches it on schedule, and with that projection
every noisy positive estimate ratchets a group down for good (the cost drifted to 14% of a 25%
budget in a 3200-step search), so it is left out.
``plan`` keeps the top channels by b_i in each group with counts alpha_k C_k, scaled together so the
plan meets the budget exactly (<= target, within half a point).

``importance``: b_i from a data-aware criterion instead of BN scales, "taylor", "hessian" (its default
diagonal, over every sample of the batches) or your function as method "importance" takes it
(``ranking.py``: each criterion's own code). It is measured at every allocation step, before Eq. 6, on
``importance_batches`` validation batches, through the masks the weight steps train (a channel they
drop keeps its last measurement, as its BN scale would; the others average in with ``momentum``), and
it ranks everything b_i ranks: the keep probabilities, the hard masks and the plan. BN scales then keep
their weight decay. Each measurement costs ``importance_batches`` forward and backward passes (hessian:
one per sample) on top of Eq. 6's ``val_batches``.

``uniform_layers``: the groups of a repeated layer (a role) share one alpha, so their masks keep one
count throughout the search and in the plan, each group its own most important channels. The ADMM
runs on the per-group problem restricted to tied ratios: a role's Eq. 6 gradient is the mean of its
groups' (the alpha step's closed form under the tie), the z-projection weighs a role's distance by
its number of groups, and the budget's quadratic form is taken over the roles.

While the BN scales are DSA's importance they get no weight decay (``bind_optimizer`` moves them
into a param group without it): decay would shrink the importance it reads. ``apply`` holds out a
seeded 10% of the training data for the allocation steps unless ``val_data`` is given, and gives
it back to training once the search is over (the paper's protocol).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import scipy.optimize
import torch

from graphprune.budget.allocate import Allocation, allocate_by_ratios, tie
from graphprune.common.distributed import all_reduce_mean
from graphprune.errors import GraphPruneError, OptionError
from graphprune.groups.plan import Plan
from graphprune.training.plots import plot_search

from .base import register
from .importance import member_norms
from .masks import ChannelMasks
from .ranking import Ranking
from .search import ScheduledSearch, exempt_from_weight_decay


def keep_probabilities(log_b: torch.Tensor, alpha: Any, beta2: float, iterations: int = 100) -> tuple[torch.Tensor, Any]:
    """p_i = sigmoid(beta2 (log b_i - log beta1)) with mean(p) = alpha; returns (p, log beta1).

    A 2-D ``log_b`` holds one group per row, padded with -inf (p = 0 there, not counted), and
    ``alpha`` one ratio per row: every group's bisection runs at once.
    """
    rows = log_b.unsqueeze(0) if log_b.dim() == 1 else log_b
    valid = torch.isfinite(rows)
    counts = valid.sum(1)
    target = torch.as_tensor(alpha, dtype=rows.dtype).reshape(-1)
    lo = rows.masked_fill(~valid, math.inf).min(1).values - 60.0 / beta2
    hi = rows.masked_fill(~valid, -math.inf).max(1).values + 60.0 / beta2
    for _ in range(iterations):  # mean(p) decreases in log beta1
        mid = (lo + hi) / 2
        above = torch.sigmoid(beta2 * (rows - mid[:, None])).sum(1) / counts > target
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    log_beta1 = (lo + hi) / 2
    p = torch.sigmoid(beta2 * (rows - log_beta1[:, None]))
    return (p[0], float(log_beta1[0])) if log_b.dim() == 1 else (p, log_beta1)


class ExpectedKeep(torch.autograd.Function):
    """alpha -> p (bisection, no autograd inside); backward is the implicit-function gradient (Eq. 5-6).

    One group (``alpha`` a scalar, ``log_b`` 1-D) or all at once (rows padded with -inf)."""

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, log_b: torch.Tensor, beta2: float) -> torch.Tensor:
        p, _ = keep_probabilities(log_b.double(), alpha.detach().double(), beta2)
        ctx.save_for_backward(p, torch.isfinite(log_b).sum(-1))
        return p.to(log_b.dtype)

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor):
        p, counts = ctx.saved_tensors
        w = p * (1 - p)
        grad_alpha = counts * (grad_p.double() * w).sum(-1) / w.sum(-1).clamp_min(1e-30)
        return grad_alpha.to(grad_p.dtype), None, None


def sample_masks(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hard Bernoulli(p) masks whose gradient w.r.t. p is the identity (straight-through)."""
    hard = torch.bernoulli(p.detach(), generator=generator)
    return hard + (p - p.detach())  # exactly 0/1 forward, gradient 1 w.r.t. p


@register
class DSAPass(ScheduledSearch):
    """Options: ``warmup``/``search_end`` (fractions of training, 0.07/0.5), ``allocation_steps``
    (100), ``val_batches`` per allocation step (2), ``beta2``/``final_beta2`` (0.05/1000), ``rho2``
    (1), ``travel`` (1: a whole keep ratio over the search), ``momentum`` of the Eq. 6
    average (0.9), ``pace`` (0.8: the budget is met at this fraction of the search),
    ``initial_keep`` (0.99), ``weight_masks`` ("hard" or "sampled": the masks of the weight steps),
    ``importance`` (b_i: "bn_scale", "taylor", "hessian" or your function) and ``importance_batches``
    (2: validation batches it reads per allocation step), ``seed`` (mask sampling)."""

    name = "dsa"
    trains = True
    ties_layers = True  # one keep ratio per role (module docstring)
    holds_out = 0.1
    window = (0.07, 0.5)
    unready_source = "BatchNorm scales the search has not trained, with keep ratios it has not allocated"

    def __init__(
        self, *args: Any, val_data: Iterable | None = None, loss_fn: Callable | None = None,
        allocation_steps: int = 100, val_batches: int = 2, beta2: float = 0.05, final_beta2: float = 1000.0,
        rho2: float = 1.0, travel: float = 1.0, momentum: float = 0.9, pace: float = 0.8,
        initial_keep: float = 0.99, weight_masks: str = "hard", importance: str | Callable = "bn_scale",
        importance_batches: int = 2, seed: int = 0, **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if not 0 < pace <= 1 or allocation_steps < 1 or val_batches < 1 or not 0 < initial_keep < 1:
            raise GraphPruneError("dsa: need 0 < pace <= 1, allocation_steps >= 1, val_batches >= 1 and 0 < initial_keep < 1")
        if weight_masks not in ("sampled", "hard"):
            raise GraphPruneError(f"dsa: weight_masks is 'sampled' or 'hard', got {weight_masks!r}")
        if not isinstance(importance_batches, int) or importance_batches < 1:
            raise OptionError(f"dsa: importance_batches is how many validation batches a data-aware importance reads per "
                              f"allocation step, an int >= 1; got {importance_batches!r}")
        self.weight_masks = weight_masks
        # the base importance b_i: None for BN scales (the paper's); a data-aware criterion, measured per allocation step
        self.ranking = None if importance == "bn_scale" else Ranking(importance, "dsa", "bn_scale")
        self.importance_batches = importance_batches
        self._measured: dict[int, torch.Tensor] = {}  # its running scores per group
        self._measuring = False  # while it measures, the masks stay as they are
        if self.ranking is not None:
            self.unready_source = f"{self.ranking.name} scores and keep ratios of a search that has not finished"
        self.val_data, self.loss_fn = val_data, loss_fn
        self.allocation_steps, self.val_batches = allocation_steps, val_batches
        self.initial_beta2, self.final_beta2, self.beta2 = beta2, final_beta2, beta2
        self.rho2, self.travel, self.momentum, self.pace = rho2, travel, momentum, pace
        self.group_ids = [g.id for g in self.gg.prunable_groups if g.size > 1]
        # alpha, z, u2 hold one keep ratio per role (a group alone without uniform_layers); _role_of expands them per group
        role = {gid: r for r, gids in enumerate(tie(self.group_ids, self.roles)) for gid in gids}
        self._role_of = torch.tensor([role[gid] for gid in self.group_ids], dtype=torch.long)
        self._role_size = torch.bincount(self._role_of).double()
        sizes = torch.tensor([self.gg.groups[gid].size for gid in self.group_ids], dtype=torch.float64)
        floor = torch.clamp(torch.maximum(torch.full_like(sizes, self.min_ratio), max(1, self.min_channels) / sizes), max=1.0)
        given = torch.tensor([self.bounds["floors"].get(gid, 0) for gid in self.group_ids], dtype=torch.float64)
        floor = torch.maximum(floor, given / sizes)  # min_ratio per layer, ratios= (their ceilings bind in plan())
        self.floor = torch.zeros_like(self._role_size).scatter_reduce(0, self._role_of, floor, "amax")
        self.alpha = torch.full((len(self._role_size),), initial_keep, dtype=torch.float64).maximum(self.floor)
        self.z = self.alpha.clone()
        self.u2 = torch.zeros_like(self.alpha)
        self._loss_grad = torch.zeros_like(self.alpha)  # moving average of dL_v/dalpha
        self.generator = torch.Generator().manual_seed(seed)
        self.masks: dict[int, torch.Tensor] = {}
        self._stale = False  # masks are drawn again at the next forward pass
        self.trajectory: list[float] = []  # cost after each allocation step, % of the full model
        self.step = 0
        self._start_cost: float | None = None
        self._sensitivity_sum, self._sensitivity_steps = torch.zeros_like(self.alpha), 0
        b = self.gg.cost
        self._full = b.exact(self.budget.metric)
        self._target = 100 * self.budget.target(self._full) / self._full
        self._budget_index = torch.tensor([b.groups.index(self.gg.groups[gid]) for gid in self.group_ids], dtype=torch.long)
        self._val_iter: Iterator | None = None

    # ------------------------------------------------------------- importance and masks
    def _bn_scales(self) -> list[tuple[int, Any, torch.nn.Module]]:
        """(group id, member, BatchNorm) for every affine BatchNorm scale among the groups' members."""
        found = []
        for gid in self.group_ids:
            for m in self.gg.groups[gid].members:
                owner = self.model.get_submodule(m.module)
                if m.param == "weight" and isinstance(owner, torch.nn.modules.batchnorm._NormBase) and owner.affine:
                    found.append((gid, m, owner))
        return found

    def importance(self) -> dict[int, torch.Tensor]:
        """b_i: |BN scale| summed over the group's BatchNorm members, l1 of the producers otherwise;
        with a data-aware ``importance``, its running scores (:meth:`measure_importance`)."""
        if self.ranking is not None:
            if not self._measured:
                self.measure_importance()
            return {gid: self._measured[gid].clamp_min(1e-12) for gid in self.group_ids}
        totals = {gid: torch.zeros(self.gg.groups[gid].size, dtype=torch.float64) for gid in self.group_ids}
        with_bn = set()
        for gid, m, bn in self._bn_scales():
            scale = bn.weight.detach().abs().double().cpu()[torch.from_numpy(m.positions)]
            totals[gid].index_add_(0, torch.from_numpy(m.channels), scale)
            with_bn.add(gid)
        if len(with_bn) < len(self.group_ids):
            norms = member_norms(self.model, self.gg, 1)
            for gid in set(self.group_ids) - with_bn:
                totals[gid] = torch.from_numpy(norms[gid])
        return {gid: t.clamp_min(1e-12) for gid, t in totals.items()}

    def measure_importance(self) -> None:
        """A data-aware ``importance`` measured again on ``importance_batches`` validation batches, on the
        network as it trains: through its current masks, which stay as they are meanwhile. A channel the
        masks drop carries no signal, so a criterion would read 0 for it: it keeps its last measurement,
        as its BN scale (the default) keeps its value, which receives no gradient either. The others
        average in with ``momentum``, like Eq. 6's estimate: one measurement of a few batches is noisy,
        and the hard masks follow its order. Under torchrun the ranks average their measurements."""
        batches = [self._next_val_batch() for _ in range(self.importance_batches)]
        self._measuring = True
        try:
            fresh = self.ranking.scores(self.model, self.gg, batches, self.loss_fn)
        finally:
            self._measuring = False
        sizes = [self.gg.groups[gid].size for gid in self.group_ids]
        flat = all_reduce_mean(torch.from_numpy(np.concatenate([fresh[gid] for gid in self.group_ids])).double())
        for gid, new in zip(self.group_ids, flat.split(sizes)):
            old = self._measured.get(gid)
            if old is None:
                self._measured[gid] = new
                continue
            kept = self.masks[gid].detach().cpu() > 0 if gid in self.masks else torch.ones(len(new), dtype=torch.bool)
            self._measured[gid] = torch.where(kept, self.momentum * old + (1 - self.momentum) * new, old)

    def alphas(self) -> torch.Tensor:
        """The keep ratio of every group (its role's)."""
        return self.alpha[self._role_of]

    def _log_importance(self) -> torch.Tensor:
        """log b_i, one row per group, padded with -inf."""
        b = self.importance()
        rows = torch.full((len(self.group_ids), max(len(v) for v in b.values())), -math.inf, dtype=torch.float64)
        for i, gid in enumerate(self.group_ids):
            rows[i, : len(b[gid])] = b[gid].log()
        return rows

    def keep_probabilities(self) -> dict[int, torch.Tensor]:
        """p_i of every group at the current alpha and beta2."""
        p, _ = keep_probabilities(self._log_importance(), self.alphas(), self.beta2)
        return {gid: p[i, : self.gg.groups[gid].size] for i, gid in enumerate(self.group_ids)}

    def resample(self, alpha: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """Fresh masks for every group (differentiable w.r.t. ``alpha``, one ratio per role, if it requires grad)."""
        alpha = self.alpha if alpha is None else alpha
        masks = sample_masks(ExpectedKeep.apply(alpha[self._role_of], self._log_importance(), self.beta2), self.generator)
        self.masks = {gid: masks[i, : self.gg.groups[gid].size].float() for i, gid in enumerate(self.group_ids)}
        self._stale = False
        return self.masks

    def hard_masks(self) -> dict[int, torch.Tensor]:
        """The beta2 -> infinity limit of the masks: each group's round(alpha_k C_k) most important channels."""
        b = self.importance()
        self.masks = {}
        for gid, alpha in zip(self.group_ids, self.alphas().tolist()):
            mask = torch.zeros(len(b[gid]))
            mask[torch.topk(b[gid], max(1, round(alpha * len(b[gid])))).indices] = 1.0
            self.masks[gid] = mask
        self._stale = False
        return self.masks

    def current_masks(self) -> dict[int, torch.Tensor]:
        """The masks the next forward pass uses: drawn afresh after every weight step, when first read
        (not while a data-aware importance measures the network they give)."""
        if self._stale and not self._measuring:
            with torch.no_grad():
                self.hard_masks() if self.weight_masks == "hard" else self.resample()
        return self.masks

    def attach(self) -> None:
        self._masking = ChannelMasks(self.model, self.gg, self.group_ids, self.current_masks)

    def detach(self) -> None:
        self._masking.remove()

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Where BN scales are the importance: no weight decay on them during the search."""
        if self.ranking is None:
            exempt_from_weight_decay(optimizer, [bn.weight for _, _, bn in self._bn_scales()])

    # ------------------------------------------------------------- budget
    def cost(self, alphas: torch.Tensor) -> torch.Tensor:
        """F(alpha) in percent of the full model, through the cost model's differentiable evaluator."""
        full = torch.ones(len(self.gg.cost.groups), dtype=alphas.dtype)
        return 100 * self.gg.cost.torch(self.budget.metric, full.index_copy(0, self._budget_index, alphas)) / self._full

    def ready(self) -> bool:
        return self.schedule is not None and self.step >= self.schedule.end_step

    def paced_target(self, progress: float) -> float:
        """The budget B of the z-step: from the cost when the search started to the target at ``pace``."""
        start = self._start_cost if self._start_cost is not None else float(self.cost(self.alphas()))
        return max(self._target, start + (self._target - start) * min(1.0, progress / self.pace))

    # ------------------------------------------------------------- ADMM allocation (Eq. 7-8)
    def project(self, v: torch.Tensor, bound: float) -> torch.Tensor:
        """z = argmin ||z - v|| s.t. F(z) <= bound, floor <= z <= 1: the z-step of Eq. 8 solved exactly
        (to 1e-12 by SLSQP on the cost model's quadratic form; Eq. 9's inner loop approximates it).
        Over roles the distance counts each role once per group (the per-group problem with tied ratios)."""
        quadratic, linear, constant = self._cost_form
        cost = lambda z: float(z @ quadratic @ z + linear @ z + constant)  # noqa: E731
        box = np.stack([self.floor.numpy(), np.ones(len(self.floor))], 1)
        start = np.clip(v.numpy(), box[:, 0], box[:, 1])
        if cost(start) <= bound:
            return torch.from_numpy(start)
        weight = self._role_size.numpy()
        found = scipy.optimize.minimize(
            lambda z: 0.5 * float(((z - v.numpy()) * weight) @ (z - v.numpy())), start, jac=lambda z: weight * (z - v.numpy()),
            method="SLSQP", bounds=box, options={"ftol": 1e-12, "maxiter": 500},
            constraints=[{"type": "ineq", "fun": lambda z: bound - cost(z), "jac": lambda z: -(2 * quadratic @ z + linear)}])
        z = np.clip(found.x, box[:, 0], box[:, 1])
        if cost(z) > bound:  # SLSQP's last step may overshoot the constraint by its tolerance
            z = box[:, 0] + (z - box[:, 0]) * scipy.optimize.brentq(
                lambda t: cost(box[:, 0] + (z - box[:, 0]) * t) - bound, 0.0, 1.0, xtol=1e-14)
        return torch.from_numpy(z)

    @functools.cached_property
    def _cost_form(self) -> tuple[np.ndarray, np.ndarray, float]:
        """F(alpha) in percent = alpha^T Q alpha + q^T alpha + c over this pass's roles (the other groups kept whole)."""
        full_a, full_b, c = self.gg.cost.quadratic(self.budget.metric)
        mine = self._budget_index.numpy()
        rest = np.setdiff1d(np.arange(len(full_b)), mine)
        scale = 100 / self._full
        quadratic = full_a[np.ix_(mine, mine)]
        linear = full_b[mine] + 2 * full_a[np.ix_(mine, rest)].sum(1)
        constant = c + full_a[np.ix_(rest, rest)].sum() + full_b[rest].sum()
        if len(self._role_size) < len(mine):  # alpha per role: alpha_groups = M alpha, M the membership matrix
            member = np.eye(len(self._role_size))[self._role_of.numpy()]
            quadratic, linear = member.T @ quadratic @ member, member.T @ linear
        return scale * quadratic, scale * linear, scale * constant

    def loss_gradient(self) -> torch.Tensor:
        """dL_v/dalpha on ``val_batches`` validation batches, fresh masks for each (Eq. 6); per role, the
        mean over its groups (the alpha step of the per-group problem with tied ratios)."""
        device = next(self.model.parameters()).device
        total = torch.zeros_like(self.alpha)
        was_training = self.model.training
        self.model.train()
        for _ in range(self.val_batches):
            x, y = self._next_val_batch()
            alpha = self.alpha.clone().requires_grad_(True)
            self.resample(alpha)
            loss = self.loss_fn(self.model(x.to(device)), y.to(device))
            (grad,) = torch.autograd.grad(loss, alpha, allow_unused=True)
            if grad is not None:
                total += grad.double() / self._role_size
        self.model.train(was_training)
        return all_reduce_mean(total / self.val_batches)  # each rank's validation batches: alpha, z, u2 agree everywhere

    def steps_between(self) -> int:
        """Weight steps per allocation step: ``allocation_steps`` over the search, at most every
        step and at least every 20 (the paper's rate)."""
        return min(20, max(1, self.require_schedule().length // self.allocation_steps))

    def planned_allocations(self) -> int:
        return -(-self.require_schedule().length // self.steps_between())

    def allocation_step(self, progress: float) -> None:
        """One ADMM iteration (Eq. 8): alpha step, z projection, dual update of u2."""
        if self._start_cost is None:
            self._start_cost = float(self.cost(self.alphas()))
        if self.ranking is not None:
            self.measure_importance()
        grad = self.loss_gradient()
        self._sensitivity_sum -= grad  # -dL/dalpha
        self._sensitivity_steps += 1
        self._loss_grad = self.momentum * self._loss_grad + (1 - self.momentum) * grad
        scale = float(self._loss_grad.abs().max())
        loss_term = self._loss_grad / scale if scale > 0 else self._loss_grad
        eta = self.travel / self.planned_allocations()
        self.alpha = (self.z - (self.u2 + eta * loss_term) / self.rho2).maximum(self.floor).clamp_max(1.0)
        self.z = self.project(self.alpha + self.u2 / self.rho2, self.paced_target(progress))
        self.u2 = self.u2 + self.rho2 * (self.alpha - self.z)
        self.trajectory.append(float(self.cost(self.alphas())))

    def sensitivity(self) -> torch.Tensor:
        """Mean -dL_v/dalpha_k over the allocation steps, normalized to a maximum of 1 (the paper's Fig. 6).

        How much the validation loss falls per unit of keep ratio: the groups the allocation protects.
        """
        mean = self._sensitivity_sum / max(self._sensitivity_steps, 1)
        return mean / mean.abs().max().clamp_min(1e-30)

    def _next_val_batch(self):
        if self.val_data is None or self.loss_fn is None:
            raise GraphPruneError("dsa needs val_data= (a held-out iterable of batches, e.g. 10% of the training data) "
                                  "and loss_fn= to allocate; graphprune.apply holds out 10% of a DataLoader itself")
        if self._val_iter is None:
            self._val_iter = iter(self.val_data)
        try:
            return next(self._val_iter)
        except StopIteration:
            sampler = getattr(self.val_data, "sampler", None)
            if hasattr(sampler, "set_epoch"):  # a DistributedSampler: a new order each pass, as fit does for training
                sampler.set_epoch(sampler.epoch + 1)
            self._val_iter = iter(self.val_data)
            return next(self._val_iter)

    # ------------------------------------------------------------- training hooks
    def after_step(self, step: int, loss: float | None = None) -> None:
        """Called with the session's step count: allocation steps spread evenly over the search window."""
        schedule = self.require_schedule()
        self.step = step + 1
        if step < schedule.start_step:  # warm-up: plain training
            return
        if step >= schedule.end_step:  # the search is over: the last masks stay until finish()
            return
        progress = schedule.progress(step)
        if (step - schedule.start_step) % self.steps_between() == 0:
            self.beta2 = self.initial_beta2 * (self.final_beta2 / self.initial_beta2) ** progress
            self.allocation_step(progress)
        self._stale = True

    # ------------------------------------------------------------- the plan
    def plan(self) -> Plan:
        """Top channels by b_i with counts alpha_k * C_k, scaled together to meet the budget exactly."""
        b = self.importance()
        alloc = Allocation(self.gg, {gid: b[gid].numpy() for gid in self.group_ids}, self.min_channels, self.min_ratio,
                           roles=self.roles, **self.bounds)
        alphas = {gid: float(a) for gid, a in zip(self.group_ids, self.alphas())}
        order = sorted(self.group_ids, key=lambda g: -alphas[g])  # most-kept groups first
        return allocate_by_ratios(self.gg, alloc, alphas, self.budget, order)

    def report_png(self, path: str) -> None:
        """The budget trajectory beside the final kept channels per layer and each layer's sensitivity (Fig. 6)."""
        sensitivity = dict(zip(self.group_ids, self.sensitivity()[self._role_of].tolist()))
        by_layer = {m.module: sensitivity[gid] for gid in self.group_ids for m in self.gg.groups[gid].members
                    if m.role == "out" and m.param == "weight"}
        plot_search(path, self.trajectory, self.plan().kept_per_layer(self.gg), self._target, f"DSA: {self.budget.metric} allocation",
                    sensitivity=by_layer)


def inexactness(p: torch.Tensor) -> float:
    return float((p * (1 - p)).sum())


__all__ = ["DSAPass", "keep_probabilities", "ExpectedKeep", "sample_masks", "inexactness"]
