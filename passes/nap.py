"""NAP: network automatic pruning (Zeng, Xiong & Urtasun, "Network Automatic Pruning: Start NAP and Take a Nap").

Criterion (Sec. 3.1-3.2, Eq. 6 and 13). Removing weight w_q while the others compensate optimally
(OBS) costs ΔL_q = w_q² / (2 [F⁻¹]_qq), with the Fisher F as the Hessian and F ≈ A ⊗ S per layer
(K-FAC, ``kfac.py``): [F⁻¹]_qq = [S⁻¹]_ii [A⁻¹]_jj, so the whole layer's importances are
W² / (2 outer(diag S⁻¹, diag A⁻¹)). ΔL is normalized within each layer (divided by the layer's sum,
Sec. 3.2), which calibrates the layers against each other; so the per-layer compression ratios
come out of one global ranking.

Structured mode (``granularity="channel"``, default; Sec. 3.3). A channel's ΔL is the sum over every
parameter tied to it in its group: its producers' rows (weight and bias), its consumers' input
slices, its channelwise parameters (BatchNorm scale and shift, which get a diagonal Fisher), across
residual stages as one unit exactly as the paper's "virtual channels" of ResNet-50. The importance is
ΔL / Δcost, Δcost what removing one channel of its group saves on the exact budget model at the
current sizes (MACs for a MACs budget). Each iteration removes the fraction ``fraction`` (p, 1%) of
the remaining channels with the lowest importance (within ``min_channels``/``min_ratio``/``round_to``):
their slices are zeroed in every member and kept zero through training, and the remaining weights
of each affected layer take the OBS update. For a layer losing output rows R and input columns C at
once, minimizing ½ δwᵀ (A ⊗ S) δw with those entries set to zero has the closed form

    W[:, D] -= W[:, C] ([A⁻¹]_CC)⁻¹ [A⁻¹]_CD      (inputs: the kept columns absorb the removed ones)
    W[K, :] -= [S⁻¹]_KR ([S⁻¹]_RR)⁻¹ W[R, :]      (outputs, applied after the first)

(K, D: the kept rows and columns; Eq. 6 for a set of weights, through (A ⊗ S)⁻¹ = A⁻¹ ⊗ S⁻¹).
Which of the two updates runs is ``compensate``. By default ("inputs") only the first: the consumers'
input columns absorb a removed channel (a least-squares reconstruction of their pre-activations
from the kept inputs, under A), and the producers' rows simply go. "both" is the block-diagonal
Fisher's exact answer, but that Fisher ignores that a producer's outputs *are* its consumers'
inputs: each layer compensates for the same channel as if the other were unchanged, and the two
updates overshoot. Measured on digits_cnn (trained, sklearn digits; statistics from 4 training
batches per round, no fine-tuning; one run each), validation accuracy after pruning to 50 / 30 / 15% MACs:
no update 0.978 / 0.975 / 0.858, "inputs" 0.975 / 0.972 / 0.967, "outputs" 0.978 / 0.972 / 0.944,
"both" 0.953 / 0.942 / 0.869 (unpruned 0.98). "outputs" and "none" are available too. Between
iterations the model fine-tunes (the training's own steps) while the statistics keep updating. The
iteration whose p-step would reach the budget instead removes exactly what the budget needs
(``allocate_by_score`` on the same importances, ≤ the target; channels removed earlier stay removed,
they are zero for good; where a coarse channel lands the cut more than half a point below the
target, the live channels in increasing importance fill it instead, each skipped if it would
overshoot), and ``plan`` keeps the surviving channels; the slim pass builds the final model.

Fine-grained mode (``granularity="weight"``, Sec. 3.1-3.2): the same criterion per conv/linear
weight against a parameter budget (``Budget(params=...)``); each iteration removes the fraction p
(default 10%: "a network is less sensitive to fine-grained pruning", appendix D prunes it faster)
of the remaining weights with the lowest normalized ΔL and applies the sum of their single-weight
OBS updates (Algorithm 1, step 10; ``compensate="both"``: δW = -S⁻¹ M A⁻¹ with M = W / outer(diag
S⁻¹, diag A⁻¹) on the removed entries; the default "inputs": each row compensates its own removed
weights, δW = -M A⁻¹ with M = W / diag A⁻¹; on digits_cnn at 20 / 10 / 5% of the parameters: none
0.975 / 0.883 / 0.365, "inputs" 0.978 / 0.961 / 0.838, "both" 0.972 / 0.961 / 0.758). The model
keeps its shapes; pruned weights are zeros, kept zero through training (the built model's weights
carry gradient masks) and in export. The report counts nonzero parameters and states the
compression ratio.

Schedule (``passes/search.py``). NAP starts from a trained model (Algorithm 1: pre-train, then
prune), so the window starts at once: ``warmup=0``; set it (e.g. 0.5) to train from scratch first.
The pruning ends by ``search_end`` = 20% of training (the paper: under 8 epochs of pruning before
30 of fine-tuning). The statistics update on every step of the window, and an iteration happens
every T steps (the first after T steps of statistics, Algorithm 1): T follows from the window, the
time left divided by the iterations still needed at p (estimated by running the p-steps on the
current importances against the budget model, re-estimated after every iteration; the first
estimate uses the criterion with unit curvature). ResNet-56 at 50% MACs, 391 steps per epoch: 54
iterations about 408 steps (an epoch) apart on 300 epochs (the paper: 0.2 epoch; its ablation,
Fig. 6: more is better), 55 about 10 steps apart on 8 epochs. Where even ``min_interval`` steps per iteration
do not fit, p rises until they do, so the budget is always met by the window's end; ``interval``
fixes T instead (the window's end still forces the last iteration). The slim model trains the rest.

Without training (``finish`` before the budget is met: the CLI, or a session no loop drove) the
pruning completes on its own: ``rounds`` (10) rounds of statistics from ``train_data`` if given, else
from the example inputs with labels sampled from the model's own predictions (8 samples per input),
each followed by an iteration with p raised so the rounds suffice; OBS updates, no fine-tuning.

Under torchrun the K-FAC statistics are averaged over the ranks (``kfac.py``), each iteration's
importances are rank 0's and the OBS-updated weights are broadcast from rank 0, so every rank
removes the same channels and keeps the same weights.

Cost. In the window, each step adds the K-FAC updates and, for the true Fisher, one backward of the
sampled loss (no weight gradients are kept); each iteration inverts every factor in float64.
Memory: the factors (``factor_bytes()``; torchvision ResNet-50, 10 classes: 583 MiB in float32,
three 4608² A factors of layer4's 3x3 convs the largest), listed when the pass attaches.

``uniform_layers``: the groups of a repeated layer (a role) keep one count. Importances stay per
channel; every cut (the p-steps, the exact final one, the fill) ranks a role's k-th channel as the
mean of its groups' k-th lowest importances and removes it from every layer at once, each layer losing
its own least important channel. Fine-grained pruning keeps every shape, so every layer keeps its
width already.

Options: ``granularity``, ``fraction`` (p), ``interval``/``min_interval`` (steps between iterations),
``decay`` (0.95), ``damping`` (λ = 1e-3 of each factor's mean eigenvalue: π-damping, see kfac.py),
``fisher`` ("true": sampled labels; "empirical": the training labels), ``likelihood``
("categorical"/"gaussian"), ``label_samples`` (1), ``max_factor_elements`` (2^26 per factor, above
which a factor is block-diagonal), ``compensate`` (which OBS update: "inputs", "outputs", "both",
"none"; True means "inputs", False "none"), ``rounds``,
``train_data`` (batches for the statistics without training), ``verbose``, ``seed``,
``warmup``/``search_end``, ``uniform_layers``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from graphprune.allocate import Allocation, allocate_by_score, check_reachable
from graphprune.distributed import broadcast_module, broadcast_object, is_main
from graphprune.errors import BudgetError, GraphPruneError
from graphprune.plan import Plan
from graphprune.plots import plot_search
from graphprune.slim import slim

from . import register
from .kfac import KFAC, Inverse, covered, parameter_views, set_weight_matrix, weight_matrix
from .search import ScheduledSearch

STATISTICS = ("running_mean", "running_var")


@dataclasses.dataclass
class Iteration:
    """One prune step: when, what it removed, and where the cost stands after it."""

    step: int
    removed: int  # channels (structured) or weights (fine-grained)
    fraction: float  # p used
    cost: float  # % of the full model after the step (nonzero parameters in fine-grained mode)
    loss: float | None  # mean training loss since the previous iteration (sampled-label NLL without training)
    final: bool = False


@register
class NAPPass(ScheduledSearch):
    """Options: see the module docstring."""

    name = "nap"
    starts_trained = True
    trains = True
    ties_layers = True  # every iteration's cut and the final one count a role's channels together
    completes_untrained = True  # statistics rounds and OBS updates, said in its report
    window = (0.0, 0.2)

    def __init__(
        self, *args: Any, granularity: str = "channel", fraction: float | None = None, interval: int | None = None,
        min_interval: int = 1, decay: float = 0.95, damping: float = 1e-3, fisher: str = "true", likelihood: str = "categorical",
        label_samples: int = 1, max_factor_elements: int = 1 << 26, compensate: str | bool = "inputs", rounds: int = 10,
        train_data: Iterable | None = None, loss_fn: Callable | None = None, verbose: bool = True, seed: int = 0, **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)  # loss_fn: apply passes it to every trained method; NAP's loss is the loop's
        if granularity not in ("channel", "weight"):
            raise GraphPruneError(f"nap: granularity must be 'channel' (structured) or 'weight' (fine-grained), got {granularity!r}")
        self.granularity = granularity
        self.fraction = (0.01 if granularity == "channel" else 0.1) if fraction is None else float(fraction)
        if not 0 < self.fraction < 1:
            raise GraphPruneError(f"nap: fraction (p, removed per iteration) must be in (0, 1), got {self.fraction}")
        if (interval is not None and interval < 1) or min_interval < 1 or rounds < 1:
            raise GraphPruneError("nap: interval and min_interval are optimizer steps (>= 1) and rounds >= 1")
        self.interval, self.min_interval, self.rounds = interval, min_interval, rounds
        compensate = {True: "inputs", False: "none"}.get(compensate, compensate) if isinstance(compensate, bool) else compensate
        if compensate not in ("inputs", "outputs", "both", "none"):
            raise GraphPruneError(f"nap: compensate must be 'inputs', 'outputs', 'both' or 'none', got {compensate!r}")
        self.compensate, self.verbose, self.train_data = compensate, verbose, train_data
        modules = dict(self.model.named_modules())
        self.metric = self.budget.metric
        if granularity == "channel":
            self.group_ids = [g.id for g in self.gg.prunable_groups if g.size > 1]
            if not self.group_ids:
                raise GraphPruneError("nap found no prunable group of two or more channels to prune (see graphprune inspect)")
            members = [m for gid in self.group_ids for m in self.gg.groups[gid].members]
            layers = _unique(m.module for m in members if m.param == "weight" and covered(modules[m.module]))
            diagonal = _unique((m.module, m.param) for m in members if m.param not in STATISTICS
                               and isinstance(getattr(modules[m.module], m.param), nn.Parameter)
                               and not (m.module in layers and m.param in ("weight", "bias")))
            self._full = self.gg.budget.exact(self.metric)
            self._target = self._reachable()
        else:
            if self.metric != "params":
                raise BudgetError("nap with granularity='weight' prunes individual weights, which removes no MACs: give a "
                                  "parameter budget, Budget(params=0.1) (or --metric params on the command line)")
            layers = _unique(m.module for g in self.gg.groups for m in g.members if m.param == "weight" and covered(modules[m.module]))
            if not layers:
                raise GraphPruneError("nap found no conv or linear layer to prune weights of (see graphprune inspect)")
            diagonal = []
            self.group_ids = []
            self._full = sum(p.numel() for p in self.model.parameters())
            self._target = self.budget.target(self._full)
            floors = sum(self._weight_floor(modules[name].weight.numel()) for name in layers)
            lowest = self._full - sum(modules[name].weight.numel() for name in layers) + floors
            if lowest > self._target:
                raise BudgetError(f"a params budget of {self._target / self._full:.4f} of the model is unreachable by pruning "
                                  f"conv/linear weights: with every one of them pruned (but min_ratio and one per layer) "
                                  f"{lowest / self._full:.4f} remains; give a larger budget or lower min_ratio")
        self.layers = layers
        self.kfac = KFAC(self.model, layers, diagonal, decay=decay, damping=damping, fisher=fisher, likelihood=likelihood,
                         label_samples=label_samples, max_factor_elements=max_factor_elements, seed=seed)
        self.alive = {gid: np.ones(self.gg.groups[gid].size, dtype=bool) for gid in self.group_ids}
        self.masks: dict[tuple[str, str], torch.Tensor] = {}  # False: pruned (zero, kept zero)
        self.iterations: list[Iteration] = []
        self.done = False
        self.completed_without_training: str | None = None  # the report says how, when it did
        self.final_plan: Plan | None = None
        self.step = 0
        self._next: int | None = None
        self._fraction_now = self.fraction  # p of the next iteration (raised where the window is short)
        self._last_scores: Any = None
        self._losses: list[float] = []
        self._budget_index = {g.id: i for i, g in enumerate(self.gg.budget.groups)}

    # ------------------------------------------------------------- setup
    def _reachable(self) -> float:
        floors = self._allocation({gid: np.zeros(self.gg.groups[gid].size) for gid in self.group_ids})
        return check_reachable(self.gg, self.budget, floors.counts(len(floors.ranked_units)))

    def _allocation(self, scores: dict[int, np.ndarray]) -> Allocation:
        """The allocation over channel importances, a role's groups as one unit under ``uniform_layers``."""
        return Allocation(self.gg, scores, self.min_channels, self.min_ratio, roles=self.roles)

    def _weight_floor(self, n: int) -> int:
        return min(n, max(1, math.ceil(self.min_ratio * n)))

    def attach(self) -> None:
        self.kfac.attach()
        if self.verbose:
            rows = self.kfac.memory()
            approximated = [f"{r.layer} (A {r.a_kind})" if r.a_kind != "full" else f"{r.layer} (S {r.s_kind})"
                            for r in rows if r.a_kind != "full" or r.s_kind != "full"]
            line = (f"[bold]nap[/bold]: K-FAC factors for {len(rows)} layers, {self.kfac.elements / 1e6:.2f}M elements "
                    f"({4 * self.kfac.elements / 2**20:.1f} MiB float32)")
            if approximated:
                line += f"; above {self.kfac.limit:,} elements, block-diagonal or diagonal: {', '.join(approximated)}"
            _console().print(line, soft_wrap=True)

    def detach(self) -> None:
        self.kfac.detach()

    def bind_schedule(self, total_steps: int) -> None:
        super().bind_schedule(total_steps)
        self._set_collecting()

    def _set_collecting(self) -> None:
        self.kfac.train_only = True
        self.kfac.collecting = self.schedule is not None and not self.done and self.step >= self.schedule.start_step

    def factor_bytes(self) -> int:
        """Memory of the K-FAC statistics (float32)."""
        return 4 * self.kfac.elements

    # ------------------------------------------------------------- training hooks
    def after_step(self, step: int, loss: float | None = None) -> None:
        schedule = self.require_schedule()
        self.step = step + 1
        self._keep_zero()
        if self.done:
            self.kfac.collecting = False
            return
        if step >= schedule.start_step:  # a step of the window: its statistics are in
            self.kfac.after_backward()
            if loss is not None:
                self._losses.append(float(loss))
            if self._next is None:
                self._next = schedule.start_step + self._pace(schedule.start_step, self._proxy_scores())
            if self.step >= self._next or self.step >= schedule.end_step:
                self._iterate(final=self.step >= schedule.end_step)
                if not self.done:
                    self._next = self.step + self._pace(self.step, self._last_scores)
        self._set_collecting()

    def ready(self) -> bool:
        return self.done

    # ------------------------------------------------------------- pacing
    def _pace(self, now: int, scores: Any) -> int:
        """Steps until the next iteration: the time left over the iterations still needed (p raised if they do not fit)."""
        if self.interval is not None:
            self._fraction_now = self.fraction
            return self.interval
        left = max(1, self.require_schedule().end_step - now)
        self._fraction_now = self._fit_fraction(scores, left // self.min_interval)
        return max(self.min_interval, left // max(1, self._iterations_left(scores, self._fraction_now)))

    def _fit_fraction(self, scores: Any, slots: int) -> float:
        """The smallest p (from ``fraction``, growing by 25%) whose iterations fit in ``slots``."""
        f = self.fraction
        while f < 0.99 and self._iterations_left(scores, f) > max(1, slots):
            f = min(0.99, f * 1.25)
        return f

    def _iterations_left(self, scores: Any, fraction: float) -> int:
        """Iterations of p-steps on fixed ``scores`` until the budget is met (the last one exact)."""
        if self.granularity == "weight":
            alive, nonzero, n = int(scores), self._nonzero(), 0
            while nonzero > self._target and n < 100_000:
                cut = max(1, math.ceil(fraction * alive))
                alive, nonzero, n = alive - cut, nonzero - cut, n + 1
            return max(n, 1)
        alloc = self._allocation(scores)
        removed = alloc.below(-np.inf, inclusive=True)  # removed for good: scored -inf
        total, n = len(alloc.ranked_units), 0
        while n < 100_000:
            n += 1
            removed = min(total, removed + max(1, math.ceil(fraction * (total - removed))))
            if removed >= total or self.gg.budget.exact(self.metric, alloc.counts(removed)) <= self._target:
                break
        return n

    def _proxy_scores(self) -> Any:
        """For the first estimate of the iterations needed: NAP's channel importance with unit curvature
        (w² / 2, normalized per layer, summed over the members, per unit of cost), no inversions.
        (Plain l2 norms per unit of cost are no proxy: they rank the wide residual streams first, whose
        channels NAP's sum over ~40 members ranks with the rest, and predict a handful of iterations.)"""
        if self.granularity == "weight":
            return sum(int(self._layer_mask(n)[..., : self._weight_cols(n)].sum()) for n in self.layers)
        return self.channel_importance(self._inverses(curvature=False))

    # ------------------------------------------------------------- masks
    def _param(self, key: tuple[str, str]) -> torch.Tensor:
        return getattr(self.model.get_submodule(key[0]), key[1])

    def _mask(self, key: tuple[str, str]) -> torch.Tensor:
        t = self._param(key)
        if key not in self.masks:
            self.masks[key] = torch.ones(t.shape, dtype=torch.bool, device=t.device)
        elif self.masks[key].device != t.device:
            self.masks[key] = self.masks[key].to(t.device)
        return self.masks[key]

    def _keep_zero(self) -> None:
        with torch.no_grad():
            for key in self.masks:
                self._param(key).masked_fill_(~self._mask(key), 0.0)

    def _layer_mask(self, name: str) -> torch.Tensor:
        """(g, rows, cols) keep flags of a layer's [W | b] matrices."""
        module = self.model.get_submodule(name)
        shape = self.kfac.shapes[name]
        w = self.masks.get((name, "weight"))
        w = torch.ones(module.weight.shape, dtype=torch.bool, device=module.weight.device) if w is None else w.to(module.weight.device)
        parts = [w.reshape(shape.groups, shape.rows, -1)]
        if shape.bias:
            b = self.masks.get((name, "bias"))
            device = module.weight.device
            b = torch.ones(module.bias.shape, dtype=torch.bool, device=device) if b is None else b.to(device)
            parts.append(b.reshape(shape.groups, shape.rows, 1))
        return torch.cat(parts, -1)

    def _weight_cols(self, name: str) -> int:
        shape = self.kfac.shapes[name]
        return shape.cols - int(shape.bias)

    def _inverses(self, curvature: bool = True) -> dict[str, tuple[Inverse, Inverse]]:
        """Every layer's damped (S⁻¹, A⁻¹) on its alive rows and columns (``curvature=False``: identities)."""
        out = {}
        for name in self.layers:
            mask = self._layer_mask(name)
            if curvature:
                out[name] = self.kfac.inverses(name, mask.any(-1), mask.any(-2))
            else:
                out[name] = (identity(self.kfac.s[name], mask.any(-1)), identity(self.kfac.a[name], mask.any(-2)))
        return out

    # ------------------------------------------------------------- importance
    def layer_importance(self, name: str, inverses: tuple[Inverse, Inverse]) -> torch.Tensor:
        """ΔL_q = w_q² / (2 [S⁻¹]_ii [A⁻¹]_jj) of a layer's remaining [W | b] entries, normalized to sum 1 (g, rows, cols)."""
        s_inv, a_inv = inverses
        w = weight_matrix(self.model.get_submodule(name)).to(s_inv.blocks.device)
        h = s_inv.diag()[:, :, None] * a_inv.diag()[:, None, :]
        live = self._layer_mask(name).to(w.device) & (h > 0)
        dl = torch.where(live, w.square() / (2 * torch.where(live, h, torch.ones_like(h))), torch.zeros_like(w))
        total = dl.sum()
        return dl / total if total > 0 else dl

    def parameter_importance(self, inverses: dict[str, tuple[Inverse, Inverse]]) -> dict[tuple[str, str], torch.Tensor]:
        """Normalized ΔL of every parameter entry the pass scores: conv/linear layers through K-FAC,
        the others (BatchNorm scale and shift, ...) through their diagonal Fisher, normalized per module."""
        out: dict[tuple[str, str], torch.Tensor] = {}
        for name in self.layers:
            module = self.model.get_submodule(name)
            for pname, v in parameter_views(module, self.layer_importance(name, inverses[name])).items():
                out[name, pname] = v.detach().cpu()
        by_module: dict[str, list[tuple[str, str]]] = {}
        for key in self.kfac.diagonal_names:
            by_module.setdefault(key[0], []).append(key)
        for keys in by_module.values():
            values = {}
            for key in keys:
                w = self._param(key).detach().double()
                f = self.kfac.diagonal_fisher(key)
                f = torch.ones_like(w) if f is None else f.double().to(w.device)
                f = f + self.kfac.damping * float(f.mean()) if float(f.mean()) > 0 else torch.ones_like(w)
                live = self.masks[key] if key in self.masks else torch.ones_like(w, dtype=torch.bool)
                values[key] = torch.where(live.to(w.device), w.square() * f / 2, torch.zeros_like(w)).cpu()
            total = sum(float(v.sum()) for v in values.values())
            out.update({k: v / total if total > 0 else v for k, v in values.items()})
        return out

    def channel_importance(self, inverses: dict[str, tuple[Inverse, Inverse]]) -> dict[int, np.ndarray]:
        """Per group, each channel's ΔL (summed over its members) over what removing it saves; removed channels -inf."""
        dl = self.parameter_importance(inverses)
        per_pos: dict[tuple[str, str, int], np.ndarray] = {}
        delta = self._marginal_costs()
        scores = {}
        for gid in self.group_ids:
            g = self.gg.groups[gid]
            total = np.zeros(g.size)
            for m in g.members:
                key = (m.module, m.param)
                if key not in dl:
                    continue
                if (m.module, m.param, m.dim) not in per_pos:
                    t = dl[key]
                    per_pos[m.module, m.param, m.dim] = t.movedim(m.dim, 0).reshape(t.shape[m.dim], -1).sum(1).numpy()
                np.add.at(total, m.channels, per_pos[m.module, m.param, m.dim][m.positions])
            saves = delta[gid]
            score = total / saves if saves > 0 else np.full(g.size, np.inf)
            scores[gid] = np.where(self.alive[gid], score, -np.inf)
        return scores

    def _counts(self) -> dict[int, int]:
        return {gid: int(a.sum()) for gid, a in self.alive.items()}

    def _marginal_costs(self) -> dict[int, float]:
        """What removing one channel of each group saves on the budget model, at the current sizes."""
        b = self.gg.budget
        ratios = b.ratios(self._counts())
        rows = np.repeat(ratios[None], len(self.group_ids), 0)
        for r, gid in enumerate(self.group_ids):
            rows[r, self._budget_index[gid]] -= 1.0 / self.gg.groups[gid].size
        return dict(zip(self.group_ids, (float(b.evaluate(self.metric, ratios)) - b.evaluate(self.metric, rows)).tolist()))

    def cost(self) -> float:
        """The budgeted metric now, % of the full model (nonzero parameters in fine-grained mode)."""
        if self.granularity == "weight":
            return 100 * self._nonzero() / self._full
        return 100 * self.gg.budget.exact(self.metric, self._counts()) / self._full

    def _nonzero(self) -> int:
        return self._full - sum(int((~m).sum()) for m in self.masks.values())

    # ------------------------------------------------------------- one iteration
    def _iterate(self, final: bool = False, slots: int | None = None, loss: float | None = None) -> None:
        """Importance, removal of p of what remains (or exactly what the budget needs), OBS update, zeros."""
        inverses = self._inverses()
        if loss is None and self._losses:
            loss = float(np.mean(self._losses))
        self._losses = []
        fraction = self._fraction_now
        if self.granularity == "weight":
            removed, final, fraction = self._iterate_weights(inverses, final, slots, fraction)
            self._last_scores = sum(int(self._layer_mask(n)[..., : self._weight_cols(n)].sum()) for n in self.layers)
        else:
            scores = broadcast_object(self.channel_importance(inverses))  # rank 0 decides what goes
            if slots is not None:
                fraction = self._fit_fraction(scores, slots)
            removed, final = self._iterate_channels(scores, inverses, final, fraction)
            self._last_scores = {gid: np.where(self.alive[gid], s, -np.inf) for gid, s in scores.items()}
        broadcast_module(self.model)  # the OBS-updated weights, rank 0's on every rank
        record = Iteration(self.step, removed, fraction, self.cost(), loss, final)
        self.iterations.append(record)
        self.done = final
        if self.verbose:
            when = f"round {self.rounds - slots + 1}/{self.rounds}" if slots is not None else f"step {self.step}"
            what = "nonzero params" if self.granularity == "weight" else "MACs" if self.metric == "macs" else "params"
            unit = "weights" if self.granularity == "weight" else "channels"
            line = (f"[bold]nap[/bold] {len(self.iterations)} ({when}): {what} {record.cost:.2f}% "
                    f"(target {100 * self._target / self._full:.2f}), -{removed} {unit} (p {fraction:.3g})")
            line += (f", loss {loss:.3f}" if loss is not None else "") + (" [green]budget met[/green]" if final else "")
            _console().print(line, soft_wrap=True)

    def _iterate_channels(self, scores: dict[int, np.ndarray], inverses, final: bool, fraction: float) -> tuple[int, bool]:
        alloc = self._allocation(scores)
        current = self._counts()
        removed = alloc.below(-np.inf, inclusive=True)  # removed for good: scored -inf
        total = len(alloc.ranked_units)
        n = max(1, math.ceil(fraction * (total - removed)))
        counts = alloc.counts(min(total, removed + n))
        while counts == current and removed + n < total:  # rounding (round_to) or floors swallowed the step
            n *= 2
            counts = alloc.counts(min(total, removed + n))
        if final or counts == current or self.gg.budget.exact(self.metric, counts) <= self._target:
            keep, final = self._final_keep(scores), True
            self.final_plan = Plan.from_counts(self.gg, keep)
        else:
            keep = alloc.plan(counts).keep
        removal = {}
        for gid in self.group_ids:
            alive = np.flatnonzero(self.alive[gid])
            gone = np.setdiff1d(alive, np.asarray(keep.get(gid, range(self.gg.groups[gid].size)), dtype=np.int64))
            if len(gone):
                removal[gid] = gone
        self.remove_channels(removal, inverses)
        return sum(len(v) for v in removal.values()), final

    def _final_keep(self, scores: dict[int, np.ndarray]) -> dict[int, list[int]]:
        """What the budget needs exactly: ``allocate_by_score`` on the importances, the channels removed
        before scored lowest and capped out (zero for good: a plan that gave one back would spend budget
        on a dead channel)."""
        live = {gid: np.where(self.alive[gid], scores[gid], -np.inf) for gid in self.group_ids}
        ceilings = {gid: int(self.alive[gid].sum()) for gid in self.group_ids}
        plan = allocate_by_score(self.gg, live, self.budget, self.min_channels, self.min_ratio, ceilings=ceilings, roles=self.roles)
        keep = {gid: list(plan.keep.get(gid, range(self.gg.groups[gid].size))) for gid in self.group_ids}
        cost = self.gg.budget.exact(self.metric, {g: len(k) for g, k in keep.items()})
        if self._target - cost > 0.005 * self._full:  # a coarse channel overshot: fill the cut with finer ones
            filled = self._fill(scores, 0.005 * self._full)
            if filled is not None and self.gg.budget.exact(self.metric, {g: len(k) for g, k in filled.items()}) > cost:
                return filled
        return keep

    def _fill(self, scores: dict[int, np.ndarray], tolerance: float) -> dict[int, list[int]] | None:
        """The live channels (of a role: its groups' channels of one rank) in increasing importance, each
        removed unless that would take the cost more than ``tolerance`` under the target, until the target is
        met; None where ``round_to`` forbids single steps."""
        if any(self.gg.groups[gid].round_to > 1 for gid in self.group_ids):
            return None
        alloc = self._allocation({gid: np.where(self.alive[gid], scores[gid], -np.inf) for gid in self.group_ids})
        kept = np.array([min(int(self.alive[gid].sum()) for gid in gids) for gids in alloc.units], dtype=np.int64)
        cost = self.gg.budget.exact(self.metric, alloc.by_id(kept))
        for u in alloc.ranked_units[alloc.below(-np.inf, inclusive=True):].tolist():
            if cost <= self._target:
                break
            if kept[u] - 1 < alloc.floors[alloc.units[u][0]]:
                continue
            trial = kept.copy()
            trial[u] -= 1
            after = self.gg.budget.exact(self.metric, alloc.by_id(trial))
            if after >= self._target - tolerance:
                kept, cost = trial, after
        if cost > self._target:
            return None
        return alloc.plan(alloc.by_id(kept)).keep

    def remove_channels(self, removal: dict[int, np.ndarray], inverses: dict[str, tuple[Inverse, Inverse]] | None = None) -> None:
        """Zero the channels' slices in every member, keep them zero, and apply the OBS update to each affected layer."""
        before = {name: self._layer_mask(name) for name in self.layers}
        for gid, channels in removal.items():
            for m in self.gg.groups[gid].members:
                key = (m.module, m.param)
                if m.param in STATISTICS or not isinstance(self._param(key), nn.Parameter):
                    continue
                index = torch.tensor(m.indices(channels.tolist()), dtype=torch.long, device=self._param(key).device)
                self._mask(key).index_fill_(m.dim, index, False)
            self.alive[gid][channels] = False
        for name in self.layers:
            after = self._layer_mask(name)
            if self.compensate != "none" and not torch.equal(before[name], after):
                if inverses is None:
                    inverses = self._inverses()
                self._compensate_structured(name, before[name], after, inverses[name])
        self._keep_zero()

    def _compensate_structured(self, name: str, before: torch.Tensor, after: torch.Tensor, inverses: tuple[Inverse, Inverse]) -> None:
        """OBS for whole rows R and columns C of each group's [W | b] (exact under A ⊗ S, see the module docstring)."""
        module = self.model.get_submodule(name)
        s_inv, a_inv = inverses
        device = s_inv.blocks.device
        w = weight_matrix(module).to(device)
        before, after = before.to(device), after.to(device)
        rows_before, rows_after = before.any(-1), after.any(-1)
        cols_before, cols_after = before.any(-2), after.any(-2)
        changed = ((rows_before & ~rows_after).any(-1) | (cols_before & ~cols_after).any(-1)).nonzero().flatten().tolist()
        rows_kept = rows_after if self.compensate in ("outputs", "both") else torch.zeros_like(rows_after)
        cols_kept = cols_after if self.compensate in ("inputs", "both") else torch.zeros_like(cols_after)
        for j in changed:
            w[j] = obs_structured(w[j], s_inv, a_inv, j, rows_before[j] & ~rows_after[j], rows_kept[j],
                                  cols_before[j] & ~cols_after[j], cols_kept[j])
        set_weight_matrix(module, w * after)

    def _iterate_weights(self, inverses, final: bool, slots: int | None, fraction: float) -> tuple[int, bool, float]:
        importances = broadcast_object({name: self.layer_importance(name, inverses[name]) for name in self.layers})
        values, owners = [], []
        for k, name in enumerate(self.layers):
            dl = importances[name][..., : self._weight_cols(name)]
            live = self._layer_mask(name)[..., : self._weight_cols(name)].to(dl.device)
            v = torch.where(live, dl, torch.full_like(dl, math.inf)).flatten().cpu()
            floor = self._weight_floor(v.numel())
            if floor:  # every layer keeps its floor: its most important live weights
                v[torch.topk(torch.where(torch.isfinite(v), v, torch.full_like(v, -math.inf)), floor).indices] = math.inf
            values.append(v)
            owners.append(torch.full((v.numel(),), k, dtype=torch.int32))
        flat = torch.cat(values)
        available = int(torch.isfinite(flat).sum())
        alive = int(sum(int(self._layer_mask(n)[..., : self._weight_cols(n)].sum()) for n in self.layers))
        if slots is not None:
            fraction = self._fit_fraction(alive, slots)
        n = max(1, math.ceil(fraction * alive))
        nonzero = self._nonzero()
        if final or nonzero - n <= self._target:
            n, final = math.ceil(nonzero - self._target), True
        n = max(0, min(n, available))
        chosen = torch.topk(flat, n, largest=False).indices if n else torch.zeros(0, dtype=torch.long)
        starts = np.cumsum([0] + [v.numel() for v in values])
        for k, name in enumerate(self.layers):
            mine = chosen[(chosen >= starts[k]) & (chosen < starts[k + 1])] - starts[k]
            if not len(mine):
                continue
            module = self.model.get_submodule(name)
            shape = self.kfac.shapes[name]
            gone = torch.zeros(shape.groups * shape.rows * self._weight_cols(name), dtype=torch.bool)
            gone[mine] = True
            gone = gone.reshape(shape.groups, shape.rows, self._weight_cols(name))
            if shape.bias:
                gone = torch.cat([gone, torch.zeros(shape.groups, shape.rows, 1, dtype=torch.bool)], -1)
            if self.compensate != "none":
                s_inv, a_inv = inverses[name]
                w = weight_matrix(module).to(s_inv.blocks.device)
                w = obs_weights(w, s_inv, a_inv, gone.to(w.device), self.compensate)
                set_weight_matrix(module, w)
            mask = self._mask((name, "weight"))
            mask &= ~gone[..., : self._weight_cols(name)].reshape(mask.shape).to(mask.device)
        self._keep_zero()
        if final and self._nonzero() > self._target:
            raise BudgetError("nap could not reach the parameter budget: too few weights left above the floors")
        return n, final, fraction

    # ------------------------------------------------------------- without training
    def _complete_without_training(self) -> None:
        """Finish the pruning with statistics from ``train_data`` or the example inputs, no fine-tuning."""
        source = "train_data batches" if self.train_data is not None else "the example inputs"
        self.completed_without_training = (f"nap pruned without a training loop: {self.rounds} rounds of K-FAC statistics from "
                                           f"{source} (labels sampled from the model's predictions) with OBS updates, no fine-tuning")
        if self.verbose:
            _console().print(
                f"[bold]nap[/bold]: pruning without training: K-FAC statistics from {source}, labels sampled from the model's "
                f"own predictions; {self.rounds} rounds of statistics, prune and OBS update, no fine-tuning between them", soft_wrap=True)
        batches = self._statistics_batches()
        was_training, samples, train_only = self.model.training, self.kfac.label_samples, self.kfac.train_only
        fisher = self.kfac.fisher
        self.model.eval()
        self.kfac.label_samples, self.kfac.train_only, self.kfac.fisher = max(samples, 8), False, "true"
        try:
            for r in range(self.rounds):
                self.kfac.reset()
                self.kfac.collecting = True
                losses = []
                with torch.enable_grad():
                    for inputs in batches:
                        self.model(*inputs)
                        if self.kfac.last_loss is not None:
                            losses.append(self.kfac.last_loss)
                self.kfac.collecting = False
                left = self.rounds - r
                self._iterate(final=left == 1, slots=left, loss=float(np.mean(losses)) if losses else None)
                if self.done:
                    break
        finally:
            self.model.train(was_training)
            self.kfac.label_samples, self.kfac.train_only, self.kfac.fisher = samples, train_only, fisher
            self.kfac.collecting = False

    def _statistics_batches(self, count: int = 4) -> list[tuple]:
        device = next(self.model.parameters()).device
        move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        if self.train_data is None:
            return [tuple(move(v) for v in self.gg.traced.placeholder_values)]
        out = []
        for batch in self.train_data:
            x = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
            out.append(tuple(move(v) for v in (x if isinstance(x, tuple) else (x,))))
            if len(out) == count:
                break
        return out

    # ------------------------------------------------------------- the result
    def plan(self) -> Plan:
        if not self.done:
            self._complete_without_training()
        if self.granularity == "weight":
            return Plan({})
        return self.final_plan

    def build(self, plan: Plan) -> torch.nn.Module:
        """The slim model; in fine-grained mode the same shapes, pruned weights zero and their gradients masked."""
        model = slim(self.gg, plan)
        if self.granularity == "weight":
            for (name, pname), mask in self.masks.items():
                param = getattr(model.get_submodule(name), pname)
                with torch.no_grad():
                    param.masked_fill_(~mask.to(param.device), 0.0)
                param.register_hook(_GradientMask(mask.detach().clone()))
        return model

    def compression(self) -> float:
        """Fine-grained: all parameters over the nonzero ones (the paper's compression ratio)."""
        return self._full / max(1, self._nonzero())

    def refine_report(self, report):
        notes = [f"nap: {len(self.iterations)} iterations; K-FAC statistics {self.factor_bytes() / 2**20:.1f} MiB"]
        if self.completed_without_training:
            notes.append(self.completed_without_training)
        approximated = [f"{r.layer} (A {r.a_kind}, S {r.s_kind})" for r in self.kfac.memory() if r.a_kind != "full" or r.s_kind != "full"]
        if approximated:
            notes[0] += f"; factors over {self.kfac.limit:,} elements approximated: {', '.join(approximated)}"
        if self.granularity == "weight":
            weights = sum(self._param((n, "weight")).numel() for n in self.layers)
            kept = sum(int(self._mask((n, "weight")).sum()) for n in self.layers)
            notes.append(f"fine-grained: the model keeps its shapes, pruned weights are zeros (in training and in export); "
                         f"compression ratio {self.compression():.2f}x over all parameters, {weights / max(kept, 1):.2f}x over the "
                         f"conv/linear weights")
            report = dataclasses.replace(report, params_after=self._nonzero())
        return dataclasses.replace(report, notes=[*getattr(report, "notes", []), *notes])

    def kept_per_layer(self) -> dict[str, float]:
        if self.granularity == "channel":
            return (self.final_plan or Plan.from_counts(self.gg, {gid: np.flatnonzero(a).tolist() for gid, a in self.alive.items()})).kept_per_layer(self.gg)
        return {n: float(self._mask((n, "weight")).float().mean()) for n in self.layers}

    def report_png(self, path: str) -> None:
        """The cost after each iteration beside the kept share per layer."""
        plot_search(path, [100.0] + [it.cost for it in self.iterations], self.kept_per_layer(), 100 * self._target / self._full,
                    f"NAP: {'channel' if self.granularity == 'channel' else 'weight'} pruning, {self.metric} budget")


def identity(factor, alive: torch.Tensor) -> Inverse:
    """An identity in ``factor``'s block layout, zero off the ``alive`` (g, d) indices."""
    g, nb, b = factor.groups, factor.nblocks, factor.block
    live = torch.nn.functional.pad(alive, (0, nb * b - factor.dim)).reshape(g, nb, b).double()
    return Inverse(torch.diag_embed(live), factor.dim)


def obs_structured(w: torch.Tensor, s_inv: Inverse, a_inv: Inverse, j: int, rows_gone: torch.Tensor, rows_kept: torch.Tensor,
                   cols_gone: torch.Tensor, cols_kept: torch.Tensor) -> torch.Tensor:
    """Group ``j``'s [W | b] after removing whole rows and columns with the optimal update of the rest
    under A ⊗ S (the inverses restricted to the entries alive before); removed entries are zero."""
    w = w.clone()
    r, k = rows_gone.nonzero().flatten(), rows_kept.nonzero().flatten()
    c, d = cols_gone.nonzero().flatten(), cols_kept.nonzero().flatten()
    if len(c) and len(d):
        q = torch.linalg.solve(a_inv.sub(j, c, c), a_inv.sub(j, c, d))
        w[:, d] -= w[:, c] @ q
    if len(r) and len(k):
        p = torch.linalg.solve(s_inv.sub(j, r, r), s_inv.sub(j, r, k)).T
        w[k, :] -= p @ w[r, :]
    w[r, :] = 0
    w[:, c] = 0
    return w


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


def _unique(items: Iterable) -> list:
    return list(dict.fromkeys(items))


def _console():
    """The console for NAP's progress lines: rank 0's only under torchrun."""
    from rich import get_console
    from rich.console import Console

    return get_console() if is_main() else Console(quiet=True)


__all__ = ["NAPPass", "Iteration", "obs_structured", "obs_weights"]
