"""The entry points: ``apply`` for data-free methods, ``prepare`` for methods that train."""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .budget.targets import Budget
from .groups.controls import Controls, Layer
from .groups.controls import resolve as resolve_controls
from .training.data import hold_out
from .common.distributed import broadcast_object, is_main
from .errors import BudgetError, GraphPruneError, ModelRebuildError, NotReadyError, OptionError
from .groups.graph import GroupGraph, analyze
from .export.latency import LatencyModel, LatencyReport, measure_pruned, meet_measured, profile
from .groups.plan import Plan
from .rebuild.user_class import class_fit, user_class_model
from .slimming.slim import slim
from .training.train import EpochRecord, fit, sgd


@dataclasses.dataclass
class PruneReport:
    method: str
    metric: str
    target: float  # the budget as a ratio of the full model
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    groups: list[tuple[int, int, int, str]]  # (group id, kept, size, members)
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)  # what a method adds (e.g. NAP's fine-grained compression)
    latency: LatencyReport | None = None  # a latency budget's predicted and measured latency

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before

    @property
    def achieved(self) -> float:
        """The achieved ratio of the budgeted metric (latency: as the latency model predicts it; see ``latency``)."""
        if self.metric == "latency":
            return self.latency.predicted_ratio
        return self.macs_ratio if self.metric == "macs" else self.params_ratio

    def print(self, console=None) -> None:
        """The report on the console (rank 0's only, under torchrun)."""
        if not is_main():
            return
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        table = Table(title=f"{self.method}: {self.metric} budget {self.target:.4f}, achieved {self.achieved:.4f}")
        for col in ("", "before", "after", "ratio"):
            table.add_column(col, justify="right")
        table.add_row("MACs", f"{self.macs_before:,}", f"{self.macs_after:,}", f"{self.macs_ratio:.4f}")
        table.add_row("params", f"{self.params_before:,}", f"{self.params_after:,}", f"{self.params_ratio:.4f}")
        lat = self.latency
        if lat is not None:
            table.add_row("latency ms, predicted", f"{lat.predicted_before_ms:.3f}", f"{lat.predicted_after_ms:.3f}",
                          f"{lat.predicted_ratio:.4f}")
            if lat.measured_ratio is not None:
                table.add_row(f"latency ms, measured ({lat.repeats} runs)", f"{lat.measured_before_ms:.3f}",
                              f"{lat.measured_after_ms:.3f}", f"{lat.measured_ratio:.4f}")
        console.print(table)
        if lat is not None:
            console.print(f"latency on {lat.runtime}" + ("" if lat.interleaved else "; the unpruned model was resized in place, "
                          "so its time is the one measured while profiling, not interleaved with the pruned model's"))
        groups = Table(title="kept channels per prunable group")
        for col in ("group", "kept", "size", "%", "members"):
            groups.add_column(col, justify="left" if col == "members" else "right")
        for gid, kept, size, members in self.groups:
            groups.add_row(str(gid), str(kept), str(size), f"{100 * kept / size:.0f}", members)
        console.print(groups)
        for note in self.notes:
            console.print(note, soft_wrap=True)
        console.print(f"done in {self.seconds:.2f}s")


@dataclasses.dataclass
class PruneResult:
    model: torch.nn.Module  # the user's own class, or the slim graph (output="graph", or where the report says why)
    plan: Plan
    report: PruneReport
    groups: GroupGraph
    method: Any = None  # the method pass, for what it learned (e.g. DSA's budget trajectory)

    def save(self, path: str) -> None:
        """The plan, how the model was analyzed and the pruned weights, in one file that
        ``torch.load(path, weights_only=True)`` reads; :func:`graphprune.load` rebuilds the model."""
        from .rebuild.checkpoint import save

        save(path, self.model, self.plan, self.groups)


def report_for(gg: GroupGraph, plan: Plan, method: str, budget: Budget, seconds: float,
               reference: GroupGraph | None = None) -> PruneReport:
    """``plan`` on ``gg`` against the model ``reference`` (default ``gg``): LW-DNA plans on a
    widened copy and reports against the original."""
    b, before = gg.cost, (reference or gg).cost
    counts = plan.counts()
    full = before.exact(budget.metric)
    latency = None
    if budget.metric == "latency":  # the model in integer nanoseconds
        latency = LatencyReport(budget.runtime.describe(), full / 1e6, b.exact("latency", counts) / 1e6)
    return PruneReport(
        method, budget.metric, budget.target(full) / full, before.macs(), b.macs(counts), before.params(), b.params(counts),
        plan.summary(gg), seconds, latency=latency,
    )


