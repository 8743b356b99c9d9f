"""CIFAR benchmark harness: one command, one spec (model, methods, budget, epochs, seeds).

Rows, all with the same total epochs:
  unpruned          train from scratch;
  scratch:METHOD    METHOD's plan on the untrained model (e.g. scratch:uniform = uniform width
                    scaling to the budget), then train the slim model from scratch;
  METHOD            a data-free METHOD (l1, ...): train half the epochs, prune to the budget,
                    fine-tune the rest; a training METHOD (dsa, ...): train from scratch with the
                    method (10% of the training split held out for its allocation steps) until
                    its plan is ready, then train the slim model for the remaining epochs.
Validation accuracy on a held-out split (mean ± std over seeds), achieved MACs/params ratios and
seconds per epoch go to JSON, a markdown table and PNG plots (accuracy vs MACs ratio; kept channels
per layer; each training method's own search report, e.g. DSA's Fig. 6-style plot) under --out.

    .venv/bin/python bench/cifar.py                       # default spec, CPU, well under an hour
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
from torch.utils.data import DataLoader, Subset

ROOT = Path(__file__).resolve().parents[1]

# Options of the training methods for the short CPU schedule (8 epochs instead of the papers' 300):
# DSA: one warm-up epoch instead of 20, an allocation update every 4 weight steps instead of 20 (an
# epoch of the subset is ~33 steps), theta_lr 0.5 and beta2 growing x6 per epoch instead of x1.1, so
# the budget is met in epoch 2-4 with nearly hard masks, as it is early in the paper's schedule; DSA
# allocates on 10% of the training split held out (the paper's protocol). DHP: reg 0.05 instead of
# 2e-4, so the proximal search ends within the first half of the epochs; it trains on the whole split.
METHOD_OPTIONS = {
    "dsa": dict(warmup_epochs=1, steps_between=4, beta2_growth=6.0, theta_lr=0.5),
    "dhp": dict(reg=0.05),
}
HOLD_OUT = {"dsa"}


def train(model, loaders, epochs: int, lr: float, seed: int, device: str, label: str):
    train_data, val_data = loaders
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    return graphprune.fit(model, train_data, F.cross_entropy, epochs, optimizer=opt, scheduler=sched, device=device,
                          val_data=val_data, seed=seed, amp=True, description=label)


def run_row(row: str, spec: argparse.Namespace, seed: int, loaders, example: torch.Tensor) -> dict:
    torch.manual_seed(seed)
    model = models.get(spec.model)
    full = graphprune.analyze(model, example)
    plan, history, extra = None, [], {}
    if row == "unpruned":
        history = train(model, loaders, spec.epochs, spec.lr, seed, spec.device, f"{row} seed {seed}")
        final = model
    elif row.startswith("scratch:"):
        result = graphprune.apply(model, row.split(":", 1)[1], spec.budget, example, analysis=full)
        final, plan = result.model, result.plan
        history = train(final, loaders, spec.epochs, spec.lr, seed, spec.device, f"{row} seed {seed}")
    elif passes.get(row).trains:
        options = dict(METHOD_OPTIONS.get(row, {}))
        train_part = loaders[0]
        if row in HOLD_OUT:
            train_part, options["val_data"] = _hold_out(loaders[0], 0.1, seed)
        start = time.perf_counter()
        result = graphprune.apply(model, row, spec.budget, example, train_data=train_part, loss_fn=F.cross_entropy,
                                  epochs=spec.epochs, lr=spec.lr, analysis=full, **options)
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
    macs, params = full.budget.macs(plan.counts() if plan else None), full.budget.params(plan.counts() if plan else None)
    kept = plan.kept_per_layer(full) if plan is not None else {}  # network order
    return {
        "row": row, "seed": seed,
        "val_accuracy": graphprune.accuracy(final, loaders[1]),
        "macs_ratio": macs / full.budget.macs(), "params_ratio": params / full.budget.params(),
        "seconds_per_epoch": statistics.mean(h.seconds for h in history),
        "kept_per_layer": kept,
        **extra,
    }


def _hold_out(loader: DataLoader, fraction: float, seed: int) -> tuple[DataLoader, DataLoader]:
    """Split a training loader's dataset: the rest for weights, ``fraction`` for allocation steps."""
    n = len(loader.dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1000)).tolist()
    cut = int(n * fraction)
    g = torch.Generator().manual_seed(seed)
    return (DataLoader(Subset(loader.dataset, order[cut:]), loader.batch_size, shuffle=True, generator=g),
            DataLoader(Subset(loader.dataset, order[:cut]), loader.batch_size, shuffle=True, generator=g))


