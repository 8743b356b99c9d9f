"""One-shot criteria on a trained CIFAR ResNet-20: accuracy right after pruning, without fine-tuning.

    .venv/bin/python bench/oneshot.py [--epochs 30] [--budgets 0.5 0.3] [--methods l1 l2 random taylor hessian nap]

The model is trained once by this script (seeded, SGD with a cosine schedule, on the shared
CIFAR-10 subset, 10% held out for evaluation) and cached under bench/.cache/, so every row starts
from the same weights: differences between rows are the criteria's, not training noise. Each
method prunes a copy of it to each MACs budget in one shot (``apply`` without epochs; the
data-aware ones read 8 calibration batches of the training split, nap its 10 statistics rounds
on them). Accuracy on the held-out split: as pruned; after BatchNorm recalibration (the running
statistics re-estimated on 20 training batches, no gradients: pruning shifts every layer's
input distribution); after one epoch of fine-tuning. Writes bench/results/oneshot.md and .json.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F

import graphprune
import provenance
from graphprune import data, models
from oneshot_common import HERE, cached, prune_copy, write

SUBSET = HERE.parents[1] / "shared" / "data" / "cifar10_train_subset.npz"
CALIBRATION_BATCHES = 8
RECALIBRATION_BATCHES = 20


def trained_resnet20(loaders, epochs: int) -> torch.nn.Module:
    """ResNet-20 trained on the subset (cached: the same weights for every row and every run)."""
    def train(model: torch.nn.Module) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        graphprune.fit(model, loaders[0], F.cross_entropy, epochs, optimizer=opt, scheduler=sched, val_data=loaders[1], seed=0,
                       description="training ResNet-20")

    torch.manual_seed(0)
    return cached(models.get("resnet20"), f"resnet20_subset_{epochs}ep_seed0.pt", train)


def recalibrated(model: torch.nn.Module, batches) -> torch.nn.Module:
    """The model with its BatchNorm running statistics re-estimated on ``batches`` (no gradients)."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
    out.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(batches):
            if i == RECALIBRATION_BATCHES:
                break
            out(x)
    return out.eval()


def fine_tuned(model: torch.nn.Module, loaders) -> torch.nn.Module:
    out = copy.deepcopy(model)
    opt = torch.optim.SGD(out.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    graphprune.fit(out, loaders[0], F.cross_entropy, 1, optimizer=opt, seed=0, progress=False)
    return out.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the cached model")
    parser.add_argument("--budgets", type=float, nargs="*", default=[0.5, 0.3])
    parser.add_argument("--methods", nargs="*", default=["l1", "l2", "random", "taylor", "hessian", "nap"])
    parser.add_argument("--data", type=Path, default=SUBSET, help="the CIFAR-10 subset .npz (default: ../shared/data's)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaders = data.cifar10_subset(args.data, batch_size=128, val_fraction=0.1, seed=0)
    model = trained_resnet20(loaders, args.epochs)
    example = next(iter(loaders[1]))[0][:2]
    calibration = [batch for _, batch in zip(range(CALIBRATION_BATCHES), loaders[0])]
    base = graphprune.accuracy(model, loaders[1])
    rows = []
    for budget in args.budgets:
        for method in args.methods:
            result, seconds = prune_copy(model, method, graphprune.Budget(macs=budget), example, calibration, F.cross_entropy)
            pruned = result.model.eval()
            row = dict(budget=budget, method=method, macs_ratio=round(result.report.macs_ratio, 4),
                       seconds=seconds, pruned=graphprune.accuracy(pruned, loaders[1]),
                       recalibrated=graphprune.accuracy(recalibrated(pruned, loaders[0]), loaders[1]),
                       fine_tuned=graphprune.accuracy(fine_tuned(recalibrated(pruned, loaders[0]), loaders), loaders[1]))
            print(row, flush=True)
            rows.append(row)
    commit = provenance.commit()
    lines = [f"# One-shot pruning of a trained CIFAR ResNet-20 (commit {commit})", "",
             f"`.venv/bin/python bench/oneshot.py --epochs {args.epochs}`: ResNet-20 trained {args.epochs} epochs on the "
             f"shared CIFAR-10 subset (seed 0), {base:.4f} top-1 on its held-out 10% before pruning. Each row prunes that "
             f"same model to a MACs budget in one shot (`round_to=1`); taylor, hessian and nap read "
             f"{CALIBRATION_BATCHES} training batches. Accuracy as pruned, after BatchNorm recalibration "
             f"({RECALIBRATION_BATCHES} batches, no gradients), and after one more epoch of fine-tuning.", "",
             "| MACs budget | method | MACs kept | top-1 as pruned | + BN recalibration | + 1 epoch | seconds |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['budget']} | {r['method']} | {r['macs_ratio']:.4f} | {r['pruned']:.4f} | {r['recalibrated']:.4f} | "
                     f"{r['fine_tuned']:.4f} | {r['seconds']} |")
    write("oneshot", lines, {"commit": commit, "base_accuracy": base, "rows": rows})


if __name__ == "__main__":
    main()
