"""DSA: differentiable sparsity allocation under a budget (Ning et al., ECCV 2020).

Per prunable group k a keep ratio alpha_k = sigmoid(theta_k). Channel i keeps with probability
p_i = 1 / (1 + (b_i / beta1)^-beta2), b_i its base importance (|BN scale| summed over the group's
BatchNorm members, else the l1 norm of its producers), beta1(alpha) solved by bisection so that
sum_i p_i = alpha * C (Eq. 2), and the gradient reaching alpha is Eq. 6: C * sum_i dL/dp_i * w_i /
sum_j w_j with w_i = p_i (1 - p_i) (the implicit derivative of Eq. 5). Masks are sampled from
Bernoulli(p_i) with a straight-through estimator: the forward pass sees the hard 0/1 masks the
pruned network will have, the backward pass gives dL/dp_i, which Eq. 6 needs. beta2 grows by
x1.1 per epoch from 0.05, so the inexactness sum p_i (1 - p_i) goes to 0.

Allocation (Eq. 7-9), every ``steps_between`` weight steps after ``warmup_epochs``: one step on
theta from a validation batch with the gradient of the theta sub-problem of Eq. 8 (validation loss
scaled by ``loss_scale``, plus u2 + rho2 (theta - z')), projected to be non-negative as the paper
does to reach the budget faster (a group the loss wants to keep stays, the others shrink); the
z-step as ``inner_steps`` gradient steps on the augmented Lagrangian (Eq. 9) with the budget model's
differentiable evaluator (costs in percent of the full model); then the dual update of u2. Once
F(alpha) <= budget, ``plan`` keeps the top channels by b_i in each group, scaled together so the
plan meets the budget exactly (<= target, within half a point).

The paper leaves theta's optimizer and step size unstated. Plain SGD steps of 0.1 x the 1e5-scaled
loss gradient moved one group from keep 0.99 to 0.0003 in a single step (ResNet-20, the first
benchmark run). Adam (DARTS' architecture optimizer; the paper follows DARTS' bi-level scheme) moves
every group by about ``theta_lr`` per step whatever the loss scale, so the loss decides *which*
groups shrink and the budget pressure (u2, rho2) decides *how far*: ``theta_lr`` 0.2 reaches a
50% MACs budget from keep 0.99 in about 25 allocation steps on ResNet-20.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator

import torch

from graphprune.allocate import Allocation, allocate_by_ratios
from graphprune.errors import GraphPruneError
from graphprune.plan import Plan
from graphprune.plots import plot_search

from . import register
from .base import MethodPass
from .magnitude import member_norms
from .masks import ChannelMasks


def keep_probabilities(log_b: torch.Tensor, alpha: float, beta2: float, iterations: int = 100) -> tuple[torch.Tensor, float]:
    """p_i = sigmoid(beta2 (log b_i - log beta1)) with mean(p) = alpha; returns (p, log beta1)."""
    lo, hi = float(log_b.min()) - 60.0 / beta2, float(log_b.max()) + 60.0 / beta2
    for _ in range(iterations):  # mean(p) decreases in log beta1
        mid = (lo + hi) / 2
        if float(torch.sigmoid(beta2 * (log_b - mid)).mean()) > alpha:
            lo = mid
        else:
            hi = mid
    log_beta1 = (lo + hi) / 2
    return torch.sigmoid(beta2 * (log_b - log_beta1)), log_beta1


class ExpectedKeep(torch.autograd.Function):
    """alpha -> p (bisection, no autograd inside); backward is the implicit-function gradient (Eq. 5-6)."""

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, log_b: torch.Tensor, beta2: float) -> torch.Tensor:
        p, _ = keep_probabilities(log_b.double(), float(alpha), beta2)
        ctx.save_for_backward(p)
        return p.to(log_b.dtype)

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor):
        (p,) = ctx.saved_tensors
        w = p * (1 - p)
        grad_alpha = len(p) * (grad_p.double() * w).sum() / w.sum().clamp_min(1e-30)
        return grad_alpha.to(grad_p.dtype), None, None


def sample_masks(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hard Bernoulli(p) masks whose gradient w.r.t. p is the identity (straight-through)."""
    hard = torch.bernoulli(p.detach(), generator=generator)
    return hard + (p - p.detach())  # exactly 0/1 forward, gradient 1 w.r.t. p


