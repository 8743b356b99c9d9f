"""Budgets: what a pruned model may cost, as a ratio of the full model or an absolute count."""

from __future__ import annotations

import dataclasses

from .errors import BudgetError


@dataclasses.dataclass(frozen=True)
class Budget:
    """Keep at most ``macs`` (or ``params``) of the full model: a ratio in (0, 1] or an absolute count > 1.

    ``Budget(macs=0.5)`` keeps half the MACs; ``Budget(params=2_000_000)`` keeps at most 2M parameters.
    """

    macs: float | None = None
    params: float | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.macs, self.params) if v is not None]
        if len(given) != 1:
            raise BudgetError("give exactly one of Budget(macs=...) or Budget(params=...)")
        if given[0] <= 0:
            raise BudgetError(f"a budget must be positive, got {given[0]}")

    @property
    def metric(self) -> str:
        return "macs" if self.macs is not None else "params"

    @property
    def value(self) -> float:
        return self.macs if self.macs is not None else self.params

    def target(self, full: int) -> float:
        """The budget as an absolute count for a model that costs ``full``."""
        return self.value * full if self.value <= 1 else float(self.value)

    @classmethod
    def of(cls, budget: "Budget | float | int") -> "Budget":
        """A float/int means MACs (ratio if <= 1)."""
        return budget if isinstance(budget, Budget) else cls(macs=float(budget))
