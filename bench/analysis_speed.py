"""How long graphprune's analysis and data-free prune take, next to Torch-Pruning's dependency build
and one forward pass, side by side (each model in its own process, 2 threads, best of 3 by default).

    .venv/bin/pip install -e '.[bench]'      # torch-pruning is in the bench extra
    .venv/bin/python bench/analysis_speed.py [--quick | --repeats N] [--no-depth] [--json out.json] [--baseline before.json]
    .venv/bin/python bench/analysis_speed.py --cpu-time ...   # 1 thread, process CPU time: on a shared machine

Per model of the representative subset (torchvision, 224x224):
  forward      one forward pass with autograd enabled (as both analyses run the model)
  TP build     ``torch_pruning.DependencyGraph().build_dependency(model, example_inputs=x)``
  analyze      ``graphprune.analyze(model, x)``
  apply        ``graphprune.apply(model, "l1", 0.5, x)``: analysis + allocation + slim + verification
and a depth curve: CIFAR ResNets (20 to 1202 layers) and a ViT stack (6 to 48 blocks, 32x32), to
show analysis time grows linearly with depth (seconds per node and per block, and a PNG).

``--json`` saves the measurements; ``--baseline`` (a ``--json`` file from another code state,
e.g. the commit before the performance work) adds its ratios as "before" columns.
Writes bench/results/analysis_speed.md and bench/results/analysis_depth.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

import graphprune

MODELS = [("resnet50", 224), ("mobilenet_v2", 224), ("densenet121", 224), ("efficientnet_b0", 224), ("convnext_tiny", 224)]
CIFAR_DEPTHS = [20, 56, 110, 1202]
VIT_LAYERS = [6, 12, 24, 48]
RESULTS = Path(__file__).parent / "results"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: what ``timed`` reads: wall clock by default; process CPU time with ``--cpu-time`` (1 thread), which
#: other work on a shared machine does not inflate the way it inflates wall clock
CLOCK = time.perf_counter


def timed(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def best_side_by_side(fns: dict, repeats: int, warm: bool = True) -> dict[str, float]:
    """Best of ``repeats`` for each function, run in interleaved rounds so load changes hit all alike."""
    if warm:
        for fn in fns.values():  # warm-up: first-call costs (imports, allocator, caches) are not measured
            fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            best[k] = min(best[k], timed(fn))
    return best


def tp_build(model, x):
    try:
        import torch_pruning as tp
    except ImportError:  # pragma: no cover - the bench extra is not installed
        return None
    return lambda: tp.DependencyGraph().build_dependency(model, example_inputs=x)


def make_case(kind: str, name: str, size: int):
    """(model, input, blocks) for a subset model or a depth-curve case."""
    torch.manual_seed(0)
    if kind == "subset":
        return torchvision.models.get_model(name, weights=None).eval(), torch.randn(1, 3, size, size), None
    if kind == "cifar_resnet":
        from graphprune.models.cifar_resnet import resnet

        return resnet(size).eval(), torch.randn(1, 3, 32, 32), (size - 2) // 2
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=4, num_layers=size, num_heads=4, hidden_dim=64, mlp_dim=128).eval(), torch.randn(1, 3, 32, 32), size


def measure(kind: str, name: str, size: int, repeats: int) -> dict:
    """One case, in this process: first forward and TP build alone (before graphprune has allocated
    anything: a process that deep-copied a model runs its forward measurably slower afterwards),
    then all of them interleaved. Forward and TP are the best of both phases (the most favourable
    numbers for the baselines), analyze and apply the best of the interleaved rounds."""
    model, x, blocks = make_case(kind, name, size)
    base = {"forward": lambda: model(x), "tp": tp_build(model, x)}
    base = {k: f for k, f in base.items() if f is not None}
    fresh = best_side_by_side(base, repeats)
    ours = {"analyze": lambda: graphprune.analyze(model, x)}
    if kind == "subset":
        ours["apply"] = lambda: graphprune.apply(model, "l1", 0.5, x)
    for fn in ours.values():
        fn()
    both = best_side_by_side({**base, **ours}, repeats, warm=False)
    row = {**both, **{k: min(v, both[k]) for k, v in fresh.items()}, **{f"{k}_fresh": v for k, v in fresh.items()}}
    if kind != "subset":
        row.update(family=kind, depth=size, blocks=blocks, nodes=len(graphprune.analyze(model, x).gm.graph.nodes))
    else:
        row.update(model=name, input=size)
    return row


def run_case(kind: str, name: str, size: int, repeats: int) -> dict:
    """``measure`` in a fresh process, so no case inherits another's memory state."""
    cmd = [sys.executable, __file__, "--case", kind, name, str(size), "--repeats", str(repeats)]
    if CLOCK is time.process_time:
        cmd.append("--cpu-time")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def subset(repeats: int) -> list[dict]:
    rows = []
    for name, size in MODELS:
        log(f"[subset] {name} at {size}x{size} ...")
        row = run_case("subset", name, size, repeats)
        rows.append(row)
        log("         " + "  ".join(f"{k} {row[k] * 1000:.0f} ms" for k in ("forward", "tp", "analyze", "apply") if k in row))
    return rows


