"""NAP's fine-grained granularity (``granularity="weight"``): see "Fine-grained mode" in ``nap.py``."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from graphprune.common.distributed import broadcast_object
from graphprune.errors import BudgetError, GraphPruneError, OptionError
from graphprune.groups.plan import Plan

from .kfac import Inverse, covered, set_weight_matrix, weight_matrix

if TYPE_CHECKING:
    from .nap import NAPPass


class WeightPruning:
    """A unit is one conv/linear weight, against a parameter budget: the model keeps its shapes and its
    pruned weights stay zero, so only the nonzero parameters count."""

    unit = "weights"
    default_fraction = 0.1  # "a network is less sensitive to fine-grained pruning": appendix D prunes it faster
    cost_name = "nonzero params"

    def __init__(self, nap: NAPPass):
        self.nap = nap
        if nap.controls.given():
            raise OptionError(f"nap with granularity='weight' prunes single weights, not channel groups, so it cannot take "
                              f"{', '.join(nap.controls.given())}: use granularity='channel'")
        if nap.metric != "params":
            raise BudgetError("nap with granularity='weight' prunes individual weights, which removes no MACs: give a "
                              "parameter budget, Budget(params=0.1) (or --metric params on the command line)")
        modules = dict(nap.model.named_modules())
        self.layers = list(dict.fromkeys(m.module for g in nap.gg.groups for m in g.members
                                         if m.param == "weight" and covered(modules[m.module])))
        if not self.layers:
            raise GraphPruneError("nap found no conv or linear layer to prune weights of (see graphprune inspect)")
        self.diagonal: list[tuple[str, str]] = []
        self.full = sum(p.numel() for p in nap.model.parameters())
        self.target = nap.budget.target(self.full)
        floors = sum(self._floor(modules[name].weight.numel()) for name in self.layers)
        lowest = self.full - sum(modules[name].weight.numel() for name in self.layers) + floors
        if lowest > self.target:
            raise BudgetError(f"a params budget of {self.target / self.full:.4f} of the model is unreachable by pruning "
                              f"conv/linear weights: with every one of them pruned (but min_ratio and one per layer) "
                              f"{lowest / self.full:.4f} remains; give a larger budget or lower min_ratio")

    def _floor(self, n: int) -> int:
        """The weights a layer of ``n`` keeps at least: ``min_ratio`` of them, and one."""
        return min(n, max(1, math.ceil(self.nap.min_ratio * n)))

    def _live(self) -> int:
        nap = self.nap
        return sum(int(nap._layer_mask(n)[..., : nap._weight_cols(n)].sum()) for n in self.layers)

    # ------------------------------------------------------------- importance and forecast
    def scores(self, inverses: dict[str, tuple[Inverse, Inverse]]) -> dict[str, torch.Tensor]:
        return broadcast_object({name: self.nap.layer_importance(name, inverses[name]) for name in self.layers})

    def forecast(self, scores: dict[str, torch.Tensor] | None = None) -> int:
        """The live weights: a p-step removes ceil(p x live) whichever they are, so the count alone forecasts."""
        return self._live()

    def iterations_left(self, live: int, fraction: float) -> int:
        """Iterations of p-steps until the budget is met (the last one exact)."""
        nonzero, n = self.nap._nonzero(), 0
        while nonzero > self.target and n < 100_000:
            cut = max(1, math.ceil(fraction * live))
            live, nonzero, n = live - cut, nonzero - cut, n + 1
        return max(n, 1)

    # ------------------------------------------------------------- one iteration
    def remove(self, importances: dict[str, torch.Tensor], inverses: dict[str, tuple[Inverse, Inverse]], final: bool,
               fraction: float) -> tuple[int, bool]:
        """Remove the fraction p of the live weights with the lowest ΔL across layers (or exactly what the budget
        needs) with their OBS updates: the weights removed and whether it was the last cut."""
        nap = self.nap
        values = []
        for name in self.layers:
            dl = importances[name][..., : nap._weight_cols(name)]
            live = nap._layer_mask(name)[..., : nap._weight_cols(name)].to(dl.device)
            v = torch.where(live, dl, torch.full_like(dl, math.inf)).flatten().cpu()
            floor = self._floor(v.numel())
            if floor:  # every layer keeps its floor: its most important live weights
                v[torch.topk(torch.where(torch.isfinite(v), v, torch.full_like(v, -math.inf)), floor).indices] = math.inf
            values.append(v)
        flat = torch.cat(values)
        available = int(torch.isfinite(flat).sum())
        n = max(1, math.ceil(fraction * self._live()))
        nonzero = nap._nonzero()
        if final or nonzero - n <= self.target:
            n, final = math.ceil(nonzero - self.target), True
        n = max(0, min(n, available))
        chosen = torch.topk(flat, n, largest=False).indices if n else torch.zeros(0, dtype=torch.long)
        starts = np.cumsum([0] + [v.numel() for v in values])
        for k, name in enumerate(self.layers):
            mine = chosen[(chosen >= starts[k]) & (chosen < starts[k + 1])] - starts[k]
            if len(mine):
                self._remove_weights(name, mine, inverses[name])
        nap._keep_zero()
        if final and nap._nonzero() > self.target:
            raise BudgetError("nap could not reach the parameter budget: too few weights left above the floors")
        return n, final

    def _remove_weights(self, name: str, chosen: torch.Tensor, inverses: tuple[Inverse, Inverse]) -> None:
        """Mask the ``chosen`` (flat) weights of one layer, after the sum of their single-weight OBS updates."""
        nap = self.nap
        module = nap.model.get_submodule(name)
        shape, cols = nap.kfac.shapes[name], nap._weight_cols(name)
        gone = torch.zeros(shape.groups * shape.rows * cols, dtype=torch.bool)
        gone[chosen] = True
        gone = gone.reshape(shape.groups, shape.rows, cols)
        if shape.bias:
            gone = torch.cat([gone, torch.zeros(shape.groups, shape.rows, 1, dtype=torch.bool)], -1)
        if nap.compensate != "none":
            s_inv, a_inv = inverses
            w = weight_matrix(module).to(s_inv.blocks.device)
            set_weight_matrix(module, obs_weights(w, s_inv, a_inv, gone.to(w.device), nap.compensate))
        mask = nap._mask((name, "weight"))
        mask &= ~gone[..., :cols].reshape(mask.shape).to(mask.device)

    # ------------------------------------------------------------- the result
    def cost(self) -> float:
        return 100 * self.nap._nonzero() / self.full

    def plan(self) -> Plan:
        return Plan({})  # every channel stays: the zeros are the pruning

    def build(self, model: nn.Module) -> nn.Module:
        """The pruned weights zero in the built model and their gradients masked, so they stay zero in training."""
        for (name, pname), mask in self.nap.masks.items():
            param = getattr(model.get_submodule(name), pname)
            with torch.no_grad():
                param.masked_fill_(~mask.to(param.device), 0.0)
            param.register_hook(_GradientMask(mask.detach().clone()))
        return model

    def refine_report(self, report: Any) -> Any:
        """The nonzero parameters as the report's count, and the compression ratio."""
        nap = self.nap
        weights = sum(nap._param((n, "weight")).numel() for n in self.layers)
        kept = sum(int(nap._mask((n, "weight")).sum()) for n in self.layers)
        note = (f"fine-grained: the model keeps its shapes, pruned weights are zeros (in training and in export); "
                f"compression ratio {nap.compression():.2f}x over all parameters, {weights / max(kept, 1):.2f}x over the "
                f"conv/linear weights")
        return dataclasses.replace(report, params_after=nap._nonzero(), notes=[*report.notes, note])

    def kept_per_layer(self) -> dict[str, float]:
        return {n: float(self.nap._mask((n, "weight")).float().mean()) for n in self.layers}