def summarize(results: list[dict], spec: argparse.Namespace) -> str:
    lines = [
        f"Model {spec.model}, MACs budget {spec.budget}, {spec.epochs} epochs per row, seeds {spec.seeds}; "
        f"data: {spec.data_root or spec.data}; device: {spec.device_name}.",
        "",
        "| row | val accuracy (mean ± std) | MACs ratio | params ratio | s / epoch |",
        "|---|---|---|---|---|",
    ]
    for row in spec.rows:
        rs = [r for r in results if r["row"] == row]
        accs = [r["val_accuracy"] for r in rs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(
            f"| {row} | {100 * statistics.mean(accs):.2f} ± {100 * std:.2f} | {statistics.mean(r['macs_ratio'] for r in rs):.3f} | "
            f"{statistics.mean(r['params_ratio'] for r in rs):.3f} | {statistics.mean(r['seconds_per_epoch'] for r in rs):.1f} |"
        )
    return "\n".join(lines)


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
    p.add_argument("--rows", default="unpruned,scratch:uniform,l1,dsa,dhp", help="comma-separated rows (see the docstring)")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10_train_subset.npz"))
    p.add_argument("--data-root", help="a torchvision CIFAR-10 directory instead of the subset")
    p.add_argument("--full", action="store_true", help="the GPU spec: 160 epochs, batch 128, full CIFAR-10 with --data-root")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "cifar"))
    p.add_argument("--merge", action="store_true", help="keep the other rows of an earlier results.json in --out (same spec)")
    p.add_argument("--replot", action="store_true", help="redraw the plots from an earlier results.json")
    spec = p.parse_args()
    if spec.full:
        spec.epochs = 160
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
    if spec.merge and (out / "results.json").exists():
        earlier = json.loads((out / "results.json").read_text())
        results = [r for r in earlier["results"] if r["row"] not in spec.rows]
        spec.rows = list(dict.fromkeys([r["row"] for r in results] + spec.rows))
        earlier_minutes = earlier["minutes"]
    start = time.perf_counter()
    done = {(r["row"], r["seed"]) for r in results}
    for seed in spec.seeds:
        for row in [r for r in spec.rows if (r, seed) not in done]:  # fresh loaders per row: same batches and augmentations whatever ran before
            loaders = data.cifar10(spec.data_root, seed=seed) if spec.data_root else data.cifar10_subset(spec.data, seed=seed)
            results.append(run_row(row, spec, seed, loaders, example))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "kept_per_layer"}), flush=True)
    table = summarize(results, spec)
    command = "python bench/cifar.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in [
        ("model", spec.model), ("rows", ",".join(spec.rows)), ("budget", spec.budget), ("epochs", spec.epochs),
        ("seeds", ",".join(map(str, spec.seeds)))])
    (out / "results.json").write_text(json.dumps({"command": command, "device": spec.device_name, "results": results,
                                                  "minutes": earlier_minutes + (time.perf_counter() - start) / 60}, indent=2))
    (out / "results.md").write_text(f"# CIFAR benchmark: {spec.model}\n\nCommand: `{command}`\n\n{table}\n")
    plot(results, spec, out)
    print(table)


if __name__ == "__main__":
    main()
