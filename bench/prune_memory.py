"""Peak memory of pruning a 1.3 GB model, by copy (``inplace=False``) and in place (``inplace=True``).

``graphprune.apply(..., inplace=True)`` exists for models that barely fit in memory: it resizes the
user's model itself instead of building a pruned copy beside it. The issue's targets: the peak of
pruning in place stays under 1.3x the model's size, by copy under 2.3x. The model is a Llama-shaped
``LlamaForCausalLM`` (hidden 1024, MLP 2816, 24 layers, 16 query / 4 key-value heads, vocab 32000:
~336M float32 params, random weights, nothing downloaded), pruned with ``l1`` to 50% of its
params, ``attention="heads"``, on token ids (1, 16).

Each measurement runs in a fresh subprocess (``--child MODE``), so that no allocation of another
run stays in the process. Memory is the process's resident set from /proc/self/status: VmRSS
before the model is built (torch, transformers and graphprune imported), VmRSS after it is built
(the baseline), then the peak is reset (``clear_refs`` 5) and VmHWM read after ``apply``. Plain runs are repeated (``--repeats``): how
much of the heap stays fragmented varies from run to run. The ratio
is (peak - RSS before the model) / the model's own size (numel x element size of its parameters and
buffers), so 1.0 would be the model alone; building it leaves some more (the baseline column).

Which phase sets the peak: a second run per mode (``--phases``) wraps graphprune's internal steps
(analysis, l1 scores, the slim graph, the copy or the in-place resize, verification) and gives the
exact peak inside each (VmHWM reset on entry, no sampling thread: a thread changes how glibc's heap
fragments). A third run per mode fixes glibc's mmap threshold (``MALLOC_MMAP_THRESHOLD_``, which
otherwise rises to 32 MiB as large blocks are freed, after which freed tensors stay in the heap):
the difference is memory the heap holds after tensors are freed rather than live tensors.

    .venv/bin/python bench/prune_memory.py [--layers 24] [--modes copy,inplace] [--repeats 3] [--no-phases] [--no-mmap]

Writes bench/results/prune_memory.md and prune_memory.json.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from provenance import commit

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_attention_heads=16,
              num_key_value_heads=4, max_position_embeddings=2048)
TARGETS = {"copy": 2.3, "inplace": 1.3}
GIB = 2**30
MMAP_THRESHOLD = 2**20  # glibc: a fixed threshold, so every freed block of 1 MiB or more goes back to the system
#: graphprune's steps inside apply (module, attribute, label); one that is not there is skipped
PHASES = [
    ("graphprune.api", "analyze", "analysis"),
    ("graphprune.passes.magnitude", "member_norms", "l1 scores (member_norms)"),
    ("graphprune.passes.importance.ScorePass", "plan", "plan (scores + allocation)"),
    ("graphprune.passes.base.MethodPass", "build", "slim graph (MethodPass.build)"),
    ("graphprune.rebuild.user_class", "_shared_copy", "user-class copy (_shared_copy)"),
    ("graphprune.rebuild.user_class", "_resize_in_place", "resize in place (_resize_in_place)"),
    ("graphprune.rebuild.user_class", "describe_pruned_config", "config (describe_pruned_config)"),
    ("graphprune.rebuild.user_class", "verify", "verify"),
]


def status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


class PhasePeaks:
    """Wraps functions to record the exact peak RSS inside each call (nested calls fold theirs into
    their callers' before resetting) and the RSS after it."""

    def __init__(self) -> None:
        self.open: list[dict] = []
        self.calls: list[dict] = []

    def _fold(self) -> None:
        peak = status_kib("VmHWM")
        for entry in self.open:
            entry["peak_kib"] = max(entry["peak_kib"], peak)

    def run(self, label: str, fn, *args, **kwargs):
        self._fold()
        reset_peak()
        entry = {"phase": label, "peak_kib": 0, "rss_before_kib": status_kib("VmRSS")}
        self.open.append(entry)
        try:
            return fn(*args, **kwargs)
        finally:
            self._fold()
            self.open.pop()
            entry["rss_after_kib"] = status_kib("VmRSS")
            self.calls.append(entry)

    def wrap(self, path: str, attr: str, label: str) -> None:
        parts = path.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                owner = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for name in parts[i:]:
                owner = getattr(owner, name)
            break
        fn = getattr(owner, attr, None)
        if fn is None:
            print(f"  (no {path}.{attr} to measure)", file=sys.stderr)
            return
        setattr(owner, attr, functools.wraps(fn)(lambda *a, **k: self.run(label, fn, *a, **k)))


def child(mode: str, layers: int, phases: bool) -> dict:
    """One measurement in this (fresh) process; returns what it saw as a dict."""
    import torch
    import transformers

    import graphprune

    def log(what: str) -> None:
        print(f"  [{mode}{' phases' if phases else ''}] {what}: RSS {status_kib('VmRSS') / 2**20:.2f} GiB", file=sys.stderr, flush=True)

    torch.manual_seed(0)
    ids = torch.randint(0, CONFIG["vocab_size"], (1, 16))
    before = status_kib("VmRSS")
    start = time.perf_counter()
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_hidden_layers=layers, **CONFIG)).eval()
    build_s = time.perf_counter() - start
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    built = status_kib("VmRSS")
    log("model built")
    out = dict(mode=mode, phases=phases, model_bytes=size, params=sum(p.numel() for p in model.parameters()),
               rss_before_model_kib=before, rss_after_model_kib=built, build_s=round(build_s, 1))
    peaks = PhasePeaks()
    if phases:
        for path, attr, label in PHASES:
            peaks.wrap(path, attr, label)
    start = time.perf_counter()
    result = peaks.run("apply (whole)", graphprune.apply, model, "l1", graphprune.Budget(params=0.5), ids,
                       attention="heads", inplace=mode == "inplace")
    out["prune_s"] = round(time.perf_counter() - start, 1)
    out["peak_kib"] = peaks.calls[-1]["peak_kib"]
    out["rss_after_prune_kib"] = status_kib("VmRSS")
    log("pruned")
    out["phase_calls"] = peaks.calls[:-1]
    out.update(result_class=type(result.model).__name__, result_is_model=result.model is model,
               params_ratio=round(result.report.params_ratio, 4), macs_ratio=round(result.report.macs_ratio, 4),
               notes=result.report.notes,
               pruned_bytes=sum(t.numel() * t.element_size() for t in (*result.model.parameters(), *result.model.buffers())))
    out["peak_ratio"] = round((out["peak_kib"] - before) * 1024 / size, 3)
    return out


