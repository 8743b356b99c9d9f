"""The exactness contract, as a check users and tests can run.

Removing channels that carry no signal must not change the model: zero the pruned channels' slices
in every member of the original, slim, and the two models compute the same outputs. The check
kills every pruned channel of every group *at once*, so two groups that interact where the
analysis treats them as independent show up as a difference.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ..groups.graph import GroupGraph
from ..groups.plan import Plan


def half_plan(gg: GroupGraph, exact_only: bool = True) -> Plan:
    """Keep every other channel of every prunable group (of at least two channels).

    ``exact_only`` leaves out groups flagged ``inexact`` (normalization over the channels), whose
    slim model differs from the zeroed original by design.
    """
    keep = {
        g.id: list(range(0, g.size, 2))
        for g in gg.prunable_groups
        if g.size >= 2 and not (exact_only and g.inexact)
    }
    return Plan(keep, {g: gg.groups[g].size for g in keep})


def randomize_small_tensors(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every bias, norm scale, layer scale and running statistic a random value, in place.

    Freshly initialized models have zero biases, unit norm scales and layer scales of 1e-5, which
    hide a pruned channel that still carries a constant; exactness checks run on randomized ones.
    A tensor counts as small when at most one of its dims is larger than one.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point() or sum(d > 1 for d in t.shape) > 1:
                continue
            positive = name.endswith(("running_var", "weight", "gamma", "scale")) or "gamma" in name
            value = torch.rand(t.shape, generator=g, dtype=torch.float32) + 0.5
            t.copy_(value if positive else (value - 1.0) * 2)


def zero_pruned(model: torch.nn.Module, gg: GroupGraph, plan: Plan) -> None:
    """Make the pruned channels carry no signal: zero their slice in every member, in place."""
    with torch.no_grad():
        for gid, kept in plan.keep.items():
            g = gg.groups[gid]
            dropped = sorted(set(range(g.size)) - set(kept))
            for m in g.members:
                t = getattr(model.get_submodule(m.module), m.param)
                t.index_fill_(m.dim, torch.tensor(m.indices(dropped), dtype=torch.long), 0.0)


def flat_outputs(out: Any) -> torch.Tensor:
    """Every tensor of a (nested) model output, flattened into one vector."""
    if isinstance(out, torch.Tensor):
        return out.detach().flatten().double()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        parts = [flat_outputs(o) for o in out]
        return torch.cat(parts) if parts else torch.zeros(0)
    return torch.zeros(0)


def _in_double(value: Any) -> Any:
    """Floating tensors in float64, in (nested) tuples and lists too (a detector's list of images)."""
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() else value
    if type(value) in (tuple, list):
        return type(value)(_in_double(v) for v in value)
    return value


@contextmanager
def _in_float64(*modules: torch.nn.Module) -> Iterator[None]:
    """Every floating parameter, buffer and tensor attribute (a traced graph's constants) of
    ``modules`` in float64 for the block, then back."""
    tensors = {id(t): t for m in modules for sub in m.modules() for t in (*sub.parameters(recurse=False), *sub.buffers(recurse=False), *vars(sub).values())}
    tensors = [t for t in tensors.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    dtypes = [t.dtype for t in tensors]
    for t in tensors:
        t.data = t.data.double()
    try:
        yield
    finally:
        for t, dtype in zip(tensors, dtypes):
            t.data = t.data.to(dtype)


def exactness_error(model: torch.nn.Module, gg: GroupGraph, plan: Plan, inputs: tuple, slim_model: torch.nn.Module | None = None,
                    training: bool = False) -> float:
    """Max |slim - original| / max |original| after zeroing the pruned channels of ``model`` (in place);
    NaN when the original's outputs are all zero, where the comparison could not fail.

    Both models run in float64 (their float tensors converted back afterwards): in float32 the two differ by rounding alone, up to
    ~1e-5 of the output scale on a trained MobileNetV2, which would hide a real leak of that size.
    ``slim_model``: the slim model of ``plan`` if already built (it must be built before the
    original is zeroed, since slimming copies the original's weights). ``training``: both run in
    training mode (BatchNorm on batch statistics, a forward's training-only outputs such as
    googlenet's auxiliary heads) with dropout off, whose masks are random.
    """
    from .slim import slim

    small = slim_model if slim_model is not None else slim(gg, plan)
    zero_pruned(model, gg, plan)
    for m in (model, small):
        m.train(training)
        for dropout in [d for d in m.modules() if isinstance(d, torch.nn.modules.dropout._DropoutNd)]:
            dropout.eval()
    inputs = _in_double(inputs)
    with torch.no_grad(), _in_float64(model, small):
        want, got = flat_outputs(model(*inputs)), flat_outputs(small(*inputs))
    if want.shape != got.shape:
        return float("inf")
    if not want.numel():
        return 0.0
    if not want.any():  # a zero-initialized head (torchvision's ViT): equal outputs would prove nothing
        return float("nan")
    return float((want - got).abs().max() / want.abs().max())

