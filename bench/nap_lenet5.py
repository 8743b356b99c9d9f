"""NAP fine-grained on LeNet-5 (the paper's appendix D setting; MNIST there, scikit-learn's digits here).

LeNet-5 (Caffe variant, 431k parameters) trains on the 8x8 digits upsampled to 28x28, then NAP prunes
single weights to a sweep of parameter budgets (``granularity="weight"``, default options) and the
pruned model fine-tunes; the table gives each budget's compression ratio (parameters / nonzero
parameters) and validation accuracy, and the headline is the largest compression within 0.5 point of
the unpruned accuracy. The paper reports 122x on MNIST.

    .venv/bin/python bench/nap_lenet5.py        # a few minutes on 2 cores
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import graphprune
from graphprune import data, models

OUT = Path(__file__).resolve().parent / "results" / "nap_lenet5"
BUDGETS = [0.2, 0.1, 0.05, 0.03, 0.02, 0.015, 0.01, 0.0075, 0.005]


def upsampled(loader: DataLoader, shuffle: bool) -> DataLoader:
    x, y = loader.dataset.tensors
    big = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    return DataLoader(TensorDataset(big, y), loader.batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def main() -> None:
    torch.manual_seed(0)
    train, val = data.digits(batch_size=64)
    train, val = upsampled(train, True), upsampled(val, False)
    x = next(iter(val))[0][:2]
    model = models.get("lenet5")
    graphprune.fit(model, train, F.cross_entropy, 20, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                   seed=0, description="LeNet-5 on digits")
    base = graphprune.accuracy(model, val)
    rows = []
    for budget in BUDGETS:
        result = graphprune.apply(copy.deepcopy(model), "nap", graphprune.Budget(params=budget), x, train_data=train,
                                  loss_fn=F.cross_entropy, epochs=10, lr=0.005, granularity="weight")
        rows.append({"budget": budget, "compression": result.method.compression(),
                     "val_accuracy": graphprune.accuracy(result.model, val)})
        print(json.dumps(rows[-1]), flush=True)
    within = [r for r in rows if r["val_accuracy"] >= base - 0.005]
    best = max(within, key=lambda r: r["compression"]) if within else None
    lines = ["# NAP fine-grained, LeNet-5 on digits (upsampled to 28x28)", "",
             f"Unpruned: {100 * base:.2f}% validation accuracy (20 epochs). Each budget: NAP (weights, default options) "
             "over 10 epochs at lr 0.005 from the trained model.", "",
             "| params budget | compression | val accuracy |", "|---|---|---|"]
    lines += [f"| {r['budget']} | {r['compression']:.1f}x | {100 * r['val_accuracy']:.2f}% |" for r in rows]
    lines += ["", "Largest compression within 0.5 point of the unpruned accuracy: "
              + (f"{best['compression']:.1f}x ({100 * best['val_accuracy']:.2f}%)" if best else "none") + "; the paper: 122x on MNIST."]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    (OUT / "results.json").write_text(json.dumps({"unpruned": base, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