def run_child(mode: str, layers: int, phases: bool, mmap: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--layers", str(layers)] + (["--phases"] if phases else [])
    env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)} if mmap else {})}
    print(f"running {'MALLOC_MMAP_THRESHOLD_=%d ' % MMAP_THRESHOLD if mmap else ''}{' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode:
        return dict(mode=mode, phases=phases, mmap=mmap, error=f"exit status {done.returncode} (its stderr is above)")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "mmap": mmap}


def markdown(args: argparse.Namespace, result: dict) -> str:
    runs = result["runs"]
    ok = [r for r in runs if "error" not in r]
    size = ok[0]["model_bytes"] if ok else 1
    base = ok[0]["rss_before_model_kib"] if ok else 0

    def x(kib: int, origin: int = base) -> str:
        return f"{(kib - origin) * 1024 / size:.2f}x"

    rows = []
    for r in runs:
        name = r["mode"] + (" (phases)" if r["phases"] else "") + (f", MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}" if r["mmap"] else "")
        if "error" in r:
            rows.append(f"| {name} | {r['error']} |" + " |" * 7)
            continue
        target = TARGETS[r["mode"]]
        rows.append(f"| {name} | {r['rss_before_model_kib'] / 2**20:.2f} | {r['rss_after_model_kib'] / 2**20:.2f} "
                    f"({x(r['rss_after_model_kib'])}) | {r['peak_kib'] / 2**20:.2f} | **{r['peak_ratio']:.2f}x** "
                    f"({'meets' if r['peak_ratio'] <= target else 'misses'} <= {target}x) | +{x(r['peak_kib'], r['rss_after_model_kib'])} | "
                    f"{x(r['rss_after_prune_kib'])} | {r['prune_s']}s | {r['result_class']}, params {r['params_ratio']:.3f} |")
    phase_tables = ""
    for r in ok:
        if r["phases"]:
            lines = "\n".join(f"| {c['phase']} | {x(c['rss_before_kib'])} | **{x(c['peak_kib'])}** | {x(c['rss_after_kib'])} |"
                              for c in r["phase_calls"])
            top = max(r["phase_calls"], key=lambda c: c["peak_kib"]) if r["phase_calls"] else None
            lines += f"\n\nThe peak is set in: {top['phase'] if top else '?'}.\n" if top else "\n"
            phase_tables += (f"\n{r['mode']}, by phase (same scale: (RSS - RSS before the model) / model size; calls in "
                             f"the order they ended):\n\n| phase | RSS on entry | peak inside | RSS after |\n|---|---:|---:|---:|\n{lines}")
    notes = sorted({n for r in ok for n in r["notes"]})
    spread = "".join(
        f"- {mode}: {min(v):.2f}x to {max(v):.2f}x over {len(v)} plain runs (default allocator)\n"
        for mode in TARGETS if (v := [r["peak_ratio"] for r in ok if r["mode"] == mode and not r["phases"] and not r["mmap"]]))
    return (
        f"# Peak memory of pruning a {size / GIB:.2f} GiB model, by copy and in place\n\n"
        f"`{result['command']}` at {result['commit']}\n\n"
        f"LlamaForCausalLM, float32, random weights: {args.layers} layers, hidden {CONFIG['hidden_size']}, MLP "
        f"{CONFIG['intermediate_size']}, 16/4 heads, vocab 32000; {ok[0]['params'] if ok else 0:,} params, "
        f"{size / GIB:.3f} GiB of parameters and buffers. `graphprune.apply(model, 'l1', Budget(params=0.5), ids (1, 16), "
        f"attention='heads', inplace=...)`, each run in a fresh process. Peak = VmHWM during apply (reset after the "
        f"model is built); ratio = (peak - RSS before the model is built) / the model's size. The phases rows wrap "
        f"graphprune's internal steps for their own peaks. The MALLOC_MMAP_THRESHOLD_ rows fix glibc's mmap threshold at "
        f"{MMAP_THRESHOLD >> 20} MiB (by default it rises up to 32 MiB as large blocks are freed, after which freed tensors "
        f"stay in the heap and fragment it).\n\n"
        f"| run | RSS before model (GiB) | after model (GiB) | peak (GiB) | (peak - before) / model size | "
        f"(peak - after model) / size | RSS after apply | apply time | result |\n"
        f"|---|---:|---:|---:|---|---:|---:|---:|---|\n" + "\n".join(rows) + "\n\nPeak / model size, spread:\n\n" + spread + phase_tables + "\n"
        + "".join(f"Report note: {n}\n\n" for n in notes)
        + f"Load average (1/5/15 min) {result['loadavg_start']} at the start, {result['loadavg_end']} at the end on "
        f"{os.cpu_count()} cores, {result['mem_total_gib']} GiB RAM (times grow with other processes' load; memory is "
        f"this process's own).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--modes", default="copy,inplace")
    parser.add_argument("--repeats", type=int, default=3, help="plain runs per mode (glibc's heap makes the peak vary)")
    parser.add_argument("--no-phases", action="store_true", help="skip the runs that measure each phase")
    parser.add_argument("--no-mmap", action="store_true", help=f"skip the runs under MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}")
    parser.add_argument("--child", choices=sorted(TARGETS), help=argparse.SUPPRESS)
    parser.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.layers, args.phases)))
        return

    load_start = os.getloadavg()
    modes = args.modes.split(",")
    runs = [run_child(mode, args.layers, False) for _ in range(args.repeats) for mode in modes]
    runs += [] if args.no_phases else [run_child(mode, args.layers, True) for mode in modes]
    runs += [] if args.no_mmap else [run_child(mode, args.layers, False, mmap=True) for mode in modes]
    command = (f".venv/bin/python bench/prune_memory.py --layers {args.layers} --modes {args.modes} --repeats {args.repeats}"
               + (" --no-phases" if args.no_phases else "") + (" --no-mmap" if args.no_mmap else ""))
    result = dict(command=command, commit=commit(), config={**CONFIG, "num_hidden_layers": args.layers}, targets=TARGETS,
                  runs=runs, loadavg_start=[round(x, 2) for x in load_start], loadavg_end=[round(x, 2) for x in os.getloadavg()],
                  mem_total_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
                  python=platform.python_version())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prune_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "prune_memory.md").write_text(markdown(args, result))
    print((RESULTS / "prune_memory.md").read_text())


if __name__ == "__main__":
    main()
