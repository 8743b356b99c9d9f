"""Latency budgets on onnxruntime CPU: does a 0.5-latency budget give a model that runs in half the time?

    .venv/bin/python bench/latency.py [--models resnet50,...] [--threads 1 2] [--repeats 50] [--plans 20]

For each model (torchvision's, weights=None, and timm's vit_small_patch16_224, pretrained=False;
batch 1, 224x224) and thread count, with a fresh measurement cache:
- profiling: the latency model is measured and fitted (``graphprune.export.latency.profile``); its time;
- l1 at ``Budget(latency=0.5)``: the pruned model is timed beside the unpruned one (runs
  interleaved, median of ``--repeats``): measured latency ratio, and its error against the ratio
  the model predicted;
- the latency model on held-out points: per op configuration, counts drawn at random (any count)
  and at multiples of the measured width, timed alone, against the fitted bilinear model and
  against a step model (the fit read at the next multiple of the width); per model, ``--plans``
  random plans (each group keeps a random share in [0.3, 1] at the measured width), slimmed and
  timed whole, against the prediction;
- capacity at equal speed: l1 at ``Budget(macs=0.5)``, its measured latency ratio L, then l1 at
  ``Budget(latency=L)``: the MACs and parameters each keeps at the same measured speed (both
  pruned models timed again together with the unpruned one);
- noise: the unpruned model timed against a second session of itself, ``--noise`` times: the
  spread of a measured ratio that should be 1.
Load averages (``os.getloadavg``) are recorded before and after each model. Writes
bench/results/latency.md and latency.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision

import graphprune
import provenance
from graphprune import Budget
from graphprune.budget.targets import Runtime
from graphprune.errors import BudgetError
from graphprune.export.latency import OP_REPEATS, batched, measure, profile

MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "vit_small_patch16_224")
RESULTS = Path(__file__).resolve().parent / "results"


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name.startswith("vit"):
        import timm

        return timm.create_model(name, pretrained=False).eval()
    return torchvision.models.get_model(name, weights=None).eval()


def held_out_ops(latency, rng: np.random.Generator, runtime: Runtime) -> dict:
    """Relative errors of the op models on counts not in the grid: random counts (bilinear and step
    models) and random multiples of the width (bilinear, the allocation's domain)."""
    configs = {c.key: c for c in latency.cases if c.resizable}
    errors = {"bilinear, any count": [], "step, any count": [], "bilinear, multiples of the width": []}
    w = latency.width
    for key, case in configs.items():
        fit = latency.fits[key]
        anywhere = tuple(int(rng.integers(max(1, n // 4), n + 1)) for n in case.sizes)
        multiple = tuple(min(n, w * int(rng.integers(max(1, n // (4 * w)), n // w + 1))) if n >= w else n for n in case.sizes)
        built = [case.build(k) for k in (anywhere, multiple)]
        got = measure([m for m, _ in built], [x for _, x in built], runtime, OP_REPEATS)
        stepped = tuple(min(n, -(-k // w) * w) for k, n in zip(anywhere, case.sizes))
        for name, counts, seconds in (("bilinear, any count", anywhere, got[0]), ("step, any count", stepped, got[0]),
                                      ("bilinear, multiples of the width", multiple, got[1])):
            errors[name].append(float(fit.predict(case.fractions(counts))) / seconds - 1)
    return {name: {"median_abs": float(np.median(np.abs(e))), "mean": float(np.mean(e)), "n": len(e)} for name, e in errors.items()}


def held_out_plans(gg, latency, x, runtime: Runtime, plans: int, rng: np.random.Generator) -> dict:
    """Predicted against measured latency of random plans at the measured width (slim models timed
    together with the unpruned one, interleaved)."""
    w = latency.width
    models, predicted = [gg.traced.model], [latency.full_seconds]
    for _ in range(plans):
        counts = {}
        for g in gg.prunable_groups:
            want = int(np.ceil(rng.uniform(0.3, 1.0) * g.size))
            counts[g.id] = min(g.size, -(-want // w) * w)
        plan = graphprune.Plan.from_indices(gg, {gid: list(range(n)) for gid, n in counts.items()})
        models.append(graphprune.slim(gg, plan))
        predicted.append(gg.cost.exact("latency", counts) / 1e9)
    measured = measure(models, [x] * len(models), runtime, max(20, runtime.repeats // 2))
    ratios_measured = np.array(measured[1:]) / measured[0]
    ratios_predicted = np.array(predicted[1:]) / predicted[0]
    # the ops as timed alone (no scale): full + (ops(a) - ops(1))
    ratios_alone = 1 + (ratios_predicted - 1) / latency.scale if latency.scale > 0 else np.ones(plans)
    out = {"n": plans, "measured_ratios": ratios_measured.tolist(), "predicted_ratios": ratios_predicted.tolist()}
    for name, ratios in (("scaled", ratios_predicted), ("alone", ratios_alone)):
        errors = ratios - ratios_measured
        out[name] = {"mean_abs": float(np.mean(np.abs(errors))), "max_abs": float(np.max(np.abs(errors))), "mean": float(np.mean(errors))}
    return out


def noise(model: torch.nn.Module, x: torch.Tensor, runtime: Runtime, times: int) -> dict:
    """The ratio of the model to a second copy of itself, measured as a pruned model is (interleaved medians)."""
    twin = copy.deepcopy(model)
    ratios = []
    for _ in range(times):
        a, b = measure([model, twin], [x, x], runtime, runtime.repeats)
        ratios.append(b / a)
    r = np.array(ratios)
    return {"ratios": r.tolist(), "std": float(r.std(ddof=1)) if len(r) > 1 else 0.0, "max_abs_dev": float(np.abs(r - 1).max())}


def equal_speed(model: torch.nn.Module, x: torch.Tensor, runtime: Runtime, prune: Callable[[Budget], graphprune.PruneResult],
                macs: float = 0.5) -> tuple[dict, dict[str, torch.nn.Module]]:
    """Capacity at equal speed: ``prune`` to ``macs`` of the MACs, time that model against ``model``
    (interleaved medians) for its latency ratio L, then ``prune`` to ``Budget(latency=L)``. What
    each keeps (MACs, params, measured latency ratio), and both pruned models timed again in one
    interleaved run with the unpruned one ("together"): the two were measured apart, and the
    comparison is only as good as their latencies are equal. A latency budget the latency model
    cannot meet is recorded as its error, not raised. Returns the record and the pruned models."""
    inputs = batched(x, runtime)
    by_macs = prune(Budget(macs=macs))
    before, after = measure([model, by_macs.model], [inputs, inputs], runtime, runtime.repeats)
    target = after / before
    out = {"macs_budget": macs, "target": target, "macs": kept(by_macs.report, target)}
    pruned = {"macs": by_macs.model}
    try:
        by_latency = prune(Budget(latency=min(target, 1.0), runtime=runtime))  # a ratio over 1 (slower than unpruned) is refused
    except BudgetError as exc:
        out["latency"] = {"error": str(exc)}
        return out, pruned
    pruned["latency"] = by_latency.model
    lat = by_latency.report.latency
    out["latency"] = {**kept(by_latency.report, lat.measured_ratio), "predicted_ratio": lat.predicted_ratio}
    together = measure([model, *pruned.values()], [inputs] * 3, runtime, runtime.repeats)
    out["together"] = {k: t / together[0] for k, t in zip(pruned, together[1:])}
    return out, pruned


def kept(report: graphprune.PruneReport, latency_ratio: float) -> dict:
    return {"macs_ratio": report.macs_ratio, "params_ratio": report.params_ratio, "latency_ratio": latency_ratio}


CAPACITY_HEADER = ("MACs budget: MACs / params / latency | latency budget L: MACs / params / latency predicted / measured "
                   "| timed together: MACs / latency budget | MACs kept, latency - MACs budget | params kept, latency - MACs budget")


def capacity_cells(c: dict) -> str:
    """The CAPACITY_HEADER columns of one :func:`equal_speed` record (differences in points of the full model, and as factors)."""
    m, lat = c["macs"], c["latency"]
    cells = [f"{m['macs_ratio']:.3f} / {m['params_ratio']:.3f} / {m['latency_ratio']:.3f}"]
    if "error" in lat:
        return " | ".join(cells + [f"L={c['target']:.3f}: not met ({lat['error'].splitlines()[0]})", "", "", ""])
    t = c["together"]
    cells += [f"{lat['macs_ratio']:.3f} / {lat['params_ratio']:.3f} / {lat['predicted_ratio']:.3f} / {lat['latency_ratio']:.3f}",
              f"{t['macs']:.3f} / {t['latency']:.3f}"]
    cells += [f"{lat[k] - m[k]:+.3f} (x{lat[k] / m[k]:.2f})" for k in ("macs_ratio", "params_ratio")]
    return " | ".join(cells)


def run(name: str, threads: int, args: argparse.Namespace) -> dict:
    x = torch.randn(1, 3, 224, 224)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as cache:
        runtime = Runtime("onnxruntime", threads=threads, repeats=args.repeats, cache=cache)
        model = build(name)
        gg = graphprune.analyze(model, x)
        started = time.perf_counter()
        latency = profile(gg, x, runtime)
        profiling = time.perf_counter() - started
        result = graphprune.apply(model, "l1", Budget(latency=args.target, runtime=runtime), x, analysis=gg)  # the cache: no new profile
        report = result.report
        rng = np.random.default_rng(0)
        ops = held_out_ops(latency, rng, runtime)
        plans = held_out_plans(gg, latency, x, runtime, args.plans, rng)
        spread = noise(model, x, runtime, args.noise)
        started = time.perf_counter()
        capacity, _ = equal_speed(model, x, runtime, lambda budget: graphprune.apply(model, "l1", budget, x, analysis=gg), args.macs)
        capacity["seconds"] = time.perf_counter() - started
    lat = report.latency
    row = {
        "model": name, "threads": threads, "profiling_s": profiling, "configurations": latency.configurations,
        "points": latency.measured, "width": latency.width, "scale": latency.scale, "slowdown": {str(k): v for k, v in latency.slowdown.items()},
        "full_ms": 1e3 * latency.full_seconds, "ops_ms": 1e3 * latency.ops_seconds, "remainder_ms": 1e3 * latency.remainder_seconds,
        "macs_ratio": report.macs_ratio, "params_ratio": report.params_ratio, "predicted_ratio": lat.predicted_ratio,
        "measured_ratio": lat.measured_ratio, "measured_before_ms": lat.measured_before_ms, "measured_after_ms": lat.measured_after_ms,
        "attempts": lat.attempts,
        "held_out_ops": ops, "held_out_plans": plans, "noise": spread, "capacity": capacity,
        "load_before": load_before, "load_after": os.getloadavg(),
    }
    print(json.dumps({k: v for k, v in row.items() if k not in ("held_out_plans", "noise", "capacity")}, default=float), flush=True)
    return row


TOLERANCE = Runtime().tolerance


def table(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Latency budgets on onnxruntime CPU",
        "",
        f"Commit {meta['commit']}. Command: `{meta['command']}`. onnxruntime {meta['onnxruntime']}, torch {meta['torch']}; "
        f"{meta['cpu']}. Batch 1, 224x224, l1 at `Budget(latency={meta['target']})`; measured ratios are medians of "
        f"{meta['repeats']} interleaved runs (pruned and unpruned alternating in random order).",
        "",
        "| model | threads | profiling s | configs | width | scale | MACs ratio | predicted | measured | error | plans: allocated to → measured "
        "| noise: sd / max dev | miss: within tolerance or noise? | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        attempts = ", ".join(f"{a:.3f} → {m:.3f}" for a, m in r["attempts"]) or "not re-planned"
        miss = abs(r["measured_ratio"] - meta["target"])
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['profiling_s']:.0f} | {r['configurations']} | {r['width']} | {r['scale']:.2f} | {r['macs_ratio']:.3f} "
            f"| {r['predicted_ratio']:.3f} | {r['measured_ratio']:.3f} | {r['measured_ratio'] - r['predicted_ratio']:+.3f} | {attempts} "
            f"| {r['noise']['std']:.3f} / {r['noise']['max_abs_dev']:.3f} | {miss:.3f}: {'yes' if miss <= max(TOLERANCE, r['noise']['max_abs_dev']) else 'no'} "
            f"| {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |")
    lines += ["", "Plans: each plan the method allocated (to the target, then to targets corrected by the measurements) and its "
              "ratio measured against the unpruned model while planning; the kept one is then timed again for 'measured'. "
              f"Noise: the unpruned model timed against a copy of itself, {meta['noise']} times, as a pruned model is: the "
              "standard deviation of that ratio and its largest distance from 1. Miss: |measured - target|, within where it is no "
              f"larger than Runtime's tolerance ({TOLERANCE:g}, the re-plans aim within it) or that largest distance."]
    lines += ["", "Held-out accuracy of the latency model: ops (median |relative error| of one random count per op configuration) and "
              f"whole models ({meta['plans']} random plans at the measured width: predicted - measured latency ratio, with the "
              "ops' sum scaled to the model at half width, and as the ops are timed alone).", "",
              "| model | threads | ops: bilinear, any count | ops: step, any count | ops: bilinear, width multiples "
              "| plans, scaled: mean abs / max / mean | plans, ops alone: mean abs / max / mean |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        o, p = r["held_out_ops"], r["held_out_plans"]
        lines.append(f"| {r['model']} | {r['threads']} | {o['bilinear, any count']['median_abs']:.3f} | {o['step, any count']['median_abs']:.3f} "
                     f"| {o['bilinear, multiples of the width']['median_abs']:.3f} | "
                     + " | ".join(f"{p[k]['mean_abs']:.3f} / {p[k]['max_abs']:.3f} / {p[k]['mean']:+.3f}" for k in ("scaled", "alone")) + " |")
    lines += ["", "Probed widths (time of ops w channels narrower than full, over the fit's prediction; the width is the smallest "
              "from which every wider probe is within 5%):", "", "| model | threads | " + " | ".join(f"w={w}" for w in (1, 2, 4, 8)) + " |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['threads']} | " + " | ".join(f"{r['slowdown'].get(str(w), float('nan')):.2f}" for w in (1, 2, 4, 8)) + " |")
    lines += ["", "## Capacity at equal speed", "", f"l1 at `Budget(macs={meta['macs']})`, its latency ratio L measured against the "
              "unpruned model, then l1 at `Budget(latency=L)`: the MACs and parameters each keeps (ratios of the unpruned model's) "
              "at the same measured speed. Both pruned models are also timed together with the unpruned one, interleaved.", "",
              "| model | threads | " + CAPACITY_HEADER + " |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['threads']} | {capacity_cells(r['capacity'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    from graphprune.export.latency import environment

    return environment(Runtime())["device"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--noise", type=int, default=5)
    parser.add_argument("--macs", type=float, default=0.5, help="the MACs budget whose measured latency the capacity table matches")
    parser.add_argument("--out", default="latency", help="results name under bench/results/ (an absolute path writes elsewhere)")
    args = parser.parse_args()
    import onnxruntime

    meta = {"commit": provenance.commit(), "command": "python bench/latency.py " + " ".join(sys.argv[1:]), "target": args.target,
            "macs": args.macs, "repeats": args.repeats, "plans": args.plans, "noise": args.noise, "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "cpu": cpu_name()}
    rows = []
    (RESULTS / args.out).parent.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        for threads in args.threads:
            rows.append(run(name, threads, args))
            (RESULTS / f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))
            (RESULTS / f"{args.out}.md").write_text(table(rows, meta))  # as it goes: a long run keeps what it measured
    print(table(rows, meta))


if __name__ == "__main__":
    main()
