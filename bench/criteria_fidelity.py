"""Which criterion predicts what removing a channel costs? The trained ResNet-20 of bench/oneshot.py.

    .venv/bin/python bench/criteria_fidelity.py [--epochs 20]

For every channel of every prunable group, the channel is zeroed in every member of its group
(what pruning it does, ``exactness.zero_pruned``) and the loss on the calibration batches that
taylor, hessian and flap read (8 batches of 128 training images, eval mode) is measured again: the
channel's true one-channel damage. Each criterion's scores are then compared with it by Spearman's
rank correlation, within each group (how well it picks the channels a group keeps) and pooled
over all channels after dividing each group's scores by their mean (the list the allocation cuts:
how well it compares channels of different groups). The damage of removing many channels at once
is not the sum of these (bench/oneshot.py measures that); a criterion that ranks single channels
badly cannot rank them well together either. Writes bench/results/criteria_fidelity.md and .json.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import track

import graphprune
import provenance
from graphprune import data
from graphprune.slimming.exactness import zero_pruned
from graphprune.passes.importance import normalized
from oneshot import CALIBRATION_BATCHES, SUBSET, trained_resnet20
from oneshot_common import write

CRITERIA = ("l1", "l2", "taylor", "hessian", "flap")


def mean_loss(model: torch.nn.Module, batches: list) -> float:
    with torch.no_grad():
        return float(sum(F.cross_entropy(model(x), y) for x, y in batches) / len(batches))


def ranks(values: np.ndarray) -> np.ndarray:
    out = np.empty(len(values))
    out[np.argsort(values, kind="stable")] = np.arange(len(values))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of bench/oneshot.py's cached model")
    parser.add_argument("--data", default=str(SUBSET), help="the CIFAR-10 subset .npz (default: ../shared/data's)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaders = data.cifar10_subset(args.data, batch_size=128, val_fraction=0.1, seed=0)
    model = trained_resnet20(loaders, args.epochs)
    calibration = [batch for _, batch in zip(range(CALIBRATION_BATCHES), loaders[0])]
    example = calibration[0][0][:2]
    gg = graphprune.analyze(model, example)
    scores = {}
    for criterion in CRITERIA:
        torch.manual_seed(0)
        session = graphprune.prepare(copy.deepcopy(model), criterion, 0.5, example, analysis=gg, calib_data=calibration,
                                     loss_fn=F.cross_entropy) if criterion not in ("l1", "l2") else \
            graphprune.prepare(copy.deepcopy(model), criterion, 0.5, example, analysis=gg)
        scores[criterion] = session.method.scores()
    base = mean_loss(model, calibration)
    original = copy.deepcopy(model.state_dict())
    damage: dict[int, np.ndarray] = {}
    channels = [(g, c) for g in gg.prunable_groups for c in range(g.size)]
    for g, c in track(channels, description="zeroing each channel"):
        zero_pruned(model, gg, graphprune.Plan.from_indices(gg, {g.id: [k for k in range(g.size) if k != c]}))
        damage.setdefault(g.id, np.zeros(g.size))[c] = mean_loss(model, calibration) - base
        model.load_state_dict(original)
    groups = sorted(damage)
    true_pooled = np.concatenate([damage[gid] for gid in groups])
    rows = []
    for criterion in CRITERIA:
        within = [spearman(scores[criterion][gid], damage[gid]) for gid in groups if np.ptp(scores[criterion][gid]) > 0]
        norm = normalized(scores[criterion])
        pooled = spearman(np.concatenate([norm[gid] for gid in groups]), true_pooled)
        raw = spearman(np.concatenate([scores[criterion][gid] for gid in groups]), true_pooled)
        rows.append(dict(criterion=criterion, within_mean=round(float(np.mean(within)), 3), within_min=round(float(np.min(within)), 3),
                         pooled_normalized=round(pooled, 3), pooled_raw=round(raw, 3)))
        print(rows[-1], flush=True)
    commit = provenance.commit()
    lines = [f"# Which criterion ranks channels by what removing them costs (commit {commit})", "",
             f"`.venv/bin/python bench/criteria_fidelity.py --epochs {args.epochs}`: bench/oneshot.py's trained ResNet-20; each of "
             f"its {len(channels)} prunable channels ({len(groups)} groups) zeroed alone in every member of its group, the loss on the "
             f"{CALIBRATION_BATCHES} calibration batches the data-aware criteria read measured again (base loss {base:.4f}; the "
             f"median channel adds {np.median(true_pooled):.4f}, the largest {true_pooled.max():.4f}). Spearman's rank correlation of "
             "each criterion's scores with that damage: within each group (mean and worst group), and pooled over all channels "
             "with each group's scores divided by their mean, as the allocation ranks them, and without that division.", "",
             "| criterion | within groups: mean | worst group | pooled, normalized per group (allocated) | pooled, raw |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['criterion']} | {r['within_mean']:.3f} | {r['within_min']:.3f} | {r['pooled_normalized']:.3f} | {r['pooled_raw']:.3f} |"
              for r in rows]
    write("criteria_fidelity", lines, {"commit": commit, "base_loss": base, "rows": rows,
                                       "damage": {str(gid): damage[gid].tolist() for gid in groups}})


if __name__ == "__main__":
    main()
