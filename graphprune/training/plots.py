"""Figures of a method's search: how the budget fell, and where channels were cut (or grown)."""

from __future__ import annotations

from typing import Mapping, Sequence

from ..common.distributed import main_only  # figures are written on rank 0 only under torchrun


@main_only
def plot_search(path: str, trajectory: Sequence[float], kept: Mapping[str, float], target: float | None = None, title: str = "",
                sensitivity: Mapping[str, float] | None = None) -> None:
    """PNG: ``trajectory`` (cost per search step, % of the full model) beside ``kept`` ({layer: kept
    fraction of its output channels}, in network order). ``target``: the budget in %, drawn as a line.
    ``sensitivity``: {layer: normalized sensitivity in [-1, 1]}, drawn over the bars as in DSA's Fig. 6."""
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
    if sensitivity is not None:
        twin = right.twinx()
        twin.plot(range(len(kept)), [sensitivity.get(layer, float("nan")) for layer in kept], "o-", color="tab:red", markersize=3)
        twin.set_ylabel("normalized sensitivity -dL/dalpha", color="tab:red")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@main_only
def plot_widths(path: str, percentages: Mapping[str, float], title: str = "") -> None:
    """PNG: ``percentages`` ({layer: output channels as % of the original layer's}, in network order)
    as bars, with the original width at 100% (LW-DNA's Fig. 5/8: layers may end above it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(percentages)), 4))
    ax.bar(range(len(percentages)), list(percentages.values()))
    ax.axhline(100, color="gray", linestyle="--", label="original width")
    ax.set_xticks(range(len(percentages)), list(percentages), rotation=90, fontsize=5)
    ax.set_ylabel("output channels (% of the original)")
    ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
