"""What the method passes that train share: the schedule their search runs on, and optimizer groups.

A search that takes a fixed number of steps is degenerate on every schedule but one: on 8 epochs it
never finishes, on 300 it ends in epoch 2 with the network still untrained. So a search is placed in
the training it runs in, as fractions of its optimizer steps: ``warmup`` (plain training first; the
importance signals mean nothing on an untrained network) and ``end`` (by when the budget is met),
and each method derives its own rates (allocation steps, mask hardening, proximal strength) from
that window. ``graphprune.apply`` and ``graphprune.fit`` know the total number of steps; a session
driven from a user's own loop gets it from ``graphprune.prepare(..., total_steps=)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterable

import torch

from graphprune.errors import GraphPruneError

from .base import MethodPass


@dataclasses.dataclass(frozen=True)
class SearchSchedule:
    """A search window in optimizer steps: [warmup * total_steps, end * total_steps)."""

    total_steps: int
    warmup: float
    end: float

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise GraphPruneError(f"the training schedule needs at least one step, got total_steps={self.total_steps}")
        if not 0.0 <= self.warmup < self.end <= 1.0:
            raise GraphPruneError(f"search window: need 0 <= warmup < end <= 1 (fractions of training), got "
                                  f"warmup={self.warmup}, end={self.end}")

    @property
    def start_step(self) -> int:
        return int(round(self.warmup * self.total_steps))

    @property
    def end_step(self) -> int:
        """The first step after the search; at least one step after the start."""
        return max(self.start_step + 1, int(round(self.end * self.total_steps)))

    @property
    def length(self) -> int:
        return self.end_step - self.start_step

    def progress(self, step: int) -> float:
        """0 at the start of the search, 1 at its end (clipped)."""
        return min(1.0, max(0.0, (step - self.start_step) / self.length))


class ScheduledSearch(MethodPass):
    """A method pass whose search runs in a window of the training schedule.

    ``warmup`` and ``search_end``: the window as fractions of training (defaults per method in
    ``window``); the schedule itself arrives through :meth:`bind_schedule`.
    """

    window: ClassVar[tuple[float, float]]
    completes_untrained = False
    unready_source: ClassVar[str]  # what a plan decided before the search ends would come from

    def __init__(self, *args: Any, warmup: float | None = None, search_end: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.warmup = self.window[0] if warmup is None else warmup
        self.search_end = self.window[1] if search_end is None else search_end
        SearchSchedule(1, self.warmup, self.search_end)  # check the window now, not after training started
        self.schedule: SearchSchedule | None = None

    def bind_schedule(self, total_steps: int) -> None:
        self.schedule = SearchSchedule(total_steps, self.warmup, self.search_end)

    def unready(self) -> str | None:
        if self.ready() or self.completes_untrained:
            return None
        when = ("it does not know the training schedule yet" if self.schedule is None else
                f"it ends at optimizer step {self.schedule.end_step} of {self.schedule.total_steps}")
        return f"{self.name} decides its plan by training and its search has not finished ({when}): a plan now would come from {self.unready_source}"

    def require_schedule(self) -> SearchSchedule:
        if self.schedule is None:
            raise GraphPruneError(
                f"{self.name} places its search in the training schedule, but does not know how long training is: "
                "pass total_steps= (epochs x steps per epoch) to graphprune.prepare, or call "
                "session.bind_schedule(total_steps) before training (graphprune.apply and graphprune.fit do it)"
            )
        return self.schedule


def exempt_from_weight_decay(optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter]) -> None:
    """Move ``params`` into a param group of their own with weight decay 0 (other settings kept).

    For tensors that carry a method's signal rather than a layer's weights (DSA's BatchNorm scales
    while they are its importance, DHP's latent vectors): decay would shrink them all alike and
    blur the signal the search reads.
    """
    wanted = {id(p) for p in params}
    moved = []
    for group in list(optimizer.param_groups):
        if group.get("weight_decay", 0.0) == 0.0:
            continue
        keep = [p for p in group["params"] if id(p) not in wanted]
        if len(keep) == len(group["params"]):
            continue
        moved_here = [p for p in group["params"] if id(p) in wanted]
        group["params"] = keep
        moved.append(({k: v for k, v in group.items() if k != "params"}, moved_here))
    for settings, ps in moved:
        optimizer.add_param_group({**settings, "params": ps, "weight_decay": 0.0})
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]


__all__ = ["SearchSchedule", "ScheduledSearch", "exempt_from_weight_decay"]