@register
class DSAPass(MethodPass):
    name = "dsa"
    trains = True

    def __init__(
        self, *args: Any, val_data: Iterable | None = None, loss_fn: Callable | None = None,
        warmup_epochs: int = 0, steps_between: int = 20, beta2: float = 0.05, beta2_growth: float = 1.1,
        rho1: float = 0.01, rho2: float = 0.01, inner_steps: int = 50, inner_lr: float = 1e-3,
        theta_lr: float = 0.2, loss_scale: float = 1e5, initial_keep: float = 0.99, seed: int = 0, **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.val_data, self.loss_fn = val_data, loss_fn
        self.warmup_epochs, self.steps_between = warmup_epochs, steps_between
        self.beta2, self.beta2_growth = beta2, beta2_growth
        self.rho1, self.rho2, self.inner_steps, self.inner_lr = rho1, rho2, inner_steps, inner_lr
        self.theta_lr, self.loss_scale = theta_lr, loss_scale
        self.group_ids = [g.id for g in self.gg.prunable_groups if g.size > 1]
        self._pos = {gid: i for i, gid in enumerate(self.group_ids)}
        logit = math.log(initial_keep / (1 - initial_keep))
        self.theta = torch.full((len(self.group_ids),), logit, dtype=torch.float64)
        self.z = self.theta.clone()
        self._theta_opt = torch.optim.Adam([self.theta], lr=theta_lr, betas=(0.5, 0.999))  # DARTS' architecture optimizer
        self.u1, self.u2 = 0.0, torch.zeros_like(self.theta)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.masks, self.trajectory = 0, {}, []
        self._sensitivity_sum, self._sensitivity_steps = torch.zeros_like(self.theta), 0
        b = self.gg.budget
        self._full = b.exact(self.budget.metric)
        self._target = 100 * self.budget.target(self._full) / self._full
        self._budget_index = [b.groups.index(self.gg.groups[gid]) for gid in self.group_ids]
        self._val_iter: Iterator | None = None

    # ------------------------------------------------------------- importance and masks
    def importance(self) -> dict[int, torch.Tensor]:
        """b_i: |BN scale| summed over the group's BatchNorm members; l1 of the producers otherwise."""
        fallback = None
        out = {}
        for gid in self.group_ids:
            g = self.gg.groups[gid]
            total = torch.zeros(g.size, dtype=torch.float64)
            found = False
            for m in g.members:
                owner = self.model.get_submodule(m.module)
                if m.param == "weight" and isinstance(owner, torch.nn.modules.batchnorm._NormBase) and owner.affine:
                    total.index_add_(0, torch.from_numpy(m.channels), owner.weight.detach().abs().double().cpu()[torch.from_numpy(m.positions)])
                    found = True
            if not found:
                fallback = fallback or member_norms(self.model, self.gg, 1)
                total = torch.from_numpy(fallback[gid])
            out[gid] = total.clamp_min(1e-12)
        return out

    def alphas(self) -> torch.Tensor:
        return torch.sigmoid(self.theta)

    def resample(self, theta: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """Fresh masks for every group (differentiable w.r.t. ``theta`` if it requires grad)."""
        theta = self.theta if theta is None else theta
        alphas = torch.sigmoid(theta)
        b = self.importance()
        self.masks = {
            gid: sample_masks(ExpectedKeep.apply(alphas[i], b[gid].log(), self.beta2), self.generator).float()
            for i, gid in enumerate(self.group_ids)
        }
        return self.masks

    def attach(self) -> None:
        self._masking = ChannelMasks(self.model, self.gg, self.group_ids, lambda: self.masks if self.epoch >= self.warmup_epochs else {})
        with torch.no_grad():
            self.resample()

    def detach(self) -> None:
        self._masking.remove()

    # ------------------------------------------------------------- budget
    def cost(self, alphas: torch.Tensor) -> torch.Tensor:
        """F(alpha) in percent of the full model, through the budget model's differentiable evaluator.

        Percent units keep the augmented Lagrangian's terms O(1) with the paper's rho = 0.01 and
        inner learning rate 1e-3 whatever the model's size (the paper does not state its units).
        """
        full = torch.ones(len(self.gg.budget.groups), dtype=alphas.dtype)
        ratios = full.index_copy(0, torch.tensor(self._budget_index, dtype=torch.long), alphas)
        return 100 * self.gg.budget.torch(self.budget.metric, ratios) / self._full

    def within_budget(self) -> bool:
        return float(self.cost(self.alphas())) <= self._target

    def ready(self) -> bool:
        return self.epoch >= self.warmup_epochs and self.within_budget()

    # ------------------------------------------------------------- ADMM allocation (Eq. 7-9)
    def z_step(self) -> None:
        """Inner gradient descent on L^(z)(z, u1) with a dual ascent step on u1 each time (Eq. 9)."""
        z = self.z.clone().requires_grad_(True)
        for _ in range(self.inner_steps):
            excess = self.cost(torch.sigmoid(z)) - self._target
            lagrangian = (self.u1 * excess.clamp_min(0) + self.rho1 / 2 * excess.clamp_min(0) ** 2
                          + (self.u2 * (self.theta - z)).sum() + self.rho2 / 2 * ((self.theta - z) ** 2).sum())
            (grad,) = torch.autograd.grad(lagrangian, z)
            with torch.no_grad():
                z -= self.inner_lr * grad
            self.u1 += self.rho1 * float((self.cost(torch.sigmoid(self.theta)) - self._target).clamp_min(0))
        self.z = z.detach()

    def allocation_step(self) -> None:
        """One theta step on a validation batch, the z-step, then the dual update of u2 (Eq. 8)."""
        x, y = self._next_val_batch()
        theta = self.theta.clone().requires_grad_(True)
        self.resample(theta)
        was_training = self.model.training
        self.model.train()
        loss = self.loss_fn(self.model(x), y) * self.loss_scale
        self.model.train(was_training)
        (grad,) = torch.autograd.grad(loss, theta, allow_unused=True)
        grad = torch.zeros_like(theta) if grad is None else grad.double()
        alphas = torch.sigmoid(self.theta)
        self._sensitivity_sum -= grad / (self.loss_scale * alphas * (1 - alphas))  # -dL/dalpha
        self._sensitivity_steps += 1
        self.theta.grad = (grad + self.u2 + self.rho2 * (self.theta - self.z)).clamp_min(0)  # the paper's projection
        self._theta_opt.step()
        self.z_step()
        self.u2 = self.u2 + self.rho2 * (self.theta - self.z)
        self.trajectory.append(float(self.cost(self.alphas())))
        with torch.no_grad():
            self.resample()

    def sensitivity(self) -> torch.Tensor:
        """Mean -dL_v/dalpha_k over the allocation steps, normalized to a maximum of 1 (the paper's Fig. 6).

        How much the validation loss falls per unit of keep ratio: the groups the allocation protects.
        """
        mean = self._sensitivity_sum / max(self._sensitivity_steps, 1)
        return mean / mean.abs().max().clamp_min(1e-30)

    def _next_val_batch(self):
        if self.val_data is None or self.loss_fn is None:
            raise GraphPruneError("dsa needs val_data= (a held-out iterable of batches, e.g. 10% of the training data) and loss_fn= to allocate")
        if self._val_iter is None:
            self._val_iter = iter(self.val_data)
        try:
            return next(self._val_iter)
        except StopIteration:
            self._val_iter = iter(self.val_data)
            return next(self._val_iter)

    # ------------------------------------------------------------- training hooks
    def after_step(self, step: int, loss: float | None = None) -> None:
        if self.epoch < self.warmup_epochs:
            return
        if step % self.steps_between == 0 and not self.within_budget():
            self.allocation_step()
        else:
            with torch.no_grad():
                self.resample()

    def end_epoch(self, epoch: int) -> None:
        self.epoch += 1  # epochs this pass has seen: a loop may call fit one epoch at a time
        if self.epoch > self.warmup_epochs:
            self.beta2 *= self.beta2_growth

    # ------------------------------------------------------------- the plan
    def plan(self) -> Plan:
        """Top channels by b_i with counts alpha_k * C_k, scaled together to meet the budget exactly."""
        b = self.importance()
        alloc = Allocation(self.gg, {gid: b[gid].numpy() for gid in self.group_ids}, self.min_channels, self.min_ratio)
        alphas = {gid: float(a) for gid, a in zip(self.group_ids, self.alphas())}
        order = sorted(self.group_ids, key=lambda g: -alphas[g])  # most-kept groups first
        return allocate_by_ratios(self.gg, alloc, alphas, self.budget, order)

    def report_png(self, path: str) -> None:
        """The budget trajectory beside the final kept channels per layer and each layer's sensitivity (Fig. 6)."""
        sensitivity = dict(zip(self.group_ids, self.sensitivity().tolist()))
        by_layer = {m.module: sensitivity[gid] for gid in self.group_ids for m in self.gg.groups[gid].members
                    if m.role == "out" and m.param == "weight"}
        plot_search(path, self.trajectory, self.plan().kept_per_layer(self.gg), self._target, f"DSA: {self.budget.metric} allocation",
                    sensitivity=by_layer)


def inexactness(p: torch.Tensor) -> float:
    return float((p * (1 - p)).sum())


__all__ = ["DSAPass", "keep_probabilities", "ExpectedKeep", "sample_masks", "inexactness"]
