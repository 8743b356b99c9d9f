"""The demo: analyze a small CNN trained on scikit-learn's digits (data that ships with a dependency).

Shows the channel groups graphprune finds and what its exact budget model predicts for a few
uniform keep ratios. Run with `make demo`.
"""

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from sklearn.datasets import load_digits

import graphprune
from graphprune import models


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(digits.target)


def main() -> None:
    console = Console()
    torch.manual_seed(0)
    x, y = digits_tensors()
    model = models.get("digits_cnn")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in track(range(3), description="training digits_cnn (3 epochs)"):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    console.print(f"train accuracy {acc:.3f}")

    gg = graphprune.analyze(model, x[:2])
    gg.summary(console)
    budget = gg.budget
    full_macs, full_params = budget.macs(), budget.params()
    for ratio in (0.75, 0.5, 0.25):
        keep = {g.id: max(1, int(round(g.size * ratio))) for g in gg.prunable_groups}
        console.print(
            f"keep {ratio:.0%} of every prunable group -> MACs {budget.macs(keep) / full_macs:.3f}, "
            f"params {budget.params(keep) / full_params:.3f} of the full model"
        )
    fa, fb, c = budget.quadratic("macs")
    a = np.full(len(gg.prunable_groups), 0.5)
    console.print(f"quadratic form at a=0.5: {a @ fa @ a + fb @ a + c:,.0f} MACs (exact: {budget.macs({g.id: g.size // 2 for g in gg.prunable_groups}):,})")


if __name__ == "__main__":
    main()
