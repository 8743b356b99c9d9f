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
ΔL / Δcost, Δcost what removing one channel of its group saves on the exact cost model at the
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

Schedule (``graphprune/passes/search.py``). NAP starts from a trained model (Algorithm 1: pre-train, then
prune), so the window starts at once: ``warmup=0``; set it (e.g. 0.5) to train from scratch first.
The pruning ends by ``search_end`` = 20% of training (the paper: under 8 epochs of pruning before
30 of fine-tuning). The statistics update on every step of the window, and an iteration happens
every T steps (the first after T steps of statistics, Algorithm 1): T follows from the window, the
time left divided by the iterations still needed at p (estimated by running the p-steps on the
current importances against the cost model, re-estimated after every iteration; the first
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

Code. The pass holds what both modes share (K-FAC statistics, masks, the criterion per entry, the
schedule); each granularity is a strategy chosen once: ``nap_channel.ChannelPruning``,
``nap_weight.WeightPruning`` (the ``Granularity`` protocol below lists what differs).

Options: ``granularity``, ``fraction`` (p), ``interval``/``min_interval`` (steps between iterations),
``decay`` (0.95), ``damping`` (λ = 1e-3 of each factor's mean eigenvalue: π-damping, see kfac.py),
``fisher`` ("true": sampled labels; "empirical": the training labels), ``likelihood``
("categorical"/"gaussian"), ``label_samples`` (1), ``max_factor_elements`` (2^26 per factor, above
which a factor is block-diagonal), ``compensate`` (which OBS update: "inputs", "outputs", "both",
"none"; True means "inputs", False "none"), ``rounds``,
``calib_data`` or ``train_data`` (batches for the statistics without training), ``verbose``, ``seed``,
``warmup``/``search_end``, ``uniform_layers``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
import torch.nn as nn

from graphprune.common.distributed import broadcast_module, is_main
from graphprune.errors import GraphPruneError
from graphprune.groups.plan import Plan
from graphprune.training.plots import plot_search
from graphprune.slimming.slim import slim

from .base import register
from .kfac import KFAC, Inverse, parameter_views, weight_matrix
from .nap_channel import ChannelPruning, obs_structured
from .nap_weight import WeightPruning, _GradientMask, obs_weights  # noqa: F401  (_GradientMask: pickled models name it here)
from .search import ScheduledSearch


@dataclasses.dataclass
class Iteration:
    """One prune step: when, what it removed, and where the cost stands after it."""

    step: int
    removed: int  # channels (structured) or weights (fine-grained)
    fraction: float  # p used
    cost: float  # % of the full model after the step (nonzero parameters in fine-grained mode)
    loss: float | None  # mean training loss since the previous iteration (sampled-label NLL without training)
    final: bool = False


class Granularity(Protocol):
    """What NAP prunes, chosen once from ``granularity``: the unit and what depends on it. The pass keeps the
    rest (K-FAC statistics, masks, the criterion ΔL per entry, the schedule, the iterations' record)."""

    unit: str  # what an iteration removes, in the progress lines
    cost_name: str  # what ``cost`` measures, in the progress lines
    default_fraction: float  # p where ``fraction`` is not given
    layers: list[str]  # the conv/linear layers K-FAC factors
    diagonal: list[tuple[str, str]]  # the other scored parameters (a diagonal Fisher)
    full: float  # the budgeted metric of the full model
    target: float  # and the budget's

    def scores(self, inverses: dict[str, tuple[Inverse, Inverse]]) -> Any:
        """This iteration's importances, rank 0's."""

    def forecast(self, scores: Any = None) -> Any:
        """What ``iterations_left`` counts on after an iteration with ``scores`` (None: before the first)."""

    def iterations_left(self, forecast: Any, fraction: float) -> int:
        """The p-steps still needed to meet the budget."""

    def remove(self, scores: Any, inverses: dict[str, tuple[Inverse, Inverse]], final: bool, fraction: float) -> tuple[int, bool]:
        """One cut with its OBS updates: the units removed and whether it met the budget."""

    def build(self, model: nn.Module) -> nn.Module:
        """The slim model as this granularity hands it over."""

    # the pass's methods of the same names
    def cost(self) -> float: ...

    def plan(self) -> Plan: ...

    def refine_report(self, report: Any) -> Any: ...

    def kept_per_layer(self) -> dict[str, float]: ...


GRANULARITIES = {"channel": ChannelPruning, "weight": WeightPruning}


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
        train_data: Iterable | None = None, calib_data: Iterable | None = None, loss_fn: Callable | None = None,
        verbose: bool = True, seed: int = 0, **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)  # loss_fn: apply passes it to every trained method; NAP's loss is the loop's
        if granularity not in GRANULARITIES:
            raise GraphPruneError(f"nap: granularity must be 'channel' (structured) or 'weight' (fine-grained), got {granularity!r}")
        self.granularity = granularity
        self.fraction = GRANULARITIES[granularity].default_fraction if fraction is None else float(fraction)
        if not 0 < self.fraction < 1:
            raise GraphPruneError(f"nap: fraction (p, removed per iteration) must be in (0, 1), got {self.fraction}")
        if (interval is not None and interval < 1) or min_interval < 1 or rounds < 1:
            raise GraphPruneError("nap: interval and min_interval are optimizer steps (>= 1) and rounds >= 1")
        self.interval, self.min_interval, self.rounds = interval, min_interval, rounds
        compensate = {True: "inputs", False: "none"}.get(compensate, compensate) if isinstance(compensate, bool) else compensate
        if compensate not in ("inputs", "outputs", "both", "none"):
            raise GraphPruneError(f"nap: compensate must be 'inputs', 'outputs', 'both' or 'none', got {compensate!r}")
        # statistics rounds without a training loop read calib_data, as the one-shot criteria do (train_data: apply's name)
        self.compensate, self.verbose, self.train_data = compensate, verbose, calib_data if calib_data is not None else train_data
        self.metric = self.budget.metric
        self.strategy: Granularity = GRANULARITIES[granularity](self)  # checks the budget against what it can prune
        self.layers = self.strategy.layers
        self.kfac = KFAC(self.model, self.layers, self.strategy.diagonal, decay=decay, damping=damping, fisher=fisher,
                         likelihood=likelihood, label_samples=label_samples, max_factor_elements=max_factor_elements, seed=seed)
        self.masks: dict[tuple[str, str], torch.Tensor] = {}  # False: pruned (zero, kept zero)
        self.iterations: list[Iteration] = []
        self.done = False
        self.completed_without_training: str | None = None  # the report says how, when it did
        self.step = 0
        self._next: int | None = None
        self._fraction_now = self.fraction  # p of the next iteration (raised where the window is short)
        self._forecast: Any = None  # what the last iteration left, for the next pace
        self._losses: list[float] = []

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
                self._next = schedule.start_step + self._pace(schedule.start_step, self.strategy.forecast())
            if self.step >= self._next or self.step >= schedule.end_step:
                self._iterate(final=self.step >= schedule.end_step)
                if not self.done:
                    self._next = self.step + self._pace(self.step, self._forecast)
        self._set_collecting()

    def ready(self) -> bool:
        return self.done

    # ------------------------------------------------------------- pacing
    def _pace(self, now: int, forecast: Any) -> int:
        """Steps until the next iteration: the time left over the iterations still needed (p raised if they do not fit)."""
        if self.interval is not None:
            self._fraction_now = self.fraction
            return self.interval
        left = max(1, self.require_schedule().end_step - now)
        self._fraction_now = self._fit_fraction(forecast, left // self.min_interval)
        return max(self.min_interval, left // max(1, self.strategy.iterations_left(forecast, self._fraction_now)))

    def _fit_fraction(self, forecast: Any, slots: int) -> float:
        """The smallest p (from ``fraction``, growing by 25%) whose iterations fit in ``slots``."""
        f = self.fraction
        while f < 0.99 and self.strategy.iterations_left(forecast, f) > max(1, slots):
            f = min(0.99, f * 1.25)
        return f

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

    def cost(self) -> float:
        """The budgeted metric now, % of the full model (nonzero parameters in fine-grained mode)."""
        return self.strategy.cost()

    def _nonzero(self) -> int:
        return self.strategy.full - sum(int((~m).sum()) for m in self.masks.values())

    # ------------------------------------------------------------- one iteration
    def _iterate(self, final: bool = False, slots: int | None = None, loss: float | None = None) -> None:
        """Importance, removal of p of what remains (or exactly what the budget needs), OBS update, zeros."""
        inverses = self._inverses()
        if loss is None and self._losses:
            loss = float(np.mean(self._losses))
        self._losses = []
        scores = self.strategy.scores(inverses)  # rank 0's: every rank removes the same
        fraction = self._fraction_now if slots is None else self._fit_fraction(self.strategy.forecast(scores), slots)
        removed, final = self.strategy.remove(scores, inverses, final, fraction)
        self._forecast = self.strategy.forecast(scores)
        broadcast_module(self.model)  # the OBS-updated weights, rank 0's on every rank
        record = Iteration(self.step, removed, fraction, self.cost(), loss, final)
        self.iterations.append(record)
        self.done = final
        if self.verbose:
            when = f"round {self.rounds - slots + 1}/{self.rounds}" if slots is not None else f"step {self.step}"
            line = (f"[bold]nap[/bold] {len(self.iterations)} ({when}): {self.strategy.cost_name} {record.cost:.2f}% "
                    f"(target {100 * self.strategy.target / self.strategy.full:.2f}), -{removed} {self.strategy.unit} "
                    f"(p {fraction:.3g})")
            line += (f", loss {loss:.3f}" if loss is not None else "") + (" [green]budget met[/green]" if final else "")
            _console().print(line, soft_wrap=True)

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
        return self.strategy.plan()

    def build(self, plan: Plan) -> torch.nn.Module:
        """The slim model; in fine-grained mode the same shapes, pruned weights zero and their gradients masked."""
        return self.strategy.build(slim(self.gg, plan))

    def compression(self) -> float:
        """Fine-grained: all parameters over the nonzero ones (the paper's compression ratio)."""
        return self.strategy.full / max(1, self._nonzero())

    def refine_report(self, report: Any) -> Any:
        notes = [f"nap: {len(self.iterations)} iterations; K-FAC statistics {self.factor_bytes() / 2**20:.1f} MiB"]
        if self.completed_without_training:
            notes.append(self.completed_without_training)
        approximated = [f"{r.layer} (A {r.a_kind}, S {r.s_kind})" for r in self.kfac.memory() if r.a_kind != "full" or r.s_kind != "full"]
        if approximated:
            notes[0] += f"; factors over {self.kfac.limit:,} elements approximated: {', '.join(approximated)}"
        return self.strategy.refine_report(dataclasses.replace(report, notes=[*getattr(report, "notes", []), *notes]))

    def kept_per_layer(self) -> dict[str, float]:
        return self.strategy.kept_per_layer()

    def report_png(self, path: str) -> None:
        """The cost after each iteration beside the kept share per layer."""
        plot_search(path, [100.0] + [it.cost for it in self.iterations], self.kept_per_layer(),
                    100 * self.strategy.target / self.strategy.full, f"NAP: {self.granularity} pruning, {self.metric} budget")


def identity(factor, alive: torch.Tensor) -> Inverse:
    """An identity in ``factor``'s block layout, zero off the ``alive`` (g, d) indices."""
    g, nb, b = factor.groups, factor.nblocks, factor.block
    live = torch.nn.functional.pad(alive, (0, nb * b - factor.dim)).reshape(g, nb, b).double()
    return Inverse(torch.diag_embed(live), factor.dim)


def _console():
    """The console for NAP's progress lines: rank 0's only under torchrun."""
    from rich import get_console
    from rich.console import Console

    return get_console() if is_main() else Console(quiet=True)


__all__ = ["NAPPass", "Iteration", "obs_structured", "obs_weights"]
