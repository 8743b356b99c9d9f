"""Figures of a training method's search: how the budget fell, and where channels were cut."""

from __future__ import annotations

from typing import Mapping, Sequence


def plot_search(path: str, trajectory: Sequence[float], kept: Mapping[str, float], target: float | None = None, title: str = "") -> None:
    """PNG: ``trajectory`` (cost per search step, % of the full model) beside ``kept`` ({layer: kept
    fraction of its output channels}, in network order). ``target``: the budget in %, drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 2]})
    left.plot(range(len(trajectory)), list(trajectory), marker=".")
    if target is not None:
        left.axhline(target, color="gray", linestyle="--", label="budget")
        left.legend()
    left.set_xlabel("search step")
    left.set_ylabel("cost (% of the full model)")
    right.bar(range(len(kept)), [100 * f for f in kept.values()])
    right.set_xticks(range(len(kept)), list(kept), rotation=90, fontsize=5)
    right.set_ylabel("kept output channels (%)")
    right.set_ylim(0, 100)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