class Session:
    """A method pass attached to a model. Call the hooks from any training loop, then ``finish``."""

    def __init__(self, model: torch.nn.Module, gg: GroupGraph, method_pass, budget: Budget, started: float,
                 output: str | None = None, inplace: bool = False, latency: LatencyModel | None = None,
                 example_inputs: Any = None):
        """``latency``: a latency budget's model, by which ``finish`` measures the pruned model
        beside the unpruned one on ``example_inputs``."""
        self.model, self.gg, self.method, self.budget = model, gg, method_pass, budget
        self.output, self.inplace = output, inplace
        self.latency, self.example_inputs = latency, example_inputs
        self.notes: list[str] = []  # for the report (groups kept whole for the model's own class)
        self._start = started
        self.total_steps: int | None = None
        self.steps = 0  # optimizer steps seen, however many fit calls or loops they came from
        method_pass.attach()

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Tell the method which optimizer trains the model; ``fit`` calls it, a user's own loop calls it once."""
        self.method.bind_optimizer(optimizer)

    def bind_schedule(self, total_steps: int) -> None:
        """How many optimizer steps the whole training takes; methods place their search in it.

        The first call counts: ``prepare(total_steps=)`` and ``apply`` bind the whole schedule, and
        ``fit`` binds ``epochs x len(train_data)`` only if nothing was bound before (so a loop that
        calls ``fit`` one epoch at a time must pass ``total_steps`` to ``prepare``).
        """
        if self.total_steps is None:
            self.total_steps = total_steps
            self.method.bind_schedule(total_steps)

    def before_step(self, step: int) -> None:
        self.method.before_step(self.steps)

    def after_step(self, step: int, loss: float | None = None) -> None:
        """``step`` is the caller's count; the method sees the session's own, across calls of ``fit``."""
        self.method.after_step(self.steps, loss)
        self.steps += 1

    def end_epoch(self, epoch: int) -> None:
        self.method.end_epoch(epoch)

    def finish(self, force: bool = False) -> PruneResult:
        """Decide the plan, remove the method's instrumentation, and slim the model.

        A method that decides by training refuses before its search has finished (``NotReadyError``:
        the plan would come from untrained signals); ``force=True`` slims it anyway and the report
        says what the plan was decided from. Under torchrun every rank computes the plan (methods may
        synchronize on the way) and rank 0's is the one every rank slims to: one decision, the same
        model everywhere.
        """
        unready = self.method.unready()
        if unready and not force:
            raise NotReadyError(
                f"{unready}. Train with this session until session.method.ready(): graphprune.fit(model, data, loss_fn, "
                f"epochs, callbacks=[session]) or your own loop calling its hooks, or let graphprune.apply(..., train_data=, "
                f"loss_fn=, epochs=) do it; session.finish(force=True) slims the model from what the method has now")
        attempts: list[tuple[float, float]] = []
        if self.latency is not None and self.method.replans and is_main():
            plan, attempts, notes = meet_measured(self.latency, self.gg, self.method.budget, self.method.allocate, self.example_inputs)
            self.notes.extend(notes)
        else:
            plan = self.method.plan()
        plan = broadcast_object(plan)
        self.method.commit(plan)
        self.method.detach()
        planned_on = self.method.planned_on()
        report = report_for(planned_on, plan, self.method.name, self.method.budget, time.perf_counter() - self._start, self.gg)
        report = self.method.refine_report(report)
        if unready:
            report.notes.append(f"forced before the method was ready: {unready}")
        report.notes.extend(self.notes)
        small = self._deliver(plan, report)
        if self.latency is not None and is_main():
            report.latency = measure_pruned(self.latency, dataclasses.replace(report.latency, attempts=attempts),
                                            None if self.inplace else self.model, small, self.example_inputs)
            report.notes.extend(self.latency.notes)
        report.seconds = time.perf_counter() - self._start
        return PruneResult(small, plan, report, planned_on, self.method)

    def _deliver(self, plan: Plan, report: PruneReport) -> torch.nn.Module:
        """The model the user asked for (see :func:`prepare`'s ``output``); a fallback's reason goes to the report."""
        if self.output == "graph":
            return self.method.build(plan)
        cls = type(self.model).__name__
        if self.method.planned_on() is not self.gg:
            reason = (f"{self.method.name} builds its architecture from a widened graph of the model, which holds no "
                      f"{cls}; the result is that graph (a GraphModule)")
            if self.output == "module":
                raise ModelRebuildError(reason + ": take output='graph'")
            report.notes.append(reason)
            return self.method.build(plan)
        try:
            model, _, notes = user_class_model(self.gg, plan, None if self.inplace else self.method.build(plan), inplace=self.inplace)
        except ModelRebuildError as exc:
            if self.output == "module" or self.inplace:
                raise
            report.notes.append(f"the result is the slim graph (a GraphModule), not a {cls}: {exc}")
            return self.method.build(plan)
        report.notes.extend(notes)
        return model


