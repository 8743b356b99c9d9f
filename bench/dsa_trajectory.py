"""DSA end to end with the validation accuracy and training loss after every epoch, per option set.

Where DSA loses its accuracy shows in the curves, not in the final number: ``graphprune.apply`` is
run as a user runs it (ResNet-20, CIFAR subset, 25% MACs, 30 epochs, lr 0.1, default options plus
the variant's), and each epoch of its search and of the slim model's training is evaluated on the
held-out split. ``apply`` has no per-epoch hook, so the script wraps the ``fit`` it calls.

    .venv/bin/python bench/dsa_trajectory.py                          # hard and sampled weight masks, travel=5
    .venv/bin/python bench/dsa_trajectory.py --variants '{"travel": 2}' --seed 1

Writes ``bench/results/dsa_trajectory/<variant>_seed<N>.json`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import graphprune
import graphprune.api as api
from graphprune import data, models

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "dsa_trajectory"
DEFAULT_VARIANTS = ['{"weight_masks": "hard"}', '{"weight_masks": "sampled"}', '{"travel": 5.0}']


def run(options: dict, seed: int) -> dict:
    train, val = data.cifar10_subset(str(ROOT.parent / "shared" / "data" / "cifar10_train_subset.npz"), seed=seed)
    torch.manual_seed(seed)
    epochs = []
    fit = api.fit

    def evaluated_fit(model, *args, **kwargs):
        history = fit(model, *args, **{**kwargs, "val_data": val})
        epochs.append({"phase": kwargs.get("description"), "val_accuracy": history[-1].metrics["val_accuracy"],
                       "train_loss": history[-1].train_loss})
        return history

    api.fit = evaluated_fit
    try:
        result = graphprune.apply(models.get("resnet20"), "dsa", 0.25, torch.randn(2, 3, 32, 32), train_data=train,
                                  loss_fn=F.cross_entropy, epochs=30, lr=0.1, **options)
    finally:
        api.fit = fit
    return {"options": options, "seed": seed, "epochs": epochs, "val_accuracy": graphprune.accuracy(result.model, val),
            "kept_per_layer": result.plan.kept_per_layer(result.method.gg),
            "sensitivity": result.method.sensitivity().tolist()}


def name_of(options: dict) -> str:
    return "_".join(f"{k}-{v}" for k, v in options.items()) or "default"


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss, acc) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        label = f"{name_of(r['options'])} (seed {r['seed']}): {100 * r['val_accuracy']:.1f}%"
        x = range(1, len(r["epochs"]) + 1)
        loss.plot(x, [e["train_loss"] for e in r["epochs"]], label=label)
        acc.plot(x, [100 * e["val_accuracy"] for e in r["epochs"]], label=label)
    for ax, title in ((loss, "training loss"), (acc, "validation accuracy (%)")):
        ax.axvspan(0.07 * 30, 0.5 * 30, color="grey", alpha=0.15)  # DSA's default search window
        ax.set_xlabel("epoch")
        ax.set_title(title)
    acc.legend(fontsize=7)
    fig.suptitle("DSA, ResNet-20, CIFAR subset, 25% MACs, 30 epochs (shaded: the search)")
    fig.tight_layout()
    fig.savefig(OUT / "curves.png", dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, help="JSON option sets for dsa")
    p.add_argument("--seed", type=int, default=0)
    spec = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for variant in spec.variants:
        options = json.loads(variant)
        result = run(options, spec.seed)
        (OUT / f"{name_of(options)}_seed{spec.seed}.json").write_text(json.dumps(result, indent=2))
    plot([json.loads(f.read_text()) for f in sorted(OUT.glob("*.json"))])


if __name__ == "__main__":
    main()
