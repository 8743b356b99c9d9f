"""graphprune vs Torch-Pruning (DepGraph), side by side in one run, on the representative subset.

For each model, at its full input size: dependency-analysis time; pruning to 50% MACs with
magnitude importance (achieved ratio; Torch-Pruning takes a channel ratio, so it is bisected to
the MACs target); whether the pruned model exports to ONNX and matches in onnxruntime; onnxruntime
CPU latency of the original and of graphprune's slim model, next to 1 / MACs ratio. graphprune
prunes with round_to=8: arbitrary channel counts (37, 113, ...) run slower than the full model in
onnxruntime's depthwise kernels, multiples of 8 do not.

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/vs_torch_pruning.py
Writes bench/results/vs_torch_pruning.md.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torchvision
from graphprune.tracing.flops import flop_counter

import graphprune

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_torchvision import SUBSET  # noqa: E402
from zoo import input_for  # noqa: E402

TARGET = 0.5


def macs(model, x) -> int:
    with flop_counter() as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def onnx_check(model, x, tmp: str) -> tuple[str, str | None]:
    try:
        rep = graphprune.export_onnx(model, f"{tmp}/m.onnx", x)
        return f"yes ({rep.relative_diff:.0e})", f"{tmp}/m.onnx"
    except Exception as exc:  # noqa: BLE001 - a failed export is a result here
        return f"no: {type(exc).__name__}", None


def ort_latency(path: str, x: torch.Tensor, repeats: int = 20) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def torch_pruning_run(model, x) -> dict:
    """Torch-Pruning's magnitude pruner; on torchvision's ViT its own recipe (examples/torchvision_models):
    channel counts rounded to the head count, so nn.MultiheadAttention keeps its heads with smaller
    head dims, and ``hidden_dim`` set by hand after pruning."""
    import torch_pruning as tp
    from torchvision.models.vision_transformer import VisionTransformer

    start = time.perf_counter()
    tp.DependencyGraph().build_dependency(model, example_inputs=x)
    analysis = time.perf_counter() - start
    full = macs(model, x)
    vit = isinstance(model, VisionTransformer)

    def prune(ratio):
        m = copy.deepcopy(model)
        logits = [i for i in m.modules() if isinstance(i, torch.nn.Linear) and i.out_features == 1000]
        pruner = tp.pruner.MagnitudePruner(
            m, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio, global_pruning=True, ignored_layers=logits,
            round_to=m.encoder.layers[0].num_heads if vit else None,
        )
        pruner.step()
        if vit:
            m.hidden_dim = m.conv_proj.out_channels
        return m, macs(m, x) / full

    lo, hi, best = 0.0, 0.95, None
    for _ in range(8):  # Torch-Pruning prunes a share of channels; bisect it to the MACs target
        mid = (lo + hi) / 2
        m, ratio = prune(mid)
        if ratio <= TARGET:
            hi, best = mid, (m, ratio)
        else:
            lo = mid
    return {"analysis": analysis, "model": best[0] if best else None, "ratio": best[1] if best else float("nan")}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(SUBSET), help="comma-separated torchvision names; name:heads prunes whole heads")
    parser.add_argument("--append", action="store_true", help="add rows to an existing results file")
    parser.add_argument("--no-tp", default="", help="models to run without Torch-Pruning, with the reason after a colon")
    args = parser.parse_args()
    out = Path(__file__).parent / "results" / "vs_torch_pruning.md"
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:] if args.append and out.exists() else []
    for entry in args.models.split(","):
        name, _, attention = entry.partition(":")  # vit_b_16:heads prunes whole heads
        kwargs, x = input_for(name, reduced=False)
        model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            gg = graphprune.analyze(model, x, attention=attention or "head_dims")
            gp_analysis = time.perf_counter() - start
            result = graphprune.apply(model, "l1", TARGET, x, analysis=gg, round_to=8)
            for sub in ("full", "slim", "tp"):
                Path(tmp, sub).mkdir()
            gp_onnx, gp_path = onnx_check(result.model, x, f"{tmp}/slim")
            _, full_path = onnx_check(model, x, f"{tmp}/full")
            full_latency = ort_latency(full_path, x) if full_path else None
            speed = f"{full_latency / ort_latency(gp_path, x):.2f}x" if gp_path and full_latency else ""
            skipped = dict(item.split(":", 1) for item in args.no_tp.split(",") if ":" in item)
            try:
                if name in skipped:
                    raise RuntimeError(skipped[name])
                if attention:
                    tp_cells = "same model as the row above | | "
                else:
                    tpr = torch_pruning_run(model, x)
                    tp_onnx, tp_path = onnx_check(tpr["model"], x, f"{tmp}/tp") if tpr["model"] is not None else ("no model", None)
                    tp_speed = f", ORT speedup {full_latency / ort_latency(tp_path, x):.2f}x" if tp_path and full_latency else ""
                    tp_cells = f"{tpr['analysis']:.2f} | {tpr['ratio']:.3f} | {tp_onnx}{tp_speed}"
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                tp_cells = f"failed: {type(exc).__name__}: {exc} | | "
        row = (
            f"| {entry} | {list(x.shape)[2:]} | {gp_analysis:.2f} | {result.report.macs_ratio:.3f} | {gp_onnx} | "
            f"{speed} | {1 / result.report.macs_ratio:.2f}x | {tp_cells} |"
        )
        print(row, flush=True)
        rows.append(row)
    header = (
        "| model | input | graphprune analysis s | graphprune MACs ratio | graphprune ONNX ok (rel diff) | "
        "ORT speedup slim/full | 1/MACs ratio | Torch-Pruning analysis s | Torch-Pruning MACs ratio | Torch-Pruning ONNX ok (ORT speedup) |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    out.write_text(
        "# graphprune vs Torch-Pruning\n\nGenerated by `bench/vs_torch_pruning.py` (CPU, 2 cores; full input sizes; target 50% "
        "MACs, l1 magnitude importance for both, graphprune with round_to=8; latency: onnxruntime CPU, 2 threads, median of 20).\n\n" + header + "\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    main()