def prepare(
    model: torch.nn.Module,
    method: str,
    budget: Budget | float | int,
    example_inputs: Any,
    *,
    leaf_modules: Sequence[str | type] = (),
    specialize_submodules: bool = False,
    attention: str = "head_dims",
    concrete_args: dict[str, Any] | None = None,
    round_to: int | str | Mapping[Layer, int | str] | None = None,
    min_channels: int = 1,
    min_ratio: float | Mapping[Layer, float] = 0.0,
    ignored_layers: Sequence[Layer] = (),
    ratios: Mapping[Layer, float] | None = None,
    analysis: GroupGraph | None = None,
    total_steps: int | None = None,
    output: str | None = None,
    inplace: bool = False,
    **method_options: Any,
) -> Session:
    """Analyze ``model`` and attach ``method``; for methods that train before deciding.

    ``round_to``: every group keeps a multiple of this many channels (unless it keeps all), an
    int or ``"auto"`` (multiples of 8 where a group has 64 channels or more, of 4, 2 below: see
    ``groups.auto_round_to``; l1, l2, uniform and random use finer steps where these would leave
    the plan more than half a point under the budget); None: the method's default (``"auto"`` for
    l1, l2, uniform and random, whose results are for deployment; 1 for the paper methods, whose
    searches and budget landings work channel by channel as in their papers); under a latency
    budget, None and ``"auto"`` are the width the runtime was measured fast at, for every method
    (docs/latency.md).
    Per layer (a module, its path or a path prefix, or a class; see ``graphprune/groups/controls.py``):
    ``ignored_layers`` keep every group they reach whole; ``ratios={layer: keep ratio}`` fix the
    groups they reach, the method allocating the rest of the budget; ``round_to`` and ``min_ratio``
    also take ``{layer: value}``. The report names each group these options fixed, and why.
    ``analysis``: a GroupGraph of this model from an earlier call, to sweep budgets without
    analyzing again. ``total_steps``: the optimizer steps the whole training will take (epochs x
    steps per epoch), for methods whose search is a phase of it (dsa, dhp); ``fit`` supplies it
    when it runs the whole schedule. ``leaf_modules``, ``specialize_submodules``, ``attention``,
    ``concrete_args``: as for :func:`graphprune.analyze`. Other keywords are the method's options;
    every built-in method takes ``uniform_layers=True``: the groups that play one part in each layer
    of a repeated stack keep one count (a Hugging Face config states one width per role).
    ``output``: what ``finish`` returns. None (default): a model of the user's own class (a copy;
    ``inplace=True``: the model itself, resized, for models that barely fit in memory), verified
    against the slim graph, or the slim graph with the reason in the report where the model's code
    fixes a size the plan changes; ``"module"``: the user's class or ``ModelRebuildError``;
    ``"graph"``: the slim graph (a ``torch.fx.GraphModule``), for export and code that runs traced.
    """
    from . import passes

    started = time.perf_counter()
    budget = Budget.of(budget)
    pass_cls = passes.get(method)
    _check_model(model)
    _check_bounds(None if isinstance(round_to, Mapping) else round_to, min_channels, 0.0 if isinstance(min_ratio, Mapping) else min_ratio)
    _check_output(output, inplace, pass_cls)
    analysis_options = dict(leaf_modules=leaf_modules, specialize_submodules=specialize_submodules,
                            attention=attention, concrete_args=concrete_args)
    if analysis is not None:
        given = [k for k, v in analysis_options.items() if v != _ANALYSIS_DEFAULTS[k]]
        if given:
            raise OptionError(f"analysis= is an analysis made already, so {', '.join(given)} would not act: pass them to "
                              "graphprune.analyze, or drop analysis= and pass them here")
    gg = analysis or analyze(model, example_inputs, **analysis_options)
    controls = resolve_controls(gg, ignored_layers, ratios, min_ratio, round_to)
    uncarried = _fit_class(gg, controls, output) if output != "graph" and pass_cls.planned_on is _default_planned_on() else {}
    gg = gg.keeping_whole({**uncarried, **controls.kept_whole})
    latency = _latency_model(gg, example_inputs, budget, pass_cls, method) if budget.metric == "latency" else None
    if latency is not None and round_to in (None, "auto") and pass_cls.default_round_to != "auto":
        round_to = latency.width  # the methods that work channel by channel keep the measured width too (score methods: fitted_rounding)
    method_pass = pass_cls(gg, budget, model, min_channels=min_channels, min_ratio=min_ratio if not isinstance(min_ratio, Mapping) else 0.0,
                           round_to=round_to if not isinstance(round_to, Mapping) else None, controls=controls, **method_options)
    session = Session(model, gg, method_pass, budget, started, output, inplace, latency, example_inputs)
    session.notes.extend([f"group {g}: {why}" for g, why in uncarried.items() if g not in controls.kept_whole] + controls.notes(gg)
                         + [f"groups {', '.join(map(str, gids))} keep one count: {type(model).__name__}'s code sizes them together"
                            for gids in controls.tied])
    if total_steps is not None:
        session.bind_schedule(total_steps)
    return session


