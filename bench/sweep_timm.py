"""One model per timm module, the way a new user would try them: analyze, prune, slim, compare, export.

    .venv/bin/python bench/sweep_timm.py [--modules beit,cait] [--timeout 300] [--out bench/results/sweep_timm]
    .venv/bin/python bench/sweep_timm.py --specialize-submodules --fallbacks-of bench/results/sweep_timm.json \
        --out bench/results/sweep_timm_specialized

For each module the smallest model that builds (parameters counted on the meta device, no
weights) runs in its own process with a time limit: analyze on its default input size, keep every
other channel of every prunable group (all groups at once) and slim; then the same for the exact
groups only, comparing the slim model with the zeroed original, export to ONNX and check it in onnxruntime. Writes ``sweep_timm.json`` and
``sweep_timm.md``; a run can be resumed (modules already in the JSON are skipped unless --redo).
``--specialize-submodules`` analyzes with that option (submodules whose Python branches on traced
values are traced along the example path instead of staying opaque leaves); ``--fallbacks-of``
picks the modules that had such leaves in another run's results.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

#: outcome of a module, in the order a model goes through the pipeline
STAGES = ("build", "analyze", "slim", "exactness", "export")
TOLERANCE = 1e-4  # relative to the output scale, as export_onnx checks


def modules() -> dict[str, list[str]]:
    import timm

    found: dict[str, list[str]] = {}
    for name in timm.list_models():
        module = timm.models._registry._model_to_module.get(name)
        if module:
            found.setdefault(module, []).append(name)
    return dict(sorted(found.items()))


def smallest(names: list[str]) -> list[tuple[int, str]]:
    """(parameter count, name) of the module's models that build on the meta device, smallest first."""
    import timm
    import torch

    sized = []
    for name in names:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
            sized.append((sum(p.numel() for p in model.parameters()), name))
        except Exception:  # noqa: BLE001 - a model that does not build is simply not a candidate
            continue
    return sorted(sized)


def run_module(module: str, names: list[str], out: "mp.Queue", options: dict) -> None:
    """Child process: every stage reports as it finishes, so a timeout still says how far it got."""
    import torch

    torch.set_num_threads(1)
    record: dict = {"module": module, "stage": "build"}

    def report(**fields) -> None:
        record.update(fields)
        out.put(dict(record))

    try:
        import timm

        import graphprune
        from graphprune.slimming.exactness import exactness_error, half_plan, randomize_small_tensors

        candidates = smallest(names)
        if not candidates:
            return report(error="no model of this module builds without weights")
        params, name = candidates[0]
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval()
        randomize_small_tensors(model)
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        x = torch.randn(1, *size)
        with torch.no_grad():
            model(x)
        report(model=name, params=params, input=list(size), stage="analyze")
        start = time.perf_counter()
        gg = graphprune.analyze(model, x, **options)
        plan = half_plan(gg)
        report(
            analyze_s=round(time.perf_counter() - start, 2), groups=len(gg.groups), prunable=len(gg.prunable_groups),
            pruned_groups=len(plan.keep), inexact=sum(1 for g in gg.prunable_groups if g.inexact),
            mac_share=round(gg.prunable_mac_share(), 4), fallbacks=len(gg.fallbacks), stage="slim",
        )
        graphprune.slim(gg, half_plan(gg, exact_only=False))  # inexact groups must slim too, if not exactly
        small = graphprune.slim(gg, plan)
        report(stage="exactness", macs_ratio=round(gg.cost.macs(plan.counts()) / gg.cost.macs(), 4))
        error = exactness_error(model, gg, plan, (x,), slim_model=small)
        if not error <= TOLERANCE:
            return report(exactness=error, error=f"slim model differs from the zeroed original by {error:.3g} of the output scale")
        report(exactness=error, stage="export")
        with tempfile.TemporaryDirectory() as tmp:
            onnx = graphprune.export_onnx(small, os.path.join(tmp, "slim.onnx"), x)
        report(stage="done", onnx_diff=onnx.relative_diff)
    except Exception as exc:  # noqa: BLE001 - the sweep records every failure
        lines = [ln for ln in f"{type(exc).__name__}: {exc}".splitlines() if ln.strip()]
        report(error=" ".join(lines[:2])[:400], error_type=type(exc).__name__, where=traceback.format_exc().splitlines()[-3][:200])


