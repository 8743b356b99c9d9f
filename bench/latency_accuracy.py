"""Accuracy at equal measured latency: a MACs budget against a latency budget on a trained CIFAR ResNet-20.

    .venv/bin/python bench/latency_accuracy.py [--batch 1 64] [--threads 1] [--repeats 100] [--methods l1 nap]

The model is bench/oneshot.py's (trained once on the shared CIFAR-10 subset and cached under
bench/.cache/; ``--epochs 20`` is the checkpoint bench/results/oneshot.md was measured on), with
its held-out 10%. Per method, thread count and batch size, on onnxruntime CPU with a fresh
measurement cache (bench/latency.py's ``equal_speed``): the method at ``Budget(macs=0.5)``, its
latency ratio L to the unpruned model measured (interleaved medians of ``--repeats``), then the
method at ``Budget(latency=L)``; for both, the MACs, parameters and measured latency they keep and
the held-out top-1 as pruned and after BatchNorm recalibration (bench/oneshot.py's). Every prune
uses ``round_to="auto"`` (multiples of the measured width under the latency budget): the MACs
budget's model is then one onnxruntime runs at its fast widths too, not a strawman at odd counts.

Batch sizes: ResNet-20 at 32x32 is 41M MACs, well under a millisecond a picture on one thread, so
at batch 1 the runtime's per-op overhead is a large share of the time and a MACs budget buys less
speed than its MACs suggest (the case a latency budget should win); at batch 64 the convolutions'
work dominates. The default runs both: the first is single-picture latency, the second
throughput. nap (the best one-shot method in bench/results/oneshot.md) is not run by default:
its statistics rounds take minutes per prune, and each row prunes twice; and it removes channels
one at a time, not in multiples of the measured width, so its latency-budgeted model lands off the
widths the latency model predicts for. Writes
bench/results/latency_accuracy.md and .json (``--out``: another name, or an absolute path).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import graphprune
import provenance
from graphprune import data
from graphprune.budget.targets import Runtime
from graphprune.export.latency import profile
from latency import CAPACITY_HEADER, capacity_cells, cpu_name, equal_speed
from oneshot import CALIBRATION_BATCHES, RECALIBRATION_BATCHES, SUBSET, recalibrated, trained_resnet20
from oneshot_common import RESULTS, prune_copy, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["l1"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="batch sizes timed (see above)")
    parser.add_argument("--repeats", type=int, default=100, help="interleaved runs whose median is a model's latency")
    parser.add_argument("--macs", type=float, default=0.5, help="the MACs budget whose measured latency the latency budget matches")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of the cached model (bench/oneshot.py's)")
    parser.add_argument("--data", type=Path, default=SUBSET, help="the CIFAR-10 subset .npz (default: ../shared/data's)")
    parser.add_argument("--out", default="latency_accuracy", help="results name under bench/results/ (an absolute path writes elsewhere)")
    args = parser.parse_args()
    import onnxruntime

    torch.set_num_threads(2)  # training and evaluation; onnxruntime's sessions take the runtime's threads
    loaders = data.cifar10_subset(args.data, batch_size=128, val_fraction=0.1, seed=0)
    model = trained_resnet20(loaders, args.epochs)
    example = next(iter(loaders[1]))[0][:1]
    calibration = [batch for _, batch in zip(range(CALIBRATION_BATCHES), loaders[0])]
    base = graphprune.accuracy(model, loaders[1])

    def top1(pruned: torch.nn.Module) -> dict:
        return {"pruned": graphprune.accuracy(pruned, loaders[1]),
                "recalibrated": graphprune.accuracy(recalibrated(pruned, loaders[0]), loaders[1])}

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for threads in args.threads:
            for batch in args.batch:
                runtime = Runtime("onnxruntime", threads=threads, batch=batch, repeats=args.repeats, cache=cache)
                latency = profile(graphprune.analyze(model, example), example, runtime)  # the methods' budgets read it from the cache
                for method in args.methods:
                    record, pruned = equal_speed(model, example, runtime, lambda budget: prune_copy(
                        model, method, budget, example, calibration, F.cross_entropy, round_to="auto")[0], args.macs)
                    row = dict(method=method, threads=threads, batch=batch, width=latency.width, scale=latency.scale,
                               full_ms=1e3 * latency.full_seconds, profiling_s=latency.seconds, capacity=record,
                               top1={k: top1(m) for k, m in pruned.items()})
                    print(row, flush=True)
                    rows.append(row)

    meta = {"commit": provenance.commit(), "command": "python bench/latency_accuracy.py " + " ".join(sys.argv[1:]),
            "base_accuracy": base, "repeats": args.repeats, "macs": args.macs, "epochs": args.epochs,
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "cpu": cpu_name()}
    lines = [
        "# Accuracy at equal measured latency: CIFAR ResNet-20 on onnxruntime CPU", "",
        f"Commit {meta['commit']}. Command: `{meta['command']}`. onnxruntime {meta['onnxruntime']}, torch {meta['torch']}; "
        f"{meta['cpu']}. ResNet-20 trained {args.epochs} epochs on the shared CIFAR-10 subset (bench/oneshot.py's cached "
        f"model), {base:.4f} top-1 on its held-out 10% before pruning. Each row prunes it at `Budget(macs={args.macs})`, "
        f"measures that model's latency ratio L against the unpruned one (median of {args.repeats} interleaved runs, "
        "32x32 inputs at the row's batch size), then prunes it at `Budget(latency=L)`; both `round_to=\"auto\"`, one shot. "
        f"Top-1 on the held-out split as pruned and after BatchNorm recalibration (bench/oneshot.py's: {RECALIBRATION_BATCHES} "
        f"training batches, no gradients); the data-aware methods read {CALIBRATION_BATCHES} training batches. Width: the "
        "channel multiple the latency model measured; unpruned ms: the unpruned model's time at that batch.", "",
        "| method | threads | batch | unpruned ms | width | " + CAPACITY_HEADER
        + " | top-1 as pruned: MACs / latency budget | + BN recalibration: MACs / latency budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        accuracy = [" / ".join(f"{r['top1'][k][stage]:.4f}" for k in r["top1"]) for stage in ("pruned", "recalibrated")]
        lines.append(f"| {r['method']} | {r['threads']} | {r['batch']} | {r['full_ms']:.3f} | {r['width']} | "
                     f"{capacity_cells(r['capacity'])} | {' | '.join(accuracy)} |")
    (RESULTS / args.out).parent.mkdir(parents=True, exist_ok=True)
    write(args.out, lines, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
