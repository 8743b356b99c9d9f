"""Every method under ``torchrun --nproc_per_node=2`` (gloo, CPU): the same plan and state on both ranks,
and, where the method is deterministic, the plan and weights of one process with the same global batch.

The worker (``distributed_worker.py``) runs all methods in one launch, and once more without torchrun
as the reference; each launch costs a few seconds of start-up, so the cases share them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import graphprune
from graphprune import distributed

WORKER = Path(__file__).with_name("distributed_worker.py")
CASES = ["l1", "dsa", "dhp", "lwdna", "nap"]
DETERMINISTIC = ["l1", "dhp", "lwdna", "nap"]  # dsa: BatchNorm statistics per rank differ from the global batch's


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent.parent)}


def _torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, list[dict]]]:
    """{"torchrun": {case: [rank 0, rank 1]}, "single": {case: [rank 0]}}."""
    out = {}
    for name in ("torchrun", "single"):
        folder = tmp_path_factory.mktemp(name)
        if name == "torchrun":
            done = _torchrun(str(folder), *CASES)
        else:
            done = subprocess.run([sys.executable, str(WORKER), str(folder), *DETERMINISTIC], capture_output=True,
                                  text=True, timeout=240, env=_env())
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        out[name] = {case: [torch.load(p, weights_only=False) for p in sorted(folder.glob(f"{case}.rank*.pt"))]
                     for case in CASES}
    return out


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=tol, atol=tol), (k, float((a[k].double() - b[k].double()).abs().max()))


@pytest.mark.parametrize("case", CASES)
def test_ranks_agree(runs, case):
    """Both ranks slim to one plan, computed the same plan themselves, and hold the same method state and weights."""
    rank0, rank1 = runs["torchrun"][case]
    assert rank0["world"] == rank1["world"] == 2
    assert rank0["plan"] == rank1["plan"]
    assert rank0["local_plan"] == rank1["local_plan"] == rank0["plan"]
    _close(rank0["state"], rank1["state"], 0.0)  # bit-identical: synchronized, not merely similar
    _close(rank0["weights"], rank1["weights"], 0.0)


@pytest.mark.parametrize("case", DETERMINISTIC)
def test_matches_one_process(runs, case):
    """Two ranks of half a batch each train like one process on the whole batch."""
    (single,), (rank0, _) = runs["single"][case], runs["torchrun"][case]
    assert single["world"] == 1
    assert rank0["plan"] == single["plan"]
    _close(rank0["state"], single["state"], 1e-4)
    _close(rank0["weights"], single["weights"], 1e-4)


def test_without_a_process_group_the_errors_say_how_to_launch(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(graphprune.DistributedError, match="torchrun"):
        distributed.init()
    with pytest.raises(graphprune.DistributedError, match="torchrun"):
        graphprune.fit(torch.nn.Linear(2, 2), [(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))],
                       torch.nn.functional.cross_entropy, 1, distributed=True, progress=False)


def test_a_missing_rank_fails_with_a_clear_error(tmp_path):
    """Rank 1 never reaches the collective: rank 0 fails after the process group's timeout, nobody hangs."""
    start = time.perf_counter()
    done = _torchrun(str(tmp_path), "hang", timeout=120)
    assert done.returncode != 0
    assert time.perf_counter() - start < 50  # rank 1 sleeps 60 s: torchrun ended it once rank 0 failed
    assert "DistributedError: rank 0 of 2: broadcast of a str failed" in done.stdout + done.stderr