def obs_weights(w: torch.Tensor, s_inv: Inverse, a_inv: Inverse, gone: torch.Tensor, compensate: str = "both") -> torch.Tensor:
    """The sum of the single-weight OBS updates (Eq. 6) of the ``gone`` entries of (g, rows, cols) [W | b]:
    δW = -S⁻¹ M A⁻¹ with M = W / outer(diag S⁻¹, diag A⁻¹) there (``compensate="both"``, the paper's);
    "inputs": each row compensates its own removed weights, δW = -M A⁻¹ with M = W / diag A⁻¹ (S taken
    as diagonal in the update); "outputs": each column, δW = -S⁻¹ M with M = W / diag S⁻¹.
    The gone entries end at zero."""
    s_diag, a_diag = s_inv.diag()[:, :, None], a_inv.diag()[:, None, :]
    h = {"both": s_diag * a_diag, "inputs": a_diag, "outputs": s_diag}[compensate].expand_as(w)
    usable = gone & (h > 0)
    m = torch.where(usable, w / torch.where(usable, h, torch.ones_like(h)), torch.zeros_like(w))
    if compensate == "both":
        w = w - s_inv.left(a_inv.right(m))
    elif compensate == "inputs":
        w = w - a_inv.right(m)
    else:
        w = w - s_inv.left(m)
    return w.masked_fill(gone, 0.0)


class _GradientMask:
    """A parameter hook that keeps pruned weights' gradients at zero (picklable)."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        if self.mask.device != grad.device:
            self.mask = self.mask.to(grad.device)
        return grad * self.mask


__all__ = ["WeightPruning", "obs_weights"]
