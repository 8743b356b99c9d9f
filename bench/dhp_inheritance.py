"""What DHP's in-place weights are worth: the slim model after the search, fine-tuned as it is or re-initialized.

``graphprune.apply(model, "dhp", ...)`` searches in the first 20% of training, then trains the slim
model it inherited for the rest. This script runs that search once per seed (ResNet-20, CIFAR
subset, 25% MACs, 30 epochs, lr 0.1, DHP's default options) and then trains the same slim
architecture for the same remaining epochs twice: from the weights the hypernetworks generated
(``inherit``, what ``apply`` does) and re-initialized (``reinit``). If the inherited weights carried
what the search trained, ``inherit`` would end higher.

    .venv/bin/python bench/dhp_inheritance.py --seeds 0,1,2

Writes ``bench/results/dhp_inheritance/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import graphprune
import graphprune.api as api
from graphprune import data, models

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "dhp_inheritance"
EPOCHS, LR, BUDGET = 30, 0.1, 0.25


def run(seed: int) -> list[dict]:
    train, val = data.cifar10_subset(str(ROOT.parent / "shared" / "data" / "cifar10_train_subset.npz"), seed=seed)
    torch.manual_seed(seed)
    result, searched = api.search(models.get("resnet20"), "dhp", BUDGET, torch.randn(2, 3, 32, 32), train_data=train,
                                  loss_fn=F.cross_entropy, epochs=EPOCHS, lr=LR)  # as graphprune.apply searches
    rows = []
    for variant in ("inherit", "reinit"):
        slim = copy.deepcopy(result.model)
        if variant == "reinit":
            for module in slim.modules():
                if module is not slim and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        losses = [r.train_loss for r in api._train(slim, train, F.cross_entropy, LR, None, searched, EPOCHS)]  # as apply trains it
        rows.append({"seed": seed, "variant": variant, "search_epochs": searched, "val_accuracy": graphprune.accuracy(slim, val),
                     "first_epoch_loss": losses[0], "last_epoch_loss": losses[-1]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def write(rows: list[dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["# DHP: inherited weights against a re-initialization of the same slim model", "",
             f"`bench/dhp_inheritance.py`: ResNet-20, CIFAR subset, {BUDGET:.0%} MACs, {EPOCHS} epochs, lr {LR}; DHP's search "
             "once per seed, then the slim model trains for the remaining epochs from its inherited weights or re-initialized.", "",
             "| variant | val accuracy per seed | mean | train loss, first / last epoch (mean) |", "|---|---|---|---|"]
    for variant in ("inherit", "reinit"):
        rs = [r for r in rows if r["variant"] == variant]
        per_seed = ", ".join(f"{100 * r['val_accuracy']:.2f} (seed {r['seed']})" for r in rs)
        lines.append(f"| {variant} | {per_seed} | "
                     f"{100 * statistics.mean(r['val_accuracy'] for r in rs):.2f} | "
                     f"{statistics.mean(r['first_epoch_loss'] for r in rs):.3f} / {statistics.mean(r['last_epoch_loss'] for r in rs):.3f} |")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows += run(seed)
        write(rows)


if __name__ == "__main__":
    main()
