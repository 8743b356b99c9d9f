"""The demo: prune a residual CNN trained on scikit-learn's digits to 50% of its MACs.

Trains `graphprune.models:digits_cnn` with `graphprune.fit` (about a minute on a 2-core CPU),
prunes it with the `l1` method to half its MACs, fine-tunes the slim model briefly, and exports it
to ONNX checked in onnxruntime. Data: scikit-learn's bundled 8x8 digits (no download), with a
held-out validation split. Run with `make demo`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

import graphprune
from graphprune import data, models


def main() -> None:
    console = Console()
    torch.manual_seed(0)
    train, val = data.digits(seed=0)
    model = models.get("digits_cnn", width=48)
    graphprune.fit(model, train, F.cross_entropy, 25, optimizer=torch.optim.Adam(model.parameters(), 2e-3),
                   description="training digits_cnn")
    before = graphprune.accuracy(model, val)

    example = next(iter(val))[0][:2]
    result = graphprune.apply(model, "l1", 0.5, example)
    result.report.print(console)
    pruned = graphprune.accuracy(result.model, val)
    graphprune.fit(result.model, train, F.cross_entropy, 6, optimizer=torch.optim.Adam(result.model.parameters(), 5e-4),
                   description="fine-tuning the slim model")
    after = graphprune.accuracy(result.model, val)

    with tempfile.TemporaryDirectory() as tmp:
        onnx = graphprune.export_onnx(result.model, str(Path(tmp) / "digits_slim.onnx"), example)
    r = result.report
    console.print(f"validation accuracy: {before:.3f} full, {pruned:.3f} right after pruning, {after:.3f} after fine-tuning")
    console.print(f"MACs {r.macs_before:,} -> {r.macs_after:,} ({r.macs_ratio:.3f}), params {r.params_before:,} -> {r.params_after:,} ({r.params_ratio:.3f})")
    console.print(f"ONNX ({onnx.exporter} exporter, {onnx.file_bytes / 1e3:.0f} kB): onnxruntime matches PyTorch to {onnx.max_abs_diff:.1e}")


if __name__ == "__main__":
    main()
