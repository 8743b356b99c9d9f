"""The interface every method pass implements."""

from __future__ import annotations

import functools
import inspect
from importlib.metadata import entry_points
from typing import Any, Callable, ClassVar

import torch

from graphprune.budget.allocate import fitted_rounding, floor_of, merge_ties
from graphprune.budget.targets import Budget
from graphprune.groups.controls import Controls
from graphprune.errors import GraphPruneError, OptionError
from graphprune.groups.graph import GroupGraph, layer_roles, set_round_to
from graphprune.groups.plan import Plan
from graphprune.slimming.slim import slim


class MethodPass:
    """A pruning method: sees the analysis and the budget, may instrument and train, returns a Plan.

    Data-free methods only implement :meth:`plan`. Methods that train also get the hooks, called
    by ``graphprune.fit`` or by a user's own loop through the session ``graphprune.prepare`` returns.
    """

    name: ClassVar[str]
    trains: ClassVar[bool] = False
    holds_out: ClassVar[float] = 0.0  # fraction of the training data apply holds out as val_data for the search
    starts_trained: ClassVar[bool] = False  # expects a trained model (nap): benchmarks train it first, as for l1
    reads_data: ClassVar[bool] = False  # decides from a few batches without training (apply passes train_data, loss_fn)
    completes_untrained: ClassVar[bool] = True  # gives a meaningful plan without a training loop (dsa, dhp: no)
    default_round_to: ClassVar[int | str] = 1  # the channel multiple when the caller gives none (groups.auto_round_to for "auto")
    ties_layers: ClassVar[bool] = False  # takes uniform_layers=True: ties its counts per role where it decides them
    takes_controls: ClassVar[bool] = True  # honours per-group floors and fixed counts (self.bounds) where it allocates

    def __init__(self, gg: GroupGraph, budget: Budget, model: torch.nn.Module, min_channels: int = 1, min_ratio: float = 0.0,
                 round_to: int | str | None = None, uniform_layers: bool = False, controls: Controls | None = None,
                 **options: Any):
        """``uniform_layers``: every layer of a repeated stack keeps the same count per role
        (``groups.layer_roles``), so a config with one width per role (Hugging Face's
        intermediate_size, num_key_value_heads, ...) describes the pruned model; each layer still
        keeps its own best channels. Methods that cannot tie their counts refuse it.
        ``controls``: per-group floors, steps and fixed counts from per-layer options (controls.py);
        the groups kept whole are already frozen in ``gg``."""
        self.gg, self.budget, self.model = gg, budget, model
        self.min_channels, self.min_ratio = min_channels, min_ratio
        self.round_to = self.default_round_to if round_to is None else round_to
        set_round_to(gg.groups, self.round_to)
        self.controls = controls or Controls()
        given = self.controls.given()
        if given and not self.takes_controls:
            raise OptionError(f"method {self.name!r} cannot take {', '.join(given)}: it plans on groups of its own; "
                              f"use one of the methods that take per-layer options: "
                              f"{', '.join(n for n in names() if get(n).takes_controls)}")
        for gid, step in self.controls.round_to.items():
            set_round_to([gg.groups[gid]], step)
        if options:
            raise OptionError(f"method {self.name!r} got unknown options: {', '.join(sorted(options))}; it takes "
                              f"{', '.join(self.options())} (see help(graphprune.passes.get({self.name!r})))")
        if not isinstance(uniform_layers, bool):
            raise OptionError(f"uniform_layers is True or False, got {uniform_layers!r}")
        if uniform_layers and not self.ties_layers:
            raise OptionError(f"method {self.name!r} cannot give every layer of a repeated stack the same width: drop "
                              f"uniform_layers=True, or use one of the methods that take it: "
                              f"{', '.join(n for n in names() if get(n).ties_layers)}")
        self.uniform_layers = uniform_layers

    @classmethod
    def options(cls) -> list[str]:
        """The keyword options this method takes, its own and its bases'."""
        names: set[str] = set()
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is not None:
                names.update(p.name for p in inspect.signature(init).parameters.values()
                             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        return sorted(names - {"self", "gg", "budget", "model", "controls"} - (set() if cls.ties_layers else {"uniform_layers"}))

    @functools.cached_property
    def bounds(self) -> dict[str, dict[int, int]]:
        """Per-group ``floors`` and ``ceilings`` (channel counts) for the allocation: ``min_ratio``
        per layer raises floors, ``ratios`` fix both (controls.py)."""
        floors = {gid: floor_of(self.gg.groups[gid].size, self.gg.groups[gid].round_to, self.min_channels, ratio)
                  for gid, ratio in self.controls.min_ratio.items()}
        fixed = {gid: self.controls.fixed_count(self.gg.groups[gid]) for gid in self.controls.fixed}
        return {"floors": {**floors, **fixed}, "ceilings": fixed}

    @functools.cached_property
    def roles(self) -> list[list[int]] | None:
        """The groups whose kept counts are tied in the analysis the plan is on (None: none): each
        layer's per role (``uniform_layers``), and those the model's own class sizes together (controls.py)."""
        on = self.planned_on()
        return merge_ties(layer_roles(on) if self.uniform_layers else None, self.controls.tied if on is self.gg else None) or None

    def attach(self) -> None:
        """Instrument the model (masks, hooks, parametrizations) before training."""

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once before training with the optimizer that steps the model (e.g. for its learning rate)."""

    def bind_schedule(self, total_steps: int) -> None:
        """Called once before training with the number of optimizer steps training will take."""

    def before_step(self, step: int) -> None:
        """Called before each optimizer step."""

    def after_step(self, step: int, loss: float | None = None) -> None:
        """Called after each optimizer step."""

    def end_epoch(self, epoch: int) -> None:
        """Called at the end of each epoch."""

    def rounded(self, allocate: Callable[[], Plan], budget: Budget | None = None) -> Plan:
        """``allocate()``'s plan; under ``round_to="auto"`` with steps made finer where ``budget``
        (default the method's) needs them."""
        budget = budget or self.budget
        return fitted_rounding(self.gg, budget, allocate, self.controls.round_to) if self.round_to == "auto" else allocate()

    def ready(self) -> bool:
        """Whether the method can decide its plan now (training methods: once the budget is met)."""
        return True

    def unready(self) -> str | None:
        """Why a plan decided now would mean nothing (None: it would mean what it says).

        ``Session.finish`` refuses such a plan unless forced, and then puts this in the report.
        A method that ``completes_untrained`` (NAP: from statistics rounds) never refuses.
        """
        return None if self.ready() or self.completes_untrained else f"{self.name} has not decided its plan yet"

    def plan(self) -> Plan:
        raise NotImplementedError

    def allocate(self, budget: Budget) -> Plan:
        """The plan for ``budget`` from what the method knows now, changing nothing; a method whose
        plan is such an allocation implements it (``plan()`` is then this for its own budget)."""
        raise NotImplementedError

    @property
    def replans(self) -> bool:
        """Whether it implements :meth:`allocate`: a latency budget then allocates again to targets
        corrected by measurement."""
        return type(self).allocate is not MethodPass.allocate

    def commit(self, plan: Plan) -> None:
        """Called once with the plan every rank slims to, before the model is slimmed: a method that
        edits the model for its plan (flap's bias compensation) does it here."""

    def planned_on(self) -> GroupGraph:
        """The analysis the plan refers to: the model's own (LW-DNA: its widened copy's)."""
        return self.gg

    def build(self, plan: Plan) -> torch.nn.Module:
        """The model the plan gives: the slim pass on :meth:`planned_on` (LW-DNA also re-initializes it)."""
        return slim(self.planned_on(), plan)

    def refine_report(self, report: Any) -> Any:
        """The PruneReport with the method's own counts and notes (NAP fine-grained: nonzero weights)."""
        return report

    def detach(self) -> None:
        """Remove whatever :meth:`attach` added."""


# ------------------------------------------------------------------ finding passes by name

_REGISTRY: dict[str, type[MethodPass]] = {}


def register(cls: type[MethodPass]) -> type[MethodPass]:
    """Class decorator: make a pass available under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    for ep in entry_points(group="graphprune.methods"):
        if ep.name not in _REGISTRY:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, MethodPass)):
                raise GraphPruneError(f"entry point graphprune.methods:{ep.name} is not a MethodPass subclass")
            _REGISTRY[ep.name] = cls


def get(name: str) -> type[MethodPass]:
    if name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY:
        raise GraphPruneError(f"unknown pruning method {name!r}; available: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)
