"""CIFAR benchmark harness: one command, one spec (model, methods, budget, epochs, seeds).

Rows, all with the same total epochs:
  unpruned          train from scratch;
  scratch:METHOD    a data-free METHOD's plan on the untrained model (scratch:uniform = uniform
                    width scaling to the budget), or the architecture a training METHOD found in
                    its own row (same seed), re-initialized; the slim model trains from scratch
                    for all epochs (this separates allocation quality from inherited weights);
  METHOD            a data-free METHOD (l1, ...): train half the epochs, prune to the budget,
                    fine-tune the rest; a training METHOD (dsa, dhp): ``graphprune.apply`` with
                    the method's default options for all epochs (search, then the slim model);
                    a METHOD that decides from a batch at initialization (lwdna: widen, shrink in
                    one shot): its architecture trains from scratch for all epochs, as the
                    scratch rows (its budget is relative to the original model, as theirs);
                    a training METHOD that starts from a trained model (nap): as l1, train half
                    the epochs, then ``graphprune.apply`` for the rest at the fine-tuning rate.
Validation accuracy on a held-out split (mean ± std over seeds), achieved MACs/params ratios and
seconds per epoch go to JSON, a markdown table and PNG plots (accuracy vs MACs ratio; kept channels
per layer; each training method's own search report, e.g. DSA's Fig. 6-style plot) under --out.

    .venv/bin/python bench/cifar.py                       # default spec: 30 epochs per row, ~5 min a row on 2 cores
    .venv/bin/python bench/cifar.py --full --data-root DIR  # full CIFAR-10, 160 epochs: a GPU run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import graphprune
from graphprune import data, models, passes

ROOT = Path(__file__).resolve().parents[1]
BASELINE_ROW = "scratch:uniform"  # what every row is compared with, seed by seed



def train(model, loaders, epochs: int, lr: float, seed: int, device: str, label: str):
    train_data, val_data = loaders
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    return graphprune.fit(model, train_data, F.cross_entropy, epochs, optimizer=opt, scheduler=sched, device=device,
                          val_data=val_data, seed=seed, amp=True, description=label)


def run_row(row: str, spec: argparse.Namespace, seed: int, loaders, example: torch.Tensor, done: list[dict]) -> dict:
    torch.manual_seed(seed)
    model = models.get(spec.model)
    full = graphprune.analyze(model, example)
    plan, history, extra = None, [], {}
    macs = params = kept = None
    if row == "unpruned":
        history = train(model, loaders, spec.epochs, spec.lr, seed, spec.device, f"{row} seed {seed}")
        final = model
    elif row.startswith("scratch:"):
        method = row.split(":", 1)[1]
        if passes.get(method).trains:  # the architecture the method found in its own row, re-initialized
            found = next((r for r in done if r["row"] == method and r["seed"] == seed), None)
            if found is None:
                raise SystemExit(f"{row} needs the {method} row of seed {seed} first (list {method} before {row} in --rows)")
            plan = graphprune.Plan.from_json(found["plan"])
            final = graphprune.apply_plan(model, plan, example)
        else:
            result = graphprune.apply(model, method, spec.budget, example, analysis=full)
            final, plan = result.model, result.plan
        history = train(final, loaders, spec.epochs, spec.lr, seed, spec.device, f"{row} seed {seed}")
    elif passes.get(row).reads_data:  # decides from a batch, then its model trains from scratch like the scratch rows (lwdna)
        result = graphprune.apply(model, row, spec.budget, example, train_data=loaders[0], loss_fn=F.cross_entropy, seed=seed)
        final, plan = result.model, result.plan
        history = train(final, loaders, spec.epochs, spec.lr, seed, spec.device, f"{row} seed {seed}")
        result.method.report_png(str(Path(spec.out) / spec.model / f"{row}_widths_seed{seed}.png"))
        macs, params = result.report.macs_after, result.report.params_after  # its plan is on the widened model
        kept = {layer: pct / 100 for layer, pct in result.method.width_percentages(plan).items()}
    elif passes.get(row).trains and passes.get(row).starts_trained:  # nap: as l1, train half, then the method
        pre = spec.epochs // 2
        history = train(model, loaders, pre, spec.lr, seed, spec.device, f"{row} pretrain seed {seed}")
        start = time.perf_counter()
        result = graphprune.apply(model.cpu(), row, spec.budget, example, train_data=loaders[0], loss_fn=F.cross_entropy,
                                  epochs=spec.epochs - pre, lr=spec.lr / 10, analysis=graphprune.analyze(model.cpu(), example))
        final, plan = result.model, result.plan
        history.append(graphprune.EpochRecord(0, 0.0, (time.perf_counter() - start) / (spec.epochs - pre), {}))
    elif passes.get(row).trains:
        start = time.perf_counter()
        result = graphprune.apply(model, row, spec.budget, example, train_data=loaders[0], loss_fn=F.cross_entropy,
                                  epochs=spec.epochs, lr=spec.lr, analysis=full)
        final, plan = result.model, result.plan
        history = [graphprune.EpochRecord(0, 0.0, (time.perf_counter() - start) / spec.epochs, {})]
        extra = {"budget_trajectory": result.method.trajectory}
        result.method.report_png(str(Path(spec.out) / spec.model / f"{row}_search_seed{seed}.png"))
    else:
        pre = spec.epochs // 2
        history = train(model, loaders, pre, spec.lr, seed, spec.device, f"{row} pretrain seed {seed}")
        result = graphprune.apply(model.cpu().eval(), row, spec.budget, example, analysis=graphprune.analyze(model.cpu(), example))
        final, plan = result.model, result.plan
        history += train(final, loaders, spec.epochs - pre, spec.lr / 10, seed, spec.device, f"{row} fine-tune seed {seed}")
    final = final.cpu()
    if macs is None:  # the plan is on the model itself
        macs, params = full.cost.macs(plan.counts() if plan else None), full.cost.params(plan.counts() if plan else None)
        kept = plan.kept_per_layer(full) if plan is not None else {}  # network order
    return {
        "row": row, "seed": seed,
        "val_accuracy": graphprune.accuracy(final, loaders[1]),
        "macs_ratio": macs / full.cost.macs(), "params_ratio": params / full.cost.params(),
        "seconds_per_epoch": statistics.mean(h.seconds for h in history),
        "kept_per_layer": kept,
        "plan": plan.to_json() if plan is not None else None,
        **extra,
    }


def summarize(results: list[dict], spec: argparse.Namespace) -> str:
    lines = [
        f"Model {spec.model}, MACs budget {spec.budget}, {spec.epochs} epochs per row, seeds {spec.seeds}; "
        f"data: {spec.data_root or spec.data}; device: {spec.device_name}.",
        "",
        f"| row | val accuracy (mean ± std) | vs {BASELINE_ROW}, paired by seed | seeds | MACs ratio | params ratio | s / epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    baseline = {r["seed"]: r["val_accuracy"] for r in results if r["row"] == BASELINE_ROW}
    for row in spec.rows:
        rs = [r for r in results if r["row"] == row]
        accs = [r["val_accuracy"] for r in rs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(
            f"| {row} | {100 * statistics.mean(accs):.2f} ± {100 * std:.2f} | {_paired(rs, baseline)} | "
            f"{','.join(str(r['seed']) for r in rs)} | {statistics.mean(r['macs_ratio'] for r in rs):.3f} | "
            f"{statistics.mean(r['params_ratio'] for r in rs):.3f} | {statistics.mean(r['seconds_per_epoch'] for r in rs):.1f} |"
        )
    return "\n".join(lines)


def _paired(rs: list[dict], baseline: dict[int, float]) -> str:
    """Mean ± standard error of the per-seed differences: each seed has its own split and data
    order, which moves every row of that seed together, so a paired difference is the sharper test."""
    diffs = [100 * (r["val_accuracy"] - baseline[r["seed"]]) for r in rs if r["seed"] in baseline]
    if not diffs or rs[0]["row"] == BASELINE_ROW:
        return ""
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return f"{statistics.mean(diffs):+.2f} ± {se:.2f} (n={len(diffs)})"


def plot(results: list[dict], spec: argparse.Namespace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in spec.rows:
        rs = [r for r in results if r["row"] == row]
        ax.scatter([r["macs_ratio"] for r in rs], [100 * r["val_accuracy"] for r in rs], label=row)
    ax.set_xlabel("MACs ratio (pruned / full)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{spec.model}: accuracy vs MACs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_macs.png", dpi=120)
    plt.close(fig)

    pruned = [r for r in results if r["kept_per_layer"] and r["seed"] == spec.seeds[0]]
    if pruned:
        fig, ax = plt.subplots(figsize=(10, 4))
        width = 0.8 / len(pruned)
        layers = list(pruned[0]["kept_per_layer"])
        for i, r in enumerate(pruned):
            ax.bar([j + i * width for j in range(len(layers))], [100 * r["kept_per_layer"].get(l, 1.0) for l in layers], width, label=r["row"])
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
        ax.set_ylabel("kept channels (%)")
        ax.set_title(f"{spec.model} at {spec.budget:.0%} MACs: kept channels per layer (seed {spec.seeds[0]})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "kept_per_layer.png", dpi=120)
        plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--rows", default="unpruned,scratch:uniform,l1,lwdna,nap,dsa,scratch:dsa,dhp,scratch:dhp",
                   help="comma-separated rows (see the docstring)")
    p.add_argument("--budget", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10_train_subset.npz"))
    p.add_argument("--data-root", help="a torchvision CIFAR-10 directory instead of the subset")
    p.add_argument("--full", action="store_true", help="the GPU spec: 160 epochs, batch 128, full CIFAR-10 with --data-root")
    p.add_argument("--out", help="results folder (default: bench/results/cifar/macsNN for budget 0.NN)")
    p.add_argument("--merge", action="store_true",
                   help="keep an earlier results.json in --out (same spec) and run only the (row, seed) pairs of --rows "
                        "and --seeds it lacks")
    p.add_argument("--replot", action="store_true", help="redraw the plots from an earlier results.json")
    spec = p.parse_args()
    if spec.full:
        spec.epochs = 160
    spec.out = spec.out or str(ROOT / "bench" / "results" / "cifar" / f"macs{round(100 * spec.budget)}")
    spec.rows = spec.rows.split(",")
    spec.seeds = [int(s) for s in spec.seeds.split(",")]
    spec.device = "cuda" if torch.cuda.is_available() else "cpu"
    spec.device_name = torch.cuda.get_device_name() if spec.device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    out = Path(spec.out) / spec.model
    out.mkdir(parents=True, exist_ok=True)
    if spec.replot:
        return plot(json.loads((out / "results.json").read_text())["results"], spec, out)
    example = torch.randn(2, *models.input_shape(spec.model)[1:])
    results, earlier_minutes = [], 0.0
    wanted = spec.rows
    if spec.merge and (out / "results.json").exists():
        earlier = json.loads((out / "results.json").read_text())
        results = earlier["results"]  # (row, seed) pairs already measured are not run again
        spec.rows = list(dict.fromkeys([r["row"] for r in results] + spec.rows))  # the table shows them all
        earlier_minutes = earlier["minutes"]
    start = time.perf_counter()
    done = {(r["row"], r["seed"]) for r in results}
    for seed in spec.seeds:
        for row in [r for r in wanted if (r, seed) not in done]:  # fresh loaders per row: same batches and augmentations whatever ran before
            loaders = data.cifar10(spec.data_root, seed=seed) if spec.data_root else data.cifar10_subset(spec.data, seed=seed)
            results.append(run_row(row, spec, seed, loaders, example, results))
            print(json.dumps({k: v for k, v in results[-1].items() if k not in ("kept_per_layer", "plan")}), flush=True)
            write(results, spec, out, earlier_minutes + (time.perf_counter() - start) / 60)  # --merge resumes from here
    print(summarize(results, spec))


def write(results: list[dict], spec: argparse.Namespace, out: Path, minutes: float) -> None:
    done = [row for row in spec.rows if any(r["row"] == row for r in results)]
    seeds = sorted({r["seed"] for r in results})  # with --merge, the earlier run's seeds too
    shown = argparse.Namespace(**{**vars(spec), "rows": done, "seeds": seeds})
    command = "python bench/cifar.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in [
        ("model", spec.model), ("rows", ",".join(spec.rows)), ("budget", spec.budget), ("epochs", spec.epochs),
        ("seeds", ",".join(map(str, seeds)))])
    (out / "results.json").write_text(json.dumps({"command": command, "device": spec.device_name, "results": results,
                                                  "minutes": minutes}, indent=2))
    (out / "results.md").write_text(f"# CIFAR benchmark: {spec.model}\n\nCommand: `{command}`\n\n{summarize(results, shown)}\n")
    plot(results, shown, out)


if __name__ == "__main__":
    main()
