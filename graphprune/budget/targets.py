"""Budgets: what a pruned model may cost, as a ratio of the full model or an absolute count.

MACs and parameters are counted exactly; latency is measured on a named runtime (:class:`Runtime`)
and modelled by ``graphprune/export/latency.py``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Callable

from ..errors import BudgetError, OptionError

#: the runtimes latency can be measured on, and what each is
RUNTIMES = {
    "onnxruntime": "onnxruntime, CPU provider",
    "onnxruntime-cuda": "onnxruntime, CUDA provider",
    "torch": "PyTorch eager",
    "torch.compile": "torch.compile (inductor)",
}


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where a latency budget is measured: a runtime of :data:`RUNTIMES` and how it runs the model.

    ``threads``: intra-op threads on CPU (1 by default: single-thread latency is the one that
    repeats on a shared machine). ``batch``: the batch size measured (None: the example inputs').
    ``device``: "cpu" or "cuda" for the PyTorch runtimes (the onnxruntime ones name theirs).
    ``repeats``: runs of the whole model whose median is its latency. ``cache``: a folder for the
    per-op measurements (True: ``~/.cache/graphprune/latency``, False: measure every time).
    ``timer``: replaces the measurement, ``timer(modules, inputs, runtime, repeats) -> seconds``
    per module (median, runs interleaved): tests give a deterministic one.
    ``tolerance`` and ``replans``: a method that allocates by score re-plans where the pruned model,
    measured, misses a ratio target by more than ``tolerance`` (0.01: about what the medians of
    50 interleaved runs vary by at one thread on an idle machine, bench/results/latency.md), up to
    ``replans`` times, the latency model rescaled to each measurement (docs/latency.md).
    """

    name: str = "onnxruntime"
    threads: int = 1
    batch: int | None = None
    device: str = "cpu"
    repeats: int = 50
    cache: str | os.PathLike | bool = True
    timer: Callable[..., list[float]] | None = None
    tolerance: float = 0.01
    replans: int = 2

    def __post_init__(self) -> None:
        if self.name not in RUNTIMES:
            raise OptionError(f"unknown runtime {self.name!r}; latency is measured on one of: "
                              + ", ".join(f"{k!r} ({v})" for k, v in RUNTIMES.items()))
        for what, value, low in (("threads", self.threads, 1), ("repeats", self.repeats, 1), ("batch", self.batch, 1),
                                 ("replans", self.replans, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise OptionError(f"Runtime {what} is an int >= {low}, got {value!r}")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, numbers.Real) or not 0 < self.tolerance < 1:
            raise OptionError(f"Runtime tolerance is a ratio of the unpruned latency in (0, 1), got {self.tolerance!r}")
        if self.device not in ("cpu", "cuda"):
            raise OptionError(f"Runtime device is 'cpu' or 'cuda', got {self.device!r}")
        if self.name.startswith("onnxruntime"):  # the provider names the device
            object.__setattr__(self, "device", "cuda" if self.name == "onnxruntime-cuda" else "cpu")

    def describe(self) -> str:
        """'onnxruntime, CPU provider, 1 thread, batch 1' (batch: as given, else the example's)."""
        threads = f", {self.threads} thread{'s' if self.threads > 1 else ''}" if self.device == "cpu" else ""
        device = f" on {self.device}" if self.name.startswith("torch") else ""
        return f"{RUNTIMES[self.name]}{device}{threads}" + (f", batch {self.batch}" if self.batch else "")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Keep at most ``macs``, ``params`` or ``latency`` of the full model: a ratio in (0, 1] or an absolute amount.

    ``Budget(macs=0.5)`` keeps half the MACs; ``Budget(params=2_000_000)`` keeps at most 2M parameters.
    A count must be an ``int``: ``1.5`` or ``50.0`` is neither a ratio nor a count, and is refused
    rather than read as 1.5 MACs (``50%`` was probably meant).
    ``Budget(latency=0.5)`` halves the unpruned model's latency measured on ``runtime`` (a
    :class:`Runtime` or its name; onnxruntime on CPU, one thread, by default); ``Budget(latency_ms=12.0)``
    asks for 12 milliseconds there (see docs/latency.md).
    """

    macs: float | int | None = None
    params: float | int | None = None
    latency: float | None = None
    latency_ms: float | None = None
    runtime: Runtime | str | None = None

    def __post_init__(self) -> None:
        given = [(k, v) for k, v in (("macs", self.macs), ("params", self.params), ("latency", self.latency),
                                     ("latency_ms", self.latency_ms)) if v is not None]
        if len(given) != 1:
            raise BudgetError("give exactly one of Budget(macs=...), Budget(params=...), Budget(latency=...) or Budget(latency_ms=...)")
        metric, value = given[0]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise BudgetError(f"a budget is a number, got {metric}={value!r}: a ratio in (0, 1] like 0.5, or an int count")
        if not math.isfinite(value) or value <= 0:
            raise BudgetError(f"a budget must be a finite number above 0, got {metric}={value}: "
                              "give a ratio in (0, 1] (0.5 keeps half) or an absolute count as an int")
        if metric.startswith("latency"):
            self._latency_fields(metric, value)
            return
        if self.runtime is not None:
            raise BudgetError(f"runtime= is where latency is measured: it goes with latency= or latency_ms=, not {metric}=")
        if value > 1 and not isinstance(value, numbers.Integral):
            raise BudgetError(f"{metric}={value} is neither a ratio in (0, 1] nor an absolute count: for {value}% of the "
                              f"model give {value / 100:g} ('{value:g}%' on the command line); an absolute count is an int "
                              f"({metric}={math.floor(value)})")
        object.__setattr__(self, metric, int(value) if isinstance(value, numbers.Integral) else float(value))

    def _latency_fields(self, metric: str, value: float) -> None:
        if metric == "latency" and value > 1:
            raise BudgetError(f"latency={value:g} is not a ratio in (0, 1] of the unpruned model's latency: for {value:g} "
                              f"milliseconds give latency_ms={value:g}, for {value:g}% give latency={value / 100:g}")
        runtime = self.runtime if self.runtime is not None else Runtime()
        if isinstance(runtime, str):
            runtime = Runtime(runtime)
        if not isinstance(runtime, Runtime):
            raise OptionError(f"runtime= is a graphprune Runtime or the name of one ({', '.join(RUNTIMES)}), got {runtime!r}")
        object.__setattr__(self, "runtime", runtime)
        object.__setattr__(self, metric, float(value))

    @property
    def metric(self) -> str:
        """The cost model's metric the budget limits: "macs", "params" or "latency" (nanoseconds, both latency forms)."""
        return "macs" if self.macs is not None else "params" if self.params is not None else "latency"

    @property
    def value(self) -> float | int:
        return next(v for v in (self.macs, self.params, self.latency, self.latency_ms) if v is not None)

    @property
    def is_ratio(self) -> bool:
        if self.metric == "latency":
            return self.latency is not None
        return not isinstance(self.value, int) or self.value == 1

    def target(self, full: int) -> float:
        """The budget as an absolute cost for a model that costs ``full`` (latency: in nanoseconds)."""
        if self.is_ratio:
            return self.value * full
        return self.value * 1e6 if self.metric == "latency" else float(self.value)

    def amount(self, cost: float) -> str:
        """An absolute cost of this budget's metric as people read it: '12.345 ms', '2,000,000'."""
        return f"{cost / 1e6:.3f} ms" if self.metric == "latency" else f"{int(cost):,}"

    def describe(self) -> str:
        """The budget as the user gave it: '0.5 of the model's MACs', '2,000,000 params', '12 ms on onnxruntime, ...'."""
        where = f" on {self.runtime.describe()}" if self.metric == "latency" else ""
        if self.is_ratio:
            return f"{self.value:g} of the model's {self.metric}{where}"
        return f"{self.value:g} ms{where}" if self.metric == "latency" else f"{self.value:,} {self.metric}"

    @classmethod
    def of(cls, budget: "Budget | float | int") -> "Budget":
        """A bare number means MACs (a ratio in (0, 1], or an int count)."""
        return budget if isinstance(budget, Budget) else cls(macs=budget)

    @classmethod
    def parse(cls, text: str, metric: str = "macs") -> "Budget":
        """A budget from the command line: '0.5', '50%' or an absolute count '2000000'."""
        text = text.strip()
        try:
            if text.endswith("%"):
                return cls(**{metric: float(text[:-1]) / 100})
            number: float | int = int(text) if text.lstrip("+").isdigit() else float(text)
        except ValueError:
            raise BudgetError(f"--budget takes a ratio (0.5), a percentage (50%) or an absolute count (2000000), got {text!r}") from None
        return cls(**{metric: number})