_ANALYSIS_DEFAULTS = dict(leaf_modules=(), specialize_submodules=False, attention="head_dims", concrete_args=None)


def _check_model(model: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise OptionError(f"graphprune prunes a torch.nn.Module, got {type(model).__name__}")
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise GraphPruneError("the model's tensors are on the meta device: they hold no values to rank or slice. "
                              "Materialize it first (model.to_empty(device='cpu'), then load_state_dict(checkpoint))")


def _latency_model(gg: GroupGraph, example_inputs: Any, budget: Budget, pass_cls: type, method: str) -> LatencyModel:
    """A latency budget's model of ``gg`` (profiled, or read from the cache), made the cost model's "latency" metric."""
    if pass_cls.planned_on is not _default_planned_on():
        raise BudgetError(f"method {method!r} plans on another graph than the model's (LW-DNA: a widened copy), whose latency "
                          "graphprune does not measure: give it a macs or params budget, or use another method for a latency budget")
    return profile(gg, example_inputs, budget.runtime)


def _default_planned_on() -> Callable:
    from .passes.base import MethodPass

    return MethodPass.planned_on


def _fit_class(gg: GroupGraph, controls: Controls, output: str | None) -> dict[int, str]:
    """The plan's constraints for the model's own class (rebuild.class_fit): groups its code sizes
    together keep one count (tied in ``controls``, whole together where the user keeps one whole);
    with output="module", the groups it cannot take pruned are returned, to be kept whole before
    the method plans so that the budget is met on the others."""
    fit, cls = class_fit(gg), type(gg.traced.model).__name__
    controls.tied = fit.ties
    for gids in fit.ties:
        whole = next((gid for gid in gids if gid in controls.kept_whole), None)
        for gid in gids if whole is not None else ():
            controls.kept_whole.setdefault(gid, f"{cls}'s code gives it the size of group {whole}, which is kept whole")
    return {gid: f"kept whole for {cls} (output='module'): {why}" for gid, why in fit.whole.items()} if output == "module" else {}


def _check_output(output: str | None, inplace: bool, pass_cls: type) -> None:
    from .passes.base import MethodPass

    if output not in (None, "module", "graph"):
        raise OptionError(f"output is None (the model's own class where it can be, else the slim graph), 'module' or 'graph', got {output!r}")
    if not isinstance(inplace, bool):
        raise OptionError(f"inplace is True or False, got {inplace!r}")
    if inplace and output == "graph":
        raise OptionError("inplace=True resizes the model itself, output='graph' returns a new graph: choose one")
    if inplace and (pass_cls.build is not MethodPass.build or pass_cls.planned_on is not MethodPass.planned_on):
        raise OptionError(f"method {pass_cls.name!r} builds its own slim model, so it cannot resize the model in place: drop inplace=True")


def _check_bounds(round_to: int | str | None, min_channels: int, min_ratio: float) -> None:
    if round_to is not None and round_to != "auto" and not (isinstance(round_to, int) and not isinstance(round_to, bool) and round_to >= 1):
        raise OptionError(f"round_to is a channel multiple (an int >= 1) or 'auto', got {round_to!r}")
    if not (isinstance(min_channels, int) and min_channels >= 0):
        raise OptionError(f"min_channels is the fewest channels a group keeps (an int >= 0), got {min_channels!r}")
    if not (isinstance(min_ratio, (int, float)) and 0.0 <= min_ratio <= 1.0):
        raise OptionError(f"min_ratio is the smallest share of its channels a group keeps (in [0, 1]), got {min_ratio!r}")


def apply(
    model: torch.nn.Module,
    method: str,
    budget: Budget | float,
    example_inputs: Any,
    *,
    train_data: Iterable | None = None,
    loss_fn: Callable | None = None,
    epochs: int = 0,
    lr: float = 0.05,
    optimizer: Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer] | None = None,
    **options: Any,
) -> PruneResult:
    """Prune ``model`` to ``budget`` with ``method``; returns the pruned model (of the user's class, see
    :func:`prepare`'s ``output``), the plan and a report.

    Data-free methods ("l1", "l2", "uniform", "random") need nothing else; given ``train_data``,
    ``loss_fn`` and ``epochs`` they prune, then fine-tune the slim model for those epochs (the same
    SGD and cosine schedule; the report gives the first and last epochs' loss). Methods that train
    ("dsa", "dhp") train ``model`` in place with ``train_data``/``loss_fn`` (SGD, cosine schedule over
    ``epochs``) until their plan is ready, then the slim model trains for the remaining epochs; their
    search is placed in this schedule (see ``graphprune/passes/search.py``). A method that allocates on held-out
    data (dsa) gets a seeded split of ``train_data`` (a DataLoader) unless ``val_data=`` is given, and
    the slim model trains on all of ``train_data`` again.
    ``optimizer(parameters, lr)`` builds another optimizer (e.g. Adam for restoration models); the
    cosine schedule still sets its learning rate each epoch.
    """
    from . import passes

    pass_cls = passes.get(method)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise OptionError(f"epochs is a number of passes over train_data (an int >= 0), got {epochs!r}")
    if pass_cls.trains and (epochs or not pass_cls.completes_untrained):
        if train_data is None or loss_fn is None or epochs < 1:
            raise OptionError(untrained_message(method, "pass train_data=, loss_fn= and epochs= (>= 1)"))
        result, searched = search(model, method, budget, example_inputs, train_data=train_data, loss_fn=loss_fn,
                                  epochs=epochs, lr=lr, optimizer=optimizer, **options)
        _train(result.model, train_data, loss_fn, lr, optimizer, searched, epochs)
        return result
    reads_data = pass_cls.reads_data or pass_cls.trains  # lwdna's scores, nap's statistics rounds
    if epochs and train_data is None:
        raise OptionError(f"epochs={epochs} trains the slim model: pass train_data= and loss_fn= too (loss_fn may be "
                          "left out where dict batches give the model's own loss, as Hugging Face models do with labels)")
    if not epochs and not reads_data and (train_data is not None or loss_fn is not None):
        raise OptionError(f"method {method!r} decides without data; train_data= and loss_fn= would only fine-tune the slim "
                          "model: pass epochs=N for that, or drop them")
    if reads_data:
        options.update(train_data=train_data, loss_fn=loss_fn)
    result = prepare(model, method, budget, example_inputs, **options).finish()
    if epochs:  # the everyday prune-then-fine-tune (lwdna: its re-initialized model trains from scratch)
        history = _train(result.model, train_data, loss_fn, lr, optimizer, 0, epochs)
        result.report.notes.append(f"trained the slim model for {epochs} epochs: loss {history[0].train_loss:.4g} in the "
                                   f"first, {history[-1].train_loss:.4g} in the last")
    return result


