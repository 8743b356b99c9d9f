"""One program for tests/test_distributed.py, run under ``torchrun --nproc_per_node=2`` (gloo, CPU) or
alone as the single-process reference with the same global batch.

``python tests/distributed_worker.py OUT CASE [CASE ...]``: for each case (a method on a tiny model
and tiny fake data) it writes ``OUT/CASE.rankR.pt`` with the plan every rank slimmed to, the plan
the rank computed itself, the method's state that must agree across ranks, and the final weights.
Case ``hang``: rank 1 never joins a collective; rank 0 must fail with a DistributedError, not wait.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import graphprune
from graphprune import data, distributed

GLOBAL_BATCH = 16


class Net(nn.Module):
    """conv-conv-linear; BatchNorm only where the method reads it (DSA's importance): per-rank batch
    statistics differ from the global batch's, which would make the single-process comparison inexact."""

    def __init__(self, bn: bool = False):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1), nn.Linear(16, 4)
        self.bn1, self.bn2 = (nn.BatchNorm2d(8), nn.BatchNorm2d(16)) if bn else (nn.Identity(), nn.Identity())

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def setup(bn: bool = False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() + 2 * (x[:, 0, 4:].mean((1, 2)) > 0).long()
    torch.manual_seed(0)
    model = Net(bn)
    loader = data.loader(TensorDataset(x, y), GLOBAL_BATCH, shuffle=False)  # sharded under torchrun; fixed order
    return model, loader, x[:2]


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def case_l1():
    model, loader, x = setup()
    result = graphprune.apply(model, "l1", 0.5, x)
    graphprune.fit(result.model, loader, F.cross_entropy, 2, progress=False)
    return result, {}


def case_dsa():
    model, loader, x = setup(bn=True)
    result = graphprune.apply(model, "dsa", 0.5, x, train_data=loader, loss_fn=F.cross_entropy, epochs=3, lr=0.05,
                              warmup=0.1, search_end=0.8, val_batches=1)  # apply holds out 10%, sharded too
    m = result.method
    return result, {"alpha": m.alpha, "z": m.z, "u2": m.u2, "trajectory": torch.tensor(m.trajectory)}


def case_dhp():
    model, loader, x = setup()
    result = graphprune.apply(model, "dhp", 0.5, x, train_data=loader, loss_fn=F.cross_entropy, epochs=3, lr=0.05,
                              warmup=0.1, search_end=0.6)
    m = result.method
    return result, {"trajectory": torch.tensor(m.trajectory), "thresholds": torch.tensor(m.thresholds, dtype=torch.float64),
                    **{f"magnitude{gid}": torch.from_numpy(v) for gid, v in m.result.items()}}


def case_lwdna():
    model, loader, x = setup()
    result = graphprune.apply(model, "lwdna", 1.0, x, train_data=loader, loss_fn=F.cross_entropy, epochs=1, lr=0.05)
    return result, {f"score{gid}": torch.from_numpy(v) for gid, v in result.method.scores.items()}


def case_nap():
    model, loader, x = setup()
    result = graphprune.apply(model, "nap", 0.5, x, train_data=loader, loss_fn=F.cross_entropy, epochs=3, lr=0.05,
                              fisher="empirical", search_end=0.5, verbose=False)
    k = result.method.kfac
    return result, {**{f"A.{n}": f.blocks for n, f in k.a.items()}, **{f"S.{n}": f.blocks for n, f in k.s.items()}}


def hang():
    if distributed.rank() == 1:
        time.sleep(60)  # never reaches the collective; torchrun ends it once rank 0 has failed
    distributed.broadcast_object("plan")


def main(out: Path, cases: list[str]) -> None:
    if "WORLD_SIZE" in os.environ:
        distributed.init(timeout=5 if cases == ["hang"] else 120)
    if cases == ["hang"]:
        return hang()
    for case in cases:
        result, state = globals()[f"case_{case}"]()
        torch.save({"plan": result.plan.to_json(), "local_plan": result.method.plan().to_json(), "state": state,
                    "weights": weights(result.model), "world": distributed.world_size()},
                   out / f"{case}.rank{distributed.rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
