"""Channel importance from the group's members: each channel's values summed over every tensor
that holds it (the producer's filters, the consumers' input columns, norm scales), the shared
machinery of the criteria (l1, l2, taylor, hessian, a user's own), and the pass they share,
which allocates the scores.

:func:`member_sums` is the one pass over the members: per parameter and dim, a reduction to one
value per index (a norm, a sum of w * g), then one weighted bincount that adds each member's
values into its group's channels. :func:`calibration_gradients` runs the loss on calibration
batches for the criteria that need gradients; :func:`fisher_diagonal` the per-sample squared
gradients that estimate the Hessian's diagonal.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

from graphprune.allocate import allocate_by_score
from graphprune.errors import OptionError
from graphprune.plan import Plan
from graphprune.train import batch_loss

from .base import MethodPass
from .masks import unmasked

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
                sums.append(reduce(module, param, t, dim, [d for d in range(t.ndim) if d != dim]).double().numpy())
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


def calibration_gradients(model: torch.nn.Module, batches: Iterable[Any], loss_fn: Callable | None, max_batches: int,
                          method: str) -> dict[str, torch.Tensor]:
    """The mean gradient of the loss over up to ``max_batches`` calibration batches, by parameter name."""
    return _mean_over(model, batches, loss_fn, max_batches, method, lambda g: g, per_sample=False)


def fisher_diagonal(model: torch.nn.Module, batches: Iterable[Any], loss_fn: Callable | None, max_samples: int,
                    method: str) -> dict[str, torch.Tensor]:
    """The empirical Fisher's diagonal, E[(dl/dw)^2] over up to ``max_samples`` single samples of
    the calibration batches (each sample's own loss: a batch-mean gradient squared would mix the
    samples), by parameter name."""
    return _mean_over(model, batches, loss_fn, max_samples, method, lambda g: g * g, per_sample=True)


def _mean_over(model: torch.nn.Module, batches: Iterable[Any], loss_fn: Callable | None, limit: int, method: str,
               each: Callable[[torch.Tensor], torch.Tensor], per_sample: bool) -> dict[str, torch.Tensor]:
    """``each(gradient)`` averaged over up to ``limit`` batches (or single samples) of calibration
    data, by parameter name; the model runs in eval mode (norm statistics untouched) and is left as
    it was, its gradients included."""
    if batches is None:
        raise OptionError(f"{method} ranks channels by the loss on calibration data: pass calib_data= (a DataLoader or a "
                          "list of (input, target) or dict batches) and loss_fn= (dict batches may carry the model's own loss)")
    params = dict(model.named_parameters())
    saved = {name: p.grad for name, p in params.items()}
    modes = {m: m.training for m in model.modules()}
    device = next(iter(params.values())).device
    total = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    count = 0
    model.eval()
    try:
        for unit in (sample for batch in batches for sample in _samples(batch)) if per_sample else batches:
            if count == limit:
                break
            model.zero_grad(set_to_none=True)
            batch_loss(model, unit, loss_fn, device).backward()
            for name, p in params.items():
                if p.grad is not None:
                    total[name] += each(p.grad.float())
            count += 1
    finally:
        for m, mode in modes.items():
            m.train(mode)
        for name, p in params.items():
            p.grad = saved[name]
    if not count:
        raise OptionError(f"{method}: calib_data has no batches (an iterator is used up after one pass)")
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

    def plan(self) -> Plan:
        scores = normalized(self.scores())
        return self.rounded(lambda: allocate_by_score(self.gg, scores, self.budget, self.min_channels, self.min_ratio,
                                                      roles=self.roles, **self.bounds))


class CalibratedScorePass(ScorePass):
    """A criterion read from calibration data: ``calib_data`` (or ``train_data``, which ``apply``
    passes), ``loss_fn`` as ``graphprune.fit`` takes them."""

    reads_data = True

    def __init__(self, *args: Any, calib_data: Iterable | None = None, train_data: Iterable | None = None,
                 loss_fn: Callable | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.data = calib_data if calib_data is not None else train_data
        self.loss_fn = loss_fn
