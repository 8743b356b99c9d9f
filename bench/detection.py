"""Ultralytics YOLO pruned to 50% MACs (l1): MACs, parameters and onnxruntime CPU speed.

Each model is built from the package's yaml (random weights: speed does not depend on them), pruned
with ``graphprune.apply(model, "l1", 0.5, x)`` at 640x640 (YOLO11 with ``output="module"``, which
keeps its attention block's tied groups whole so that the result is a ``DetectionModel``; where
that is refused too, the default, which gives the slim graph), and
both the unpruned and the pruned model are exported to ONNX (checked against PyTorch) and timed
in one process at batch 1, 640x640, 1 and 2 threads: every repeat runs each once, in a fresh
random order (see bench/ort_speed.py), and the medians give the speedup.

    .venv/bin/python bench/detection.py [--models yolov8s.yaml,...] [--repeats 20]
Writes bench/results/detection.md and detection.json. Needs the ``detection`` extra (Ultralytics, AGPL-3.0).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # noqa: E402 - before Ultralytics reads its settings

import onnxruntime as ort
import provenance
import torch
from ort_speed import interleaved_medians, sessions
from ultralytics.nn import tasks

import graphprune

MODELS = ("yolov8n.yaml", "yolov8s.yaml", "yolo11n.yaml", "yolo11s.yaml", "yolov8s-seg.yaml", "yolov8s-pose.yaml",
          "yolo11s-seg.yaml", "yolo11s-pose.yaml")
CLASSES = {"seg": tasks.SegmentationModel, "pose": tasks.PoseModel}
RESULTS = Path(__file__).resolve().parent / "results"


def build(config: str) -> torch.nn.Module:
    torch.manual_seed(0)
    task = next((t for t in CLASSES if f"-{t}." in config), None)
    return CLASSES.get(task, tasks.DetectionModel)(config, verbose=False).eval()


def measure(config: str, repeats: int, tmp: str) -> dict:
    x = torch.randn(1, 3, 640, 640)
    model = build(config)
    start = time.perf_counter()
    try:
        result = graphprune.apply(model, "l1", 0.5, x, **({"output": "module"} if config.startswith("yolo11") else {}))
    except graphprune.ModelRebuildError:  # its class cannot take the plan: the slim graph, as apply gives by default
        result = graphprune.apply(build(config), "l1", 0.5, x)
    seconds = time.perf_counter() - start
    r = result.report
    kind = type(result.model).__name__
    row = {"model": config.removesuffix(".yaml"), "class": "GraphModule" if "GraphModule" in kind else kind, "prune_s": seconds,
           "macs_before": r.macs_before, "macs_after": r.macs_after, "params_before": r.params_before,
           "params_after": r.params_after}
    paths = {}
    for variant, m in (("unpruned", build(config)), ("pruned", result.model)):
        paths[variant] = f"{tmp}/{row['model']}_{variant}.onnx"
        graphprune.export_onnx(m, paths[variant], x)
    for threads in (1, 2):
        medians = interleaved_medians(sessions(paths, threads), x.numpy(), repeats, seed=threads)
        row[f"ms_{threads}t"] = {variant: 1e3 * s for variant, s in medians.items()}
        row[f"speedup_{threads}t"] = medians["unpruned"] / medians["pruned"]
    return row


def table(rows: list[dict], commit: str, repeats: int, command: str) -> str:
    lines = [
        f"# Ultralytics YOLO at 50% MACs (l1), commit {commit}",
        "",
        f"`{command}`: models built from Ultralytics' yaml files (random weights), pruned at 640x640 and exported to "
        f"ONNX (checked against PyTorch); onnxruntime {ort.__version__} CPU provider, batch 1, 640x640, median of "
        f"{repeats} interleaved runs per model; speedup = unpruned median / pruned median, in the same process and "
        "thread count. MACs as PyTorch's FlopCounterMode counts one forward at 640x640 (eval mode: the decoding "
        "included). `class`: the pruned model's, the user's class where graphprune could carry the plan over (YOLO11 "
        "with `output=\"module\"`, which keeps the groups its attention block ties whole), else the slim graph "
        "(`GraphModule`, where `output=\"module\"` was refused too).",
        "",
        "| model | class | GMACs before | after | params before (M) | after | 1 thread: ms unpruned | pruned | speedup "
        "| 2 threads: ms unpruned | pruned | speedup |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in rows:
        lines.append(
            f"| {w['model']} | {w['class']} | {w['macs_before'] / 1e9:.2f} | {w['macs_after'] / 1e9:.2f} "
            f"| {w['params_before'] / 1e6:.2f} | {w['params_after'] / 1e6:.2f} "
            f"| {w['ms_1t']['unpruned']:.1f} | {w['ms_1t']['pruned']:.1f} | {w['speedup_1t']:.2f}x "
            f"| {w['ms_2t']['unpruned']:.1f} | {w['ms_2t']['pruned']:.1f} | {w['speedup_2t']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    commit = provenance.commit()
    command = "python bench/detection.py" + ("" if args.models == ",".join(MODELS) else f" --models {args.models}") \
        + ("" if args.repeats == 20 else f" --repeats {args.repeats}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.models.split(","):
            rows.append(measure(config, args.repeats, tmp))
            print(table(rows, commit, args.repeats, command).splitlines()[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "detection.json").write_text(json.dumps({"commit": commit, "repeats": args.repeats, "rows": rows}, indent=2))
    (RESULTS / "detection.md").write_text(table(rows, commit, args.repeats, command))
    print(table(rows, commit, args.repeats, command))


if __name__ == "__main__":
    main()