def untrained_message(method: str, fix: str) -> str:
    """What to do with a method that decides by training when it is given no training (apply, the CLI)."""
    from . import passes

    free = ", ".join(n for n in passes.names() if passes.get(n).completes_untrained)
    return f"method {method!r} decides by training: {fix}, or use a method that decides without it ({free})"


def search(
    model: torch.nn.Module,
    method: str,
    budget: Budget | float,
    example_inputs: Any,
    *,
    train_data: Iterable,
    loss_fn: Callable,
    epochs: int,
    lr: float = 0.05,
    optimizer: Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer] | None = None,
    **options: Any,
) -> tuple[PruneResult, int]:
    """The search half of ``apply`` for a method that trains: train ``model`` in place on the first
    epochs of an ``epochs``-long cosine schedule until the method's plan is ready; returns the slim
    model as the search leaves it (untrained further) and how many epochs the search took."""
    from . import passes

    search_data = train_data
    holds_out = passes.get(method).holds_out
    if holds_out and options.get("val_data") is None:
        search_data, options["val_data"] = hold_out(train_data, holds_out, seed=options.get("seed", 0))
    try:
        total_steps = epochs * len(search_data)
    except TypeError:
        raise GraphPruneError(f"{method} places its search in the training schedule: train_data has no len(), so "
                              "pass total_steps= (epochs x steps per epoch)") from None
    options.setdefault("total_steps", total_steps)
    session = prepare(model, method, budget, example_inputs, loss_fn=loss_fn, **options)
    searching = (optimizer or sgd)(model.parameters(), lr)
    epoch = 0
    while epoch < epochs and not session.method.ready():
        _cosine(searching, lr, epoch, epochs)
        fit(model, search_data, loss_fn, 1, optimizer=searching, callbacks=[session], seed=None,
            description=f"{method}: epoch {epoch + 1}/{epochs}")
        epoch += 1
    if not session.method.ready():
        raise BudgetError(f"{method} did not reach the budget in {epochs} epochs; give it more epochs")
    return session.finish(), epoch


