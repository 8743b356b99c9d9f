"""Channel importance from the group's members: each channel's values summed over every tensor
that holds it (the producer's filters, the consumers' input columns, norm scales), the shared
machinery of the criteria (l1, l2, taylor, hessian, a user's own), and the pass they share,
which allocates the scores.

:func:`member_sums` is the one pass over the members: per parameter and dim, a reduction to one
value per index (a norm, a sum of w * g), then one weighted bincount that adds each member's
values into its group's channels. :func:`calibration_gradients` runs the loss on calibration
batches for the criteria that need gradients; :func:`mean_squared_change` squares each channel's
first-order loss change per batch or sample (taylor, hessian's channel blocks); :func:`fisher_diagonal`
the per-sample squared gradients that estimate the Hessian's diagonal; :func:`input_statistics` the mean and variance of
every input feature of the layers that read a group's channels (forward hooks, no loss), for the
activation-aware criteria (flap, a user's own).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn

from graphprune.budget.allocate import allocate_by_score
from graphprune.budget.targets import Budget
from graphprune.errors import OptionError
from graphprune.groups.graph import GroupGraph
from graphprune.tracing.modes import in_eval
from graphprune.groups.plan import Plan
from graphprune.training.train import batch_loss, batch_output

from .base import MethodPass
from .kfac import covered
from .masks import by_tensor_name, unmasked

#: per (parameter tensor, its dim, the other dims): one value per index along the dim
Reduction = Callable[[str, str, torch.Tensor, int, list[int]], torch.Tensor]


def member_sums(model: torch.nn.Module, gg, reduce: Reduction) -> dict[int, np.ndarray]:
    """Per prunable group, each channel's ``reduce`` summed over the group's members (running
    statistics left out: they are not weights)."""
    groups = gg.prunable_groups
    used = [(k, m) for k, g in enumerate(groups) for m in g.members if m.param not in ("running_mean", "running_var")]
    wanted: dict[tuple[str, str], set[int]] = {}  # parameter -> the dims members slice it along
    for _, m in used:
        wanted.setdefault((m.module, m.param), set()).add(m.dim)
    sums: list[np.ndarray] = []  # per (parameter, dim), end to end in one array
    offsets: dict[tuple[str, str, int], int] = {}
    at = 0
    modules = dict(model.named_modules())
    with torch.no_grad():
        for (module, param), dims in wanted.items():
            owner = modules[module] if module in modules else model.get_submodule(module)
            t = unmasked(owner, param).detach().float()
            for dim in sorted(dims):
                sums.append(reduce(module, param, t, dim, [d for d in range(t.ndim) if d != dim]).double().cpu().numpy())
                offsets[module, param, dim] = at
                at += t.shape[dim]
    sizes = np.array([g.size for g in groups], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    if not used:
        return {g.id: np.zeros(g.size) for g in groups}
    # one weighted bincount over every member of every group, indexed without a numpy call per
    # member: per channel, the same float64 additions in the same order (group by group, member by
    # member) as one np.add.at per member, at a fraction of the cost
    lengths = np.array([len(m.positions) for _, m in used], dtype=np.int64)
    index = np.concatenate([m.positions for _, m in used]) + np.repeat(
        np.array([offsets[m.module, m.param, m.dim] for _, m in used], dtype=np.int64), lengths)
    channels = np.concatenate([m.channels for _, m in used]) + np.repeat(starts[[k for k, _ in used]], lengths)
    total = np.bincount(channels, weights=np.concatenate(sums)[index], minlength=int(sizes.sum()))
    return {g.id: total[start : start + g.size] for g, start in zip(groups, starts.tolist())}


def member_norms(model: torch.nn.Module, gg, p: int) -> dict[int, np.ndarray]:
    """Per prunable group, each channel's p-norm over the group's members."""
    def reduce(module: str, param: str, t: torch.Tensor, dim: int, others: list[int]) -> torch.Tensor:
        # a reduction, not |t| ** p materialized: a weight-sized temporary per tensor fragments the heap
        # (pruning a 1.2 GB Llama in place peaked 0.6x of the model higher, bench/results/prune_memory.md)
        return torch.linalg.vector_norm(t, p, dim=others) ** p if others else t.abs() ** p

    return {gid: total ** (1.0 / p) for gid, total in member_sums(model, gg, reduce).items()}


def mean_squared_change(model: torch.nn.Module, gg, each_gradient: Iterable[dict[str, torch.Tensor]]) -> dict[int, np.ndarray]:
    """Per prunable group, each channel's (sum of w * g over every weight its group holds for it)^2,
    averaged over the gradients ``each_gradient`` gives (by parameter name): the squared first-order
    loss change of zeroing the channel. Over single samples' gradients, half of it is the channel's
    1/2 dw^T F dw with F the empirical Fisher, cross terms included (E[(g . dw)^2] = dw^T E[g g^T] dw)."""
    total: dict[int, np.ndarray] = {}
    count = 0
    for grads in each_gradient:
        def first_order(module: str, param: str, w: torch.Tensor, dim: int, others: list[int]) -> torch.Tensor:
            g = grads.get(f"{module}.{param}" if module else param)
            if g is None:  # a buffer member: no gradient, no first-order change
                return torch.zeros(w.shape[dim])
            return (w * g).sum(others) if others else w * g

        for gid, change in member_sums(model, gg, first_order).items():
            total[gid] = total.get(gid, 0.0) + change ** 2
        count += 1
    return {gid: t / count for gid, t in total.items()}


def calibration_gradients(model: torch.nn.Module, batches: Iterable[Any], loss_fn: Callable | None, max_batches: int,
                          method: str) -> dict[str, torch.Tensor]:
    """The mean gradient of the loss over up to ``max_batches`` calibration batches, by parameter name."""
    return _mean_over(gradients(model, batches, loss_fn, max_batches, method), model, lambda g: g)


def fisher_diagonal(model: torch.nn.Module, batches: Iterable[Any], loss_fn: Callable | None, max_samples: int,
                    method: str) -> dict[str, torch.Tensor]:
    """The empirical Fisher's diagonal, E[(dl/dw)^2] over up to ``max_samples`` single samples of
    the calibration batches (each sample's own loss: a batch-mean gradient squared would mix the
    samples), by parameter name."""
    return _mean_over(gradients(model, batches, loss_fn, max_samples, method, per_sample=True), model, lambda g: g * g)


def gradients(model: torch.nn.Module, batches: Iterable[Any] | None, loss_fn: Callable | None, limit: int, method: str,
              per_sample: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """The loss's gradient on each of up to ``limit`` calibration batches (or single samples of
    them), by parameter name (a weight under DSA's masks by its own: ``masks.by_tensor_name``). The
    model runs in eval mode (norm statistics untouched) and is left as it was, its gradients included."""
    if batches is None:
        raise OptionError(f"{method} ranks channels by the loss on calibration data: pass calib_data= (a DataLoader or a "
                          "list of (input, target) or dict batches) and loss_fn= (dict batches may carry the model's own loss)")
    params = by_tensor_name(model)
    saved = {name: p.grad for name, p in params.items()}
    device = next(iter(params.values())).device
    count = 0
    try:
        with in_eval(model):
            for unit in (sample for batch in batches for sample in _samples(batch)) if per_sample else batches:
                if count == limit:
                    break
                model.zero_grad(set_to_none=True)
                batch_loss(model, unit, loss_fn, device).backward()
                yield {name: p.grad.float() for name, p in params.items() if p.grad is not None}
                count += 1
    finally:
        for name, p in params.items():
            p.grad = saved[name]
    if not count:
        raise OptionError(f"{method}: calib_data has no batches (an iterator is used up after one pass)")


def _mean_over(each_batch: Iterator[dict[str, torch.Tensor]], model: torch.nn.Module,
               each: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """``each(gradient)`` averaged over the batches, by parameter name (zero where a parameter had none)."""
    total = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in by_tensor_name(model).items()}
    count = 0
    for grads in each_batch:
        for name, g in grads.items():
            total[name] += each(g)
        count += 1
    return {name: t / count for name, t in total.items()}


def _samples(batch: Any) -> Iterator[Any]:
    """The samples of a batch, each a batch of one: tensors split along their first dim (dicts key by key)."""
    def first_dim(value: Any) -> int | None:
        return value.shape[0] if isinstance(value, torch.Tensor) and value.dim() else None

    values = list(batch.values()) if isinstance(batch, Mapping) else list(batch)
    sizes = {n for n in map(first_dim, values) if n is not None}
    if len(sizes) != 1:
        raise OptionError(f"hessian scores single samples: a batch's tensors must share their first (batch) dim, got sizes {sorted(sizes)}")
    (n,) = sizes
    for i in range(n):
        pick = [v[i : i + 1] if first_dim(v) is not None else v for v in values]
        yield dict(zip(batch.keys(), pick)) if isinstance(batch, Mapping) else tuple(pick)


# ------------------------------------------------------------------ activations

@dataclasses.dataclass
class InputStatistics:
    """One layer's input features (its weight's dim 1) over every calibration token or position:
    how many values each feature took, their mean and their sample variance (float64, CPU)."""

    count: int
    mean: torch.Tensor
    var: torch.Tensor

    def along(self, dim: int, ndim: int) -> "InputStatistics":
        """The same statistics shaped to broadcast against an ``ndim``-d tensor whose ``dim`` holds the features."""
        shape = [1] * ndim
        shape[dim] = -1
        return InputStatistics(self.count, self.mean.view(shape), self.var.view(shape))


def reading_layers(model: nn.Module, gg: GroupGraph) -> dict[str, nn.Module]:
    """The layers that read a prunable group's channels as their input features, by name: linear
    and ungrouped convolution layers (those K-FAC factors) with an "in" member along their weight's
    dim 1, so that their forward input holds exactly the features the member's positions index."""
    modules = dict(model.named_modules())
    out = {}
    for g in gg.prunable_groups:
        for m in g.members:
            layer = modules.get(m.module)
            if (m.role == "in" and m.param == "weight" and m.dim == 1 and layer is not None and covered(layer)
                    and getattr(layer, "groups", 1) == 1):
                out[m.module] = layer
    return out


