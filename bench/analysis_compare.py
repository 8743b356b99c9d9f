"""Analysis time of two code states side by side: an earlier commit and this checkout.

    .venv/bin/python bench/analysis_compare.py --base REV [--rounds 5] [--cpu-time]

A refactor of the internals must not slow analysis down (issue #25: within 5%, 1.3x where networkx
and sympy take over work). The base commit is checked out in a temporary worktree; every
measurement runs in a fresh process importing graphprune from one of the two checkouts
(tests/checkout.py pins graphprune.passes and graphprune.models to it too). Rounds alternate base
and current, model by model, so that a change in the machine's load hits both, each side first in
every other round (the first process of a run is often the fastest); each side's time is its best
round, and the medians' ratio is given too. Cases: the representative subset of bench/analysis_speed.py (torchvision,
224x224) and a Llama-3-8B-shaped config on the meta device (no weights allocated). ``--cpu-time``
times process CPU time on 1 thread, which other work on a shared machine inflates less than wall
clock. Writes bench/results/analysis_compare.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.progress import track

import provenance

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
CASES = ["resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0", "convnext_tiny", "llama3_8b_meta"]
LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                num_key_value_heads=8, num_hidden_layers=32, max_position_embeddings=8192)


def child(name: str, cpu_time: bool) -> float:
    """Seconds of one ``graphprune.analyze`` of case ``name``, in this process (graphprune imported from the pinned checkout)."""
    sys.path.insert(0, str(REPO / "tests"))
    from checkout import pin_checkout

    pin_checkout()
    import torch

    import graphprune

    if cpu_time:
        torch.set_num_threads(1)
    if name == "llama3_8b_meta":
        import transformers

        with torch.device("meta"):
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_8B)).eval()
        x = torch.randint(0, 1000, (2, 8), device="meta")
    else:
        import torchvision

        model, x = torchvision.models.get_model(name, weights=None).eval(), torch.randn(1, 3, 224, 224)
    clock = time.process_time if cpu_time else time.perf_counter
    start = clock()
    graphprune.analyze(model, x)
    return clock() - start


def measure(root: Path, name: str, cpu_time: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = [sys.executable, __file__, "--child", name] + (["--cpu-time"] if cpu_time else [])
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=root)
    if done.returncode:
        raise RuntimeError(f"{name} at {root}: {done.stderr.strip().splitlines()[-1:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="the commit to compare with (e.g. the one before a refactor)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu-time", action="store_true")
    parser.add_argument("--only", nargs="*", choices=CASES)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child(args.child, args.cpu_time))
        return
    if not args.base:
        parser.error("--base REV is required")
    base_rev = subprocess.run(["git", "rev-parse", args.base], capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    names = args.only or CASES
    times: dict[str, dict[str, list[float]]] = {n: {"base": [], "current": []} for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), base_rev], cwd=REPO, check=True, capture_output=True)
        try:
            for round_ in track(range(args.rounds), description="rounds"):
                sides = (("base", base), ("current", REPO))
                for name in names:
                    for side, root in sides if round_ % 2 == 0 else sides[::-1]:  # ABBA: neither side always runs first
                        times[name][side].append(measure(root, name, args.cpu_time))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True)
    current = provenance.commit()
    clock = "process CPU time, 1 thread" if args.cpu_time else "wall clock"
    lines = [f"# Analysis time: {base_rev[:10]} (base) against {current} (current)", "",
             f"`.venv/bin/python bench/analysis_compare.py --base {args.base} --rounds {args.rounds}"
             f"{' --cpu-time' if args.cpu_time else ''}{' --only ' + ' '.join(args.only) if args.only else ''}`: `graphprune.analyze` in a fresh process per measurement, "
             f"base and current alternating (each first in every other round), best and median of {args.rounds} rounds each "
             f"({clock}).", "",
             "| model | base best (s) | current best (s) | current / base, best | current / base, median |", "|---|---:|---:|---:|---:|"]
    for name in names:
        b, c = min(times[name]["base"]), min(times[name]["current"])
        median = statistics.median(times[name]["current"]) / statistics.median(times[name]["base"])
        lines.append(f"| {name} | {b:.2f} | {c:.2f} | **{c / b:.3f}** | {median:.3f} |")
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "analysis_compare.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "analysis_compare.json").write_text(json.dumps({"base": base_rev, "current": current, "times": times}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