def _train(model: torch.nn.Module, train_data: Iterable, loss_fn: Callable, lr: float,
           optimizer: Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer] | None, first: int, epochs: int) -> list[EpochRecord]:
    """The slim model's share of the schedule: epochs ``first`` to ``epochs`` of the cosine schedule; their records."""
    built = (optimizer or sgd)(model.parameters(), lr)
    history = []
    for epoch in range(first, epochs):
        _cosine(built, lr, epoch, epochs)
        history += fit(model, train_data, loss_fn, 1, optimizer=built, seed=None,
                       description=f"training the slim model: epoch {epoch + 1}/{epochs}")
    return history


def _cosine(optimizer: torch.optim.Optimizer, lr: float, epoch: int, epochs: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def apply_plan(model: torch.nn.Module, plan: Plan, example_inputs: Any, *, output: str | None = None,
               inplace: bool = False, **analyze_options: Any) -> torch.nn.Module:
    """Re-apply a saved plan to a fresh instance of the same architecture; ``output`` and
    ``inplace`` as for :func:`prepare` (a fallback to the slim graph warns, as there is no report)."""
    from .passes.base import MethodPass

    _check_output(output, inplace, MethodPass)
    gg = analyze(model, example_inputs, **analyze_options)
    if output == "graph":
        return slim(gg, plan)
    graph = None if inplace else slim(gg, plan)
    try:
        return user_class_model(gg, plan, graph, inplace=inplace)[0]
    except ModelRebuildError as exc:
        if output == "module" or inplace:
            raise
        warnings.warn(f"apply_plan returns the slim graph (a GraphModule), not a {type(model).__name__}: {exc}", stacklevel=2)
        return graph
