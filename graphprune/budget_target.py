"""Budgets: what a pruned model may cost, as a ratio of the full model or an absolute count."""

from __future__ import annotations

import dataclasses
import math
import numbers

from .errors import BudgetError


@dataclasses.dataclass(frozen=True)
class Budget:
    """Keep at most ``macs`` (or ``params``) of the full model: a ratio in (0, 1] or an absolute count.

    ``Budget(macs=0.5)`` keeps half the MACs; ``Budget(params=2_000_000)`` keeps at most 2M parameters.
    A count must be an ``int``: ``1.5`` or ``50.0`` is neither a ratio nor a count, and is refused
    rather than read as 1.5 MACs (``50%`` was probably meant).
    """

    macs: float | int | None = None
    params: float | int | None = None

    def __post_init__(self) -> None:
        given = [(k, v) for k, v in (("macs", self.macs), ("params", self.params)) if v is not None]
        if len(given) != 1:
            raise BudgetError("give exactly one of Budget(macs=...) or Budget(params=...)")
        metric, value = given[0]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise BudgetError(f"a budget is a number, got {metric}={value!r}: a ratio in (0, 1] like 0.5, or an int count")
        if not math.isfinite(value) or value <= 0:
            raise BudgetError(f"a budget must be a finite number above 0, got {metric}={value}: "
                              "give a ratio in (0, 1] (0.5 keeps half) or an absolute count as an int")
        if value > 1 and not isinstance(value, numbers.Integral):
            raise BudgetError(f"{metric}={value} is neither a ratio in (0, 1] nor an absolute count: for {value}% of the "
                              f"model give {value / 100:g} ('{value:g}%' on the command line); an absolute count is an int "
                              f"({metric}={math.floor(value)})")
        object.__setattr__(self, metric, int(value) if isinstance(value, numbers.Integral) else float(value))

    @property
    def metric(self) -> str:
        return "macs" if self.macs is not None else "params"

    @property
    def value(self) -> float | int:
        return self.macs if self.macs is not None else self.params

    @property
    def is_ratio(self) -> bool:
        return not isinstance(self.value, int) or self.value == 1

    def target(self, full: int) -> float:
        """The budget as an absolute count for a model that costs ``full``."""
        return self.value * full if self.is_ratio else float(self.value)

    def describe(self) -> str:
        """The budget as the user gave it: '0.5 of the model's MACs' or '2,000,000 params'."""
        return f"{self.value:g} of the model's {self.metric}" if self.is_ratio else f"{self.value:,} {self.metric}"

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
