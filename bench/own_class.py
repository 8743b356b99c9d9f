"""Which pruned models come back as their own class, and where not, why (issue #24's fallback list).

For every model of the test suites (torchvision's whole classification zoo, the timm subset, the
graphprune zoo, the Hugging Face configs of tests/test_transformers.py), analyzed as the tests
analyze it: the groups whose sizes the model's own code cannot take and those it ties to one count
(``class_fit``, with the file:line that fixes them), and whether a plan keeping every other channel
of every other group (a tie's groups together) gives a model of the user's class that verifies against the slim graph (example inputs,
another batch size, another length). Writes bench/results/own_class.md and .json.

    .venv/bin/python bench/own_class.py [--only NAME ...] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from rich.progress import track

import provenance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import graphprune  # noqa: E402
from graphprune.budget.allocate import tie  # noqa: E402
from graphprune.rebuild.user_class import class_fit, user_class_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def models() -> dict[str, callable]:
    """name -> () -> (model, example input, analysis options)."""
    import timm
    import torchvision
    from graphprune import models as zoo_models
    from test_timm import MODELS as TIMM
    from zoo import TOO_LARGE, input_for

    out = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        if name not in TOO_LARGE:
            def build(name=name):
                kwargs, x = input_for(name, reduced=True)
                return torchvision.models.get_model(name, weights=None, **kwargs), x, {}
            out[f"torchvision:{name}"] = build
    for name in TIMM:
        size = 256 if name.startswith("mobilevit") else 96
        out[f"timm:{name}"] = lambda name=name, size=size: (timm.create_model(name, pretrained=False), torch.randn(1, 3, size, size), {})
    for name in zoo_models.names():
        out[f"zoo:{name}"] = lambda name=name: (zoo_models.get(name), torch.randn(2, *zoo_models.input_shape(name)[1:]), {})
    from test_transformers import _build
    for name in ("bert", "vit", "gpt2", "llama"):
        for attention in ("head_dims", "heads"):
            out[f"hf:{name}:{attention}"] = lambda name=name, attention=attention: (*_build(name)[:2], {"attention": attention})
    return out


def check(build) -> dict:
    torch.manual_seed(0)
    model, x, options = build()
    model.eval()
    started = time.perf_counter()
    gg = graphprune.analyze(model, x, **options)
    fit = class_fit(gg)
    units = tie([g.id for g in gg.prunable_groups if g.size > 1 and g.id not in fit.whole], fit.ties)
    plan = graphprune.Plan({gid: list(range(0, gg.groups[gid].size, 2)) for i, unit in enumerate(units) if i % 2 == 0 for gid in unit})
    row = {"groups": len(gg.prunable_groups), "uncarried": {str(k): v for k, v in fit.whole.items()},
           "tied": sum(len(gids) for gids in fit.ties)}
    try:
        own, _, notes = user_class_model(gg, plan)
        row["own_class"] = type(own) is type(model)
        row["notes"] = notes
    except graphprune.GraphPruneError as exc:
        row["own_class"], row["error"] = False, str(exc)
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="model names (as in the table) to run")
    parser.add_argument("--jobs", type=int, default=1, help="models checked at once (nothing here is timed)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # one model, in a subprocess of the main run
    args = parser.parse_args()
    table = models()
    if args.one:
        print(json.dumps(check(table[args.one])))
        return
    names = args.only or list(table)

    def one(name: str) -> dict:  # a fresh process each: no model's state leaks into the next
        done = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        return json.loads(lines[-1]) if done.returncode == 0 and lines else {"own_class": False, "error": done.stderr.strip().splitlines()[-1:]}

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = dict(zip(names, track(pool.map(one, names), total=len(names), description="own class")))
    commit = provenance.commit()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "own_class.json").write_text(json.dumps({"commit": commit, "models": rows}, indent=1))
    own = sum(r.get("own_class", False) for r in rows.values())
    command = " ".join(["python bench/own_class.py", *sys.argv[1:]])
    lines = [f"# The pruned model as its own class (commit {commit}, `{command}`)", "",
             f"{own} of {len(rows)} models come back as their own class with every other carriable group pruned "
             "(verified against the slim graph: example inputs, another batch size, another length).", "",
             "Groups the model's own code sizes together (a chunk into equal parts, one `head_dim` for q/k's and v's head "
             "dims) keep one count in every plan (tied); groups it cannot take pruned are listed with the reason "
             "(`output='module'` keeps them whole; by default a plan that prunes them gives the slim graph).", "",
             "| model | own class | prunable groups | tied | kept whole for the class | first reason |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        reasons = list(r.get("uncarried", {}).values())
        first = (reasons[0] if reasons else r.get("error", "")) or ""
        first = str(first).replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {name} | {'yes' if r.get('own_class') else 'no'} | {r.get('groups', '')} | {r.get('tied', '')} | {len(reasons)} | {first} |")
    (RESULTS / "own_class.md").write_text("\n".join(lines) + "\n")
    print(f"{own}/{len(rows)} own class; bench/results/own_class.md")


if __name__ == "__main__":
    main()
