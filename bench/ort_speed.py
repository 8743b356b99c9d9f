"""onnxruntime CPU speed of models pruned to 50% MACs: the default channel rounding against none and 8.

Odd channel counts (39, 43, 319) run slowly in onnxruntime's kernels, so ``round_to`` decides
whether fewer MACs means less time. For each model, l1 at 50% MACs with ``round_to=1``, the
default (``"auto"``) and ``round_to=8``; each variant exported to ONNX (checked against PyTorch)
and timed in one process beside the unpruned model, at 1 and 2 threads, batch 1: every repeat
runs each variant once, in a fresh random order (interleaved, so drift and other load fall on
all of them alike), and the medians give each variant's speedup over the unpruned model.

    .venv/bin/python bench/ort_speed.py [--models resnet50,...] [--repeats 30]
Writes bench/results/ort_speed.md and ort_speed.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from rich.progress import track

import graphprune

MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "vit_b_16")
VARIANTS = {"round_to=1": 1, "default": "auto", "round_to=8": 8}
RESULTS = Path(__file__).resolve().parent / "results"


def sessions(paths: dict[str, str], threads: int) -> dict[str, ort.InferenceSession]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return {name: ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]) for name, path in paths.items()}


def interleaved_medians(runs: dict[str, ort.InferenceSession], x: np.ndarray, repeats: int, seed: int) -> dict[str, float]:
    """Median seconds per variant; each repeat runs every variant once in a new random order."""
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in runs.items()}
    for name, s in runs.items():  # warm-up: allocations and kernel selection
        for _ in range(3):
            s.run(None, feeds[name])
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for _ in range(repeats):
        for k in rng.permutation(len(names)):
            name = names[k]
            start = time.perf_counter()
            runs[name].run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def measure(model_name: str, repeats: int, tmp: str) -> dict:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    paths = {}
    row: dict = {"model": model_name, "variants": {}}
    for variant, round_to in {"unpruned": None, **VARIANTS}.items():
        model = getattr(torchvision.models, model_name)(weights=None).eval()
        if round_to is None:
            slim, macs = model, 1.0
        else:
            result = graphprune.apply(model, "l1", 0.5, x, round_to=round_to)
            slim, macs = result.model, result.report.macs_ratio
        path = f"{tmp}/{model_name}_{variant}.onnx"
        graphprune.export_onnx(slim, path, x)
        paths[variant] = path
        row["variants"][variant] = {"macs_ratio": macs}
    for threads in (1, 2):
        medians = interleaved_medians(sessions(paths, threads), x.numpy(), repeats, seed=threads)
        for variant, seconds in medians.items():
            row["variants"][variant][f"ms_{threads}t"] = 1e3 * seconds
            row["variants"][variant][f"speedup_{threads}t"] = medians["unpruned"] / seconds
    return row


def table(rows: list[dict], commit: str, repeats: int) -> str:
    lines = [
        f"# onnxruntime CPU speed at 50% MACs (l1), commit {commit}",
        "",
        f"`bench/ort_speed.py`: batch 1, 224x224, onnxruntime {ort.__version__} CPU provider, median of {repeats} "
        "interleaved runs per variant; speedup = unpruned median / variant median, in the same process and thread count. "
        "`default` is graphprune's default rounding (`round_to=\"auto\"`).",
        "",
        "| model | variant | MACs ratio | 1 thread: ms | speedup | 2 threads: ms | speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for variant, v in row["variants"].items():
            lines.append(f"| {row['model']} | {variant} | {v['macs_ratio']:.3f} | {v['ms_1t']:.1f} | {v['speedup_1t']:.2f}x "
                         f"| {v['ms_2t']:.1f} | {v['speedup_2t']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in track(args.models.split(","), description="pruning, exporting and timing"):
            rows.append(measure(name, args.repeats, tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ort_speed.json").write_text(json.dumps({"commit": commit, "repeats": args.repeats, "rows": rows}, indent=2))
    (RESULTS / "ort_speed.md").write_text(table(rows, commit, args.repeats))
    print(table(rows, commit, args.repeats))


if __name__ == "__main__":
    main()