def sweep_one(module: str, names: list[str], timeout: float, options: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=run_module, args=(module, names, q, options), daemon=True)
    start = time.perf_counter()
    proc.start()
    record = {"module": module, "stage": "build"}
    while True:
        try:
            record = q.get(timeout=1.0)
            if record.get("stage") == "done" or "error" in record:
                break
        except queue.Empty:
            if not proc.is_alive():
                record.setdefault("error", f"process died (exit code {proc.exitcode})")
                break
            if time.perf_counter() - start > timeout:
                record["error"] = f"timed out after {timeout:.0f}s"
                break
    proc.kill()
    proc.join()
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["code"] = code_state()
    return record


def code_state() -> str:
    """The commit the row was measured at (``+`` when graphprune's code had uncommitted changes): a
    results file filled over several runs says which code each row comes from."""
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "graphprune", "passes", "models"], cwd=root, capture_output=True, text=True).stdout.strip()
    return (head or "unknown") + ("+" if dirty else "")


def outcome(r: dict) -> str:
    """The stage a module stopped in; capitals mark a broken promise (analysis said prunable)."""
    if r.get("error", "").startswith("timed out"):
        return f"timed out in {r['stage']}"
    if r["stage"] == "exactness":
        return "WRONG OUTPUT" if r.get("exactness", 0) > TOLERANCE else "compare fails"
    return {"build": "does not build", "analyze": "analysis fails", "slim": "SLIM FAILS", "export": "export fails",
            "done": "exact"}[r["stage"]]


def markdown(results: list[dict], options: dict) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[outcome(r)] = counts.get(outcome(r), 0) + 1
    lines = [
        "# timm sweep: one model per module",
        "",
        "Generated by `bench/sweep_timm.py`: the smallest model of each timm module (no weights, default input size, "
        "batch 1; biases, norm and layer scales randomized so that no leak hides); every other channel of every exact prunable group pruned at once; slim model compared with the "
        "zeroed original (relative to the output scale) and exported to ONNX (checked in onnxruntime)."
        + "".join(f" Analyzed with `{k}={v!r}`." for k, v in options.items()),
        "",
        "Outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        "",
        "Code: each row's commit (`+`: the work tree had uncommitted changes; rows measured before that check was "
        "limited to graphprune's code also count the results files being written; `?`: measured before rows recorded it).",
        "",
        "| module | model | outcome | prunable MACs | groups (prunable / pruned / inexact) | MACs after | slim error | analyze s | code | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        groups = f"{r['groups']} ({r['prunable']} / {r['pruned_groups']} / {r['inexact']})" if "groups" in r else ""
        share = f"{100 * r['mac_share']:.1f}%" if "mac_share" in r else ""
        ratio = f"{r['macs_ratio']:.3f}" if "macs_ratio" in r else ""
        err = f"{r['exactness']:.1e}" if "exactness" in r else ""
        note = (r.get("error") or "").replace("|", "/")[:160]
        lines.append(f"| {r['module']} | {r.get('model', '')} | {outcome(r)} | {share} | {groups} | {ratio} | {err} | {r.get('analyze_s', '')} | {r.get('code', '?')} | {note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", help="comma-separated timm module names (default: all)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sweep_timm"))
    parser.add_argument("--redo", action="store_true", help="run modules already in the results again")
    parser.add_argument("--specialize-submodules", action="store_true", help="analyze(..., specialize_submodules=True)")
    parser.add_argument("--fallbacks-of", metavar="JSON", help="only the modules with opaque-leaf fallbacks in these results")
    args = parser.parse_args()
    options = {"specialize_submodules": True} if args.specialize_submodules else {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    results = {r["module"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    every = modules()
    chosen = args.modules.split(",") if args.modules else list(every)
    if args.fallbacks_of:
        chosen = [r["module"] for r in json.loads(Path(args.fallbacks_of).read_text()) if r.get("fallbacks") and r["module"] in chosen]
    from rich.progress import Progress

    with Progress() as progress:
        task = progress.add_task("timm sweep", total=len(chosen))
        for module in chosen:
            progress.update(task, description=f"timm sweep: {module}")
            if module not in results or args.redo:
                results[module] = sweep_one(module, every[module], args.timeout, options)
                progress.console.print(f"{module}: {outcome(results[module])} {results[module].get('error', '')[:120]}")
                ordered = [results[m] for m in sorted(results)]
                path.write_text(json.dumps(ordered, indent=1))
                out.with_suffix(".md").write_text(markdown(ordered, options))
            progress.advance(task)


if __name__ == "__main__":
    main()
