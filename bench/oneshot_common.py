"""What the one-shot benchmarks share (bench/oneshot.py on CIFAR images, bench/oneshot_lm.py on text):
a model trained once and cached, so that every row starts from the same weights; each method
pruning its own copy of it, the data-aware ones from the same calibration batches; the results
written where the other benchmarks' are."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

import graphprune
from graphprune import passes

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"


def cached(model: torch.nn.Module, name: str, train: Callable[[torch.nn.Module], None]) -> torch.nn.Module:
    """``model`` with the weights cached as ``name``, trained in place by ``train`` and saved the first time."""
    path = CACHE / name
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        train(model)
        CACHE.mkdir(exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


def prune_copy(model: torch.nn.Module, method: str, budget: graphprune.Budget, example: Any, calibration: list,
               loss_fn: Callable, **options: Any) -> tuple[graphprune.PruneResult, float]:
    """``method``'s one-shot prune of a copy of ``model`` (seeded, ``round_to=1`` unless ``options``
    give another) and the seconds it took; the methods that read data (taylor, hessian, flap; nap's
    statistics rounds) read ``calibration``."""
    torch.manual_seed(0)
    started = time.perf_counter()
    cls = passes.get(method)
    if cls.reads_data or cls.trains:
        options.update(calib_data=calibration, loss_fn=loss_fn)
    options.setdefault("round_to", 1)
    result = graphprune.apply(copy.deepcopy(model), method, budget, example, **options)
    return result, round(time.perf_counter() - started, 1)


def write(name: str, lines: list[str], payload: dict) -> None:
    """bench/results/``name``.md (``lines``, printed too) and ``name``.json (``payload``)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1))
    print("\n".join(lines))