def depth_curve(repeats: int) -> list[dict]:
    cases = [("cifar_resnet", f"resnet{d}", d) for d in CIFAR_DEPTHS] + [("vit", f"vit{layers}", layers) for layers in VIT_LAYERS]
    rows = []
    for kind, name, size in cases:
        log(f"[depth] {name} ...")
        row = run_case(kind, name, size, repeats if size < 1000 else max(1, repeats - 1))
        rows.append(row)
        log(f"         {row['nodes']} nodes: analyze {row['analyze']:.3f} s ({row['analyze'] / row['nodes'] * 1e6:.0f} us/node)")
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, family, label in ((axes[0], "cifar_resnet", "CIFAR ResNet (basic blocks)"), (axes[1], "vit", "ViT stack (32x32, dim 64)")):
        sub = [r for r in rows if r["family"] == family]
        blocks = [r["blocks"] for r in sub]
        ax.plot(blocks, [r["analyze"] for r in sub], "o-", label="graphprune.analyze")
        if all("tp" in r for r in sub):
            ax.plot(blocks, [r["tp"] for r in sub], "s--", label="Torch-Pruning build")
        ax.plot(blocks, [r["forward"] for r in sub], "^:", label="forward pass")
        for r in sub:
            ax.annotate(f"{r['depth']}", (r["blocks"], r["analyze"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ax.set_xlabel("blocks")
        ax.set_ylabel("seconds (best of 3, 2 threads)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def write_markdown(data: dict, baseline: dict | None, path: Path, baseline_label: str = "before") -> None:
    lines = [
        "# Analysis and data-free pruning time",
        "",
        f"Generated by `bench/analysis_speed.py{' --cpu-time' if data.get('clock') == 'cpu' else ''}`: each model in its own process, "
        + ("`torch.set_num_threads(1)`, process CPU time (`time.process_time`, for a machine shared with other work), "
           if data.get("clock") == "cpu" else "`torch.set_num_threads(2)`, wall clock, ")
        + f"best of {data['repeats']} in interleaved rounds after a warm-up, CPU ({data['machine']}), torch {data['torch']}. "
        "Forward and TP build are first timed alone, before graphprune runs in the process (a process that "
        "deep-copied a model runs that model's forward up to 1.4x slower afterwards, whichever library did it), "
        "then interleaved with analyze and apply; their best over both phases is used, the baselines' most "
        "favourable number. Ratios only travel between machines; the absolute times are this machine's.",
        "",
        "- **TP build**: `torch_pruning.DependencyGraph().build_dependency(model, example_inputs=x)` "
        f"(torch-pruning {data['tp_version']}).",
        "- **analyze**: `graphprune.analyze(model, x)`: trace, shapes and FLOPs of every node, channel "
        "rules, groups, exact budget polynomials.",
        "- **apply**: `graphprune.apply(model, \"l1\", 0.5, x)`: analysis + l1 scores + allocation to 50% "
        "MACs + slim copy + shape verification of the slim graph.",
        "- **forward**: one forward pass with autograd enabled.",
        "",
        "## Representative subset (224x224)",
        "",
    ]
    head = "| model | forward | TP build | analyze | analyze / TP build | analyze / forward | apply / forward | (apply - analyze) / forward |"
    sep = "|---|---|---|---|---|---|---|---|"
    before = {r["model"]: r for r in (baseline or {}).get("subset", [])}
    if before:
        head += f" {baseline_label}: analyze / TP build | {baseline_label}: apply / forward | {baseline_label}: (apply - analyze) / forward |"
        sep += "---|---|---|"
    lines += [head, sep]
    for r in data["subset"]:
        tp = r.get("tp")
        row = (
            f"| {r['model']} | {r['forward'] * 1000:.0f} ms | {tp * 1000:.0f} ms | {r['analyze'] * 1000:.0f} ms | "
            if tp is not None else f"| {r['model']} | {r['forward'] * 1000:.0f} ms | n/a | {r['analyze'] * 1000:.0f} ms | "
        )
        row += (
            f"**{ratio(r['analyze'], tp)}** | {ratio(r['analyze'], r['forward'])} | {ratio(r['apply'], r['forward'])} | "
            f"{ratio(r['apply'] - r['analyze'], r['forward'])} |"
        )
        if before:
            b = before.get(r["model"])
            row += (
                f" {ratio(b['analyze'], b.get('tp'))} | {ratio(b['apply'], b['forward'])} | {ratio(b['apply'] - b['analyze'], b['forward'])} |"
                if b else " n/a | n/a | n/a |"
            )
        lines.append(row)
    if data.get("depth"):
        lines += [
            "",
            "## Depth curve",
            "",
            "CIFAR ResNets from `graphprune.models` (basic blocks; ResNet-1202 built with the same "
            "constructor) and torchvision `VisionTransformer(image_size=32, patch_size=4, num_layers=L, "
            "num_heads=4, hidden_dim=64, mlp_dim=128)`, input 1x3x32x32. "
            "Per-node and per-block times staying flat as depth grows is linear scaling. "
            f"Plot: `{'analysis_depth_cpu.png' if data.get('clock') == 'cpu' else 'analysis_depth.png'}`.",
            "",
            "| model | depth | blocks | graph nodes | forward | TP build | analyze | analyze / TP build | analyze / node | analyze / block |"
            + (f" {baseline_label}: analyze / node |" if baseline and baseline.get("depth") else ""),
            "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if baseline and baseline.get("depth") else ""),
        ]
        old = {(r["family"], r["depth"]): r for r in (baseline or {}).get("depth", [])}
        for r in data["depth"]:
            tp = f"{r['tp']:.3f} s" if r.get("tp") is not None else "n/a"
            row = (
                f"| {r['family']} | {r['depth']} | {r['blocks']} | {r['nodes']} | {r['forward']:.3f} s | {tp} | "
                f"{r['analyze']:.3f} s | {ratio(r['analyze'], r.get('tp'))} | {r['analyze'] / r['nodes'] * 1e6:.0f} us | "
                f"{r['analyze'] / r['blocks'] * 1e3:.2f} ms |"
            )
            if baseline and baseline.get("depth"):
                b = old.get((r["family"], r["depth"]))
                row += f" {b['analyze'] / b['nodes'] * 1e6:.0f} us |" if b else " n/a |"
            lines.append(row)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="best of 1 instead of 3")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many rounds (default 3)")
    parser.add_argument("--no-depth", action="store_true", help="skip the depth curve")
    parser.add_argument("--json", type=Path, help="also save the measurements here")
    parser.add_argument("--baseline", type=Path, help="a --json file from another code state, shown as 'before'")
    parser.add_argument("--baseline-label", default="before", help="what the baseline was measured on (e.g. a commit)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="1 thread, process CPU time instead of wall clock (default out: analysis_speed_cpu.md)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--case", nargs=3, metavar=("KIND", "NAME", "SIZE"), help=argparse.SUPPRESS)  # one case, JSON on stdout
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    torch.set_num_threads(1 if args.cpu_time else 2)
    args.out = args.out or RESULTS / ("analysis_speed_cpu.md" if args.cpu_time else "analysis_speed.md")
    if args.case:
        kind, name, size = args.case
        print(json.dumps(measure(kind, name, int(size), args.repeats)))
        return
    repeats = 1 if args.quick else args.repeats
    try:
        import torch_pruning as tp

        tp_version = getattr(tp, "__version__", "?")
    except ImportError:
        tp_version = "not installed"
    data = {
        "repeats": repeats, "torch": torch.__version__, "tp_version": tp_version, "clock": "cpu" if args.cpu_time else "wall",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "subset": subset(repeats),
    }
    data["depth"] = [] if args.no_depth else depth_curve(repeats)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    if args.out:
        baseline = json.loads(args.baseline.read_text()) if args.baseline else None
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_markdown(data, baseline, args.out, args.baseline_label)
        if data["depth"]:
            plot(data["depth"], args.out.parent / ("analysis_depth_cpu.png" if args.cpu_time else "analysis_depth.png"))
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