def input_statistics(model: nn.Module, gg: GroupGraph, batches: Iterable[Any] | None, max_batches: int,
                     method: str) -> dict[str, InputStatistics]:
    """Per layer of :func:`reading_layers`, the statistics of its input features over up to
    ``max_batches`` calibration batches, gathered by forward hooks (eval mode, no gradients, no
    loss). A layer called more than once per forward pass counts every call."""
    if batches is None:
        raise OptionError(f"{method} reads the activations of calibration data: pass calib_data= (a DataLoader or a list "
                          "of batches: (input, target) pairs, dicts of the model's keyword arguments, or input tensors)")
    moments: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}  # count, mean, sum of squared deviations

    def record(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            x = inputs[0].detach()
            x = (x.movedim(1, -1) if isinstance(module, nn.modules.conv._ConvNd) else x).reshape(-1, module.weight.shape[1]).double()
            n, mean = x.shape[0], x.mean(0)
            squares = (x - mean).square().sum(0)
            if name in moments:  # Chan et al.'s pairwise update: no cancellation between large sums
                count, before, total = moments[name]
                delta = mean - before
                mean = before + delta * (n / (count + n))
                squares = total + squares + delta.square() * (count * n / (count + n))
                n += count
            moments[name] = (n, mean, squares)
        return hook

    handles = [layer.register_forward_hook(record(name)) for name, layer in reading_layers(model, gg).items()]
    device = next(model.parameters()).device
    count = 0
    try:
        with in_eval(model), torch.no_grad():
            for batch in batches:
                if count == max_batches:
                    break
                batch_output(model, batch, device)
                count += 1
    finally:
        for h in handles:
            h.remove()
    if not count:
        raise OptionError(f"{method}: calib_data has no batches (an iterator is used up after one pass)")
    return {name: InputStatistics(n, mean.cpu(), (squares / max(n - 1, 1)).cpu()) for name, (n, mean, squares) in moments.items()}


# ------------------------------------------------------------------ passes that allocate scores

def normalized(scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    return {g: s / s.mean() if s.mean() > 0 else np.ones_like(s) for g, s in scores.items()}


class ScorePass(MethodPass):
    """A criterion: per-channel scores, divided by their group's mean so that groups of different
    scales rank on one list, then the globally lowest channels go until the budget is met."""

    default_round_to = "auto"  # a one-shot prune is for deployment: widths the kernels run fast
    ties_layers = True

    def scores(self) -> dict[int, np.ndarray]:
        raise NotImplementedError

    @functools.cached_property
    def _normalized_scores(self) -> dict[int, np.ndarray]:
        return normalized(self.scores())  # scored once: a latency budget may allocate them again

    def plan(self) -> Plan:
        return self.allocate(self.budget)

    def allocate(self, budget: Budget) -> Plan:
        scores = self._normalized_scores
        return self.rounded(lambda: allocate_by_score(self.gg, scores, budget, self.min_channels, self.min_ratio,
                                                      roles=self.roles, **self.bounds), budget)


class CalibratedScorePass(ScorePass):
    """A criterion read from calibration data: ``calib_data`` (or ``train_data``, which ``apply``
    passes), ``loss_fn`` as ``graphprune.fit`` takes them."""

    reads_data = True

    def __init__(self, *args: Any, calib_data: Iterable | None = None, train_data: Iterable | None = None,
                 loss_fn: Callable | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.data = calib_data if calib_data is not None else train_data
        self.loss_fn = loss_fn
