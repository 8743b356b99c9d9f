"""The demo: prune a residual CNN trained on scikit-learn's digits to 50% of its MACs.

Trains `graphprune.models:digits_cnn` for about a minute on the CPU, prunes it with the `l1`
method to half its MACs, fine-tunes the slim model briefly, and exports it to ONNX checked in
onnxruntime. Data: scikit-learn's bundled 8x8 digits (no download). Run with `make demo`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from sklearn.datasets import load_digits

import graphprune
from graphprune import models


def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = order[:360], order[360:]
    return x[train], y[train], x[test], y[test]


def train(model, x, y, seconds: float, lr: float, label: str, progress: Progress) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    task = progress.add_task(label, total=seconds)
    start = time.perf_counter()
    model.train()
    while (elapsed := time.perf_counter() - start) < seconds:
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        progress.update(task, completed=min(elapsed, seconds))
    progress.update(task, completed=seconds)
    model.eval()


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    console = Console()
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits_split()
    model = models.get("digits_cnn", width=48)
    with Progress(console=console) as progress:
        train(model, x_train, y_train, 60, 2e-3, "training digits_cnn", progress)
    before = accuracy(model, x_test, y_test)

    result = graphprune.apply(model, "l1", 0.5, x_train[:2])
    result.report.print(console)
    pruned = accuracy(result.model, x_test, y_test)
    with Progress(console=console) as progress:
        train(result.model, x_train, y_train, 15, 5e-4, "fine-tuning the slim model", progress)
    after = accuracy(result.model, x_test, y_test)

    with tempfile.TemporaryDirectory() as tmp:
        onnx = graphprune.export_onnx(result.model, str(Path(tmp) / "digits_slim.onnx"), x_test[:8])
    r = result.report
    console.print(f"test accuracy: {before:.3f} full, {pruned:.3f} right after pruning, {after:.3f} after fine-tuning")
    console.print(f"MACs {r.macs_before:,} -> {r.macs_after:,} ({r.macs_ratio:.3f}), params {r.params_before:,} -> {r.params_after:,} ({r.params_ratio:.3f})")
    console.print(f"ONNX ({onnx.exporter} exporter, {onnx.file_bytes / 1e3:.0f} kB): onnxruntime matches PyTorch to {onnx.max_abs_diff:.1e}")


if __name__ == "__main__":
    main()
